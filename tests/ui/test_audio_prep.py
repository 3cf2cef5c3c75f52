"""The Dataset screen's audio -> tensors tab, through the real app factory.

The audio folder is real (WAV files written with the standard library, sidecars, a duplicate and an
empty file) and is scanned by the real dataset builder in its child interpreter. The engine here is the
scripted fake: these tests are about what the screen shows and sends; tests/ui/test_real_engine.py runs
the same flow against the real engine process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngineClient
from textual.widgets import DataTable, Input
from ui_helpers import screen_text, wait_until, write_song_folder

from engine import prepconfig as pcfg
from engine import protocol as p
from sidestep_tui.engine_client import EngineHandshakeError
from sidestep_tui.widgets.audio_prep import DONE, FAILED, IDLE, RUNNING, STOPPED, AudioPrep, check_tensor_dir, default_tensor_dir

MODEL = "acestep-v15-base"
scans = pytest.mark.integration  # the audio scan runs the dataset builder in a child interpreter


@pytest.fixture
def songs(tmp_path: Path) -> Path:
    return write_song_folder(tmp_path / "songs")


@pytest.fixture
def ckpt_root(tmp_path: Path) -> Path:
    """A checkpoint root with what preprocessing needs beside the model (discovery reads only these)."""
    root = tmp_path / "ckpt-full"
    (root / MODEL).mkdir(parents=True)
    (root / MODEL / "config.json").write_text(json.dumps({"model_type": "acestep", "hidden_size": 2048, "num_hidden_layers": 24}))
    (root / MODEL / "model.safetensors").write_bytes(b"\0" * 64)
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    (root / "Qwen3-Embedding-0.6B").mkdir()
    (root / "silence_latent.pt").write_bytes(b"\0")
    return root


def _events(run_id: str, out: str, stage: str) -> list[Any]:
    """The events a real job emits for the song folder, one stage at a time."""
    seq = {"scan": 0, "pass1": 10, "pass2": 20, "done": 30}[stage]

    def env() -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"run_id": run_id, "seq": seq, "ts": 1000.0 + seq}

    def progress(file: str, status: str, message: str, index: int, elapsed: float, audio: float = 0.0) -> Any:
        return p.PreprocessProgress(
            **env(),
            stage=stage,
            index=index,
            total=3,
            file=file,
            status=status,
            message=message,
            audio_seconds=audio,
            elapsed_s=elapsed,
        )

    if stage == "scan":
        return [
            p.PhaseChanged(**env(), phase="preprocessing", detail=out),
            progress("", "ok", "3 files, 0.1 min of audio (crop 2 s), 1 unreadable", 0, 0.1, 3.0),
            progress("empty.wav", "failed", "empty file (0 bytes)", 0, 0.1),
            progress("anthem_copy.wav", "skipped", "same audio as anthem.wav; left out", 0, 0.1),
        ]
    if stage == "pass1":
        return [
            progress("anthem.wav", "ok", "25 frames, 1.0 s", 1, 2.1, 1.0),
            progress("sub/ballad.wav", "ok", "38 frames, 1.5 s", 2, 3.1, 1.5),
        ]
    if stage == "pass2":
        return [
            progress("untitled_take.wav", "failed", "VAE produced NaN latents", 3, 3.6),
            progress("anthem.wav", "ok", "25 frames, 769 condition tokens", 1, 4.0),
            progress("sub/ballad.wav", "ok", "38 frames, 769 condition tokens", 2, 4.2),
        ]
    return [
        progress("", "ok", f"done: 2 written, 0 already done, 2 failed of 3 in 4.3 s -> {out}", 3, 4.3, 2.5),
        p.RunFinished(
            **env(),
            status="completed",
            steps=2,
            epochs=0,
            final_loss=float("nan"),
            best_loss=float("nan"),
            adapter_path=out,
            wall_s=4.3,
        ),
    ]


def _app(build_app, ckpt: Path, fake: FakeEngineClient | None = None, **kwargs: Any):
    kwargs.setdefault("draft", {"checkpoint_dir": str(ckpt), "model_variant": MODEL})
    factory = (lambda _log: fake) if fake is not None else (lambda _log: pytest.fail("must not start an engine"))
    return build_app(None, client_factory=factory, initial_mode="dataset", **kwargs)


async def _open_audio_tab(pilot: Any, songs: Path) -> AudioPrep:
    await pilot.press("ctrl+t")
    prep = pilot.app.screen.query_one(AudioPrep)
    prep.audio_field.input.value = str(songs)
    await wait_until(pilot, lambda: prep.report is not None and prep._report_path == str(songs), 30, "the audio scan")
    return prep


def _cells(prep: AudioPrep) -> dict[str, tuple[str, ...]]:
    table = prep.query_one("#prep-files", DataTable)
    return {str(row.key.value): tuple(str(c) for c in table.get_row(row.key)) for row in table.ordered_rows}


def _notes(app: Any) -> str:
    """Every notification shown so far, one per line (toasts wrap on screen)."""
    return "\n".join(str(n.message) for n in app._notifications)


def _footer_keys(app: Any) -> set[str]:
    return {b.binding.description for b in app.screen.active_bindings.values() if b.enabled and b.binding.show}


async def test_the_audio_tab_is_built_when_first_shown_even_by_a_click(build_app, ckpt_root: Path) -> None:
    """The Dataset screen's first open composes no AudioPrep (most visits never open that tab); a
    click on the tab, not only Ctrl+T, builds it and its keys."""
    app = _app(build_app, ckpt_root)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert not app.screen.query(AudioPrep)
        await pilot.click("#--content-tab-tab-audio")
        await wait_until(pilot, lambda: bool(app.screen.query("#audio-path")), 5, "the audio tab's widgets")
        assert len(app.screen.query(AudioPrep)) == 1
        await wait_until(pilot, lambda: "Preprocess" in _footer_keys(app), 5, "the audio tab's Ctrl+S")
        await pilot.press("ctrl+t", "ctrl+t")  # away and back: the same one, not a second
        assert len(app.screen.query(AudioPrep)) == 1 and app.focused is app.screen.prep.audio_field.input


@scans
async def test_the_builder_report_lists_every_file_and_problem(build_app, ckpt_root: Path, songs: Path) -> None:
    app = _app(build_app, ckpt_root)
    async with app.run_test(size=(120, 40)) as pilot:
        prep = await _open_audio_tab(pilot, songs)
        rows = _cells(prep)
        assert set(rows) == {"anthem.wav", "sub/ballad.wav", "untitled_take.wav", "empty.wav", "anthem_copy.wav"}
        assert rows["anthem.wav"][2:] == ("key: value", "ready")
        assert rows["sub/ballad.wav"][1:] == ("1.5 s", ".caption/.lyrics", "ready")
        assert rows["untitled_take.wav"][3].startswith("! no sidecar")
        assert rows["empty.wav"][3].startswith("✗ unreadable, left out:")
        assert rows["anthem_copy.wav"][3] == "= same audio as anthem.wav, left out"
        text = screen_text(app)
        assert "3 audio files · 3.0 s of audio · 2 with sidecars · 1 without" in text
        assert "1 unreadable" in text and "1 duplicate" in text
        assert prep.output_field.value == str(songs) + "_tensors"
        assert "Preprocess" in _footer_keys(app) and "Use dataset" not in _footer_keys(app)

        from sidestep_tui.screens.screen_commands import ScreenActions

        titles = [str(hit.text) async for hit in ScreenActions(app.screen).discover()]
        assert titles == [
            "Dataset: Preprocess",
            "Dataset: Tensors/Audio",
            "Dataset: Rescan",
            "Dataset: Tags",
            "Dataset: Analyze audio",
        ]  # only what applies now


@scans
async def test_bad_input_is_refused_with_one_line_and_nothing_starts(
    build_app, ckpt_root: Path, songs: Path, tmp_path: Path
) -> None:
    app = _app(build_app, ckpt_root, draft={})
    async with app.run_test(size=(120, 40)) as pilot:
        prep = await _open_audio_tab(pilot, songs)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "Choose a model first" in _notes(app)

        app.draft.update(checkpoint_dir=str(ckpt_root), model_variant=MODEL)
        prep.option_row("genre_ratio").widget.value = "150"
        prep.option_row("normalize").widget.value = "lufs"
        prep.option_row("target_lufs").widget.value = "loud"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert prep.option_row("genre_ratio").has_class("-invalid") and prep.option_row("target_lufs").has_class("-invalid")
        assert "target_lufs (--target-lufs): expected a number, got 'loud' (and 1 more, marked above)" in _notes(app)

        prep.option_row("genre_ratio").widget.value = "25"
        prep.option_row("target_lufs").widget.value = "-16"
        (ckpt_root / "vae" / "config.json").unlink()
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "lacks vae/" in _notes(app)

        (tmp_path / "a-file").write_text("x")
        prep.output_field.input.value = str(tmp_path / "a-file")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "not a folder" in _notes(app)
        assert prep.state == IDLE and app.session.client is None  # nothing was started, nothing written
        assert not Path(str(songs) + "_tensors").exists()


@scans
async def test_preprocessing_shows_each_file_then_goes_to_setup(build_app, ckpt_root: Path, songs: Path) -> None:
    sent: list[Any] = []

    def on_send(cmd: Any) -> list[Any]:
        sent.append(cmd)
        if isinstance(cmd, p.StartPreprocess):
            return _events(cmd.run_id, pcfg.from_json(cmd.config_json).output_dir, "scan")
        return []

    fake = FakeEngineClient(on_send=on_send)
    app = _app(build_app, ckpt_root, fake)
    async with app.run_test(size=(120, 40)) as pilot:
        prep = await _open_audio_tab(pilot, songs)
        prep.option_row("tag").widget.value = "mytag"
        prep.option_row("normalize").widget.value = "lufs"
        assert prep.option_row("conditioning").widget.value == "inference"  # the default, as at inference
        prep.option_row("conditioning").widget.value = "legacy"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: prep.state == RUNNING, 5, "the job to start")
        assert type(app.screen).__name__ == "DatasetScreen"  # progress is shown here, not on the Monitor

        (start,) = [c for c in sent if isinstance(c, p.StartPreprocess)]
        config = pcfg.from_json(start.config_json)
        out = Path(config.output_dir)
        assert (config.audio_dir, config.tag, config.normalize, config.target_lufs) == (str(songs), "mytag", "lufs", -14.0)
        assert config.conditioning == "legacy"
        assert (config.checkpoint_dir, config.model_variant) == (str(ckpt_root), MODEL)
        assert out == Path(str(songs) + "_tensors") and start.run_id == prep.job_id
        assert app.settings.last_audio_dir == str(songs)
        assert "Stop" in _footer_keys(app) and "Preprocess" not in _footer_keys(app)
        assert all(w.disabled for w in prep.query(Input))  # settings are locked while it runs

        await wait_until(pilot, lambda: "loading the VAE" in screen_text(app), 5, "the scan to show")
        fake.push(*_events(start.run_id, str(out), "pass1"))
        await wait_until(pilot, lambda: "… pass 1 ✓ 25 frames" in _cells(prep)["anthem.wav"][3], 5, "pass 1 rows")
        text = screen_text(app)
        assert "pass 1 (audio, text) · 2/3" in text and "s of audio/s" in text and "ETA" in text
        assert _cells(prep)["empty.wav"][3] == "✗ empty file (0 bytes)"

        fake.push(*_events(start.run_id, str(out), "pass2"))
        await wait_until(pilot, lambda: _cells(prep)["sub/ballad.wav"][3].startswith("✓ done"), 5, "pass 2 rows")
        assert _cells(prep)["untitled_take.wav"][3] == "✗ VAE produced NaN latents"
        out.mkdir()
        for name in ("anthem.pt", "sub__ballad.pt"):
            (out / name).write_bytes(b"\0")
        fake.push(*_events(start.run_id, str(out), "done"))
        await wait_until(pilot, lambda: prep.state == DONE, 5, "the job to finish")
        text = screen_text(app)
        assert "✓ done: 2 written" in text and "train on these 2 tensor files" in text
        assert "Use tensors" in _footer_keys(app)

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "SetupScreen", 5, "Setup")
        assert app.draft["dataset_dir"] == str(out)
        assert app.settings.last_dataset_dir == str(out)


@scans
async def test_stop_keeps_the_form_and_a_new_start_resumes(build_app, ckpt_root: Path, songs: Path) -> None:
    jobs: list[str] = []

    def on_send(cmd: Any) -> list[Any]:
        if isinstance(cmd, p.StartPreprocess):
            jobs.append(cmd.run_id)
            return _events(cmd.run_id, str(songs) + "_tensors", "scan")
        if isinstance(cmd, p.StopRun):
            return [
                p.RunFinished(
                    run_id=jobs[-1],
                    seq=50,
                    ts=1050.0,
                    status="stopped",
                    steps=0,
                    epochs=0,
                    final_loss=float("nan"),
                    best_loss=float("nan"),
                    adapter_path=str(songs) + "_tensors",
                    wall_s=1.0,
                )
            ]
        return []

    fake = FakeEngineClient(on_send=on_send)
    app = _app(build_app, ckpt_root, fake)
    async with app.run_test(size=(80, 24)) as pilot:
        prep = await _open_audio_tab(pilot, songs)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: prep.state == RUNNING, 5, "the job to start")
        await wait_until(pilot, lambda: _cells(prep)["anthem_copy.wav"][3].startswith("↷"), 5, "the job's scan")
        await pilot.press("ctrl+x")
        await wait_until(pilot, lambda: prep.state == STOPPED, 5, "the stop")
        assert any(isinstance(c, p.StopRun) for c in fake.sent)
        assert "preprocess again (it resumes where it stopped)" in screen_text(app)
        assert not any(w.disabled for w in prep.query(Input))
        assert "Preprocess" in _footer_keys(app) and "Stop" not in _footer_keys(app)

        # A changed setting makes the stopped job's result stale: the pane is ready for a new job.
        prep.option_row("tag").widget.value = "new"
        await wait_until(pilot, lambda: prep.state == IDLE, 5, "idle after an edit")
        assert "Ctrl+S: preprocess into" in screen_text(app)
        assert _cells(prep)["anthem_copy.wav"][3] == "= same audio as anthem.wav, left out"  # the job's "↷ ..." went with it


@scans
@pytest.mark.parametrize("how", ["no handshake", "died"])
async def test_an_engine_that_never_takes_the_job_fails_it_with_the_reason(
    build_app, ckpt_root: Path, songs: Path, how: str
) -> None:
    """The pane decides from the session's typed link (start_failed / died), not from banner text."""

    class NoHandshake(FakeEngineClient):
        def start(self) -> None:
            raise EngineHandshakeError("the engine did not start within 120 s (log: x.log)")

    fake = NoHandshake() if how == "no handshake" else FakeEngineClient()
    app = _app(build_app, ckpt_root, fake)
    async with app.run_test(size=(120, 40)) as pilot:
        prep = await _open_audio_tab(pilot, songs)
        await pilot.press("ctrl+s")
        if how == "died":
            await wait_until(pilot, lambda: bool(fake.sent), 5, "the job to be sent")
            fake.die(-9)
        await wait_until(pilot, lambda: prep.state == FAILED, 5, "the job to fail")
        reason = (
            "Engine did not start: the engine did not start within 120 s (log: x.log)"
            if how == "no handshake"
            else "Engine died: killed (likely the OOM killer)"
        )
        assert prep.result_line == f"✗ preprocessing did not start: {reason}"
        assert app.session.link == ("start_failed" if how == "no handshake" else "died")
        assert "Preprocess" in _footer_keys(app) and not any(w.disabled for w in prep.query(Input))


def test_tensor_folder_checks(tmp_path: Path) -> None:
    assert default_tensor_dir("songs/") == "songs_tensors" and default_tensor_dir("/data/a") == "/data/a_tensors"
    assert check_tensor_dir(str(tmp_path / "new")).ok is True
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.pt").write_bytes(b"")
    (tmp_path / "old" / "b.tmp.pt").write_bytes(b"")
    check = check_tensor_dir(str(tmp_path / "old"))
    assert check.ok is None and "1 finished .pt file" in check.message
    (tmp_path / "file").write_text("")
    assert check_tensor_dir(str(tmp_path / "file")).ok is False
    assert check_tensor_dir("").ok is False
