"""Audio folder + sidecar text -> ``dataset.json`` (ACE_STEP.md §5.8). Stdlib, plus soundfile for durations.

``scan_audio_dir`` walks a folder recursively for audio files, reads each file's sidecar and measures
its duration; ``build_dataset`` does the same and writes ``dataset.json`` atomically. Both return a
``BuildReport`` that lists what was found and every problem: files without a sidecar (kept, captioned
from the file name), unreadable files (left out) and duplicates (same bytes; the first path wins).

Sidecars, checked in this order for ``song.wav``:
1. ``song.txt`` in ``key: value`` form with a caption (Side-Step's format; lyrics come last);
2. ``song.caption.txt`` and/or ``song.lyrics.txt`` (upstream ACE-Step's format);
3. ``song.txt`` in ``key: value`` form without a caption (its first line is a known key);
4. ``song.txt`` as plain lyrics.
Text is UTF-8; a byte-order mark is ignored, and file names may be any Unicode.

Importing this module imports nothing outside the standard library (soundfile is loaded on first use),
so the UI process may call it from a worker thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

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


class AudioReadError(ValueError):
    """An audio file that cannot be read; ``str()`` is one line: the file name, then ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{os.path.basename(path)}: {reason}")


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
        fields = {}
        if os.path.isfile(cap):
            fields["caption"] = _read_text(cap).strip()
        if os.path.isfile(lyr):
            fields["lyrics"] = _read_text(lyr).strip()
        return Sidecar("caption_lyrics", fields, tuple(pair))
    if txt_text is not None and _starts_with_key(txt_text):
        return Sidecar("key_value", parsed, (txt,))
    if txt_text is not None and txt_text.strip():
        return Sidecar("lyrics_txt", {"lyrics": txt_text.lstrip("\ufeff").strip()}, (txt,))
    return Sidecar("none", {})


# --------------------------------------------------------------------------- audio facts


def unreadable_reason(path: str) -> str | None:
    """A one-line reason when ``path`` obviously cannot be decoded (missing decoder, empty file)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in FFMPEG_ONLY and shutil.which("ffmpeg") is None:
        return f"{ext[1:]} (AAC/MP4) is not readable by libsndfile and ffmpeg is not installed; convert it to FLAC or WAV"
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError as exc:
        return f"cannot open: {exc.strerror or exc}"
    return None


def audio_duration(path: str) -> float:
    """Seconds of audio in ``path``; ``AudioReadError`` (one line) when it cannot be read."""
    reason = unreadable_reason(path)
    if reason:
        raise AudioReadError(path, reason)
    if os.path.splitext(path)[1].lower() in FFMPEG_ONLY:
        return _ffprobe_duration(path)
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError by version
        raise AudioReadError(path, f"cannot read {format_name(path)}: {error_line(exc)}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioReadError(path, "no audio frames in the file")
    return info.frames / info.samplerate


def _ffprobe_duration(path: str) -> float:
    probe = shutil.which("ffprobe")
    if probe is None:
        raise AudioReadError(path, "ffprobe is not installed, so its length is unknown")
    done = subprocess.run(
        [probe, "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        seconds = float(done.stdout.strip())
    except ValueError:
        raise AudioReadError(path, f"ffprobe cannot read it: {error_line(done.stderr)}") from None
    if seconds <= 0:
        raise AudioReadError(path, "no audio in the file")
    return seconds


def format_name(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".") or "audio"


def error_line(error: BaseException | str) -> str:
    """The first line of an error (or of a tool's stderr), without libsndfile's "Error opening
    '<full path>': " prefix."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    line = lines[0] if lines else type(error).__name__
    return re.sub(r"^(Error opening .*?: |Error\s*:\s*)", "", line)


def _content_hash(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _duplicates(paths: list[str], *, prefer: set[str]) -> dict[str, str]:
    """{duplicate: kept} among files with identical bytes. Only files of equal size are hashed; the
    kept copy is the first one with a sidecar (``prefer``), else the first by path."""
    by_size: dict[int, list[str]] = {}
    for path in paths:
        by_size.setdefault(os.path.getsize(path), []).append(path)
    dropped: dict[str, str] = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        by_hash: dict[str, list[str]] = {}
        for path in group:
            by_hash.setdefault(_content_hash(path), []).append(path)
        for same in by_hash.values():
            keep = next((p for p in same if p in prefer), same[0])
            dropped.update({p: keep for p in same if p != keep})
    return dropped


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
            bpm = int(round(float(f["bpm"].split()[0])))
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
        "duration": int(round(duration_s)),
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


def scan_audio_dir(audio_dir: str) -> BuildReport:
    """Find audio files, read sidecars and durations, drop unreadable files and duplicates."""
    root = os.path.abspath(os.path.expanduser(audio_dir))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"audio folder {root} does not exist")
    report = BuildReport(audio_dir=root)
    paths = find_audio_files(root)
    kept: list[tuple[str, Sidecar, float, dict[str, Any]]] = []
    for path in paths:
        try:
            duration = audio_duration(path)
        except AudioReadError as exc:
            report.unreadable.append((os.path.relpath(path, root), exc.reason))
            continue
        sidecar = load_sidecar(path)
        kept.append((path, sidecar, duration, make_sample(path, sidecar, duration, warnings=report.warnings)))
    dropped = _duplicates([entry[0] for entry in kept], prefer={entry[0] for entry in kept if entry[1].kind != "none"})
    for path, sidecar, duration, sample in kept:
        rel = os.path.relpath(path, root)
        if path in dropped:
            report.duplicates.append((rel, os.path.relpath(dropped[path], root)))
            continue
        report.samples.append(sample)
        report.files.append(FoundFile(path, rel, sidecar.kind, duration, sample["caption"]))
        report.total_duration_s += duration
        if sidecar.kind == "none":
            report.missing_sidecars.append(rel)
    return report


def dataset_document(samples: list[dict[str, Any]], *, name: str, tag: str, tag_position: str, genre_ratio: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "custom_tag": tag,
            "tag_position": tag_position,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "num_samples": len(samples),
            "all_instrumental": all(s["is_instrumental"] for s in samples),
            "genre_ratio": genre_ratio,
        },
        "samples": samples,
    }


def write_json_atomic(path: str, data: Any) -> None:
    tmp = path + ".__writing__"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def build_dataset(
    audio_dir: str,
    *,
    tag: str = "",
    tag_position: str = "prepend",
    genre_ratio: int = 0,
    name: str = "local_dataset",
    output: str | None = None,
) -> BuildReport:
    """Scan ``audio_dir`` and write ``dataset.json`` (default ``<audio_dir>/dataset.json``)."""
    if tag_position not in TAG_POSITIONS:
        raise ValueError(f"tag position {tag_position!r} is not one of {', '.join(TAG_POSITIONS)}")
    if not 0 <= genre_ratio <= 100:
        raise ValueError(f"genre ratio must be 0..100, got {genre_ratio}")
    report = scan_audio_dir(audio_dir)
    if not report.samples:
        raise ValueError(f"no readable audio files in {report.audio_dir} ({', '.join(AUDIO_EXTENSIONS)})")
    out = os.path.abspath(os.path.expanduser(output)) if output else os.path.join(report.audio_dir, DATASET_FILE)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    doc = dataset_document(report.samples, name=name, tag=tag, tag_position=tag_position, genre_ratio=genre_ratio)
    write_json_atomic(out, doc)
    report.output = out
    return report


# --------------------------------------------------------------------------- CLI


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sidestep dataset`` (Side-Step's names, plus --dry-run and --json)."""
    parser.add_argument("-i", "--input", dest="input", required=True, metavar="AUDIO_DIR", help="folder of audio files (scanned recursively)")
    parser.add_argument("--tag", default="", help="trigger tag added to every caption")
    parser.add_argument("--tag-position", default="prepend", choices=TAG_POSITIONS, help="where the tag goes (default prepend)")
    parser.add_argument("--genre-ratio", type=int, default=0, metavar="N", help="percent of samples prompted by genre instead of caption (0-100)")
    parser.add_argument("--name", default="local_dataset", help="dataset name")
    parser.add_argument("-o", "--output", default=None, metavar="PATH", help="where to write dataset.json (default AUDIO_DIR/dataset.json)")
    parser.add_argument("--dry-run", action="store_true", help="scan and report only; write nothing")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a summary")


def run_dataset_command(args: argparse.Namespace) -> int:
    """``sidestep dataset``: print a summary (or JSON); one-line errors on stderr; 0 on success, 2 on bad input."""
    try:
        if args.dry_run:
            report = scan_audio_dir(args.input)
        else:
            report = build_dataset(
                args.input,
                tag=args.tag,
                tag_position=args.tag_position,
                genre_ratio=args.genre_ratio,
                name=args.name,
                output=args.output,
            )
    except (OSError, ValueError) as exc:
        print(f"sidestep dataset: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print("\n".join(report.summary_lines()))
    return 0


def scan_in_subprocess(audio_dir: str, *, timeout: float = 3600.0) -> BuildReport:
    """``scan_audio_dir`` in a child interpreter, for the UI process (soundfile pulls in numpy, which
    the UI never imports). Raises ``ValueError`` with the child's one-line error."""
    done = subprocess.run(
        [sys.executable, "-m", "engine.audio.builder", "-i", audio_dir, "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    if done.returncode != 0:
        raise ValueError(error_line(done.stderr).removeprefix("sidestep dataset: error: ") or f"scan failed (exit {done.returncode})")
    return BuildReport.from_dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.audio.builder", description="build dataset.json from audio files and sidecar text")
    add_dataset_arguments(parser)
    return run_dataset_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
