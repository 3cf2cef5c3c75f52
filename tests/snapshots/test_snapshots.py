"""Layout snapshots of the monitor and Runs screens at 80x24 and 160x48, plus the states that matter
(paused, failed dialog, engine-died banner, quit dialog). The form screens (first run, Models, Dataset,
Setup) are in test_forms_snapshots.py. Behaviour is tested in tests/ui; these catch layout drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngineClient, recorded, scripted_run
from ui_helpers import FakeClock, make_run_dir

from engine import protocol as p
from sidestep_tui.app import make_app
from sidestep_tui.settings import Settings

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


def build(root: Path, client: Any = None, mode: str = "monitor", **kwargs: Any):
    (root / "ckpt").mkdir(exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    settings = kwargs.pop("settings", Settings(checkpoint_root=str(root / "ckpt"), output_root=str(root / "runs")))
    app = make_app(client=client, settings=settings, initial_mode=mode, clock=FakeClock(), log_dir=str(root / "logs"), **kwargs)
    app.animation_level = "none"
    return app


def after_drain(fake: FakeEngineClient, until=lambda app: True):
    async def run_before(pilot) -> None:
        for _ in range(300):
            await pilot.pause(0.02)
            if fake.pending == 0 and until(pilot.app):
                break
        await pilot.pause(0.05)
        screen = pilot.app.screen
        target = screen if hasattr(screen, "redraw") else pilot.app.screen_stack[-2] if len(pilot.app.screen_stack) > 1 else None
        if target is not None and hasattr(target, "redraw"):
            target.redraw(True)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_monitor_live_gpu_run(snap_compare, fixed_root, size) -> None:
    fake = FakeEngineClient(scripted_run(steps=60, total_steps=200, finish=None, gpu=True))
    assert snap_compare(build(fixed_root, fake), terminal_size=size, run_before=after_drain(fake))


@pytest.mark.parametrize("size", SIZES)
def test_monitor_recorded_cpu_demo_run(snap_compare, fixed_root, size) -> None:
    fake = FakeEngineClient(recorded())
    assert snap_compare(build(fixed_root, fake), terminal_size=size, run_before=after_drain(fake))


def test_monitor_paused(snap_compare, fixed_root) -> None:
    events = scripted_run(steps=20, finish=None) + [p.RunPaused(run_id="run-1", seq=999, ts=1_700_000_100.0, step=20)]
    fake = FakeEngineClient(events)
    assert snap_compare(build(fixed_root, fake), terminal_size=(80, 24), run_before=after_drain(fake))


def test_failed_run_dialog(snap_compare, fixed_root) -> None:
    fake = FakeEngineClient(scripted_run(steps=12, finish="failed", gpu=True))
    app = build(fixed_root, fake)
    assert snap_compare(app, terminal_size=(80, 24), run_before=after_drain(fake, lambda a: type(a.screen).__name__ == "ErrorDialog"))


def test_engine_died_banner(snap_compare, fixed_root) -> None:
    fake = FakeEngineClient(scripted_run(steps=12, finish=None, gpu=True))

    async def run_before(pilot) -> None:
        await after_drain(fake)(pilot)
        fake.die(-9)
        for _ in range(200):
            await pilot.pause(0.02)
            if pilot.app.engine_banner:
                break
        pilot.app.clear_notifications()
        pilot.app.screen.redraw(True)
        await pilot.pause()

    assert snap_compare(build(fixed_root, fake), terminal_size=(160, 48), run_before=run_before)


def test_quit_dialog(snap_compare, fixed_root) -> None:
    fake = FakeEngineClient(scripted_run(steps=12, finish=None))
    assert snap_compare(build(fixed_root, fake), terminal_size=(80, 24), press=["ctrl+q"], run_before=after_drain(fake))


@pytest.mark.parametrize("size", SIZES)
def test_runs_screen(snap_compare, fixed_root, size) -> None:
    make_run_dir(fixed_root / "runs", "demo-lora-stopped")
    make_run_dir(fixed_root / "runs", "demo-lokr", config={"adapter_type": "lokr", "run_name": "demo-lokr"})

    async def run_before(pilot) -> None:
        for _ in range(200):
            await pilot.pause(0.02)
            if getattr(pilot.app.screen, "runs", None):
                break
        await pilot.pause()

    assert snap_compare(build(fixed_root, mode="runs"), terminal_size=size, run_before=run_before)
