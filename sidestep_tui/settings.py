"""User settings: default paths, theme and key overrides, stored as JSON under XDG.

``$SIDESTEP_CONFIG_DIR`` (tests) or ``$XDG_CONFIG_HOME/sidestep`` or ``~/.config/sidestep`` holds
``settings.json``. The file is read once (cached) and written atomically (temp file + rename); a save
clears the cache. Unknown keys in the file are kept out of the dataclass but reported, never guessed at.
No textual import: the CLI and tests use this without the UI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine import fsutil

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
DEFAULT_THEME = "sidestep"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What the app remembers between sessions."""

    checkpoint_root: str = ""
    """Folder holding the model folders (acestep-v15-*/, vae/, ...). Empty until first run asks."""
    output_root: str = ""
    """Where new runs go (one folder per run) and what the Runs screen scans."""
    last_dataset_dir: str = ""
    """The tensor folder picked last time (pre-filled on the Dataset screen)."""
    last_audio_dir: str = ""
    """The audio folder preprocessed last time (pre-filled on the Dataset screen's audio tab)."""
    keymap: dict[str, str] = field(default_factory=dict)
    """Binding id -> keys, e.g. {"monitor.stop": "ctrl+s"}; applied with ``App.set_keymap``."""
    theme: str = DEFAULT_THEME
    """A registered Textual theme name."""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def config_dir() -> Path:
    env = os.environ.get("SIDESTEP_CONFIG_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "sidestep"


def settings_path() -> Path:
    return config_dir() / SETTINGS_FILE


class SettingsError(ValueError):
    """The settings file exists but cannot be used (bad JSON, wrong types)."""


def _from_dict(data: Any, source: str) -> Settings:
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: expected a JSON object")
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - names)
    if unknown:
        log.warning("%s: ignoring unknown settings %s", source, ", ".join(unknown))
    values: dict[str, Any] = {}
    for name in names & set(data):
        value = data[name]
        if name == "keymap":
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise SettingsError(f"{source}: keymap must map binding ids to key strings")
            values[name] = dict(value)
        elif not isinstance(value, str):
            raise SettingsError(f"{source}: {name} must be text, got {value!r}")
        else:
            values[name] = value
    return Settings(**values)


@lru_cache(maxsize=8)
def _load_cached(path: str) -> Settings:
    p = Path(path)
    if not p.exists():
        return Settings()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{p}: not valid JSON ({exc})") from None
    return _from_dict(data, str(p))


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """The saved settings, or the defaults when there is no file yet. Raises ``SettingsError`` for a
    file that exists but is broken (the caller shows it; we never silently start from scratch)."""
    return _load_cached(str(Path(path) if path is not None else settings_path()))


def save_settings(settings: Settings, path: str | os.PathLike[str] | None = None) -> Path:
    """Write atomically (``engine.fsutil``: temp file in the same folder + rename) and clear the loader cache."""
    target = Path(path) if path is not None else settings_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_json(target, dataclasses.asdict(settings), sort_keys=True)
    _load_cached.cache_clear()
    return target
