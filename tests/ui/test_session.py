"""EngineSession without Textual: starting, reusing and stopping engines, attaching, death, silence
and quitting, driven by the fake engine client (and, marked ``integration``, by the real engine).

``RecordingHost`` is the UI side that the App plays in the product: it starts a client the way the
pump does (handshake, then the queued commands), runs blocking work at once and records what the UI
would show. ``deliver`` is the pump's loop: events in order, then the death once the client is gone.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_engine import FakeEngineClient, scripted_run
from ui_helpers import FakeClock, make_run_dir

from engine import protocol as p
from sidestep_tui.engine_client import (
    EngineClient,
    EngineClientProtocol,
    EngineError,
    EngineHandshakeError,
)
from sidestep_tui.session import SILENCE_S, EngineSession, QuitQuestion
from sidestep_tui.state import Failure


class RecordingHost:
    def __init__(self) -> None:
        self.session: EngineSession | None = None
        self.pumped: list[EngineClientProtocol] = []
        self.notes: list[tuple[str, str]] = []
        self.failures: list[Failure] = []
        self.left: list[str | None] = []
        self.changes = 0

    def start_pump(self, client: EngineClientProtocol, then_send: tuple[Any, ...]) -> None:
        assert self.session is not None
        self.pumped.append(client)
        try:
            client.start()
        except EngineError as exc:
            self.session.on_start_failed(str(exc))
            return
        for cmd in then_send:
            client.send(cmd)

    def run_blocking(self, name: str, work: Callable[[], None], then: Callable[[], None] | None = None) -> None:
        work()
        if then is not None:
            then()

    def notify(self, message: str, *, title: str = "", severity: str = "information", timeout: float | None = None) -> None:
        self.notes.append((severity, message))

    def show_failure(self, failure: Failure) -> None:
        self.failures.append(failure)

    def leave(self, message: str | None = None) -> None:
        self.left.append(message)

    def session_changed(self) -> None:
        self.changes += 1


def make_session(tmp_path: Path, clients: list[Any] | None = None, **kwargs: Any) -> tuple[EngineSession, RecordingHost]:
    """A session whose spawned engines are the ``clients`` given, in order (none: spawning fails the test)."""
    queue = list(clients or [])

    def factory(log_path: str) -> Any:
        assert queue, "the session spawned an engine the test did not expect"
        return queue.pop(0)

    host = RecordingHost()
    session = EngineSession(host, log_dir=str(tmp_path / "logs"), client_factory=kwargs.pop("client_factory", factory), **kwargs)
    host.session = session
    return session, host


def deliver(session: EngineSession, client: Any, *, until: Callable[[], bool] | None = None, timeout: float = 5.0) -> None:
    """The pump's loop: hand every event to the session; once the client is gone and drained, its
    death. Returns when ``until()`` holds, or (without ``until``) when a live client has nothing more."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while until is None or not until():
        events = client.poll(0.05)
        if events:
            quiet = 0
            session.on_events(events)
            continue
        if not client.is_alive:
            quiet += 1
            if quiet >= 2:
                session.on_died(client.exit_code, client.death_reason())
                return
        elif until is None:
            return
        assert time.monotonic() < deadline, f"timed out (phase {session.state.phase}, link {session.link})"


def ready_only() -> FakeEngineClient:
    return FakeEngineClient(scripted_run(steps=1, finish=None)[:1])  # EngineReady, nothing else


# ------------------------------------------------------------------ starting work


def test_start_run_spawns_an_engine_and_sends_start_run(tmp_path: Path) -> None:
    engine = ready_only()
    session, host = make_session(tmp_path, [engine])
    assert session.start_run('{"x": 1}')
    assert session.state.phase == "starting_engine" and session.link == "starting"
    (start,) = engine.sent
    assert isinstance(start, p.StartRun) and start.config_json == '{"x": 1}' and start.run_id
    deliver(session, engine)
    assert session.link == "connected" and session.state.engine_pid == 4242 and session.state.phase == "idle"
    assert host.changes >= 2  # the UI was told about both states


def test_an_idle_fresh_engine_is_reused_and_a_used_one_replaced(tmp_path: Path) -> None:
    first = ready_only()
    fresh = ready_only()
    session, host = make_session(tmp_path, [fresh])
    session.follow(first)
    deliver(session, first)
    assert session.start_preprocess('{"p": 1}', run_id="pre-1")
    assert [type(c) for c in first.sent] == [p.StartPreprocess] and first.sent[0].run_id == "pre-1"
    assert session.client is first and host.pumped == [first]  # reused, nothing spawned
    first.push(
        p.PhaseChanged(run_id="pre-1", seq=1, ts=1.0, phase="preprocessing", detail="/out"),
        p.RunFinished(
            run_id="pre-1",
            seq=2,
            ts=2.0,
            status="completed",
            steps=3,
            epochs=0,
            final_loss=0.0,
            best_loss=0.0,
            adapter_path="/out",
            wall_s=1.0,
        ),
    )
    deliver(session, first)
    assert first.shutdown_called  # one engine per job: a finished job frees its engine
    assert session.start_run("{}") and session.client is fresh and isinstance(fresh.sent[0], p.StartRun)


def test_a_second_start_while_a_run_is_active_is_refused(tmp_path: Path) -> None:
    engine = FakeEngineClient(scripted_run(steps=3, finish=None))
    session, host = make_session(tmp_path)  # spawning would fail the test
    session.follow(engine)
    deliver(session, engine)
    assert session.state.active
    assert not session.start_run("{}") and not session.start_preprocess("{}")
    assert engine.sent == [] and host.notes[-1] == (
        "error",
        "A run is in progress: stop it (or quit and leave it running) first.",
    )


def test_controls_are_sent_and_a_dead_engine_is_a_notification(tmp_path: Path) -> None:
    engine = FakeEngineClient(scripted_run(steps=3, finish=None))
    session, host = make_session(tmp_path)
    assert not session.send(p.PauseRun()) and host.notes == [("warning", "No engine is running.")]
    session.follow(engine)
    deliver(session, engine)
    session.pause()
    session.resume()
    session.save()
    session.stop()
    assert engine.sent == [p.PauseRun(), p.ResumeRun(), p.SaveCheckpoint(), p.StopRun()]
    assert session.can_send(p.StopRun) and session.controls() == engine.controls
    engine.die(-9)
    assert not session.can_send(p.StopRun)
    assert not session.send(p.SaveCheckpoint())
    assert host.notes[-1][0] == "error" and "not running" in host.notes[-1][1]


# ------------------------------------------------------------------ what the engine says


def test_a_failure_is_shown_and_its_engine_shut_down_without_a_banner(tmp_path: Path) -> None:
    engine = FakeEngineClient(scripted_run(steps=4, finish="failed"))
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    assert [f.error_type for f in host.failures] == ["OutOfMemoryError"] and session.state.phase == "failed"
    assert engine.shutdown_called
    deliver(session, engine)  # the shutdown ends the fake: its death is delivered
    assert session.link == "exited" and session.banner == ""


def test_an_engine_the_session_stopped_is_no_news_even_when_it_took_a_signal(tmp_path: Path) -> None:
    class NeedsSigterm(FakeEngineClient):
        def shutdown(self, grace_s: float = 10.0) -> None:
            super().shutdown(grace_s)
            self._exit_code = -signal.SIGTERM  # it ignored Shutdown; the escalation terminated it

    engine = NeedsSigterm(scripted_run(steps=4, finish="completed"))
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    assert engine.shutdown_called
    deliver(session, engine)
    assert session.link == "exited" and session.banner == "" and not any(sev == "error" for sev, _ in host.notes)


def test_the_engine_dying_mid_run_ends_the_run_with_a_banner(tmp_path: Path) -> None:
    engine = FakeEngineClient(scripted_run(steps=4, finish=None))
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    engine.die(-9)
    deliver(session, engine)
    assert session.link == "died" and session.banner == "Engine died: killed (likely the OOM killer)"
    assert session.state.phase == "engine_died" and session.state.engine_lost and not session.state.active
    assert host.notes[-1] == ("error", "Engine died: killed (likely the OOM killer)")


def test_an_engine_that_does_not_start_is_a_lost_link(tmp_path: Path) -> None:
    class NoHandshake(FakeEngineClient):
        def start(self) -> None:
            raise EngineHandshakeError("the engine did not start within 120 s (log: x.log)")

    session, host = make_session(tmp_path, [NoHandshake()])
    assert session.start_preprocess("{}", run_id="pre-1")
    assert (
        session.link == "start_failed"
        and session.banner == "Engine did not start: the engine did not start within 120 s (log: x.log)"
    )
    assert host.notes[-1] == ("error", "the engine did not start within 120 s (log: x.log)")


def test_silence_shows_a_banner_until_the_engine_speaks_again(tmp_path: Path) -> None:
    clock = FakeClock()
    engine = FakeEngineClient(scripted_run(steps=3, finish=None))
    session, _host = make_session(tmp_path, clock=clock)
    session.follow(engine)
    deliver(session, engine)
    clock.advance(SILENCE_S - 1)
    session.check_silence()
    assert session.link == "connected" and session.banner == ""
    clock.advance(6)
    session.check_silence()
    assert session.link == "silent" and session.banner.startswith("Engine silent for 15 s")
    engine.push(p.Heartbeat(run_id="run-1", seq=900, ts=0.0, phase="training", last_step=3))
    deliver(session, engine)
    assert session.link == "connected" and session.banner == ""


# ------------------------------------------------------------------ attaching


def test_attach_follows_a_recorded_run_with_the_real_attach_client(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "runs")
    session, host = make_session(tmp_path)
    assert session.attach(str(run))
    client = session.client
    assert client is not None and not client.owns_engine and host.pumped == [client]
    deliver(session, client)
    assert session.state.finished_status == "stopped" and session.state.run_dir  # the whole recording, folded
    assert session.link == "exited" and session.banner == ""  # a finished run's engine is gone: no news


def test_attach_is_refused_while_a_run_is_monitored(tmp_path: Path) -> None:
    engine = FakeEngineClient(scripted_run(steps=3, finish=None))
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    assert not session.attach(str(make_run_dir(tmp_path / "runs")))
    assert session.client is engine and host.notes[-1][0] == "error"


def test_attach_shuts_an_idle_owned_engine_down_first(tmp_path: Path) -> None:
    idle = ready_only()
    session, _host = make_session(tmp_path)
    session.follow(idle)
    deliver(session, idle)
    assert session.attach(str(make_run_dir(tmp_path / "runs")))
    assert idle.shutdown_called and session.client is not idle


# ------------------------------------------------------------------ quitting


def test_quit_with_an_idle_engine_shuts_it_down_then_leaves(tmp_path: Path) -> None:
    engine = ready_only()
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    assert session.request_quit() is None
    assert engine.shutdown_called and host.left == [None] and not engine.detached


def test_quit_after_a_finished_run_leaves_at_once(tmp_path: Path) -> None:
    engine = FakeEngineClient(scripted_run(steps=3, finish="completed"))
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    assert engine.shutdown_called and host.left == []  # the run ended: its engine went then
    # Leaving says where the result is.
    assert session.request_quit() is None and host.left == [f"Run completed. Adapter: {session.state.adapter_path}"]


def test_quit_during_a_run_asks_and_leave_detaches(tmp_path: Path) -> None:
    engine = FakeEngineClient(scripted_run(steps=3, finish=None))
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    assert session.request_quit() == QuitQuestion(owns_engine=True, preprocessing=False) and host.left == []
    session.quit_choice("cancel")
    assert host.left == [] and not engine.detached
    session.quit_choice("leave")
    assert engine.detached and not engine.shutdown_called and engine.sent == []
    assert host.left == ["The run keeps training. Re-attach with: sidestep attach /runs/demo"]
    session.close()  # the app unmounting after a detach leaves the engine alone
    assert not engine.shutdown_called


def test_quit_stop_saves_then_leaves_once_the_run_ended(tmp_path: Path) -> None:
    finish = [
        p.RunFinished(
            run_id="run-1",
            seq=800,
            ts=0.0,
            status="stopped",
            steps=3,
            epochs=1,
            final_loss=1.0,
            best_loss=1.0,
            adapter_path="/runs/demo/checkpoints/step_3",
            wall_s=1.0,
        )
    ]
    engine = FakeEngineClient(
        scripted_run(steps=3, finish=None), on_send=lambda cmd: finish if isinstance(cmd, p.StopRun) else []
    )
    session, host = make_session(tmp_path)
    session.follow(engine)
    deliver(session, engine)
    session.quit_choice("stop")
    assert engine.sent == [p.StopRun()] and host.left == []
    deliver(session, engine)
    assert (
        session.state.finished_status == "stopped"
        and engine.shutdown_called
        and host.left[:1] == [f"Run stopped. Adapter: {session.state.adapter_path}"]
    )


def test_close_shuts_an_idle_engine_down_and_detaches_a_running_one(tmp_path: Path) -> None:
    idle = ready_only()
    session, _host = make_session(tmp_path)
    session.follow(idle)
    deliver(session, idle)
    session.close()
    assert idle.shutdown_called and not idle.detached
    running = FakeEngineClient(scripted_run(steps=3, finish=None))
    session, _host = make_session(tmp_path)
    session.follow(running)
    deliver(session, running)
    session.close()
    assert running.detached and not running.shutdown_called


# ------------------------------------------------------------------ the real engine


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_real_engine_fails_a_bad_job_and_is_shut_down_cleanly(tmp_path: Path) -> None:
    """The default factory spawns the real engine process: it reports the bad job as RunFailed, the
    session shows it and shuts the engine down (one engine per job), and the exit is no news."""
    host = RecordingHost()
    session = EngineSession(host, log_dir=str(tmp_path / "logs"))
    host.session = session
    assert session.start_preprocess('{"output_dir": ""}', run_id="pre-bad")  # the handshake happens here
    client = session.client
    assert client is not None and client.owns_engine
    deliver(session, client, until=lambda: session.link in ("exited", "died", "gone"), timeout=120)
    assert [f.error_type for f in host.failures] == ["ConfigError"] and session.state.failure is not None
    assert session.link == "exited" and session.banner == "" and client.exit_code == 0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_real_engine_killed_is_a_died_link_with_the_sentinels_reason(tmp_path: Path) -> None:
    host = RecordingHost()
    session = EngineSession(host, log_dir=str(tmp_path / "logs"))
    host.session = session
    client = EngineClient(log_path=str(tmp_path / "logs" / "engine.log"))
    session.follow(client)  # the handshake happens here
    deliver(session, client, until=lambda: session.link == "connected", timeout=60)
    assert client.pid is not None
    os.kill(client.pid, signal.SIGKILL)
    deliver(session, client, until=lambda: session.link != "connected", timeout=60)
    assert session.link == "died" and session.banner == "Engine died: killed (likely the OOM killer)"
    assert host.notes[-1] == ("error", "Engine died: killed (likely the OOM killer)")


def test_follow_job_names_how_an_engine_job_stands(tmp_path: Path) -> None:
    """The one reading of an analysis job (the Dataset screen's PP++ and estimate both follow with it)."""

    def view(session: EngineSession) -> tuple[str, str]:
        job = session.follow_job("est-1", "estimate")
        return job.status, job.line

    session, _ = make_session(tmp_path)
    assert view(session) == ("waiting", "")  # the engine is starting: another run id, or none yet
    session.on_start_failed("handshake timed out")
    assert view(session) == ("failed", "✗ the estimate did not start: Engine did not start: handshake timed out")

    session, _ = make_session(tmp_path)
    session.on_events([p.PhaseChanged(run_id="est-1", seq=0, ts=0.0, phase="preparing_data", detail="measuring /d")])
    assert view(session) == ("running", "measuring /d")
    session.on_events([p.EstimateDone(run_id="est-1", seq=1, ts=0.0, status="completed", path="/d/m.json", top_k=2)])
    job = session.follow_job("est-1", "estimate")
    assert (job.status, job.result.path if job.result else None) == ("completed", "/d/m.json")
    assert session.follow_job("other", "estimate").status == "waiting"

    started = p.PhaseChanged(run_id="est-1", seq=0, ts=0.0, phase="loading_model", detail="")
    session, _ = make_session(tmp_path)
    session.on_events([started, p.EstimateDone(run_id="est-1", seq=1, ts=0.0, status="stopped", path="")])
    assert view(session)[0] == "stopped"

    session, _ = make_session(tmp_path)
    assert view(session) == ("waiting", "")
    session.on_events([started])
    assert view(session) == ("running", "loading the model")
    session.on_events([p.RunFailed(run_id="est-1", seq=1, ts=0.0, error_type="DatasetError", message="no tensors in /d")])
    assert view(session) == ("failed", "✗ estimate failed: no tensors in /d")
