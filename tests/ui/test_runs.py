"""Runs screen (scan, replay, resume) and attaching to a run folder (AttachClient), with recorded events."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_engine import FakeEngineClient, scripted_run
from ui_helpers import drain, footer_keys, make_run_dir, screen_text, wait_until

from engine import protocol as p
from sidestep_tui import messages as m
from sidestep_tui.dialogs.confirm import ConfirmDialog
from sidestep_tui.engine_client import AttachClient, ReadOnlyClientError
from sidestep_tui.screens.monitor import MonitorScreen
from sidestep_tui.screens.runs import RunsScreen

CONTROLS = {"Stop (saves)", "Save", "Pause", "Resume"}


@pytest.fixture
def sigterms() -> Iterator[list[int]]:
    """The attach tests name this very process as the run's engine (a live pid on this host, started
    before the run): SIGTERMs sent to it are recorded here instead of ending the test session."""
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def cut_at_step(run_dir: Path, step: int) -> list[str]:
    """Keep events.jsonl up to the StepMetrics of ``step`` (a run still training); returns the rest."""
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"StepMetrics"' in line and f'"step":{step},' in line) + 1
    (run_dir / "events.jsonl").write_text("".join(lines[:cut]))
    return lines[cut:]


def name_this_process_as_engine(run_dir: Path) -> None:
    (run_dir / "engine.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))


async def test_runs_lists_opens_a_replay_and_goes_back(build_app, ui_settings) -> None:
    make_run_dir(Path(ui_settings.output_root), "demo-lora")
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_until(pilot, lambda: bool(screen.runs))
        (run,) = screen.runs
        assert run.status == "stopped" and run.steps == 33
        text = screen_text(app)
        assert "demo-lora" in text and "stopped" in text and "33/40" in text
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen))
        replay = app.screen
        assert replay.replay and replay.state.step == 33 and replay.state.finished_status == "stopped"
        await pilot.press("s")  # no controls on a replay
        await pilot.pause()
        assert isinstance(app.screen, MonitorScreen)
        await pilot.press("backspace")  # the second key for Esc
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_resume_a_stopped_run_starts_it_from_auto(build_app, ui_settings) -> None:
    run_dir = make_run_dir(Path(ui_settings.output_root), "demo-lora")
    started: list[m.StartRequested] = []
    app = build_app(None, initial_mode="runs")
    async with app.run_test(
        size=(160, 40), message_hook=lambda msg: started.append(msg) if isinstance(msg, m.StartRequested) else None
    ) as pilot:
        app.session.client_factory = lambda _log: __import__("fake_engine").FakeEngineClient()
        await wait_until(pilot, lambda: bool(app.screen.runs))
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await wait_until(pilot, lambda: bool(started))
    config = json.loads(started[0].config_json)
    assert config["resume_from"] == "auto" and config["output_dir"] == str(run_dir)


async def test_attach_follows_a_growing_events_file(build_app, tmp_path, sigterms) -> None:
    run_dir = make_run_dir(tmp_path, "live")
    rest = cut_at_step(run_dir, 10)
    name_this_process_as_engine(run_dir)
    client = AttachClient(str(run_dir))
    app = build_app(client)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.run_state.step == 10)
        assert app.run_state.active
        assert "Stop (saves)" in footer_keys(app) and not {"Save", "Pause"} & footer_keys(app)  # attached: only stop
        await pilot.press("p", "c")
        await pilot.pause()
        with open(run_dir / "events.jsonl", "a") as fh:
            fh.write("".join(rest))
        await wait_until(pilot, lambda: app.run_state.finished_status == "stopped")
        assert app.run_state.step == 33
    with pytest.raises(ReadOnlyClientError):
        client.send(p.PauseRun())
    assert sigterms == []  # nothing reached the engine


async def test_attach_from_runs_then_stop_sends_sigterm_to_the_engine(build_app, ui_settings, sigterms) -> None:
    """Runs -> a live run -> Attach -> Stop: the engine named in engine.json gets SIGTERM (it then saves
    and stops, tests/integration/test_engine_process.py::test_sigterm_stops_and_saves)."""
    run_dir = make_run_dir(Path(ui_settings.output_root), "live")
    cut_at_step(run_dir, 10)
    name_this_process_as_engine(run_dir)
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: bool(getattr(app.screen, "runs", None)), what="the Runs list")
        assert app.screen.runs[0].status == "running"
        await pilot.press("a")
        await wait_until(
            pilot, lambda: isinstance(app.screen, MonitorScreen) and app.run_state.step == 10, what="the attached monitor"
        )
        assert isinstance(app.session.client, AttachClient) and app.session.client.run_dir == str(run_dir)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="the stop confirmation")
        assert sigterms == []
        await pilot.press("y")
        await wait_until(pilot, lambda: bool(sigterms), what="SIGTERM to reach the engine")
    assert sigterms == [signal.SIGTERM]


async def test_a_replay_never_controls_the_live_engine(build_app, ui_settings) -> None:
    """A run whose log ends mid-training, opened (replayed, not attached) while another run trains in this
    app's engine: the replay offers no control, and its keys never reach the live engine."""
    run_dir = make_run_dir(Path(ui_settings.output_root), "unfinished")
    cut_at_step(run_dir, 10)
    fake = FakeEngineClient(scripted_run(steps=5, finish=None))
    app = build_app(fake, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        await drain(pilot, fake, until=lambda: app.run_state.active)
        await wait_until(pilot, lambda: bool(getattr(app.screen, "runs", None)), what="the Runs list")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.replay, what="the replay")
        assert app.screen.state.active and app.screen.state.step == 10  # the replayed run had not finished
        assert CONTROLS.isdisjoint(footer_keys(app))
        await pilot.press("p", "c", "s")
        await pilot.pause()
        assert fake.sent == [] and isinstance(app.screen, MonitorScreen) and app.screen.replay


async def test_attach_tolerates_a_torn_last_line(tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    source = Path(__file__).resolve().parents[1] / "data" / "events" / "demo_run.jsonl"
    lines = source.read_text().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    client = AttachClient(str(run_dir), sleep=lambda _s: None)
    client.start()
    first = client.poll(0.0)
    assert len(first) == 5 and not client.is_alive
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write(lines[5][20:])
    assert len(client.poll(0.0)) == 1 and client.parse_errors == 0


def test_plain_attach_and_the_tui_attach_read_a_damaged_log_alike(tmp_path, capsys) -> None:
    """One tailer (engine.tailer): a bad complete line is skipped, counted and reported once by both; a torn
    last line is never an error; both end on the run's own last word."""
    from engine.cli.main import main
    from engine.summary import fold_all
    from sidestep_tui.state import RunState, apply_all

    source = Path(__file__).resolve().parents[1] / "data" / "events" / "demo_run.jsonl"
    lines = source.read_text().splitlines(keepends=True)
    damaged = [*lines[:40], "{garbage\n", *lines[41:90], "\xff not an event\n", *lines[90:], lines[1][:25]]
    run_dir = tmp_path / "damaged"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("".join(damaged))
    good = [p.loads(line) for line in lines[:40] + lines[41:]]

    assert main(["attach", str(run_dir), "--plain"]) == 0
    out, err = capsys.readouterr()
    assert err.count("events.jsonl:41: not an event") == 1 and err.count("warning:") == 2 and "2 lines" in err
    assert out.rstrip().splitlines()[-2].startswith("run stopped: step 33/40")

    client = AttachClient(str(run_dir), sleep=lambda _s: None)
    client.start()
    seen: list = []
    while batch := client.poll(0.0):
        seen.extend(batch)
    warnings = [e for e in seen if isinstance(e, p.LogRecord) and e.logger == "attach"]
    assert client.parse_errors == 2 and len(warnings) == 1 and "events.jsonl:41: not an event" in warnings[0].message
    assert [e for e in seen if e not in warnings] == good
    state = apply_all(RunState(), seen)
    assert dataclasses.replace(state.summary, events=0) == dataclasses.replace(fold_all(good), events=0)
    assert state.seq_gaps == 1  # the event on the lost line
    assert any(line.level == "warning" and line.message == warnings[0].message for line in state.log)  # shown once


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_export_from_runs_writes_the_comfyui_file(build_app, ui_settings, demo_paths, tmp_path) -> None:
    """A real demo run (trained by the real CLI, in this process); its automatic ComfyUI file is removed,
    then Export on the Runs screen writes it again through ``sidestep export`` (a child) and names it."""
    from engine.cli.main import main

    demo = demo_paths
    run_dir = Path(ui_settings.output_root) / "tiny"
    argv = ["train", "--plain", "--checkpoint-dir", demo["checkpoint_dir"]]
    argv += ["--model-variant", demo["model_variant"], "--dataset-dir", demo["dataset_dir"], "--output-dir", str(run_dir)]
    argv += ["--max-steps", "2", "--device", "cpu", "--num-workers", "0", "--rank", "4", "--alpha", "8"]
    assert main(argv) == 0
    comfy = run_dir / "final" / "tiny_comfyui.safetensors"
    assert comfy.is_file()  # written with the checkpoint
    comfy.unlink()
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: bool(screen.runs), what="the Runs list")
        assert "Export" in footer_keys(app) and screen.runs[0].comfyui_path is None
        await pilot.press("x")
        await wait_until(
            pilot, lambda: bool(screen.runs) and screen.runs[0].comfyui_path is not None, timeout=300, what="the export"
        )
        assert comfy.is_file() and screen.runs[0].comfyui_path == str(comfy)
        assert f"ComfyUI: {comfy}" in screen_text(app)
