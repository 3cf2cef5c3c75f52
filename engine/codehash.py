"""The Python code of a model folder, which runs when the model loads (``trust_remote_code``), named with
its sha256 hashes and compared with the hashes first seen for that folder (stdlib only).

Official ACE-Step releases publish no hash list we could verify here, so the rule is trust on first use:
the first time a model folder's code is looked at (the Models screen, a run's start), the hashes of its
top-level ``.py`` files (what ``from_pretrained`` can import from it) are stored per folder in
``model_code.json`` in the user's settings folder (``$SIDESTEP_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/sidestep``, else ``~/.config/sidestep``, where settings.json lives), written atomically.
Later, a file whose hash differs, a new file or a removed one marks the folder **custom code** and
gives a warning per file ("modeling_x.py changed since first seen on 2026-11-30: review it"); the stored
hashes are never replaced by what is found later, so the mark stays until the entry is removed.

``outside_root`` is the other half of the rule: code runs only from a folder under the checkpoint root
the user chose, symlinks resolved.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import fsutil

STORE_FILE = "model_code.json"
STORE_VERSION = 1
SHORT = 12  # hex digits of a hash the UI shows


def store_path() -> Path:
    """``model_code.json`` in the settings folder (the one ``sidestep_tui.settings`` uses)."""
    env = os.environ.get("SIDESTEP_CONFIG_DIR")
    if env:
        return Path(env) / STORE_FILE
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "sidestep" / STORE_FILE


@dataclass(frozen=True, slots=True)
class CodeFile:
    name: str  # file name inside the model folder
    sha256: str  # full hex digest

    @property
    def short(self) -> str:
        return self.sha256[:SHORT]


@dataclass(frozen=True, slots=True)
class CodeReport:
    folder: str  # the model folder, symlinks resolved (the store's key)
    files: tuple[CodeFile, ...] = ()  # the .py files that can run, by name
    first_seen: float | None = None  # when the recorded hashes were taken (None: nothing recorded)
    changed: tuple[str, ...] = ()  # files whose hash differs from the recorded one
    added: tuple[str, ...] = ()  # files not there when first seen
    removed: tuple[str, ...] = ()  # files recorded then, gone now
    problem: str = ""  # why the code or the store could not be read (one line)

    @property
    def custom(self) -> bool:
        """The folder's code is not what it was when first seen."""
        return bool(self.changed or self.added or self.removed)

    def warnings(self) -> list[str]:
        """One line per difference, naming the file and the day it was first seen."""
        day = time.strftime("%Y-%m-%d", time.localtime(self.first_seen)) if self.first_seen else "?"
        lines = [f"{name} changed since first seen on {day}: review it" for name in self.changed]
        lines += [f"{name} is new since the code was first seen on {day}: review it" for name in self.added]
        lines += [f"{name} was removed since first seen on {day}" for name in self.removed]
        return lines

    def log_line(self) -> str:
        """What a run's log says first about the code it will run (full hashes)."""
        if not self.files:
            return f"model code: none in {self.folder} (no .py files; transformers' own classes run)"
        listed = ", ".join(f"{f.name} sha256 {f.sha256}" for f in self.files)
        return f"model code that runs (trust_remote_code) from {self.folder}: {listed}"


def code_files(model_dir: str | os.PathLike[str]) -> tuple[CodeFile, ...]:
    """The top-level ``.py`` files of ``model_dir`` with their sha256 (``OSError`` when one is unreadable)."""
    found: list[CodeFile] = []
    with os.scandir(model_dir) as it:
        names = sorted(e.name for e in it if e.name.endswith(".py") and e.is_file())
    for name in names:
        digest = hashlib.sha256()
        with open(os.path.join(model_dir, name), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        found.append(CodeFile(name, digest.hexdigest()))
    return tuple(found)


def _read_store(path: Path) -> tuple[dict[str, Any], str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, ""
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {}, f"{path} is unreadable ({exc}); the first-seen hashes are not compared"
    folders = data.get("folders") if isinstance(data, dict) else None
    if not isinstance(folders, dict):
        return {}, f"{path} is not a model code record; the first-seen hashes are not compared"
    return folders, ""


def check(model_dir: str | os.PathLike[str], *, record: bool = True, store: str | os.PathLike[str] | None = None) -> CodeReport:
    """The folder's code against the hashes first seen for it; ``record`` stores them when it has none
    (a folder without code records nothing). Never raises for a bad store: ``problem`` says it."""
    folder = os.path.realpath(os.path.expanduser(os.fspath(model_dir)))
    try:
        files = code_files(folder)
    except OSError as exc:
        return CodeReport(folder, problem=f"cannot read the model code in {folder} ({exc.strerror or exc})")
    path = Path(store) if store is not None else store_path()
    folders, problem = _read_store(path)
    entry = folders.get(folder)
    entry = entry if isinstance(entry, dict) else {}
    recorded = entry.get("files")
    if not isinstance(recorded, dict) or not isinstance(entry.get("first_seen"), (int, float)):
        if record and files and not problem:
            now = time.time()
            folders[folder] = {"first_seen": now, "files": {f.name: f.sha256 for f in files}}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fsutil.write_json(path, {"version": STORE_VERSION, "folders": folders}, sort_keys=True)
            except OSError as exc:
                return CodeReport(folder, files, problem=f"cannot record the model code hashes in {path} ({exc})")
            return CodeReport(folder, files, first_seen=now)
        return CodeReport(folder, files, problem=problem)
    now_by_name = {f.name: f.sha256 for f in files}
    return CodeReport(
        folder,
        files,
        first_seen=float(entry["first_seen"]),
        changed=tuple(n for n in sorted(now_by_name) if n in recorded and recorded[n] != now_by_name[n]),
        added=tuple(n for n in sorted(now_by_name) if n not in recorded),
        removed=tuple(n for n in sorted(recorded) if n not in now_by_name),
        problem=problem,
    )


def outside_root(root: str | os.PathLike[str], model_dir: str | os.PathLike[str]) -> str | None:
    """Why code in ``model_dir`` would run from outside the checkpoint ``root`` (symlinks resolved: the
    folder itself, or one of its ``.py`` files, linking elsewhere), or None when it stays inside."""
    real_root = os.path.realpath(os.path.expanduser(os.fspath(root)))
    folder = os.path.expanduser(os.fspath(model_dir))
    real = os.path.realpath(folder)
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        via = f" (a link to {real})" if real != os.path.abspath(folder) else ""
        return f"{folder}{via} is outside the checkpoint root {real_root}"
    try:
        names = sorted(n for n in os.listdir(real) if n.endswith(".py"))
    except OSError:
        return None  # a missing folder is named by whoever loads it
    for name in names:
        target = os.path.realpath(os.path.join(real, name))
        if os.path.commonpath([real_root, target]) != real_root:
            return f"{os.path.join(folder, name)} is a link to {target}, outside the checkpoint root {real_root}"
    return None
