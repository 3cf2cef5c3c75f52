"""The engine lifecycle, without Textual: which engine the UI talks to, what it asked it, and what the
UI shows about it.

``EngineSession`` owns the current engine client (a spawned engine, an attached run, a test fake) and
the ``RunState`` folded from its events. It starts runs and preprocessing jobs (an idle engine that has
run nothing yet is reused, otherwise a fresh one is spawned: one engine per run), sends the run
controls, attaches to a running run, notices silence and death, and decides how quitting goes
(shut an idle engine down, ask about a running one, detach or stop-and-save).

It needs a few things only a UI can do, named by ``SessionHost``: run the event pump and blocking
work off the UI thread, notify, show a failure, leave the app, and redraw when ``state`` or
``banner`` changed. ``SidestepApp`` is that host; the unit tests use a small recording one.
Everything here runs on the UI thread: the host delivers events, deaths and start failures there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from engine.protocol import (
    AnalysisDone,
    Command,
    EstimateDone,
    Event,
    PauseRun,
    ResumeRun,
    RunFailed,
    RunFinished,
    SaveCheckpoint,
    StartAnalysis,
    StartEstimate,
    StartPreprocess,
    StartRun,
    StopRun,
)

from .engine_client import AttachClient, EngineClient, EngineClientProtocol, EngineError
from .state import AnalysisStatus, Failure, RunState, UiPhase, apply_all, engine_lost

SILENCE_S = 10.0
"""A heartbeat gap longer than this (process alive) shows the "not responding" banner."""

EngineLink = Literal["none", "starting", "connected", "silent", "exited", "start_failed", "died", "gone"]
"""The connection to the current engine, as the session knows it (from the client, not from events):
none (no engine yet), starting (spawned or attached, nothing heard yet), connected, silent (alive but no
event for ``SILENCE_S``), exited (as asked, or after its run ended), start_failed (spawn or handshake
failed), died (our engine ended unexpectedly), gone (an attached run's engine ended mid-run)."""
LINK_LOST: frozenset[EngineLink] = frozenset({"start_failed", "died", "gone"})
"""The links that mean: the engine will not run what was asked of it."""

QuitChoice = Literal["stop", "leave", "cancel"]
Severity = Literal["information", "warning", "error"]
ClientFactory = Callable[[str], EngineClientProtocol]


@dataclass(frozen=True, slots=True)
class QuitQuestion:
    """Quitting while work runs: what the quit dialog asks about."""

    owns_engine: bool
    preprocessing: bool


class SessionHost(Protocol):
    """What the session needs from its UI."""

    def start_pump(self, client: EngineClientProtocol, then_send: tuple[Command, ...]) -> None:
        """Start ``client`` off the UI thread (the handshake blocks), send ``then_send``, then deliver its
        events, its death or its start failure to ``on_events`` / ``on_died`` / ``on_start_failed``."""

    def run_blocking(self, name: str, work: Callable[[], None], then: Callable[[], None] | None = None) -> None:
        """Run ``work`` off the UI thread; ``then`` afterwards, on the UI thread."""

    def notify(
        self, message: str, *, title: str = "", severity: Severity = "information", timeout: float | None = None
    ) -> None: ...

    def show_failure(self, failure: Failure) -> None: ...

    def leave(self, message: str | None = None) -> None:
        """End the app (``message`` is printed after the screen is restored)."""

    def session_changed(self) -> None:
        """``state`` or ``banner`` changed."""


@dataclass(frozen=True, slots=True)
class JobView:
    """Where an engine job the UI started (a PP++ analysis, an estimate) stands, for its follower:
    ``waiting`` (its engine is starting), ``running`` (``line``: the engine's phase detail),
    ``failed`` (``line``: the one-line reason), ``completed`` or ``stopped`` (``result``: its status)."""

    status: Literal["waiting", "running", "failed", "completed", "stopped"]
    line: str = ""
    result: AnalysisStatus | None = None


def new_run_id(prefix: str = "") -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def default_client_factory(log_path: str) -> EngineClientProtocol:
    return EngineClient(log_path=log_path)


class EngineSession:
    def __init__(
        self,
        host: SessionHost,
        *,
        log_dir: str,
        client_factory: ClientFactory = default_client_factory,
        attach_factory: ClientFactory = AttachClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.log_dir = log_dir
        self.client_factory = client_factory
        self.attach_factory = attach_factory
        self.clock = clock
        self.client: EngineClientProtocol | None = None
        self.state = RunState()
        self.link: EngineLink = "none"
        self.banner = ""
        self.last_contact: float | None = None
        self._expect_exit = False  # we asked the engine to go: its exit is not news
        self._quit_when_idle = False
        self._detached = False

    # ------------------------------------------------------------------ what the UI shows
    def _set_state(self, state: RunState) -> None:
        if state is not self.state:
            self.state = state
            self.host.session_changed()

    def _set_link(self, link: EngineLink, banner: str = "") -> None:
        changed = banner != self.banner
        self.link, self.banner = link, banner
        if changed:
            self.host.session_changed()

    def show_waiting(self, phase: UiPhase, detail: str) -> None:
        """Before any engine: e.g. the demo's model and data are being written."""
        self._set_state(RunState(phase=phase, phase_detail=detail))

    # ------------------------------------------------------------------ starting work
    def follow(self, client: EngineClientProtocol, then_send: tuple[Command, ...] = ()) -> None:
        """Make ``client`` the current engine and start pumping its events."""
        self.client = client
        self.last_contact = self.clock()
        self._expect_exit = False
        self._set_link("starting")
        self.host.start_pump(client, then_send)

    def start_run(self, config_json: str) -> bool:
        return self._begin(StartRun(run_id=new_run_id(), config_json=config_json))

    def start_preprocess(self, config_json: str, *, run_id: str = "") -> bool:
        """Audio -> tensors in an engine. The Dataset screen follows the job by ``run_id``."""
        return self._begin(StartPreprocess(run_id=run_id or new_run_id("pre-"), config_json=config_json))

    def start_analysis(self, options_json: str, *, run_id: str = "") -> bool:
        """PP++ in an engine; the Dataset screen follows the job by ``run_id``."""
        return self._begin(StartAnalysis(run_id=run_id or new_run_id("pp-"), options_json=options_json))

    def start_estimate(self, config_json: str, output: str, *, run_id: str) -> bool:
        """A gradient-sensitivity estimate in an engine; the Dataset screen follows it by ``run_id``."""
        return self._begin(StartEstimate(run_id=run_id, config_json=config_json, output=output))

    def _begin(self, command: StartRun | StartPreprocess | StartAnalysis | StartEstimate) -> bool:
        """Start ``command`` in an engine (an idle fresh one is reused, else a new one is spawned).
        False, with a notification, when another run is in progress."""
        client = self.client
        if client is not None and client.is_alive:
            if self.state.active or not client.owns_engine:
                self.host.notify("A run is in progress: stop it (or quit and leave it running) first.", severity="error")
                return False
            if not self.state.run_id and self.state.preprocess is None and self.state.analysis is None:
                # An idle engine that has not run anything yet: reuse it.
                if not self.send(command):
                    return False
                self._set_state(RunState())
                return True
            self._stop_engine(client)
        self._set_state(RunState(phase="starting_engine", phase_detail="spawning the engine process"))
        log_path = str(Path(self.log_dir) / f"engine-{time.strftime('%Y%m%d-%H%M%S')}.log")
        self.follow(self.client_factory(log_path), (command,))
        return True

    def attach(self, run_dir: str) -> bool:
        """Follow an existing run read-only (Runs screen, ``sidestep attach``)."""
        client = self.client
        if client is not None and client.is_alive and self.state.active:
            self.host.notify("A run is being monitored: stop it or quit (leave it running) first.", severity="error")
            return False
        if client is not None and client.owns_engine and client.is_alive:
            self._stop_engine(client)
        self._set_state(RunState())
        self.follow(self.attach_factory(run_dir))
        return True

    def _stop_engine(self, client: EngineClientProtocol, *, then_leave: bool = False) -> None:
        """Shut an engine down off the UI thread (Shutdown -> join -> terminate -> kill)."""
        self._expect_exit = True
        then = (lambda: self.host.leave(self.leaving_note())) if then_leave else None
        self.host.run_blocking("engine-stop", lambda: client.shutdown(10.0), then)

    # ------------------------------------------------------------------ commands
    def follow_job(self, job: str, noun: str) -> JobView:
        """The analysis job ``job`` (its run id) as its follower shows it; ``noun`` names it in the lines
        ("analysis", "estimate")."""
        run = self.state
        if run.run_id != job:
            if self.link in LINK_LOST:
                return JobView("failed", f"✗ the {noun} did not start: {self.banner}")
            return JobView("waiting")
        result = run.analysis
        if run.failure is not None:
            return JobView("failed", f"✗ {noun} failed: {run.failure.message}", result)
        if run.engine_lost:
            return JobView("failed", f"✗ the engine died: {run.engine_lost}", result)
        if result is not None and result.status in ("completed", "stopped"):
            return JobView("completed" if result.status == "completed" else "stopped", "", result)
        return JobView("running", run.phase_detail or "loading the model", result)

    def send(self, command: Command) -> bool:
        """Send one command to the engine; a dead engine or a read-only client is a notification."""
        if self.client is None:
            self.host.notify("No engine is running.", severity="warning")
            return False
        try:
            self.client.send(command)
        except EngineError as exc:
            self.host.notify(str(exc), severity="error", title="Engine")
            return False
        return True

    def can_send(self, command_type: type) -> bool:
        return self.client is not None and command_type in self.client.controls and self.client.is_alive

    def controls(self) -> frozenset[type]:
        """The command types the current client accepts at all (an attached run: stop only)."""
        return self.client.controls if self.client is not None else frozenset()

    def stop(self) -> None:
        if self.send(StopRun()):
            self.host.notify("Stopping after the current step; a checkpoint is saved first.", title="Stop")

    def save(self) -> None:
        if self.send(SaveCheckpoint()):
            self.host.notify("A checkpoint is saved after the current step.", title="Save")

    def pause(self) -> None:
        self.send(PauseRun())

    def resume(self) -> None:
        self.send(ResumeRun())

    # ------------------------------------------------------------------ what the engine says
    def on_events(self, events: Iterable[Event]) -> None:
        events = tuple(events)
        self.last_contact = self.clock()
        if self.link in ("starting", "silent"):
            self._set_link("connected")
        self._set_state(apply_all(self.state, events))
        for event in events:
            if isinstance(event, RunFailed) and self.state.failure is not None:
                self.host.show_failure(self.state.failure)
        ended = any(isinstance(e, (RunFinished, RunFailed, AnalysisDone, EstimateDone)) for e in events)
        if ended and self.client is not None and self.client.owns_engine:
            self._stop_engine(self.client, then_leave=self._quit_when_idle)  # one engine per run
        elif ended and self._quit_when_idle:
            self.host.leave()

    def on_died(self, exit_code: int | None, reason: str) -> None:
        """The client's process is gone (the sentinel's verdict, after its last events)."""
        ended = self.state.finished_status is not None or self.state.failure is not None
        if self._expect_exit or (ended and exit_code in (0, None)):
            self._set_link("exited")
        elif self.client is not None and not self.client.owns_engine:
            if ended:
                self._set_link("exited")
            else:
                self._set_link("gone", f"Engine gone: {reason}")
                self._set_state(engine_lost(self.state, reason))
        else:
            self._set_link("died", f"Engine died: {reason}")
            self._set_state(engine_lost(self.state, reason))
            self.host.notify(self.banner, severity="error", timeout=10)
        if self._quit_when_idle:
            self.host.leave()

    def on_start_failed(self, reason: str) -> None:
        """Spawning or the handshake failed (timeout, protocol mismatch, an attached folder vanished)."""
        self._set_link("start_failed", f"Engine did not start: {reason}")
        self.host.notify(reason, severity="error", title="Engine", timeout=15)

    def check_silence(self) -> None:
        """Called every second: an owned engine that is alive but has said nothing for ``SILENCE_S``."""
        client = self.client
        if client is None or self.last_contact is None or not client.owns_engine or not client.is_alive:
            return
        gap = self.clock() - self.last_contact
        if gap > SILENCE_S:
            self._set_link("silent", f"Engine silent for {gap:.0f} s: no heartbeat (process alive, not responding)")

    # ------------------------------------------------------------------ quitting
    def request_quit(self) -> QuitQuestion | None:
        """Quit: with nothing running, an idle engine is shut down first and the app leaves (None).
        With a run or a preprocessing job going, the question for the quit dialog."""
        client, state = self.client, self.state
        if client is None or not client.is_alive or not (state.active or state.phase == "preprocessing"):
            if client is not None and client.owns_engine and client.is_alive:
                self._stop_engine(client, then_leave=True)
            else:
                self.host.leave(self.leaving_note())
            return None
        return QuitQuestion(owns_engine=client.owns_engine, preprocessing=state.preprocess is not None)

    def leaving_note(self) -> str | None:
        """What to print on the way out after a run finished: where its result is (as leaving a run
        running prints the attach command)."""
        state = self.state
        if state.finished_status is None or not state.adapter_path:
            return None
        if state.preprocess is not None:
            return f"Preprocessing {state.finished_status}. Tensors: {state.adapter_path}"
        return f"Run {state.finished_status}. Adapter: {state.adapter_path}"

    def quit_choice(self, choice: QuitChoice | None) -> None:
        client, state = self.client, self.state
        if client is None or choice in (None, "cancel"):
            return
        if choice == "leave":
            self._detached = True
            client.detach()
            if state.preprocess is not None:
                self.host.leave(
                    "Preprocessing goes on in the background; its tensors appear in "
                    + (state.phase_detail or "the tensor folder")
                )
            else:
                self.host.leave("The run keeps training. Re-attach with: sidestep attach " + (state.run_dir or "RUN_DIR"))
        elif choice == "stop":
            if not self.send(StopRun()):
                return
            if client.owns_engine:
                self._quit_when_idle = True
                self.host.notify("Stopping: saving a checkpoint, then quitting…", title="Quit", timeout=30)
            else:
                self.host.leave("Asked the engine to stop and save (SIGTERM).")

    def close(self) -> None:
        """However the app ends (quit, a test finishing, an error), never leave an engine behind by
        accident: an idle one is shut down; a training one is detached, because a run outlives its UI
        (and multiprocessing would otherwise hold this process's exit until the run ends)."""
        client = self.client
        if client is None or not client.owns_engine or self._detached or not client.is_alive:
            return
        if self.state.active:
            client.detach()
        else:
            self._expect_exit = True
            client.shutdown(5.0)
