"""The dataset builder's contract (stdlib only, so the UI imports it): sidecar text, the samples of
``dataset.json`` (ACE_STEP.md §5.8) and the ``BuildReport`` a scan returns.

Sidecars, checked in this order for ``song.wav``:
1. ``song.txt`` in ``key: value`` form with a caption (Side-Step's format; lyrics come last);
2. ``song.caption.txt`` and/or ``song.lyrics.txt`` (upstream ACE-Step's format); a ``song.txt`` in
   ``key: value`` form beside them adds its other keys (bpm, key, ...: where ``sidestep audio-analyze``
   and ``sidestep convert-sidecars`` keep them);
3. ``song.txt`` in ``key: value`` form without a caption (its first line is a known key);
4. ``song.txt`` as plain lyrics.
Text is UTF-8; a byte-order mark is ignored, and file names may be any Unicode.

Reading audio (durations via soundfile, which pulls in numpy) is ``engine.audio.builder``'s job; the
UI process runs it in a child interpreter through ``scan_in_subprocess``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CLI_MODULE = "engine.cli"  # `sidestep dataset`, run by module name: this module never imports it
CLI_ERROR_PREFIX = "sidestep dataset: error: "  # how the builder's CLI reports a bad input
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
# libsndfile (soundfile) has no AAC/MP4 decoder; these need ffmpeg on PATH.
FFMPEG_ONLY = (".m4a", ".aac")
TAG_POSITIONS = ("prepend", "append", "replace")
DATASET_FILE = "dataset.json"
INSTRUMENTAL = "[Instrumental]"

# Sidecar keys (case-insensitive; spaces and dashes read as underscores) -> the field they fill.
KEY_ALIASES = {
    "caption": "caption",
    "genre": "genre",
    "bpm": "bpm",
    "tempo": "bpm",
    "key": "keyscale",
    "keyscale": "keyscale",
    "scale": "keyscale",
    "signature": "timesignature",
    "timesignature": "timesignature",
    "time_signature": "timesignature",
    "sig": "timesignature",
    "lyrics": "lyrics",
    "lyric": "lyrics",
    "tags": "tags",
    "custom_tag": "custom_tag",
    "trigger": "custom_tag",
    "is_instrumental": "is_instrumental",
    "instrumental": "is_instrumental",
    "repeat": "repeat",
    "repeats": "repeat",
    "prompt_override": "prompt_override",
    "duration": "duration",
    "language": "language",
    "lang": "language",
}
_KEY_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z _-]{0,30}?)\s*:(.*)$")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


# --------------------------------------------------------------------------- sidecars


def _key_of(line: str) -> tuple[str, str] | None:
    """(field, rest of line) when ``line`` starts a known key; a line starting with ``[`` never does."""
    if line.lstrip().startswith("["):
        return None
    match = _KEY_LINE.match(line)
    if not match:
        return None
    name = re.sub(r"[ -]+", "_", match.group(1).strip().lower())
    field_name = KEY_ALIASES.get(name)
    return (field_name, match.group(2)) if field_name else None


def parse_sidecar_text(text: str) -> dict[str, str]:
    """Parse ``key: value`` text. Only known keys start a field, values may span lines, and everything
    after ``lyrics:`` belongs to the lyrics (so lyrics go last). Lines before the first key are ignored;
    a repeated key keeps its last value."""
    fields: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.lstrip("\ufeff").splitlines():
        started = None if current == "lyrics" else _key_of(line)
        if started:
            current, rest = started
            fields[current] = [rest.strip()]
        elif current:
            fields[current].append(line.rstrip())
    # Lyrics keep their lines; any other value that wraps is one line of text.
    return {
        key: "\n".join(lines).strip() if key == "lyrics" else " ".join(x.strip() for x in lines if x.strip())
        for key, lines in fields.items()
    }


def _starts_with_key(text: str) -> bool:
    for line in text.lstrip("\ufeff").splitlines():
        if line.strip():
            return _key_of(line) is not None
    return False


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.read()


@dataclass(frozen=True)
class Sidecar:
    kind: str  # "key_value" | "caption_lyrics" | "lyrics_txt" | "none"
    fields: dict[str, str]
    files: tuple[str, ...] = ()


def load_sidecar(audio_path: str) -> Sidecar:
    """The sidecar metadata of one audio file, in the order described in the module docstring."""
    stem = os.path.splitext(audio_path)[0]
    txt, cap, lyr = stem + ".txt", stem + ".caption.txt", stem + ".lyrics.txt"
    txt_text = _read_text(txt) if os.path.isfile(txt) else None
    parsed = parse_sidecar_text(txt_text) if txt_text is not None else {}
    if parsed.get("caption"):
        return Sidecar("key_value", parsed, (txt,))
    pair = [p for p in (cap, lyr) if os.path.isfile(p)]
    if pair:
        # A key: value song.txt beside the pair (no caption in it) adds its other keys: bpm, key, ...
        keep = txt_text is not None and _starts_with_key(txt_text)
        fields = {k: v for k, v in parsed.items() if k not in ("caption", "lyrics")} if keep else {}
        if os.path.isfile(cap):
            fields["caption"] = _read_text(cap).strip()
        if os.path.isfile(lyr):
            fields["lyrics"] = _read_text(lyr).strip()
        return Sidecar("caption_lyrics", fields, (txt, *pair) if keep else tuple(pair))
    if txt_text is not None and _starts_with_key(txt_text):
        return Sidecar("key_value", parsed, (txt,))
    if txt_text is not None and txt_text.strip():
        return Sidecar("lyrics_txt", {"lyrics": txt_text.lstrip("\ufeff").strip()}, (txt,))
    return Sidecar("none", {})


# --------------------------------------------------------------------------- names and errors


def format_name(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".") or "audio"


def error_line(error: BaseException | str) -> str:
    """The first line of an error (or of a tool's stderr), without libsndfile's "Error opening
    '<full path>': " prefix."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    line = lines[0] if lines else type(error).__name__
    return re.sub(r"^(Error opening .*?: |Error\s*:\s*)", "", line)


def find_audio_files(audio_dir: str) -> list[str]:
    """Audio files under ``audio_dir`` (recursive, hidden files and folders skipped), sorted by path."""
    found = []
    for root, dirs, files in os.walk(audio_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                found.append(os.path.join(root, name))
    return sorted(found, key=lambda p: os.path.relpath(p, audio_dir))


# --------------------------------------------------------------------------- samples


def default_caption(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"\s+", " ", stem.replace("_", " ").replace("-", " ")).strip()


def _parse_bool(value: str) -> bool | None:
    low = value.strip().lower()
    return True if low in _TRUE else False if low in _FALSE else None


def make_sample(path: str, sidecar: Sidecar, duration_s: float, *, warnings: list[str] | None = None) -> dict[str, Any]:
    """One ``dataset.json`` sample (§5.8 fields) from an audio file and its sidecar."""
    warnings = warnings if warnings is not None else []
    f = sidecar.fields
    name = os.path.basename(path)
    raw_lyrics = f.get("lyrics", "")
    lyrics = raw_lyrics or INSTRUMENTAL
    bpm = None
    if f.get("bpm"):
        try:
            bpm = round(float(f["bpm"].split()[0]))
        except ValueError:
            warnings.append(f"{name}: bpm {f['bpm']!r} is not a number; left empty")
    instrumental = _parse_bool(f["is_instrumental"]) if f.get("is_instrumental") else None
    if instrumental is None:
        instrumental = not raw_lyrics or INSTRUMENTAL.lower() in raw_lyrics.lower()
    repeat = 1
    if f.get("repeat"):
        try:
            repeat = max(1, int(f["repeat"]))
        except ValueError:
            warnings.append(f"{name}: repeat {f['repeat']!r} is not a whole number; using 1")
    override = f.get("prompt_override", "").strip().lower() or None
    if override not in (None, "genre", "caption"):
        warnings.append(f"{name}: prompt_override {override!r} is not genre or caption; ignored")
        override = None
    return {
        "id": hashlib.sha1(os.path.abspath(path).encode("utf-8")).hexdigest()[:8],
        "audio_path": os.path.abspath(path),
        "filename": name,
        "caption": f.get("caption") or default_caption(path),
        "genre": f.get("genre", ""),
        "lyrics": lyrics,
        "raw_lyrics": raw_lyrics,
        "formatted_lyrics": "",
        "bpm": bpm,
        "keyscale": f.get("keyscale", ""),
        "timesignature": f.get("timesignature", ""),
        "duration": round(duration_s),
        "language": f.get("language") or "unknown",
        "is_instrumental": bool(instrumental),
        "custom_tag": f.get("custom_tag", ""),  # per-sample only; the dataset's tag is in metadata
        "labeled": sidecar.kind != "none",
        "prompt_override": override,
        "repeat": repeat,
    }


@dataclass
class FoundFile:
    """One audio file the scan kept (for the UI's file table)."""

    path: str
    relpath: str
    sidecar: str  # Sidecar.kind
    duration_s: float
    caption: str


@dataclass
class BuildReport:
    audio_dir: str
    output: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    files: list[FoundFile] = field(default_factory=list)
    missing_sidecars: list[str] = field(default_factory=list)  # relpaths, kept with a file-name caption
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason), left out
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (relpath left out, relpath kept)
    warnings: list[str] = field(default_factory=list)
    total_duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildReport:
        data = dict(data)
        data["files"] = [FoundFile(**f) for f in data.get("files", [])]
        for key in ("unreadable", "duplicates"):
            data[key] = [tuple(pair) for pair in data.get(key, [])]
        return cls(**data)

    def summary_lines(self) -> list[str]:
        lines = [
            f"{len(self.samples)} audio files, {self.total_duration_s / 60:.1f} min in {self.audio_dir}",
            f"sidecars: {len(self.samples) - len(self.missing_sidecars)} found, {len(self.missing_sidecars)} missing",
        ]
        lines += [f"no sidecar (caption from the file name): {p}" for p in self.missing_sidecars]
        lines += [f"unreadable, left out: {p}: {why}" for p, why in self.unreadable]
        lines += [f"duplicate of {kept}, left out: {p}" for p, kept in self.duplicates]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.output:
            lines.append(f"wrote {self.output}")
        return lines


def dataset_document(
    samples: list[dict[str, Any]], *, name: str, tag: str, tag_position: str, genre_ratio: int
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "custom_tag": tag,
            "tag_position": tag_position,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "num_samples": len(samples),
            "all_instrumental": all(s["is_instrumental"] for s in samples),
            "genre_ratio": genre_ratio,
        },
        "samples": samples,
    }


def scan_in_subprocess(audio_dir: str, *, timeout: float = 3600.0) -> BuildReport:
    """``scan_audio_dir`` in a child interpreter, for the UI process (soundfile pulls in numpy, which
    the UI never imports). Raises ``ValueError`` with the child's one-line error."""
    done = subprocess.run(
        [sys.executable, "-m", CLI_MODULE, "dataset", "-i", audio_dir, "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    if done.returncode != 0:
        raise ValueError(error_line(done.stderr).removeprefix(CLI_ERROR_PREFIX) or f"scan failed (exit {done.returncode})")
    return BuildReport.from_dict(json.loads(done.stdout.strip().splitlines()[-1]))
