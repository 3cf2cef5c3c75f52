"""Talking to the training engine from the UI process. Plain Python: no Textual, no torch.

Two clients share one small interface (``EngineClientProtocol``), so the App and the tests do not care
which one is behind the monitor:

- ``EngineClient`` owns a freshly spawned engine process (``engine.process.entry.run_engine``): commands go
  down a ``multiprocessing`` queue, events come up another. Process exit is the authoritative death
  signal (a monitor thread waits on ``process.sentinel``); the exit code is mapped to a reason.
- ``AttachClient`` follows an existing run directory read-only: it tails ``events.jsonl`` from the start
  (so the whole run is rebuilt), judges liveness from the pid in ``engine.json``, and can only ask the
  engine to stop (SIGTERM, which the engine turns into stop-and-save).

Shutdown escalates like CPython's process pool and vLLM: ``Shutdown`` command -> join -> terminate ->
kill, draining the event queue meanwhile (a child blocked on a full pipe would never exit).
``detach()`` leaves the engine training and lets the UI exit at once (DESIGN §10, last bullet).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine import layout, protocol
from engine.protocol import PROTOCOL_VERSION, EngineReady, StopRun
from engine.runs import engine_state
from engine.tailer import EventTailer

HANDSHAKE_TIMEOUT_S = 120.0
"""Spawning imports torch and friends in the child; on a cold disk that takes tens of seconds."""
POLL_CAP = 2000
"""Most events one ``poll`` returns; the bridge posts one message per poll, so this bounds batch size."""


class EngineError(RuntimeError):
    """Base class for engine-client failures the UI shows to the user."""


class EngineDeadError(EngineError):
    """A command was sent to an engine that has exited."""


class EngineHandshakeError(EngineError):
    """The engine did not say ``EngineReady`` in time, or speaks another protocol version."""


class ReadOnlyClientError(EngineError):
    """The command is not possible on an attached (read-only) run."""


def exit_reason(code: int | None) -> str:
    """A human reason for a process exit code (the sentinel's verdict; never guessed from silence)."""
    if code is None:
        return "still running"
    if code == 0:
        return "exited normally"
    if code in (-signal.SIGKILL, 137):
        return "killed (likely the OOM killer)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    if code > 128 and code - 128 in {s.value for s in signal.Signals}:
        return f"exited after {signal.Signals(code - 128).name}"
    if code == 1:
        return "crashed (exit code 1; see sidestep.log)"
    return f"exited with code {code}"


@runtime_checkable
class EngineClientProtocol(Protocol):
    """What the App needs from an engine connection (real process, attached run, or a test fake)."""

    #: command types ``send`` accepts (the monitor hides controls for the others)
    controls: frozenset[type]
    #: True when this client owns the engine process (quit may stop it or leave it running)
    owns_engine: bool

    def start(self) -> None: ...

    def send(self, cmd: Any) -> None: ...

    def poll(self, timeout: float) -> list[Any]: ...

    @property
    def is_alive(self) -> bool: ...

    @property
    def exit_code(self) -> int | None: ...

    def death_reason(self) -> str: ...

    def shutdown(self, grace_s: float = 10.0) -> None: ...

    def detach(self) -> None: ...


ALL_CONTROLS: frozenset[type] = frozenset(protocol.COMMAND_TYPES)


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _real_stderr() -> Iterator[None]:
    """Textual replaces ``sys.stderr`` with a capture whose ``fileno()`` is -1; multiprocessing's
    resource tracker (started by the first queue's semaphore) passes ``sys.stderr.fileno()`` to its
    child and fails on -1 ("bad value(s) in fds_to_keep"). Hand it the real stderr meanwhile."""
    with _STDERR_LOCK:
        captured = sys.stderr
        if sys.__stderr__ is not None:
            sys.stderr = sys.__stderr__
        try:
            resource_tracker.ensure_running()
            yield
        finally:
            sys.stderr = captured


def _default_target() -> Callable[..., Any]:
    # engine.process.entry's top level is stdlib only; the heavy imports happen inside run_engine, in the child.
    from engine.process.entry import run_engine

    return run_engine


class EngineClient:
    """A spawned, non-daemonic engine process and its two queues."""

    controls = ALL_CONTROLS
    owns_engine = True

    def __init__(
        self,
        *,
        log_path: str,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        target: Callable[..., Any] | None = None,
        on_exit: Callable[[int | None], None] | None = None,
        boot_extra: dict[str, Any] | None = None,
    ) -> None:
        self.log_path = log_path
        self.handshake_timeout = handshake_timeout
        self._target = target
        self._on_exit = on_exit
        self._boot_extra = dict(boot_extra or {})  # more keys for the engine's boot dict (tests, options)
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._cmd_q: Any = None
        self._evt_q: Any = None
        self._pending: deque[Any] = deque()
        self._exited = threading.Event()
        self._exit_code: int | None = None
        self.ready: EngineReady | None = None
        self._detached = False
        self._closing = threading.Event()  # set by shutdown(): a handshake in progress gives up

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Spawn the engine and wait for its ``EngineReady`` (protocol version checked). Blocking: call
        it from a worker thread, not the UI loop."""
        if self._process is not None:
            raise EngineError("engine already started")
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        boot = {**self._boot_extra, "log_path": self.log_path, "parent_pid": os.getpid()}
        target = self._target or _default_target()
        with _real_stderr():  # queues (their semaphores) and the process start the resource tracker
            self._cmd_q = self._ctx.Queue()
            self._evt_q = self._ctx.Queue()
            self._process = self._ctx.Process(
                target=target, args=(self._cmd_q, self._evt_q, boot), name="sidestep-engine", daemon=False
            )
            self._process.start()
        threading.Thread(target=self._watch_sentinel, name="engine-sentinel", daemon=True).start()
        # Runs before multiprocessing's own exit hook (atexit is LIFO), which would join a
        # non-daemonic engine forever if nobody shut it down or detached it: an idle engine never
        # exits while its parent lives.
        atexit.register(self._at_exit)
        self._handshake()

    def _handshake(self) -> None:
        deadline = time.monotonic() + self.handshake_timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._closing.is_set():
                self._abort()
                raise EngineHandshakeError("engine start cancelled (the app is closing)")
            if remaining <= 0:
                self._abort()
                raise EngineHandshakeError(
                    f"the engine did not start within {self.handshake_timeout:.0f} s (log: {self.log_path})"
                )
            try:
                event = self._evt_q.get(timeout=min(0.2, remaining))
            except queue_mod.Empty:
                if self._exited.is_set():
                    raise EngineHandshakeError(
                        f"the engine exited while starting: {self.death_reason()} (log: {self.log_path})"
                    ) from None
                continue
            self._pending.append(event)
            if isinstance(event, EngineReady):
                if event.protocol_version != PROTOCOL_VERSION:
                    self._abort()
                    raise EngineHandshakeError(
                        f"engine speaks protocol {event.protocol_version}, this UI speaks {PROTOCOL_VERSION}:"
                        " install matching versions"
                    )
                self.ready = event
                return

    def _watch_sentinel(self) -> None:
        process = self._process
        multiprocessing.connection.wait([process.sentinel])
        # Reap, so exitcode is set. Another thread (shutdown's join, is_alive) may win the waitpid race:
        # this thread's poll then sees ECHILD and returns None for a moment, until the winner stores
        # the return code on the shared Popen. Never publish that None as the verdict.
        deadline = time.monotonic() + 5.0
        while process.exitcode is None and time.monotonic() < deadline:
            process.join(timeout=0.05)
        self._exit_code = process.exitcode
        self._exited.set()
        if self._on_exit is not None:
            self._on_exit(self._exit_code)

    def _abort(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5.0)
            # The sentinel thread reaps it too; until it has, ``is_alive`` may still read True (the
            # two waitpid calls race), so wait for its verdict.
            self._exited.wait(timeout=5.0)
        if self._cmd_q is not None:
            self._cmd_q.cancel_join_thread()

    # ------------------------------------------------------------------ traffic
    def send(self, cmd: Any) -> None:
        if self._process is None:
            raise EngineDeadError("the engine is not started")
        if not self.is_alive:
            raise EngineDeadError(f"the engine is not running ({self.death_reason()}); start a new one")
        self._cmd_q.put(cmd)

    def poll(self, timeout: float) -> list[Any]:
        """Block up to ``timeout`` for the first event, then drain without blocking up to ``POLL_CAP``."""
        out: list[Any] = []
        while self._pending and len(out) < POLL_CAP:
            out.append(self._pending.popleft())
        if self._evt_q is None:
            return out
        if not out:
            try:
                out.append(self._evt_q.get(timeout=timeout))
            except queue_mod.Empty:
                return out
            except (EOFError, OSError, ValueError):  # queue closed under us during shutdown
                return out
        while len(out) < POLL_CAP:
            try:
                out.append(self._evt_q.get_nowait())
            except (queue_mod.Empty, EOFError, OSError, ValueError):
                break
        return out

    @property
    def is_alive(self) -> bool:
        return self._process is not None and not self._exited.is_set() and self._process.is_alive()

    @property
    def exit_code(self) -> int | None:
        return self._exit_code if self._exited.is_set() else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def death_reason(self) -> str:
        return exit_reason(self.exit_code)

    def wait_exit(self, timeout: float) -> bool:
        return self._exited.wait(timeout)

    # ------------------------------------------------------------------ ending
    def _drain_until_exit(self, timeout: float) -> None:
        """Wait for the process to exit while moving its events into ``_pending`` (they are still shown)."""
        deadline = time.monotonic() + timeout
        while not self._exited.is_set() and time.monotonic() < deadline:
            try:
                self._pending.append(self._evt_q.get(timeout=0.05))
            except queue_mod.Empty:
                continue
            except (EOFError, OSError, ValueError):
                self._exited.wait(max(0.0, deadline - time.monotonic()))
                break

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Shutdown -> join -> terminate -> kill. Safe to call twice and on a dead engine."""
        self._closing.set()
        if self._process is None or self._detached:
            return
        if self.is_alive:
            try:
                self._cmd_q.put(protocol.Shutdown())
            except (ValueError, OSError):
                pass  # queue already closed: go straight to signals
            self._drain_until_exit(grace_s)
        if self.is_alive:
            self._process.terminate()  # the engine's SIGTERM handler stops and saves
            self._drain_until_exit(grace_s)
        if self.is_alive:
            self._process.kill()
            self._drain_until_exit(5.0)
        self._process.join(timeout=1.0)
        self._exited.wait(1.0)
        # The engine is gone: never let our own exit wait on a feeder thread nobody reads.
        self._cmd_q.cancel_join_thread()

    def _at_exit(self) -> None:
        if self._process is not None and not self._detached and self.is_alive:
            self.shutdown(5.0)

    def detach(self) -> None:
        """Leave the engine running and let this process exit without joining it.

        ``multiprocessing`` joins every non-daemonic child at interpreter exit; removing the process
        from its children registry skips that join (the engine runs in its own session and keeps
        writing events.jsonl; ``sidestep attach`` finds it again)."""
        if self._process is None:
            return
        self._detached = True
        multiprocessing.process._children.discard(self._process)  # type: ignore[attr-defined]
        self._cmd_q.cancel_join_thread()
        self._evt_q.cancel_join_thread()


# --------------------------------------------------------------------------- attach


class AttachClient:
    """Follow ``run_dir/events.jsonl`` like ``tail -f`` (from the first line) and the pid in
    ``engine.json``. Read-only, except stop (SIGTERM = stop and save).

    Lines are read by ``engine.tailer.EventTailer`` (the reader ``sidestep attach --plain`` uses): a torn
    last line waits for its newline; a line that is not an event is skipped and counted
    (``parse_errors``), and the first one is reported once, as a warning in the run's log."""

    controls: frozenset[type] = frozenset({StopRun})
    owns_engine = False

    def __init__(self, run_dir: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.run_dir = str(run_dir)
        self.events_path = Path(layout.events_path(str(run_dir)))
        self._sleep = sleep
        self._tailer = EventTailer(str(self.events_path))
        self._reported = False
        self._last: Any = None  # the latest event read
        self._pending: deque[Any] = deque()
        self._engine: dict[str, Any] | None = None
        self._liveness = "absent"

    def start(self) -> None:
        if not Path(self.run_dir).is_dir():
            raise EngineError(f"{self.run_dir} is not a folder")
        self._check()

    def _check(self) -> str:
        """engine.json + the pid (a recycled pid does not count): alive / dead / absent / remote."""
        self._liveness, info = engine_state(self.run_dir)
        self._engine = info or self._engine
        return self._liveness

    @property
    def pid(self) -> int | None:
        pid = (self._engine or {}).get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def is_alive(self) -> bool:
        return self._check() == "alive"

    @property
    def exit_code(self) -> int | None:
        return None  # not our child: the exit code is not ours to see

    def death_reason(self) -> str:
        if self._liveness == "remote":
            return f"the engine runs on {(self._engine or {}).get('host')}; attach from there"
        return "the engine process is not running (its events.jsonl shows how the run ended)"

    def send(self, cmd: Any) -> None:
        if not isinstance(cmd, StopRun):
            raise ReadOnlyClientError(f"{type(cmd).__name__} is not possible on an attached run (only stop)")
        pid = self.pid
        if pid is None or not self.is_alive:
            raise EngineDeadError("the engine of this run is not running")
        os.kill(pid, signal.SIGTERM)

    @property
    def parse_errors(self) -> int:
        """Lines of events.jsonl that were not events (skipped)."""
        return self._tailer.skipped

    def _read_new(self) -> None:
        events = self._tailer.read()
        self._pending.extend(events)
        self._last = events[-1] if events else self._last
        if self._tailer.problem is not None and not self._reported:
            self._reported = True
            last = self._last
            # Stamped like the latest event (the same seq invents no gap in the reducer's count; the lost
            # line's own seq still shows as one), so the Monitor's log shows it.
            self._pending.append(
                protocol.LogRecord(
                    run_id=getattr(last, "run_id", ""),
                    seq=getattr(last, "seq", -1),
                    ts=getattr(last, "ts", 0.0),
                    level="warning",
                    message=f"{self._tailer.problem}; skipped",
                    logger="attach",
                )
            )

    def poll(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            if not self._pending:
                self._read_new()
            if self._pending or time.monotonic() >= deadline:
                n = min(len(self._pending), POLL_CAP)
                return [self._pending.popleft() for _ in range(n)]
            self._sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop following (the engine is not ours to stop on quit)."""
        self._tailer.close()

    def detach(self) -> None:
        self.shutdown()
