"""Leaving says where things are (issue 13): quitting after a finished run prints its adapter, as
"Leave running" prints the attach command; Stop takes the same key on the Monitor and in the quit dialog."""

from __future__ import annotations

import pytest
from fake_engine import FakeEngineClient, scripted_run
from ui_helpers import drain, wait_until

from engine import protocol as p
from sidestep_tui.dialogs.confirm import ConfirmDialog
from sidestep_tui.dialogs.quit import QuitDialog


def _record_leaving(app) -> list:
    """What the app prints on the way out (``App.exit``'s message; Textual prints then clears it)."""
    left: list = []
    leave = app.leave

    def recording(message=None):
        left.append(message)
        leave(message)

    app.leave = recording
    return left


@pytest.mark.parametrize("finish", ["completed", "stopped"])
async def test_quit_after_a_finished_run_prints_the_adapter(build_app, finish: str) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=finish))
    app = build_app(fake)
    left = _record_leaving(app)
    async with app.run_test() as pilot:
        await drain(pilot, fake, until=lambda: app.run_state.finished_status == finish)
        adapter = app.run_state.adapter_path
        assert adapter
        await pilot.press("ctrl+q")  # nothing running: no question
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert left == [f"Run {finish}. Adapter: {adapter}"]


def _stops_on(cmd: object) -> list:
    if not isinstance(cmd, p.StopRun):
        return []
    return [e for e in scripted_run(steps=3, finish="stopped") if isinstance(e, (p.CheckpointSaved, p.RunFinished))][-2:]


async def test_stop_and_quit_prints_the_adapter(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=None), on_send=_stops_on)
    app = build_app(fake)
    left = _record_leaving(app)
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, QuitDialog)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit after the stop")
    assert left == [f"Run stopped. Adapter: {app.run_state.adapter_path}"]


async def test_stop_on_the_monitor_is_confirmed_with_the_same_key_as_in_the_quit_dialog(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=None))
    app = build_app(fake)
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert "(s)" in str(app.screen.query_one("#yes").label)
        await pilot.press("s")
        await wait_until(pilot, lambda: p.StopRun() in fake.sent, what="the stop to be sent")
