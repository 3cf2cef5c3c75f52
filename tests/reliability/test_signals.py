"""SIGTERM when the engine's main thread cannot run Python (stuck in C: an import under a tight memory
cap, a long load). A real child process installs the real handlers, then its main thread sleeps in
libc with SIGTERM blocked, so only another thread can take the signal: exactly the case where
Python's own handlers never run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import ctypes, signal, sys
    from engine.channel.control import CommandInbox
    inbox = CommandInbox(None)
    inbox.install_signal_handlers()
    inbox.interrupt_now = sys.argv[1] == "loading"
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the main thread is deaf from here
    print("ready", flush=True)
    ctypes.CDLL(None).sleep(60)  # in C, never back to Python
    """
)


def _start(phase: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, phase], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def _exits_within(child: subprocess.Popen[str], seconds: float) -> int | None:
    try:
        return child.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


def test_sigterm_before_training_starts_exits_even_when_stuck_in_c() -> None:
    child = _start("loading")
    try:
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        assert _exits_within(child, 10) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 10
        assert "SIGTERM before training started: exiting now" in (child.stderr.read() if child.stderr else "")
    finally:
        child.kill()
        child.wait()


def test_a_second_sigterm_while_training_exits_at_once_even_when_stuck_in_c() -> None:
    child = _start("training")
    try:
        child.send_signal(signal.SIGTERM)
        assert _exits_within(child, 4) is None  # training: the first one asks for stop-and-save, politely
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        assert _exits_within(child, 5) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
        assert "a second SIGTERM: exiting now" in (child.stderr.read() if child.stderr else "")
    finally:
        child.kill()
        child.wait()
