"""The Runs screen's Samples table: the samples a run rendered while training (base model first, then the
newest step), and Enter / ``l`` playing one through the first player on PATH, or saying plainly that none exists."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable
from ui_helpers import footer_keys, make_run_dir, screen_text, wait_until

from engine.samples_index import scan_samples
from sidestep_tui.screens.runs import RunsScreen, run_detail

SLUGS = ("1-warm-piano", "2-fast-drums")


def fake_spectrogram(step: int, index: int, bands: int = 48, columns: int = 90) -> dict:
    """A sidecar's ``spectrogram`` as ``engine.audio.spectrum`` writes it: a tone gliding up over a quiet floor
    (higher and louder at later steps, so rows differ), built with the stdlib."""
    db = []
    for b in range(bands):
        row = []
        for c in range(columns):
            centre = 6 + 4 * index + step / 2 + 20 * c / columns
            row.append(round(-90 + 80 * math.exp(-(((b - centre) / 2.5) ** 2)) + 10 * math.exp(-b / 12)))
        db.append(row)
    band_hz = [round(700 * (10 ** ((i + 1) * 3923 / (bands + 1) / 2595) - 1)) for i in range(bands)]
    return {"db": db, "band_hz": band_hz, "hop_s": 0.02222, "floor_db": -100}


def add_samples(
    run_dir: Path, steps: tuple[int, ...] = (0, 10, 20), slugs: tuple[str, ...] = SLUGS, old_steps: tuple[int, ...] = ()
) -> None:
    """Sample files as training writes them (the scanner and the UI never read the audio itself); the
    sidecars of ``old_steps`` are as older versions wrote them (no loudness, no spectrogram)."""
    for step in steps:
        folder = run_dir / "samples" / f"step_{step}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, slug in enumerate(slugs):
            (folder / f"{slug}.flac").write_bytes(b"fLaC not really")
            sidecar = {"prompt": slug.split("-", 1)[1].replace("-", " "), "seed": 42 + i, "duration_s": 2.0, "step": step}
            if step not in old_steps:
                sidecar |= {"lufs": -20.0 + step / 10 - i, "spectrogram": fake_spectrogram(step, i)}
            (folder / f"{slug}.json").write_text(json.dumps(sidecar))


def test_scan_samples_pins_the_base_then_newest_first_and_survives_bad_sidecars(tmp_path: Path) -> None:
    add_samples(tmp_path, steps=(5, 0, 100, 20))
    (tmp_path / "samples" / "step_20" / "1-warm-piano.json").write_text("{not json")
    (tmp_path / "samples" / "stray").mkdir()
    found = scan_samples(str(tmp_path))
    assert [(s.step, s.slug) for s in found][:4] == [(0, SLUGS[0]), (0, SLUGS[1]), (100, SLUGS[0]), (100, SLUGS[1])]
    assert [s.step for s in found] == [0, 0, 100, 100, 20, 20, 5, 5]
    broken = next(s for s in found if s.step == 20 and s.slug == SLUGS[0])
    assert broken.prompt == "" and broken.seed is None and os.path.isfile(broken.path)
    assert (found[1].prompt, found[1].seed, found[1].duration_s) == ("fast drums", 43, 2.0)
    assert scan_samples(str(tmp_path / "nowhere")) == []


async def test_samples_table_lists_base_then_newest_shows_the_spectrogram_and_says_when_no_player(
    build_app, ui_settings, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("COLORTERM", "truecolor")  # the terminal says it has colours (as most do)
    monkeypatch.delenv("NO_COLOR", raising=False)
    run_dir = make_run_dir(Path(ui_settings.output_root), "demo-lora")
    add_samples(run_dir, old_steps=(10,))
    empty = tmp_path / "no-players"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_until(pilot, lambda: screen.query_one("#samples").display, 10.0, "the Samples table")
        table = screen.query_one("#samples-table", DataTable)
        steps = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert steps == ["base", "base", "20", "20", "10", "10"]
        assert "Listen" in footer_keys(app) and "Listen" in screen_text(app)  # the two-row footer at 80x24 shows it
        table.focus()
        await pilot.press("down", "down")  # the newest adapter sample of the first prompt: its spectrogram
        lines = spectrogram_text(app)
        assert lines[0].startswith("▀" * 40) and "▲ 20.5 kHz" in lines[0] and "▼ 0 Hz" in lines[-1]
        assert "step 20 · seed 42" in lines[1] and "2.0 s · -18.0 LUFS" in lines[2]
        assert str(table.get_row_at(2)[4]) == "-18.0"
        picture = screen.query_one("#sample-spectrogram").render()
        colours = {span.style.bgcolor for span in picture.spans if getattr(span.style, "bgcolor", None)}  # type: ignore[union-attr]
        assert len(colours) >= 5  # a dB scale, not one colour
        await pilot.press("enter")
        expected = str(run_dir / "samples" / "step_20" / f"{SLUGS[0]}.flac")
        message = f"no audio player found (ffplay, paplay, aplay, afplay): copy {expected}"
        await wait_until(pilot, lambda: any(n.message == message for n in app._notifications), 5.0, "the fallback")
        await pilot.press("down", "down")  # step 10: rendered before spectrograms were stored
        lines = spectrogram_text(app)
        assert lines[0].strip() == "no spectrogram (rendered by an older version)"
        assert lines[1].strip() == "step 10 · seed 42 · 2.0 s · loudness n/a"
        assert str(table.get_row_at(4)[4]) == "n/a"


def spectrogram_text(app) -> list[str]:
    """The lines of the screen the spectrogram widget covers."""
    widget = app.screen.query_one("#sample-spectrogram")
    top, height = widget.region.y, widget.region.height
    return screen_text(app).splitlines()[top : top + height]


@pytest.mark.integration
async def test_listen_starts_the_player_on_path_with_the_highlighted_file(build_app, ui_settings, tmp_path, monkeypatch) -> None:
    run_dir = make_run_dir(Path(ui_settings.output_root), "demo-lora")
    add_samples(run_dir)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.txt"
    player = bin_dir / "paplay"  # not the first of the list: ffplay is missing from this PATH
    player.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')  # printf: a builtin (PATH holds only this)
    player.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("PULSE_SERVER", "unix:/run/pulse/native")  # paplay has a server to talk to
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.query_one("#samples").display, 10.0, "the Samples table")
        screen.query_one("#samples-table", DataTable).move_cursor(row=3)
        screen.query_one("#runs-table", DataTable).focus()
        await pilot.press("l")
        await wait_until(pilot, lambda: record.exists() and record.read_text().endswith("\n"), 10.0, "the player's argv")
    assert record.read_text().splitlines() == [str(run_dir / "samples" / "step_20" / f"{SLUGS[1]}.flac")]


async def test_runs_without_samples_hide_the_table_and_the_key(build_app, ui_settings) -> None:
    make_run_dir(Path(ui_settings.output_root), "demo-lora")
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: bool(screen.runs), 10.0, "the scan")
        await pilot.pause()
        assert not screen.query_one("#samples").display
        assert "Listen" not in footer_keys(app)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS always has an audio output (afplay)")
async def test_a_bare_machine_no_colour_no_audio_output_shades_and_says_which_file_to_copy(
    build_app, ui_settings, tmp_path, monkeypatch
) -> None:
    """A server over ssh: NO_COLOR set, a player on PATH but no sound device or sound server."""
    from engine import samples_index

    monkeypatch.setenv("NO_COLOR", "1")
    run_dir = make_run_dir(Path(ui_settings.output_root), "demo-lora")
    add_samples(run_dir)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.txt"
    player = bin_dir / "paplay"
    player.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    player.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("PULSE_SERVER", raising=False)
    (tmp_path / "runtime").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))  # no pulse/native, no pipewire-0
    monkeypatch.setattr(samples_index, "DEV_SND", str(tmp_path / "no-dev-snd"))
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.query_one("#samples").display, 10.0, "the Samples section")
        await pilot.pause()
        pictures = [line[:55] for line in spectrogram_text(app)]
        assert not any("▀" in line for line in pictures)
        assert set("".join(pictures)) <= set(" ░▒▓█") and {"▓", "█"} & set("".join(pictures))  # the loud glide shows
        screen.query_one("#samples-table", DataTable).focus()
        await pilot.press("enter")
        expected = str(run_dir / "samples" / "step_0" / f"{SLUGS[0]}.flac")
        message = (
            "paplay found but no PulseAudio or PipeWire server (no PULSE_SERVER, no socket in XDG_RUNTIME_DIR): copy " + expected
        )
        await wait_until(pilot, lambda: any(n.message == message for n in app._notifications), 5.0, "the message")
    assert not record.exists()  # nothing was started


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS always has an audio output (afplay)")
def test_audio_output_check(tmp_path) -> None:
    from engine.samples_index import audio_output_problem

    snd = tmp_path / "snd"
    snd.mkdir()
    (snd / "controlC0").touch()
    (snd / "pcmC0D0c").touch()  # a capture device only
    runtime = tmp_path / "runtime"
    (runtime / "pulse").mkdir(parents=True)
    quiet = {"XDG_RUNTIME_DIR": str(runtime)}
    assert "no audio output" in (audio_output_problem(["/bin/aplay"], quiet, str(snd)) or "")
    assert "no audio output" in (audio_output_problem(["/bin/ffplay"], quiet, str(snd)) or "")
    (snd / "pcmC0D0p").touch()
    assert audio_output_problem(["/bin/aplay"], quiet, str(snd)) is None
    assert audio_output_problem(["/bin/ffplay"], quiet, str(snd)) is None
    assert "SDL_AUDIODRIVER=dummy" in (
        audio_output_problem(["/bin/ffplay"], {**quiet, "SDL_AUDIODRIVER": "dummy"}, str(snd)) or ""
    )
    assert "no PulseAudio" in (audio_output_problem(["/bin/paplay"], quiet, str(snd)) or "")  # ALSA alone is not enough
    (runtime / "pulse" / "native").touch()
    assert audio_output_problem(["/bin/paplay"], quiet, str(tmp_path / "none")) is None
    assert audio_output_problem(["/bin/aplay"], quiet, str(tmp_path / "none")) is None  # ALSA's default goes to the server


def add_checkpoint(folder: Path, step: int, kind: str, *, resumable: bool) -> dict[str, bytes]:
    """An adapter folder as the trainer saves it (files only; their bytes stand for the tensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "adapter_model.safetensors": f"weights at {step}".encode(),
        "adapter_config.json": b'{"r": 4}',
        f"{folder.parents[1].name if resumable else folder.parent.name}_comfyui.safetensors": f"comfy at {step}".encode(),
        "config.json": b"{}",
        "checkpoint.json": json.dumps({"step": step, "epoch": 1, "kind": kind, "loss": 0.5}).encode(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if resumable:
        (folder / "training_state.pt").write_bytes(b"optimizer state")
    return files


async def test_keep_copies_the_samples_checkpoint_to_chosen_and_the_summary_names_it(build_app, ui_settings, capsys) -> None:
    from engine.cli.main import main as cli_main
    from engine.runs import summarize_run

    run_dir = make_run_dir(Path(ui_settings.output_root), "demo-lora")
    add_samples(run_dir, steps=(0, 10, 20, 30), slugs=SLUGS[:1])
    at_10 = add_checkpoint(run_dir / "checkpoints" / "step_10", 10, "periodic", resumable=True)
    at_20 = add_checkpoint(run_dir / "final", 20, "final", resumable=False)
    chosen = run_dir / "chosen"

    def chosen_files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in chosen.iterdir() if p.name != "chosen.json"} if chosen.is_dir() else {}

    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.query_one("#samples").display, 10.0, "the Samples section")
        assert "Keep" in footer_keys(app)
        table = screen.query_one("#samples-table", DataTable)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["base", "30", "20", "10"]
        table.focus()

        await pilot.press("down", "k")  # step 30: no checkpoint there
        message = f"Cannot keep {SLUGS[0]}: no checkpoint was saved at step 30; steps with one: 10, 20"
        await wait_until(pilot, lambda: any(n.message == message for n in app._notifications), 5.0, "the no-checkpoint line")
        assert not chosen.exists()

        await pilot.press("down", "k")  # step 20: final/
        await wait_until(pilot, lambda: chosen_files() == at_20, 10.0, "chosen/ = final/")
        kept = f"Kept step 20 (from final) -> {chosen}, with its ComfyUI file demo-lora_comfyui.safetensors"
        await wait_until(pilot, lambda: any(n.message == kept for n in app._notifications), 5.0, "the kept line")

        await pilot.press("down", "k")  # step 10: replaces the earlier choice only after a yes
        await wait_until(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog", 5.0, "the replace question")
        assert chosen_files() == at_20  # nothing replaced while it asks
        await pilot.press("y")
        await wait_until(pilot, lambda: chosen_files() == {k: v for k, v in at_10.items()}, 10.0, "chosen/ = step_10")
    assert "training_state.pt" not in chosen_files()  # the adapter, not the optimizer state
    assert not [p for p in chosen.parent.iterdir() if p.name.startswith(".chosen")]  # no temp left behind
    summary = summarize_run(str(run_dir))
    assert (summary.chosen_path, summary.chosen_step, summary.chosen_source) == (str(chosen), 10, "checkpoints/step_10")
    assert f"chosen by ear: {chosen} (step 10, copied from checkpoints/step_10)" in run_detail(summary).splitlines()
    assert cli_main(["runs", str(run_dir)]) == 0
    assert f"{chosen} (chosen by ear: step 10, from checkpoints/step_10)" in capsys.readouterr().out
