"""The command inbox: how the outside world steers a run, applied only at optimizer-step boundaries.

Commands arrive on the UI's queue (``StopRun``, ``SaveCheckpoint``, ``PauseRun``, ``ResumeRun``,
``Shutdown``) or as signals (SIGTERM/SIGINT = stop and save, from ``sidestep attach`` or Ctrl-C in a
headless run). Both only set state here; the trainer reads it between steps, so a checkpoint is never
taken from a half-applied update. The parent watch lives here too: when the UI that started the
engine disappears, the run keeps going (DESIGN §1) and only the queue sink is switched off.
"""

from __future__ import annotations

import os
import queue as queue_mod
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine import protocol


@dataclass
class ControlState:
    stop_requested: bool = False
    save_requested: bool = False
    paused: bool = False
    shutdown_requested: bool = False


class CommandInbox:
    """Non-blocking command intake. ``cmd_q`` may be None (headless runs take signals only)."""

    def __init__(self, cmd_q: Any = None, *, parent_pid: int | None = None, on_parent_lost: Callable[[], None] | None = None):
        self.cmd_q = cmd_q
        self.parent_pid = parent_pid
        self.on_parent_lost = on_parent_lost
        self.state = ControlState()
        self.parent_alive = True
        self._wake = threading.Event()
        self._signals = 0
        # True while there is nothing to save (imports, model load): a signal then exits at once.
        # The trainer clears it when the training loop starts; the engine when it is up and idle.
        self.interrupt_now = True

    # -- signals ---------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT ask for stop-and-save once; a second one while stopping exits at once
        (the user means it), and so does the first one before training starts (nothing to save).
        SIGHUP is ignored: a dropped SSH session must not end a run.

        Python runs handlers only between bytecodes of the main thread; one stuck in C (an import
        under a tight memory cap, a long load) would never see them. So the signal also wakes a
        watcher thread (``signal.set_wakeup_fd``), which ends the process itself: on the second
        signal, or when the first one, sent before training, has not ended it within a grace time."""

        def handler(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals > 1 or self.interrupt_now:
                raise SystemExit(128 + signum)
            self.state.stop_requested = True
            self.state.shutdown_requested = True
            self._wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _watch_signals(self)

    # -- commands --------------------------------------------------------------------------------
    def _apply(self, cmd: Any) -> Any | None:
        """Update state for control commands; return job commands (StartRun, ...) to the caller."""
        match cmd:
            case protocol.StopRun():
                self.state.stop_requested = True
                self.state.paused = False
            case protocol.SaveCheckpoint():
                self.state.save_requested = True
            case protocol.PauseRun():
                self.state.paused = True
            case protocol.ResumeRun():
                self.state.paused = False
            case protocol.Shutdown():
                self.state.shutdown_requested = True
                self.state.stop_requested = True
                self.state.paused = False
            case protocol.StartRun() | protocol.StartPreprocess() | protocol.StartAnalysis() | protocol.StartEstimate():
                return cmd
            case _:
                raise protocol.ProtocolError(f"unexpected command {type(cmd).__name__}")
        self._wake.set()
        return None

    def poll(self) -> list[Any]:
        """Drain queued commands without blocking. Returns job commands that arrived (a StartRun
        while a run is active is handed back so the caller can refuse it with a message)."""
        self._check_parent()
        jobs: list[Any] = []
        if self.cmd_q is None:
            return jobs
        while True:
            try:
                cmd = self.cmd_q.get_nowait()
            except queue_mod.Empty:
                break
            except (EOFError, OSError):
                self._lose_parent()
                break
            job = self._apply(cmd)
            if job is not None:
                jobs.append(job)
        return jobs

    def next_job(self, timeout: float) -> Any | None:
        """Idle loop: wait up to ``timeout`` for a job command, applying control commands."""
        self._check_parent()
        if self.cmd_q is None:
            self._wake.wait(timeout)
            self._wake.clear()
            return None
        try:
            cmd = self.cmd_q.get(timeout=timeout)
        except queue_mod.Empty:
            return None
        except (EOFError, OSError):
            self._lose_parent()
            return None
        return self._apply(cmd)

    def wait_while_paused(self, tick: float = 0.2) -> None:
        """Block between steps while paused; commands (resume, stop, save) still get through."""
        while self.state.paused and not self.state.stop_requested:
            self._wake.wait(tick)
            self._wake.clear()
            self.poll()

    def take_save_request(self) -> bool:
        requested, self.state.save_requested = self.state.save_requested, False
        return requested

    def reset_for_next_job(self) -> None:
        shutdown = self.state.shutdown_requested
        self.state = ControlState(shutdown_requested=shutdown)

    # -- parent watch ----------------------------------------------------------------------------
    def _check_parent(self) -> None:
        if self.parent_alive and self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._lose_parent()

    def _lose_parent(self) -> None:
        if self.parent_alive:
            self.parent_alive = False
            if self.on_parent_lost is not None:
                self.on_parent_lost()


# --------------------------------------------------------------------------- the signal watcher

_WATCHED: list[CommandInbox] = []  # the inbox whose handlers were installed last (one watcher per process)
GRACE_S = 3.0  # how long a signal before training may take to end the process the polite way


def _watch_signals(inbox: CommandInbox) -> None:
    if _WATCHED:
        _WATCHED[0] = inbox
        return
    _WATCHED.append(inbox)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watcher, args=(read_fd,), name="sidestep-signal-watch", daemon=True).start()


def _exit_now(signum: int, why: str) -> None:
    try:
        os.write(2, f"sidestep: {why}: exiting now, nothing saved\n".encode())
    finally:
        os._exit(128 + signum)


def _watcher(read_fd: int) -> None:
    seen = 0
    while True:
        data = os.read(read_fd, 64)
        if not data:
            return
        for signum in data:
            if signum not in (signal.SIGTERM, signal.SIGINT):
                continue
            seen += 1
            inbox = _WATCHED[0]
            if seen > 1:
                _exit_now(signum, f"a second {signal.Signals(signum).name}")
            if inbox.interrupt_now:
                timer = threading.Timer(
                    GRACE_S, _exit_now, args=(signum, f"{signal.Signals(signum).name} before training started")
                )
                timer.daemon = True  # a process that ends the polite way does not wait for it
                timer.start()
