"""The one way the project writes a file or a folder: never half written, never a shared temp (stdlib only).

A file is written to a temp file beside it (same folder, so the rename never crosses a file system) with a
name no other writer uses (``.<name>.<pid>-<random>.__writing__``), flushed and fsynced, renamed over the
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
them and a crashed writer's leftovers can be recognised (``is_temp``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".__writing__"

PathLike = str | os.PathLike[str]


def temp_path(path: PathLike, kind: str = "") -> str:
    """A fresh, unused-by-anyone name beside ``path`` for a temp file or folder."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{kind}{os.getpid()}-{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


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
            old = temp_path(target, "old-")
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
