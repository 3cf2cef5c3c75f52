"""The whole product through the real app and the real engine process, on the demo model:
first run -> model -> dataset -> setup (a validation error fixed in place) -> start -> the monitor shows
steps, loss, memory ("n/a" without a GPU) and a timestep histogram -> stop (saves) -> the checkpoint
is listed -> the run appears in Runs. (That the UI process never loads torch is checked in a clean
interpreter by tests/unit/test_ui_import_hygiene.py; pytest itself may have imported it here.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input
from ui_helpers import screen_text, wait_until

from sidestep_tui.app import make_app
from sidestep_tui.dialogs.confirm import ConfirmDialog
from sidestep_tui.screens.monitor import MonitorScreen
from sidestep_tui.screens.runs import RunsScreen
from sidestep_tui.settings import Settings
from sidestep_tui.widgets.checkpoint_list import CheckpointList

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def demo(demo_paths: dict[str, str]) -> dict[str, str]:
    """The session's demo model and dataset (tests/conftest.py), shared read-only: the run writes only
    under its own output root."""
    return demo_paths


async def settle(pilot: Any) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def type_into(pilot: Any, widget: Input, text: str) -> None:
    widget.focus()
    await pilot.pause()
    await pilot.press("end", "ctrl+u", *text)
    await pilot.pause()


async def test_first_run_to_runs_against_the_real_engine(demo: dict[str, str], tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    app = make_app(
        settings=Settings(),
        settings_path=str(tmp_path / "config" / "settings.json"),
        initial_mode="models",
        log_dir=str(tmp_path / "logs"),
        # Keep the demo quick and the timestep histogram early; the forms fill in everything else.
        draft={"num_workers": 0, "log_heavy_every": 2, "device": "cpu"},
    )
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        assert type(app.screen).__name__ == "FirstRunScreen"
        app.screen.query_one("#checkpoint-root Input", Input).value = demo["checkpoint_dir"]
        app.screen.query_one("#output-root Input", Input).value = str(runs_root)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(pilot)

        assert type(app.screen).__name__ == "ModelsScreen"
        app.screen.query_one(DataTable).focus()
        await pilot.press("enter")
        await settle(pilot)

        assert type(app.screen).__name__ == "DatasetScreen"
        app.screen.query_one("#dataset-path Input", Input).value = demo["dataset_dir"]
        await settle(pilot)
        await pilot.press("ctrl+s")
        await settle(pilot)

        assert type(app.screen).__name__ == "SetupScreen"
        form = app.screen.form
        await type_into(pilot, form.row("rank").widget, "0")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert app.session.client is None  # refused: rank 0 is out of range, nothing started
        await type_into(pilot, form.row("rank").widget, "4")
        await type_into(pilot, form.row("max_steps").widget, "500")
        await pilot.press("ctrl+s")

        # --- the real engine: spawn, handshake, load the demo model, train
        await wait_until(pilot, lambda: app.current_mode == "monitor", 10, "the monitor")
        assert isinstance(app.screen, MonitorScreen)
        await wait_until(
            pilot,
            lambda: app.run_state.step >= 3 and app.run_state.histogram is not None and bool(app.run_state.resources),
            240,
            "steps, a timestep histogram and a resource sample",
        )
        state = app.run_state
        assert state.active and state.loss is not None and state.history
        resource = state.resource
        assert resource is not None and resource.process_rss_mb is not None
        assert resource.gpu_used_mb is None and resource.allocated_mb is None  # CPU: n/a, not a fake zero
        app.screen.redraw(True)
        await pilot.pause()
        text = screen_text(app)
        assert "TRAINING" in text and f"/{state.total_steps}" in text and "loss" in text
        assert "expected logit-normal" in text and "n/a" in text

        # --- stop means save
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await wait_until(pilot, lambda: app.run_state.finished_status == "stopped", 180, "RunFinished(stopped)")
        stop = [c for c in app.run_state.checkpoints if c.kind == "stop"]
        assert stop and Path(stop[-1].path).is_dir()
        app.screen.redraw(True)
        await pilot.pause()
        table = app.screen.query_one(CheckpointList)
        assert any(str(table.get_row_at(i)[2]) == "stop" for i in range(table.row_count))
        # exit_code, not is_alive: is_alive turns False when the process is reaped, the exit code a moment later
        await wait_until(
            pilot, lambda: app.session.client is not None and app.session.client.exit_code is not None, 60, "the engine to exit"
        )
        assert not app.session.client.is_alive and app.session.client.exit_code == 0 and not app.engine_banner

        # --- the run is in Runs
        await pilot.press("f5")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and bool(app.screen.runs), 30, "the Runs list")
        (run,) = app.screen.runs
        assert run.status == "stopped" and run.steps == app.run_state.step and Path(run.path).parent == runs_root
