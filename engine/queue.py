"""The run queue: training configs waiting their turn, in one JSON file (stdlib only; DESIGN.md §9).

The file lives beside the user's settings and presets (``$SIDESTEP_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/sidestep``, else ``~/.config/sidestep``)::

    queue.json             {"schema_version": 1, "next_id": N, "paused": false, "entries": [{id, state, name,
                            output_dir, config, added, started, ended, error, pid}, ...]}  (in run order)
    queue.json.lock        flock'ed around every read-modify-write: two writers never lose an entry
    queue.worker.lock      flock'ed by the one worker for its life (its pid inside)
    queue-worker.log       the detached worker's own output (each run logs to its run folder)

Every write goes through ``engine.fsutil`` (temp file + fsync + rename), so a reader never sees half a
file. An entry holds the resolved, validated config (``engine.config.to_dict``) with absolute paths, so
the worker runs it the same from any folder; its run folder is an ordinary one (``sidestep attach``,
``sidestep runs``, ``--resume-from``). Ids are never reused. States: queued -> running -> done | failed |
stopped; ``error`` is the one-line reason of a failed run. ``paused``: the worker takes no new entry
(it finishes the current run, then ends); starting a worker clears it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from engine import fsutil

QUEUE_SCHEMA_VERSION = 1
QUEUE_FILE = "queue.json"
WORKER_LOCK_FILE = "queue.worker.lock"
WORKER_LOG_FILE = "queue-worker.log"
STATES = ("queued", "running", "done", "failed", "stopped")
FINISHED = ("done", "failed", "stopped")


class QueueError(ValueError):
    """A queue operation that cannot be done; the message is one line saying what and how to fix it."""


class WorkerBusy(QueueError):
    """Another queue worker is already working (``pid``)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a queue worker is already working ({who}); it takes new entries as it goes")


def queue_dir() -> str:
    """Where the queue lives: the folder of the user's settings and presets."""
    env = os.environ.get("SIDESTEP_CONFIG_DIR")
    if env:
        return env
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return os.path.join(os.environ["APPDATA"], "sidestep")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sidestep")


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    state: str
    name: str
    output_dir: str
    config: dict[str, Any]
    added: float
    started: float | None = None
    ended: float | None = None
    error: str = ""
    pid: int | None = None  # the worker that ran (or runs) it

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_FIELDS = tuple(Entry.__dataclass_fields__)


def _entry(raw: Any, path: str) -> Entry:
    if not isinstance(raw, dict) or set(raw) - set(_FIELDS) or not {"id", "state", "config", "output_dir"} <= set(raw):
        raise QueueError(f"{path}: an entry is not a queue entry ({str(raw)[:80]}); fix or delete the file")
    if raw["state"] not in STATES or not isinstance(raw["id"], int) or not isinstance(raw["config"], dict):
        raise QueueError(f"{path}: entry {raw.get('id')!r} has a bad id, state or config; fix or delete the file")
    return Entry(**{"name": "", "added": 0.0, **raw})


# --------------------------------------------------------------------------- locks


def _open_lock(path: str) -> int:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise QueueError(f"{path}: cannot open the queue's lock file ({exc.strerror})") from None


def _lock(fd: int, *, block: bool) -> bool:
    """An exclusive lock on ``fd``; with ``block=False``, False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte (LK_LOCK retries for ~10 s)
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if block else msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except (BlockingIOError, PermissionError):
        return False
    return True


class WorkerLock:
    """The one worker's hold on the queue: the OS drops it when the process dies, however it dies."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- the queue


class RunQueue:
    """The queue file in ``folder`` (default ``queue_dir()``). Every change is read-modify-write under
    ``queue.json.lock``; reads need no lock (the file is replaced atomically)."""

    def __init__(self, folder: str | None = None) -> None:
        self.folder = os.path.abspath(folder or queue_dir())
        self.path = os.path.join(self.folder, QUEUE_FILE)
        self.lock_path = self.path + ".lock"
        self.worker_lock_path = os.path.join(self.folder, WORKER_LOCK_FILE)
        self.worker_log_path = os.path.join(self.folder, WORKER_LOG_FILE)

    # ------------------------------------------------------------------ file
    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {"next_id": 1, "paused": False, "entries": []}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise QueueError(f"{self.path}: unreadable ({exc}); fix or delete the file") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise QueueError(f"{self.path}: not a queue file (no 'entries' list); fix or delete the file")
        if data.get("schema_version") != QUEUE_SCHEMA_VERSION:
            raise QueueError(f"{self.path}: schema_version {data.get('schema_version')!r}, expected {QUEUE_SCHEMA_VERSION}")
        entries = [_entry(raw, self.path) for raw in data["entries"]]
        next_id = data.get("next_id")
        if not isinstance(next_id, int):
            next_id = 1
        return {
            "next_id": max([next_id, *(e.id + 1 for e in entries)]),
            "paused": data.get("paused") is True,
            "entries": entries,
        }

    def _write(self, data: dict[str, Any]) -> None:
        fsutil.write_json(
            self.path,
            {
                "schema_version": QUEUE_SCHEMA_VERSION,
                "next_id": data["next_id"],
                "paused": data["paused"],
                "entries": [asdict(e) for e in data["entries"]],
            },
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the queue lock; yield the file's contents; write them back on a clean exit."""
        fd = _open_lock(self.lock_path)
        try:
            _lock(fd, block=True)
            data = self._read()
            yield data
            self._write(data)
        finally:
            os.close(fd)  # drops the lock

    def _change(self, fn: Callable[[dict[str, Any]], Any]) -> Any:
        with self._locked() as data:
            return fn(data)

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[Entry]:
        return list(self._read()["entries"])

    def paused(self) -> bool:
        return bool(self._read()["paused"])

    def set_paused(self, paused: bool) -> None:
        """Pause: the worker finishes its current run and takes no other; unpause: it may go on."""

        def pause(data: dict[str, Any]) -> None:
            data["paused"] = paused

        self._change(pause)

    def get(self, entry_id: int) -> Entry:
        return _find(self.entries(), entry_id)

    # ------------------------------------------------------------------ editing
    def add(self, config: dict[str, Any], *, name: str = "") -> Entry:
        """Append a validated, resolved config (``engine.config.to_dict``). Refused when another waiting
        or running entry already writes to the same output folder (unless this one resumes it)."""
        output_dir = os.path.abspath(os.path.expanduser(str(config.get("output_dir") or "")))
        if not config.get("output_dir"):
            raise QueueError("the config has no output_dir; pass --output-dir")

        def add(data: dict[str, Any]) -> Entry:
            if not config.get("resume_from"):
                for e in data["entries"]:
                    if e.output_dir == output_dir and e.state in ("queued", "running"):
                        raise QueueError(
                            f"--output-dir {output_dir} is already {e.state} as entry {e.id}; choose another output folder"
                        )
            entry = Entry(
                id=data["next_id"],
                state="queued",
                name=name or os.path.basename(output_dir),
                output_dir=output_dir,
                config=dict(config, output_dir=output_dir),
                added=time.time(),
            )
            data["next_id"] += 1
            data["entries"].append(entry)
            return entry

        return self._change(add)

    def remove(self, entry_id: int) -> Entry:
        def remove(data: dict[str, Any]) -> Entry:
            entry = _find(data["entries"], entry_id)
            if entry.state == "running":
                raise QueueError(
                    f"entry {entry_id} is running; stop it first (`sidestep attach {entry.output_dir} --plain --stop`)"
                )
            data["entries"].remove(entry)
            return entry

        return self._change(remove)

    def move(self, entry_id: int, position: int) -> list[Entry]:
        """Put an entry at 1-based ``position`` of the list (clamped to its ends)."""

        def move(data: dict[str, Any]) -> list[Entry]:
            entry = _find(data["entries"], entry_id)
            if entry.state != "queued":
                raise QueueError(f"entry {entry_id} is {entry.state}; only queued entries can be moved")
            if position < 1:
                raise QueueError(f"position {position}: positions start at 1")
            data["entries"].remove(entry)
            data["entries"].insert(min(position, len(data["entries"]) + 1) - 1, entry)
            return list(data["entries"])

        return self._change(move)

    def clear(self, *, finished_only: bool = False) -> list[Entry]:
        """Remove every entry but a running one (``finished_only``: done, failed and stopped ones only)."""

        def clear(data: dict[str, Any]) -> list[Entry]:
            keep = ("queued", "running") if finished_only else ("running",)
            gone = [e for e in data["entries"] if e.state not in keep]
            data["entries"] = [e for e in data["entries"] if e.state in keep]
            return gone

        return self._change(clear)

    # ------------------------------------------------------------------ the worker's side
    def claim_next(self, pid: int) -> Entry | None:
        """The first queued entry, marked running by ``pid``; None when nothing waits or the queue is paused."""

        def claim(data: dict[str, Any]) -> Entry | None:
            if data["paused"]:
                return None
            for i, e in enumerate(data["entries"]):
                if e.state == "queued":
                    data["entries"][i] = replace(e, state="running", started=time.time(), ended=None, error="", pid=pid)
                    return data["entries"][i]
            return None

        return self._change(claim)

    def finish(self, entry_id: int, state: str, error: str = "") -> Entry | None:
        """Record how an entry's run ended; None when the entry was removed meanwhile."""
        if state not in FINISHED:
            raise ValueError(f"finish state {state!r} not in {FINISHED}")

        def finish(data: dict[str, Any]) -> Entry | None:
            for i, e in enumerate(data["entries"]):
                if e.id == entry_id:
                    data["entries"][i] = replace(e, state=state, ended=time.time(), error=_one_line(error))
                    return data["entries"][i]
            return None

        return self._change(finish)

    def recover(self, pid: int) -> list[Entry]:
        """Entries left ``running`` by a worker that is gone (only call with the worker lock held)
        become failed, saying so; the run folder can be resumed with ``--resume-from auto``."""

        def recover(data: dict[str, Any]) -> list[Entry]:
            fixed = []
            for i, e in enumerate(data["entries"]):
                if e.state == "running" and e.pid != pid:
                    why = f"the queue worker (pid {e.pid}) ended during this run; resume it with --resume-from auto"
                    data["entries"][i] = replace(e, state="failed", ended=time.time(), error=why)
                    fixed.append(data["entries"][i])
            return fixed

        return self._change(recover)

    def acquire_worker_lock(self) -> WorkerLock:
        """Become the one worker, or raise ``WorkerBusy`` naming the one that is."""
        fd = _open_lock(self.worker_lock_path)
        if not _lock(fd, block=False):
            os.close(fd)
            raise WorkerBusy(self._lock_pid())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return WorkerLock(fd)

    def worker_pid(self) -> int | None:
        """The pid of the live worker, else None (the lock itself is asked, never a pid guess)."""
        if not os.path.exists(self.worker_lock_path):
            return None
        fd = _open_lock(self.worker_lock_path)
        try:
            if _lock(fd, block=False):
                return None
        finally:
            os.close(fd)
        return self._lock_pid() or 0

    def _lock_pid(self) -> int | None:
        deadline = time.monotonic() + 1.0  # the holder writes its pid right after taking the lock
        while True:
            try:
                with open(self.worker_lock_path, encoding="utf-8") as fh:
                    text = fh.read().split()
            except OSError:
                text = []
            if text and text[0].isdigit():
                return int(text[0])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def _find(entries: list[Entry], entry_id: int) -> Entry:
    for e in entries:
        if e.id == entry_id:
            return e
    ids = ", ".join(str(e.id) for e in entries) or "none"
    raise QueueError(f"no queue entry {entry_id} (entries: {ids}); see `sidestep queue list`")


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
