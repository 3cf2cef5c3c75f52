"""Pilot tests of the monitor and the App's engine wiring, with a fake engine client replaying events."""

from __future__ import annotations

import pytest
from fake_engine import FakeEngineClient, recorded, scripted_run
from ui_helpers import drain, footer_keys, screen_text, wait_until

from engine import protocol as p
from sidestep_tui import messages as m
from sidestep_tui.dialogs.confirm import ConfirmDialog
from sidestep_tui.dialogs.error import ErrorDialog
from sidestep_tui.dialogs.quit import QuitDialog
from sidestep_tui.screens.monitor import MonitorScreen

CONTROLS = {"Stop (saves)", "Save", "Pause", "Resume"}


async def test_replayed_demo_run_shows_progress_loss_memory_and_histogram(build_app) -> None:
    fake = FakeEngineClient(recorded())
    app = build_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await drain(pilot, fake)
        state = app.run_state
        assert state.step > 0 and state.history and state.histogram is not None
        assert isinstance(app.screen, MonitorScreen)
        app.screen.redraw(True)
        await pilot.pause()
        text = screen_text(app)
        assert f"step {state.step}/{state.total_steps}" in text
        assert "loss" in text and "expected logit-normal" in text
        assert "STOPPED" in text  # the recording ends with a stop
        # CPU run: GPU numbers are "n/a", never zeros
        assert "n/a" in text and "0 MB / 0 MB" not in text
        assert "checkpoints" in str(state.checkpoints[-1].path) or state.checkpoints[-1].kind == "stop"


async def test_compact_view_at_80x24(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=30, finish=None))
    app = build_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await drain(pilot, fake)
        screen = app.screen
        assert screen.has_class("-narrow") and screen.compact
        screen.redraw(True)
        await pilot.pause()
        assert not screen.query_one("#loss-chart").display
        assert screen.query_one("#loss-spark").display
        text = screen_text(app)
        assert "step 30/100" in text and ("▁" in text or "█" in text)


async def test_controls_follow_the_run_state(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=10, finish=None))
    app = build_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await drain(pilot, fake)
        await pilot.press("r")  # resume is hidden while running: nothing is sent
        await pilot.press("p")
        await pilot.pause()
        assert fake.sent == [p.PauseRun()]
        fake.push(p.RunPaused(run_id="run-1", seq=500, ts=0.0, step=10))
        await drain(pilot, fake, until=lambda: app.run_state.paused)
        await pilot.press("p")  # already paused: hidden
        await pilot.press("r")
        await pilot.press("c")
        await pilot.pause()
        assert fake.sent == [p.PauseRun(), p.ResumeRun(), p.SaveCheckpoint()]
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await pilot.pause()
        assert fake.sent[-1] == p.StopRun()


@pytest.mark.parametrize("owns_engine", [True, False], ids=["own-engine", "attached"])
async def test_finished_run_offers_no_controls(build_app, owns_engine: bool) -> None:
    """Neither a freed engine (ours) nor one that outlives the run (attached) is offered any control."""
    fake = FakeEngineClient(scripted_run(steps=5, finish="completed"), owns_engine=owns_engine)
    app = build_app(fake)
    async with app.run_test() as pilot:
        await drain(pilot, fake, until=lambda: app.run_state.finished_status == "completed")
        if owns_engine:  # one engine per run: a finished run frees its engine while the app stays open
            await wait_until(pilot, lambda: fake.shutdown_called, what="the finished run's engine to be shut down")
        assert CONTROLS.isdisjoint(footer_keys(app))
        for key in ("s", "c", "p", "r"):
            await pilot.press(key)
        await pilot.pause()
        assert fake.sent == [] and fake.refused == [] and isinstance(app.screen, MonitorScreen)


async def test_run_failed_opens_the_error_dialog(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=5, finish="failed"))
    app = build_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await drain(pilot, fake, until=lambda: isinstance(app.screen, ErrorDialog))
        text = screen_text(app)
        assert "Run failed at step 5" in text and "Out of memory" in text
        assert "CUDA out of memory" in text and "Hint: Lower batch size" in text
        await pilot.press("q")  # second key for Esc
        await pilot.pause()
        assert isinstance(app.screen, MonitorScreen)
        await pilot.press("e")  # shows it again
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog)


async def test_engine_death_shows_a_banner_with_its_reason(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=5, finish=None))
    app = build_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await drain(pilot, fake)
        fake.die(-9)
        await wait_until(pilot, lambda: bool(app.engine_banner))
        assert app.engine_banner == "Engine died: killed (likely the OOM killer)"
        await pilot.pause()
        assert "Engine died: killed (likely the OOM killer)" in screen_text(app)
        await pilot.press("p")  # dead engine: the control is disabled, nothing is even tried
        await pilot.pause()
        assert fake.sent == [] and fake.refused == []
        assert not any("not running" in str(n.message) for n in app._notifications)


async def test_engine_silence_shows_a_banner_then_clears(build_app, clock) -> None:
    fake = FakeEngineClient(scripted_run(steps=5, finish=None))
    app = build_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await drain(pilot, fake)
        clock.advance(15)
        app.session.check_silence()
        assert app.engine_banner.startswith("Engine silent for 15 s")
        fake.push(p.Heartbeat(run_id="run-1", seq=900, ts=0.0, phase="training", last_step=5))
        await drain(pilot, fake, until=lambda: not app.engine_banner)


async def test_start_requested_spawns_a_fresh_engine_and_sends_start_run(build_app) -> None:
    made: list[FakeEngineClient] = []

    def factory(log_path: str) -> FakeEngineClient:
        made.append(FakeEngineClient(scripted_run(steps=3, finish=None)[:1]))
        return made[-1]

    app = build_app(None, client_factory=factory, initial_mode="runs")
    async with app.run_test() as pilot:
        app.post_message(m.StartRequested('{"x": 1}'))
        await wait_until(pilot, lambda: bool(made) and made[0].started, what="a fresh engine to be started")
        assert len(made) == 1
        await drain(pilot, made[0], until=lambda: bool(made[0].sent))
        (start,) = made[0].sent
        assert isinstance(start, p.StartRun) and start.config_json == '{"x": 1}' and start.run_id
        assert app.current_mode == "monitor"


async def test_second_start_while_running_is_refused(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=None))
    app = build_app(fake, client_factory=lambda _log: pytest.fail("must not spawn a second engine"))
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        app.post_message(m.StartRequested("{}"))
        await pilot.pause()
        assert fake.sent == []


async def test_quit_during_a_run_can_leave_it_running(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=None))
    app = build_app(fake)
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, QuitDialog)
        await pilot.press("l")
        await pilot.pause()
    assert fake.detached and not fake.shutdown_called and fake.sent == []


async def test_quit_during_a_run_can_stop_and_save_first(build_app) -> None:
    fake = FakeEngineClient(
        scripted_run(steps=3, finish=None),
        on_send=lambda cmd: (
            [
                p.CheckpointSaved(
                    run_id="run-1", seq=800, ts=0.0, step=3, epoch=0, path="/runs/demo/checkpoints/step_3", kind="stop"
                ),
                p.RunFinished(
                    run_id="run-1",
                    seq=801,
                    ts=0.0,
                    status="stopped",
                    steps=3,
                    epochs=1,
                    final_loss=1.0,
                    best_loss=1.0,
                    adapter_path="/runs/demo/checkpoints/step_3",
                    wall_s=1.0,
                ),
            ]
            if isinstance(cmd, p.StopRun)
            else []
        ),
    )
    app = build_app(fake)
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit after the stop")
    assert fake.sent == [p.StopRun()]
    assert app.run_state.finished_status == "stopped" and fake.shutdown_called


async def test_quit_dialog_cancel_keeps_the_app(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=None))
    app = build_app(fake)
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert app.is_running and isinstance(app.screen, MonitorScreen)
        assert fake.sent == [] and not fake.detached


async def test_quit_when_idle_shuts_the_engine_down(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=None)[:1])  # EngineReady: an engine that has run nothing
    app = build_app(fake)
    async with app.run_test() as pilot:
        await drain(pilot, fake, until=lambda: app.run_state.engine_pid is not None)
        await pilot.press("ctrl+q")  # no dialog: nothing to lose
        await wait_until(pilot, lambda: not app.is_running, what="the app to exit")
    assert fake.shutdown_called and not fake.is_alive and not fake.detached


async def test_keymap_from_settings_remaps_bindings(build_app, ui_settings) -> None:
    fake = FakeEngineClient(scripted_run(steps=3, finish=None))
    app = build_app(fake, settings=ui_settings.replace(keymap={"monitor.pause": "z"}))
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        await pilot.press("p")  # no longer pause
        await pilot.pause()
        assert fake.sent == []
        await pilot.press("z")
        await pilot.pause()
        assert fake.sent == [p.PauseRun()]


async def test_every_binding_has_an_id_and_no_printable_priority(build_app) -> None:
    from sidestep_tui.app import SidestepApp
    from sidestep_tui.dialogs.confirm import ConfirmDialog as C
    from sidestep_tui.screens.runs import RunsScreen

    for owner in (SidestepApp, MonitorScreen, RunsScreen, QuitDialog, ErrorDialog, C):
        for binding in owner.BINDINGS:
            assert binding.id, f"{owner.__name__}: {binding.key} has no id"
            assert not (binding.priority and len(binding.key) == 1), f"{owner.__name__}: printable priority key {binding.key}"


async def test_palette_offers_run_controls(build_app) -> None:
    from sidestep_tui.commands import RunCommands

    fake = FakeEngineClient(scripted_run(steps=3, finish=None))
    app = build_app(fake)
    async with app.run_test() as pilot:
        await drain(pilot, fake)
        provider = RunCommands(app.screen)
        titles = [title for title, _help, _cb in provider._commands()]
        assert titles == ["Stop run (saves a checkpoint)", "Save checkpoint now", "Pause run"]
        dict((t, cb) for t, _h, cb in provider._commands())["Pause run"]()
        await pilot.pause()
        assert fake.sent == [p.PauseRun()]


async def test_theme_change_is_remembered(build_app, tmp_path) -> None:
    from sidestep_tui.settings import load_settings

    app = build_app(None, settings_path=str(tmp_path / "s.json"))
    async with app.run_test() as pilot:
        app.theme = "sidestep-light"
        await pilot.pause()
    assert load_settings(tmp_path / "s.json").theme == "sidestep-light"
