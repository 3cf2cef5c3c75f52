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

    # -- signals ---------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT ask for stop-and-save once; a second one while stopping exits at once
        (the user means it). SIGHUP is ignored: a dropped SSH session must not end a run."""

        def handler(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                raise SystemExit(128 + signum)
            self.state.stop_requested = True
            self.state.shutdown_requested = True
            self._wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

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
            case protocol.StartRun() | protocol.StartPreprocess():
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
