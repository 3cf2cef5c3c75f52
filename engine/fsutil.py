"""The one way the project writes a file or a folder: never half written, never a shared temp (stdlib only).

A file is written to a temp file beside it (same folder, so the rename never crosses a file system) with a
name no other writer uses (``.<name>.<pid>-<start>-<random>.__writing__``, ``<start>`` = the writer
process's start time, so a leftover can be told from a live writer's temp even when the pid is reused), flushed and fsynced, renamed over the
target with ``os.replace`` and the folder fsynced where the platform allows. Whatever goes wrong on the
way (an exception in the writer, a full disk, Ctrl+C), the temp file is removed and the old file, if any,
is left as it was.

- ``with atomic_file(path) as fh: ...`` (text, or ``"wb"`` for bytes; ``torch.save(obj, fh)`` works);
- ``atomic_write(path, writer)`` for libraries that want a file name (``writer(tmp_path)``, e.g.
  ``safetensors.torch.save_file``);
- ``write_text`` / ``write_bytes`` / ``write_json``;
- ``with atomic_dir(path) as tmp: ...`` builds a whole folder under a temp name and swaps it in (files
  inside it are written plainly: the commit fsyncs every one of them before the rename).

Temp names end in ``TEMP_SUFFIX`` and start with a dot, so listings that skip hidden names never see
them and a crashed writer's leftovers can be recognised (``is_temp``) and cleared (``clean_stale_temps``:
only those whose writer process is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".__writing__"

PathLike = str | os.PathLike[str]


_OLD_KIND = "old-"
# .<name>.<kind><pid>-<start>-<random>.__writing__ (older versions wrote no <start>)
_TEMP_RE = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>(?:old-)?)(?P<pid>\d+)-(?:(?P<start>\d+)-)?[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$"
)
_START_SLACK_S = 2


def process_start(pid: int) -> int | None:
    """Whole seconds since the epoch at which ``pid`` started, or None when it does not run (or
    cannot be looked at). psutil is imported here only: the stdlib-only callers never need it."""
    try:
        import psutil

        return int(psutil.Process(pid).create_time())
    except Exception:
        return None


_MY_START: int | None = None


def _my_start() -> int:
    global _MY_START
    if _MY_START is None:
        _MY_START = process_start(os.getpid()) or 0
    return _MY_START


def temp_path(path: PathLike, kind: str = "") -> str:
    """A fresh, unused-by-anyone name beside ``path`` for a temp file or folder."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{kind}{os.getpid()}-{_my_start()}-{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


def _writer_alive(pid: int, start: int | None) -> bool:
    if pid == os.getpid():
        return start is None or abs(start - _my_start()) <= _START_SLACK_S
    actual = process_start(pid)
    if actual is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # it exists (another user's): leave its files alone
        return True
    return start is None or abs(actual - start) <= _START_SLACK_S  # else the pid now names another process


def clean_stale_temps(folder: PathLike) -> list[str]:
    """Remove the temp files and folders in ``folder`` (not below it) whose writer process is gone:
    a save killed half way. A live writer's temps are never touched. An ``old-`` temp (the previous
    folder of an ``atomic_dir`` swap that was killed between its two renames) whose target is missing
    is put back under its name instead. Returns what was removed or restored."""
    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    done: list[str] = []
    for entry in sorted(names):
        m = _TEMP_RE.match(entry)
        if m is None:
            continue
        start = m.group("start")
        if _writer_alive(int(m.group("pid")), int(start) if start else None):
            continue
        path = os.path.join(folder, entry)
        target = os.path.join(folder, m.group("name"))
        if m.group("kind") == _OLD_KIND and not os.path.lexists(target):
            try:
                os.replace(path, target)
            except OSError:
                continue
            done.append(f"{path} (restored as {target})")
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            continue
        done.append(path)
    if done:
        fsync_dir(folder)
    return done


def is_temp(name: str) -> bool:
    """True for the name of a temp file or folder of this module (a torn write when no writer lives)."""
    return os.path.basename(name).endswith(TEMP_SUFFIX)


def fsync_dir(folder: PathLike) -> None:
    """Make a rename inside ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _commit(tmp: str, path: str) -> None:
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file for writing (``mode`` "w" or "wb"); on a clean exit it replaces ``path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file mode must be 'w' or 'wb', not {mode!r}")
    path = os.fspath(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _commit(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path: PathLike, writer: Callable[[str], Any]) -> None:
    """``writer(tmp_path)`` writes the whole file at ``tmp_path``; then it replaces ``path``."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        writer(tmp)
        _fsync_file(tmp)
        _commit(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def write_text(path: PathLike, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def write_json(path: PathLike, data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``data`` as UTF-8 JSON (non-ASCII kept as is) with a final newline. The text is built before
    the file is opened, so a value JSON cannot hold leaves nothing behind."""
    write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def _fsync_tree(root: str) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            _fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_dir(path: PathLike, *, merge: bool = False) -> Iterator[Path]:
    """Build a folder in a temp folder beside ``path``; on a clean exit it becomes ``path``.

    By default an existing ``path`` is replaced as a whole (moved aside, the new one renamed in, the old
    one deleted). With ``merge=True`` each built file replaces its namesake inside an existing ``path``
    and every other file there stays (an adapter saved into a checkpoint that also holds its training
    state)."""
    target = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = temp_path(target)
    os.mkdir(tmp)
    old = None
    try:
        yield Path(tmp)
        _fsync_tree(tmp)
        if merge and os.path.isdir(target):
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(target, name))
            fsync_dir(target)
            return
        if os.path.lexists(target):
            old = temp_path(target, _OLD_KIND)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)  # put the old folder back: nothing is lost
                old = None
                raise
        else:
            os.replace(tmp, target)
        fsync_dir(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
