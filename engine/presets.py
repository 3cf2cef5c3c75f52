"""Training presets: named, partial configs merged over the defaults (stdlib only).

A preset is a JSON file ``<name>.json``::

    {"schema_version": 1, "name": "recommended", "description": "...", "config": {"rank": 64, ...}}

``config`` holds ``TrainConfig`` keys only, never paths, the device or run-specific settings
(``FORBIDDEN_KEYS``). The file name (without ``.json``) is the preset's identity; ``name`` inside the
file is informative. Search order, first wins for a name:

1. ``./presets/`` in the current directory (project-local presets, next to the user's data);
2. the user config dir: ``$XDG_CONFIG_HOME/sidestep/presets`` (``~/.config/sidestep/presets``;
   ``%APPDATA%\\sidestep\\presets`` on Windows);
3. the built-ins shipped with the package (``builtin_dir()``).

Validation goes through ``engine.config.parse`` (the one schema) with placeholder paths, and every
problem comes back as one ``PresetError`` line naming the file and the keys.
"""

from __future__ import annotations

import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import config as schema
from engine import fsutil

PRESET_SCHEMA_VERSION = 1
SOURCES = ("project", "user", "builtin")
FORBIDDEN_KEYS = frozenset(
    {"checkpoint_dir", "dataset_dir", "output_dir", "resume_from", "log_dir", "run_name", "overwrite", "device"}
)
TOP_LEVEL_KEYS = ("schema_version", "name", "description", "config")
BUILTIN_ORDER = (
    "recommended",
    "high_quality",
    "quick_test",
    "vram_24gb_plus",
    "vram_16gb",
    "vram_12gb",
    "vram_8gb",
    "lokr",
    "loha",
    "oft",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Required paths are filled with placeholders so a partial preset can go through the full parser.
_PLACEHOLDER_PATHS = {"checkpoint_dir": "<checkpoint_dir>", "dataset_dir": "<dataset_dir>", "output_dir": "<output_dir>"}


class PresetError(ValueError):
    """A preset that cannot be used; the message is one line naming the file and the key(s)."""


@dataclass(frozen=True, slots=True)
class PresetInfo:
    name: str
    description: str
    source: str  # "project" | "user" | "builtin"
    path: str
    error: str | None = None  # set when the file is listed but does not validate


# --------------------------------------------------------------------------- where presets live


def project_dir() -> Path:
    return Path.cwd() / "presets"


def user_dir() -> Path:
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "sidestep" / "presets"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sidestep" / "presets"


def builtin_dir() -> Path | None:
    """The built-in presets: a source checkout or editable install has them in the repo's
    ``presets/``; a wheel installs them as data files under ``<prefix>/share/sidestep/presets``."""
    engine_dir = Path(__file__).resolve().parent
    candidates = [engine_dir / "builtin_presets"]
    if (engine_dir.parent / "pyproject.toml").is_file():  # never pick up an unrelated site-packages/presets
        candidates.append(engine_dir.parent / "presets")
    schemes = [None] + ([f"{os.name}_user"] if f"{os.name}_user" in sysconfig.get_scheme_names() else [])
    for scheme in schemes:
        data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
        candidates.append(Path(data) / "share" / "sidestep" / "presets")
    candidates.append(Path(sys.prefix) / "share" / "sidestep" / "presets")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


def search_path() -> list[tuple[str, Path]]:
    """``(source, directory)`` in search order. The project dir is skipped when it *is* the built-in
    dir (running from the repository root)."""
    builtin = builtin_dir()
    out: list[tuple[str, Path]] = []
    for source, directory in (("project", project_dir()), ("user", user_dir()), ("builtin", builtin)):
        if directory is None:
            continue
        if source != "builtin" and builtin is not None and _same_dir(directory, builtin):
            continue
        out.append((source, directory))
    return out


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# --------------------------------------------------------------------------- validation


def validate(document: Any, origin: str) -> dict[str, Any]:
    """Check a preset document and return its config as validated, coerced values (only the keys
    the preset sets). ``origin`` names the file in error messages."""
    if not isinstance(document, dict):
        raise PresetError(f"{origin}: expected a JSON object with schema_version, name, description and config")
    unknown = [k for k in document if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise PresetError(f"{origin}: unknown top-level key {unknown[0]!r} (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    version = document.get("schema_version")
    if version is None:
        raise PresetError(f"{origin}: schema_version is missing (this version reads {PRESET_SCHEMA_VERSION})")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PresetError(f"{origin}: schema_version must be a positive whole number, got {version!r}")
    if version > PRESET_SCHEMA_VERSION:
        raise PresetError(
            f"{origin}: schema_version {version} was written by a newer Side-Step TUI "
            f"(this version reads up to {PRESET_SCHEMA_VERSION}); upgrade to use it"
        )
    for key in ("name", "description"):
        if key in document and not isinstance(document[key], str):
            raise PresetError(f"{origin}: {key} must be text, got {document[key]!r}")
    values = document.get("config")
    if not isinstance(values, dict):
        raise PresetError(f"{origin}: config must be a JSON object of settings, got {values!r}")
    return validate_values(values, origin)


def validate_values(values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Validate a partial config through the schema; returns the coerced values of the given keys."""
    forbidden = sorted(k for k in values if k in FORBIDDEN_KEYS)
    if forbidden:
        raise PresetError(
            f"{origin}: config key {forbidden[0]!r} is not allowed in a preset "
            f"(presets never store paths, the device or run-specific settings: {', '.join(sorted(FORBIDDEN_KEYS))})"
        )
    if "schema_version" in values:
        raise PresetError(f"{origin}: config key 'schema_version' belongs at the top level, not inside config")
    variant = values.get("model_variant")
    if isinstance(variant, str) and (
        os.path.isabs(variant) or "/" in variant or "\\" in variant or variant.startswith("~") or variant in (".", "..")
    ):
        raise PresetError(
            f"{origin}: model_variant {variant!r} is a path; a preset names a model (e.g. 'turbo' or a folder name under "
            "the checkpoint root), never a folder elsewhere: set model_variant to the model's name"
        )
    try:
        parsed = schema.parse({**_PLACEHOLDER_PATHS, **values})
    except schema.ConfigError as exc:
        problems = "; ".join(f"key {e.field!r}: {e.message}" for e in exc.errors)
        raise PresetError(f"{origin}: {problems}") from None
    return {key: getattr(parsed, key) for key in values}


def _read(path: Path) -> dict[str, Any]:
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"{origin}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PresetError(f"{origin}: not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(f"{origin}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    validate(document, origin)
    return document


def _description(path: Path) -> str:
    """Best-effort description of a file that may not validate (for listing)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ""
    description = document.get("description") if isinstance(document, dict) else None
    return description if isinstance(description, str) else ""


# --------------------------------------------------------------------------- public API


def list_presets() -> list[PresetInfo]:
    """Every preset visible in the search path, first occurrence of a name wins. Project and user
    presets come first (by name), then the built-ins in their curated order. Invalid files are
    listed with ``error`` set, so the UI can show why they cannot be used."""
    seen: dict[str, PresetInfo] = {}
    for source, directory in search_path():
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.json")):
            name = path.stem
            if name in seen or not path.is_file():
                continue
            try:
                document = _read(path)
                info = PresetInfo(name, document.get("description", ""), source, str(path))
            except PresetError as exc:
                info = PresetInfo(name, _description(path), source, str(path), error=str(exc))
            seen[name] = info

    def order(info: PresetInfo) -> tuple[int, int, str]:
        if info.source != "builtin":
            return (SOURCES.index(info.source), 0, info.name)
        rank = BUILTIN_ORDER.index(info.name) if info.name in BUILTIN_ORDER else len(BUILTIN_ORDER)
        return (len(SOURCES), rank, info.name)

    return sorted(seen.values(), key=order)


def find_preset(name: str) -> PresetInfo:
    """The winning ``PresetInfo`` for ``name``; ``PresetError`` naming what exists otherwise."""
    for source, directory in search_path():
        path = directory / f"{name}.json"
        if path.is_file():
            return PresetInfo(name, _description(path), source, str(path))
    available = ", ".join(p.name for p in list_presets()) or "none"
    raise PresetError(f"{name}: no such preset (available: {available})")


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".json") or os.sep in name_or_path or (os.altsep or "/") in name_or_path


def load_preset(name_or_path: str) -> dict[str, Any]:
    """The validated partial config of a preset (a name from the search path, or a file path)."""
    path = Path(name_or_path)
    if not _looks_like_path(name_or_path):
        path = Path(find_preset(name_or_path).path)
    elif not path.is_file() and path.name == name_or_path:  # "recommended.json" given as a name
        path = Path(find_preset(path.stem).path)
    if not path.is_file():
        raise PresetError(f"{path}: no such preset file")
    document = _read(path)
    return validate_values(document["config"], str(path))


def apply_preset(name: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (a partial or full config dict) with the preset's values on top. The caller parses
    the result with ``engine.config.parse``."""
    return {**(base or {}), **load_preset(name)}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _write_atomic(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_json(path, document)


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise PresetError(f"{name!r}: a preset name is 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")


def _builtin_names() -> set[str]:
    builtin = builtin_dir()
    return {p.stem for p in builtin.glob("*.json")} if builtin else set()


def save_preset(
    name: str,
    values: dict[str, Any],
    description: str = "",
    directory: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Validate and write ``values`` as preset ``name`` (atomically) into ``directory`` (default: the
    user dir). Path, device and run-specific keys (``FORBIDDEN_KEYS``) and ``schema_version`` are
    dropped, so a full config dict can be saved as is. Refuses to replace an existing file or to
    shadow a built-in name unless ``overwrite``. Returns the file path."""
    _check_name(name)
    target_dir = Path(directory) if directory is not None else user_dir()
    path = target_dir / f"{name}.json"
    if not overwrite:
        if name in _builtin_names():
            raise PresetError(f"{path}: {name!r} is a built-in preset name; pass overwrite=True to shadow it")
        if path.exists():
            raise PresetError(f"{path}: already exists; pass overwrite=True to replace it")
    kept = {k: v for k, v in values.items() if k not in FORBIDDEN_KEYS and k != "schema_version"}
    validated = validate_values(kept, str(path))
    document = {
        "schema_version": PRESET_SCHEMA_VERSION,
        "name": name,
        "description": description,
        "config": _jsonable(validated),
    }
    _write_atomic(path, document)
    return str(path)


def export_preset(name: str, path: str | os.PathLike[str]) -> str:
    """Write preset ``name`` (validated, normalised) to ``path``, or to ``path/<name>.json`` when
    ``path`` is a directory. Returns the file written."""
    info = find_preset(name)
    document = _read(Path(info.path))
    values = validate_values(document["config"], info.path)
    target = Path(path)
    if target.is_dir():
        target = target / f"{name}.json"
    out = {
        "schema_version": PRESET_SCHEMA_VERSION,
        "name": document.get("name", name),
        "description": document.get("description", ""),
        "config": _jsonable(values),
    }
    _write_atomic(target, out)
    return str(target)


def import_preset(path: str | os.PathLike[str], *, overwrite: bool = False) -> PresetInfo:
    """Validate a preset file and copy it into the user dir under its file name."""
    source = Path(path)
    document = _read(source)
    name = source.stem
    _check_name(name)
    target = user_dir() / f"{name}.json"
    if not overwrite:
        if name in _builtin_names():
            raise PresetError(f"{source}: {name!r} is a built-in preset name; rename the file or pass --overwrite to shadow it")
        if target.exists():
            raise PresetError(f"{source}: {target} already exists; pass --overwrite to replace it")
    _write_atomic(target, document)
    return PresetInfo(name, document.get("description", ""), "user", str(target))
