"""Layout snapshots of the monitor and Runs screens at 80x24 and 160x48, plus the states that matter
(paused, failed dialog, engine-died banner, quit dialog). The form screens (first run, Models, Dataset,
Setup) are in test_forms_snapshots.py. Behaviour is tested in tests/ui; these catch layout drift."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngineClient, recorded, scripted_run
from ui_helpers import FakeClock, drain, make_run_dir, wait_until

from engine import protocol as p
from sidestep_tui.app import make_app
from sidestep_tui.screens import runs as runs_screen
from sidestep_tui.settings import Settings

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]
SHOWN_ROOT = "/home/user/sidestep"
"""How the Runs screen spells the test's own folder (it prints absolute paths, and ``tmp_path`` differs on
every machine and every run)."""


def build(root: Path, client: Any = None, mode: str = "monitor", **kwargs: Any):
    (root / "ckpt").mkdir(exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    settings = kwargs.pop("settings", Settings(checkpoint_root=str(root / "ckpt"), output_root=str(root / "runs")))
    app = make_app(client=client, settings=settings, initial_mode=mode, clock=FakeClock(), log_dir=str(root / "logs"), **kwargs)
    app.animation_level = "none"
    return app


def after_drain(fake: FakeEngineClient, until=lambda app: True):
    """Wait (failing on timeout) until the app has taken every event of ``fake`` and ``until`` holds, then
    redraw the monitor so its timers' next tick is in the picture."""

    async def run_before(pilot) -> None:
        await drain(pilot, fake, until=lambda: until(pilot.app), timeout=15.0)
        screen = pilot.app.screen
        target = screen if hasattr(screen, "redraw") else pilot.app.screen_stack[-2] if len(pilot.app.screen_stack) > 1 else None
        if target is not None and hasattr(target, "redraw"):
            target.redraw(True)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_monitor_live_gpu_run(snap_compare, tmp_path, size) -> None:
    fake = FakeEngineClient(scripted_run(steps=60, total_steps=200, finish=None, gpu=True))
    assert snap_compare(build(tmp_path, fake), terminal_size=size, run_before=after_drain(fake))


@pytest.mark.parametrize("size", SIZES)
def test_monitor_recorded_cpu_demo_run(snap_compare, tmp_path, size) -> None:
    fake = FakeEngineClient(recorded())
    assert snap_compare(build(tmp_path, fake), terminal_size=size, run_before=after_drain(fake))


def test_monitor_paused(snap_compare, tmp_path) -> None:
    events = [*scripted_run(steps=20, finish=None), p.RunPaused(run_id="run-1", seq=999, ts=1_700_000_100.0, step=20)]
    fake = FakeEngineClient(events)
    assert snap_compare(build(tmp_path, fake), terminal_size=(80, 24), run_before=after_drain(fake))


def test_failed_run_dialog(snap_compare, tmp_path) -> None:
    fake = FakeEngineClient(scripted_run(steps=12, finish="failed", gpu=True))
    app = build(tmp_path, fake)
    assert snap_compare(
        app, terminal_size=(80, 24), run_before=after_drain(fake, lambda a: type(a.screen).__name__ == "ErrorDialog")
    )


def test_engine_died_banner(snap_compare, tmp_path) -> None:
    fake = FakeEngineClient(scripted_run(steps=12, finish=None, gpu=True))

    async def run_before(pilot) -> None:
        await after_drain(fake)(pilot)
        fake.die(-9)
        await wait_until(pilot, lambda: bool(pilot.app.engine_banner), 10.0, "the engine-died banner")
        pilot.app.clear_notifications()
        pilot.app.screen.redraw(True)
        await pilot.pause()

    assert snap_compare(build(tmp_path, fake), terminal_size=(160, 48), run_before=run_before)


def test_quit_dialog(snap_compare, tmp_path) -> None:
    fake = FakeEngineClient(scripted_run(steps=12, finish=None))
    assert snap_compare(build(tmp_path, fake), terminal_size=(80, 24), press=["ctrl+q"], run_before=after_drain(fake))


@pytest.fixture
def shown_runs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real output root under ``tmp_path`` that the Runs screen shows as ``SHOWN_ROOT/runs``: settings name
    the shown path, and the screen's scan reads the real folders and reports their paths as shown. Only
    the spelling of the prefix changes; every summary is read from the files."""
    real = tmp_path / "runs"
    real.mkdir()
    scan = runs_screen.scan_runs

    def shown(path: str | None) -> str | None:
        return SHOWN_ROOT + path[len(str(tmp_path)) :] if path and Path(path).is_relative_to(tmp_path) else path

    def scan_shown(root: str) -> list[Any]:
        assert root.startswith(SHOWN_ROOT), root
        found = scan(str(tmp_path) + root[len(SHOWN_ROOT) :])
        return [dataclasses.replace(r, path=shown(r.path), adapter_path=shown(r.adapter_path)) for r in found]

    monkeypatch.setattr(runs_screen, "scan_runs", scan_shown)
    return real


@pytest.mark.parametrize("size", SIZES)
def test_runs_screen(snap_compare, tmp_path, shown_runs_root, size) -> None:
    make_run_dir(shown_runs_root, "demo-lora-stopped")
    make_run_dir(shown_runs_root, "demo-lokr", config={"adapter_type": "lokr", "run_name": "demo-lokr"})
    settings = Settings(checkpoint_root=str(tmp_path / "ckpt"), output_root=f"{SHOWN_ROOT}/runs")

    async def run_before(pilot) -> None:
        await wait_until(pilot, lambda: bool(getattr(pilot.app.screen, "runs", None)), 10.0, "the Runs screen's scan")

    assert snap_compare(build(tmp_path, mode="runs", settings=settings), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_runs_screen_with_samples(snap_compare, tmp_path, shown_runs_root, monkeypatch, size) -> None:
    """The Samples section: the table (LUFS column) and the highlighted sample's spectrogram in colour."""
    from test_runs_samples import add_samples

    monkeypatch.setenv("COLORTERM", "truecolor")  # colour cells whatever the machine's terminal says
    monkeypatch.delenv("NO_COLOR", raising=False)
    for name in ("demo-lora-stopped", "demo-lokr"):  # whichever is highlighted first shows its samples
        add_samples(make_run_dir(shown_runs_root, name, config={"run_name": name}), old_steps=(10,))
    scan = runs_screen.scan_samples
    monkeypatch.setattr(runs_screen, "scan_samples", lambda path: scan(str(tmp_path) + path[len(SHOWN_ROOT) :]))
    settings = Settings(checkpoint_root=str(tmp_path / "ckpt"), output_root=f"{SHOWN_ROOT}/runs")

    async def run_before(pilot) -> None:
        await wait_until(pilot, lambda: pilot.app.screen.query_one("#samples").display, 10.0, "the Samples table")
        pilot.app.screen.query_one("#samples-table").move_cursor(row=2)  # step 20's first prompt
        await pilot.pause()

    assert snap_compare(build(tmp_path, mode="runs", settings=settings), terminal_size=size, run_before=run_before)


def test_monitor_with_samples(snap_compare, tmp_path, monkeypatch) -> None:
    """The Monitor's Samples panel at 160x48 (hidden at 80x24: tests/ui/test_monitor_samples.py)."""
    from test_monitor_samples import sample_events
    from test_runs_samples import add_samples

    from sidestep_tui.screens import monitor

    monkeypatch.setenv("COLORTERM", "truecolor")
    monkeypatch.delenv("NO_COLOR", raising=False)
    shown = Path(SHOWN_ROOT) / "runs" / "demo"
    add_samples(tmp_path / "runs" / "demo", steps=(0, 10, 20), old_steps=(10,))
    scan = monitor.scan_samples
    monkeypatch.setattr(monitor, "scan_samples", lambda path: scan(str(tmp_path) + path[len(SHOWN_ROOT) :]))
    events = scripted_run(run_dir=str(shown), steps=60, total_steps=200, finish=None, gpu=True)
    fake = FakeEngineClient(events + sample_events(shown, (0, 10, 20), events[-1].seq + 1, events[-1].ts))

    def panel_filled(app) -> bool:
        return app.screen.query_one("#samples-table").row_count == 6

    assert snap_compare(build(tmp_path, fake), terminal_size=(160, 48), run_before=after_drain(fake, until=panel_filled))
