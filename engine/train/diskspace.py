"""Saving on a disk that fills up.

A failed save never ends a run by itself: the training state lives in memory, the previous checkpoint
stays as it was (every folder is written under a temporary name first), and the user is told which
folder is full and how much a save needs. A periodic or requested save that could not be written is
owed: it is tried again as soon as the filesystem has room for it (checked at step boundaries, at
most every ``RECHECK_S``), at the next save point, and at stop. The last save of a run (the final
adapter, or the stop checkpoint) waits up to ``LAST_SAVE_WAIT_S`` for space to be freed before the
run ends as failed, naming the path and the size needed.

Space is also watched before it runs out: a save whose estimated size (the last save of its kind,
measured on disk) is larger than the free space, or a save that leaves room for less than one more,
gets one warning until space recovers.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

LAST_SAVE_WAIT_S = 300.0
LAST_SAVE_POLL_S = 10.0
RECHECK_S = 30.0
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# torch.save's C++ writer (RuntimeError) and safetensors' Rust writer (SafetensorError) do not raise
# OSError: what their messages say, lower-cased.
_WRITER_MARKERS = ("inline_container", "pytorchstreamwriter", "file write failed", "os error", "no space left", "storagefull")


class SaveFailed(RuntimeError):
    """The last save of a run could not be written; the message names the path, the size and the fix."""


def is_write_failure(exc: BaseException) -> bool:
    """An exception that says the bytes did not reach the disk (not a bug in what was being saved)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return True
        if any(m in str(current).lower() for m in _WRITER_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(path: str) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def folder_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class SpaceWatch:
    """Size estimates, early warnings and the owed save of one run (see the module docstring).

    ``estimate`` maps resumable (True: adapter + training state) / adapter-only (False) to a first
    guess in bytes, replaced by the measured size of each successful save."""

    def __init__(
        self,
        run_dir: str,
        warn: Callable[[str], None],
        estimate: dict[bool, int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_dir = run_dir
        self.warn = warn
        self.size = dict(estimate)
        self.clock = clock
        self.owed: str | None = None  # the kind of a save that could not be written yet
        self._low_warned = False
        self._next_check = 0.0

    def need(self, resumable: bool) -> int:
        return int(self.size[resumable] * 1.1) + 64 * 1024

    def before(self, resumable: bool) -> None:
        free, need = free_bytes(self.run_dir), self.need(resumable)
        if free >= need:
            return
        if not self._low_warned:
            self._low_warned = True
            self.warn(
                f"disk nearly full: {human(free)} free in {self.run_dir}, a checkpoint takes about {human(need)};"
                " free space there or the next save may fail"
            )

    def saved(self, target: str, resumable: bool) -> None:
        """A save succeeded: remember its size, settle a debt, warn if the next one will not fit."""
        self.size[resumable] = max(folder_bytes(target), 1)
        self.owed = None
        free = free_bytes(self.run_dir)
        if free >= 2 * self.need(resumable):
            self._low_warned = False
        elif not self._low_warned:
            self._low_warned = True
            self.warn(
                f"disk nearly full: {human(free)} free in {self.run_dir} after saving {os.path.basename(target)}"
                f" ({human(self.size[resumable])}); room for at most one more checkpoint: free space there"
            )

    def describe_failure(self, exc: BaseException, kind: str, target: str, resumable: bool) -> str:
        """One line: what was not saved, where, why, and the space needed."""
        free, need = free_bytes(self.run_dir), self.need(resumable)
        err = getattr(exc, "errno", None)
        full = err in DISK_FULL_ERRNOS or free < need or "no space left" in str(exc).lower()
        why = (
            "disk full"
            if full
            else f"write failed ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        )
        return f"{why}: the {kind} checkpoint {target} was not saved (needs about {human(need)}, {human(free)} free)"

    def owe(self, kind: str) -> None:
        if self.owed != "requested":  # a requested save outranks a periodic one
            self.owed = kind
        self._next_check = self.clock() + RECHECK_S

    def retry_due(self, resumable: bool = True) -> bool:
        """An owed save, and the filesystem has room for it now (statvfs at most every RECHECK_S)."""
        if self.owed is None or self.clock() < self._next_check:
            return False
        self._next_check = self.clock() + RECHECK_S
        return free_bytes(self.run_dir) >= self.need(resumable)


class SafeWriter:
    """A TensorBoard writer whose failures (a full disk makes its writer thread raise on the next call)
    switch TensorBoard off with one warning instead of ending the run."""

    def __init__(self, writer: Any, warn: Any) -> None:
        self._writer: Any = writer
        self._warn = warn

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._writer, name) if self._writer is not None else None

        def call(*args: Any, **kwargs: Any) -> Any:
            if attr is None:
                return None
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                writer, self._writer = self._writer, None
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self._warn(f"TensorBoard logging stopped ({reason}); the run goes on and events.jsonl still records it")
                if name != "close" and writer is not None:
                    try:
                        writer.close()
                    except Exception:
                        pass
                return None

        return call
