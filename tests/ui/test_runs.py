"""Runs screen (scan, replay, resume) and attaching to a run folder (AttachClient), with recorded events."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from ui_helpers import make_run_dir, screen_text, wait_until

from engine import protocol as p
from sidestep_tui import messages as m
from sidestep_tui.dialogs.confirm import ConfirmDialog
from sidestep_tui.engine_client import AttachClient, ReadOnlyClientError
from sidestep_tui.screens.monitor import MonitorScreen
from sidestep_tui.screens.runs import RunsScreen


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
    async with app.run_test(size=(160, 40), message_hook=lambda msg: started.append(msg) if isinstance(msg, m.StartRequested) else None) as pilot:
        app.client_factory = lambda _log: __import__("fake_engine").FakeEngineClient()
        await wait_until(pilot, lambda: bool(app.screen.runs))
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await wait_until(pilot, lambda: bool(started))
    config = json.loads(started[0].config_json)
    assert config["resume_from"] == "auto" and config["output_dir"] == str(run_dir)


async def test_attach_follows_a_growing_events_file(build_app, tmp_path) -> None:
    source = Path(__file__).resolve().parents[1] / "data" / "events" / "demo_run.jsonl"
    lines = source.read_text().splitlines(keepends=True)
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    (run_dir / "engine.json").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": time.time()}))
    cut = next(i for i, line in enumerate(lines) if '"StepMetrics"' in line and '"step":10,' in line) + 1
    (run_dir / "events.jsonl").write_text("".join(lines[:cut]))
    client = AttachClient(str(run_dir))
    app = build_app(client)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.run_state.step == 10)
        assert app.run_state.active
        with open(run_dir / "events.jsonl", "a") as fh:
            fh.write("".join(lines[cut:]))
        await wait_until(pilot, lambda: app.run_state.finished_status == "stopped")
        assert app.run_state.step == 33
        await pilot.press("p")  # an attached run can only be stopped
        await pilot.pause()
    try:
        client.send(p.PauseRun())
    except ReadOnlyClientError:
        pass
    else:
        raise AssertionError("pause on an attached run must be refused")


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
    damaged = lines[:40] + ["{garbage\n"] + lines[41:90] + ["\xff not an event\n"] + lines[90:] + [lines[1][:25]]
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
