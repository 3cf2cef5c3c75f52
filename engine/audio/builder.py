"""Audio folder + sidecar text -> ``dataset.json`` (ACE_STEP.md §5.8): the part that reads audio.

``scan_audio_dir`` walks a folder recursively for audio files, reads each file's sidecar and measures
its duration (soundfile, or ffprobe for AAC/MP4); ``build_dataset`` does the same and writes
``dataset.json`` atomically. Both return a ``BuildReport`` that lists what was found and every
problem: files without a sidecar (kept, captioned from the file name), unreadable files (left out)
and duplicates (same bytes; the first path wins). Sidecar rules, samples and the report are
``engine.sidecars``; the UI runs its scan in a child process as ``python -m engine.cli dataset --dry-run --json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from typing import Any

from engine import fsutil
from engine.sidecars import (
    AUDIO_EXTENSIONS,
    CLI_ERROR_PREFIX,
    DATASET_FILE,
    FFMPEG_ONLY,
    TAG_POSITIONS,
    BuildReport,
    FoundFile,
    Sidecar,
    dataset_document,
    error_line,
    find_audio_files,
    format_name,
    load_sidecar,
    make_sample,
)


class AudioReadError(ValueError):
    """An audio file that cannot be read; ``str()`` is one line: the file name, then ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{os.path.basename(path)}: {reason}")


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


def scan_audio_dir(audio_dir: str) -> BuildReport:
    """Find audio files, read sidecars and durations, drop unreadable files and duplicates."""
    root = os.path.abspath(os.path.expanduser(audio_dir))
    if os.path.exists(root) and not os.path.isdir(root):
        raise FileNotFoundError(f"audio folder {root} is a file, not a folder; pass the folder that holds the audio files")
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
    fsutil.write_json(out, doc)
    report.output = out
    return report


# --------------------------------------------------------------------------- CLI


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
        print(f"{CLI_ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print("\n".join(report.summary_lines()))
    return 0
