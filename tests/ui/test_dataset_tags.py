"""The Dataset screen's audio tab and the sidecar tools: the BPM, key and time signature a sidecar holds
(what ``sidestep audio-analyze`` writes) beside the song, and the Tags dialog adding a trigger tag
through ``engine.sidecar_edit`` (the same plan ``sidestep tags`` prints), changing only the captions."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, DataTable, Input, Static
from ui_helpers import screen_text, wait_until, write_song_folder

from sidestep_tui.dialogs.tags import TagsDialog
from sidestep_tui.widgets.audio_prep import AudioPrep


@pytest.mark.integration  # the audio folder is scanned by the dataset builder in a child interpreter
async def test_tags_dialog_adds_a_trigger_tag_and_the_detail_shows_the_estimates(build_app, tmp_path: Path) -> None:
    songs = write_song_folder(tmp_path / "songs")
    anthem = "caption: bright synth anthem\ngenre: synthpop\nbpm: 128\nkey: F# minor\nsignature: 3\nlyrics:\n[Verse]\nla la\n"
    (songs / "anthem.txt").write_text(anthem, encoding="utf-8")
    ballad = (songs / "sub" / "ballad.caption.txt").read_bytes()
    app = build_app(None, client_factory=lambda _log: pytest.fail("must not start an engine"), initial_mode="dataset")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+t")
        prep = app.screen.query_one(AudioPrep)
        prep.audio_field.input.value = str(songs)
        await wait_until(pilot, lambda: prep.report is not None and prep._report_path == str(songs), 30, "the audio scan")
        table = prep.query_one("#prep-files", DataTable)
        table.focus()
        table.move_cursor(row=[str(r.key.value) for r in table.ordered_rows].index("anthem.wav"))
        await pilot.pause()
        assert "bpm 128 · key F# minor · signature 3" in str(prep.query_one("#prep-detail", Static).render())

        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: isinstance(app.screen, TagsDialog), 5, "the tags dialog")
        dialog = app.screen
        dialog.query_one("#tags-input", Input).value = "zq-style"
        await pilot.click("#tags-add")
        await pilot.pause()
        preview = str(dialog.query_one("#tags-preview", Static).render())
        assert (
            "+caption: zq-style, bright synth anthem" in preview and "5 files to change" in preview
        )  # the duplicate and the empty file too
        assert (songs / "anthem.txt").read_text(encoding="utf-8") == anthem  # a preview writes nothing
        assert not dialog.query_one("#tags-apply", Button).disabled
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not isinstance(app.screen, TagsDialog), 5, "the dialog to close")

        assert (songs / "anthem.txt").read_text(encoding="utf-8") == anthem.replace("caption: ", "caption: zq-style, ")
        assert (songs / "sub" / "ballad.caption.txt").read_bytes() == b"zq-style, " + ballad
        assert (songs / "untitled_take.txt").read_text(encoding="utf-8") == "caption: zq-style, untitled take\n"
        await wait_until(pilot, lambda: "tags: zq-style (3 of 3)" in screen_text(app), 30, "the rescan showing the tag")

        # Ctrl+B runs `sidestep audio-analyze` in a child process (the UI never imports numpy): it writes the
        # click track's tempo into a new sidecar beside it, keeps what the sidecars hold, and says which
        # files it could not read.
        write_click_wav(songs / "clicks.wav", 120.0)
        before = len(app._notifications)
        await pilot.press("ctrl+b")

        def answers() -> list[str]:
            return [str(n.message) for n in list(app._notifications)[before:] if not str(n.message).startswith("Analysing")]

        await wait_until(pilot, lambda: bool(answers()), 60, "audio-analyze to finish")
        assert answers() == ["wrote 1 sidecar; 2 file(s) not analysed"]  # empty.wav, and untitled_take.wav: 0.5 s
        assert "bpm: 120\n" in (songs / "clicks.txt").read_text(encoding="utf-8")
        assert (songs / "anthem.txt").read_text(encoding="utf-8") == anthem.replace("caption: ", "caption: zq-style, ")


def write_click_wav(path: Path, bpm: float, seconds: float = 6.0, rate: int = 22050) -> None:
    """A mono 16-bit click track (a 1 kHz blip decaying in 4 ms on every beat), with the standard library."""
    import array
    import math
    import wave

    samples = array.array("h", bytes(2 * int(seconds * rate)))
    step, blip = 60.0 / bpm * rate, int(0.02 * rate)
    beat = 0
    while (start := round(beat * step)) + blip < len(samples):
        for i in range(blip):
            samples[start + i] = int(12000 * math.sin(2 * math.pi * 1000 * i / rate) * math.exp(-i / rate / 0.004))
        beat += 1
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(rate)
        fh.writeframes(samples.tobytes())
