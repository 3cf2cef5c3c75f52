"""What to preprocess: the job list from an audio folder or a dataset.json, with prompts (stdlib only).

An audio folder is scanned like ``sidestep dataset`` does (sidecars, durations, duplicates). A
dataset.json may be ours, Side-Step's or upstream's: ``{"metadata": ..., "samples": [...]}``,
``{"samples": [...]}`` or a bare list; ``audio_path`` is tried as written, then relative to the
JSON's folder, then ``filename`` in that folder (§5.8). Samples missing fields get the builder's
defaults. Output names are the audio path relative to the source folder with separators as ``__``.

Tags: a sample's own ``custom_tag`` wins, then the config's ``tag``, then the dataset's. Genre
prompts: ``prompt_override`` wins; otherwise ``genre_ratio`` percent of samples, picked by a shuffle
seeded 42, use their genre (falling back to the caption when a sample has none).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from engine.audio.builder import AudioReadError, audio_duration, scan_audio_dir
from engine.prepconfig import PreprocessConfig
from engine.sidecars import INSTRUMENTAL, Sidecar, make_sample

DIT_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
# ACE-Step's SFT prompt (§5.3); the metas block ends with a newline before <|endoftext|>.
PROMPT_TEMPLATE = "# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"
# ACE-Step's inference lyric branch (acestep/constants.py LYRIC_GEN_PROMPT, ACE_STEP.md §19): language
# header, the lyrics, <|endoftext|>, no trailing newline. Legacy conditioning encodes the raw lyrics.
LYRICS_TEMPLATE = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"
UNKNOWN_LANGUAGE = "unknown"  # ACE-Step's value when the language is not known
DEFAULT_MAX_DURATION = 240.0  # seconds, when no duration is known (Side-Step's fallback)
GENRE_SEED = 42


@dataclass
class Job:
    stem: str  # output name without ".pt"
    audio_path: str
    display: str  # the path shown to the user (relative to the source folder)
    sample: dict[str, Any]
    duration_s: float
    use_genre: bool = False


@dataclass
class JobList:
    jobs: list[Job]
    metadata: dict[str, Any]  # dataset-level: name, custom_tag, tag_position, genre_ratio, ...
    base_dir: str
    failed: list[tuple[str, str]] = field(default_factory=list)  # (display, reason) found while scanning
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (display, reason): duplicates left out
    warnings: list[str] = field(default_factory=list)
    max_duration: float = 0.0  # effective crop in seconds

    def tag(self, job: Job) -> tuple[str, str]:
        """(tag, position) for ``job``: its own custom_tag, else the dataset-level one."""
        return str(job.sample.get("custom_tag") or "") or self.metadata["custom_tag"], self.metadata["tag_position"]


def _inside(audio_path: str, base_dir: str) -> str | None:
    """``audio_path`` relative to ``base_dir``, or None when it lies outside."""
    rel = os.path.relpath(audio_path, base_dir)
    return None if rel.startswith("..") else rel


def output_stem(audio_path: str, base_dir: str) -> str:
    rel = _inside(audio_path, base_dir) or os.path.basename(audio_path)
    return os.path.splitext(rel)[0].replace(os.sep, "__").replace("/", "__").replace("\\", "__")


def _resolve_audio(entry: dict[str, Any], base_dir: str) -> str | None:
    candidates = []
    for key in ("audio_path", "filename"):
        value = entry.get(key)
        if isinstance(value, str) and value.strip():
            value = os.path.expanduser(value.strip())
            candidates += [
                value,
                os.path.join(base_dir, value),
                os.path.join(base_dir, os.path.basename(value.replace("\\", "/"))),
            ]
    return next((os.path.abspath(c) for c in candidates if os.path.isfile(c)), None)


Entries = list[tuple[dict[str, Any], float]]  # (sample, duration in seconds)


def _from_dataset_json(path: str) -> tuple[Entries, dict[str, Any], str, list[tuple[str, str]], list[str]]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    metadata: dict[str, Any] = {}
    if isinstance(data, dict):
        found = data.get("metadata")
        metadata = found if isinstance(found, dict) else {}
        data = data.get("samples")
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a list of samples or {{"samples": [...]}}')
    base = os.path.dirname(os.path.abspath(path))
    entries: Entries = []
    failed: list[tuple[str, str]] = []
    warnings: list[str] = []
    for number, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            failed.append((f"sample {number}", "not a JSON object"))
            continue
        display = str(entry.get("filename") or entry.get("audio_path") or f"sample {number}")
        audio = _resolve_audio(entry, base)
        if audio is None:
            failed.append(
                (display, "audio file not found (audio_path is tried as written, relative to the JSON, then by file name)")
            )
            continue
        try:
            duration = audio_duration(audio)
        except AudioReadError as exc:
            failed.append((display, exc.reason))
            continue
        filled = make_sample(audio, Sidecar("none", {}), duration, warnings=warnings)
        filled.update({k: v for k, v in entry.items() if v is not None or k in ("bpm", "prompt_override")})
        filled["audio_path"] = audio
        filled["lyrics"] = filled.get("lyrics") or INSTRUMENTAL
        entries.append((filled, duration))
    return entries, metadata, base, failed, warnings


def collect_jobs(config: PreprocessConfig) -> JobList:
    """Every sample to preprocess, with names, durations and the effective crop."""
    if config.audio_dir:
        report = scan_audio_dir(config.audio_dir)
        base = report.audio_dir
        entries = [(sample, found.duration_s) for sample, found in zip(report.samples, report.files, strict=True)]
        metadata: dict[str, Any] = {}
        failed = list(report.unreadable)
        skipped = [(dup, f"same audio as {kept}; left out") for dup, kept in report.duplicates]
        warnings = list(report.warnings)
    else:
        entries, metadata, base, failed, warnings = _from_dataset_json(os.path.expanduser(str(config.dataset_json)))
        skipped = []
    metadata = {
        "name": metadata.get("name") or os.path.basename(base.rstrip(os.sep)) or "local_dataset",
        # The config's tag (and its position) wins over the dataset.json's.
        "custom_tag": config.tag or metadata.get("custom_tag") or "",
        "tag_position": config.tag_position
        if config.tag or not metadata.get("custom_tag")
        else metadata.get("tag_position") or config.tag_position,
        "genre_ratio": config.genre_ratio or int(metadata.get("genre_ratio") or 0),
        "all_instrumental": all(bool(sample.get("is_instrumental")) for sample, _ in entries),
        "num_samples": len(entries),
    }
    jobs: list[Job] = []
    used: set[str] = set()
    for sample, duration in entries:
        audio = sample["audio_path"]
        stem = output_stem(audio, base)
        if stem in used:  # song.wav and song.flac in one folder
            stem = f"{stem}__{os.path.splitext(audio)[1].lstrip('.').lower()}"
        used.add(stem)
        jobs.append(Job(stem, audio, _inside(audio, base) or audio, sample, duration))
    _pick_genre(jobs, int(metadata["genre_ratio"]))
    longest = max((j.duration_s for j in jobs), default=0.0)
    max_duration = config.max_duration or (float(math.ceil(longest)) if longest > 0 else DEFAULT_MAX_DURATION)
    return JobList(jobs, metadata, base, failed, skipped, warnings, max_duration)


def _pick_genre(jobs: list[Job], ratio: int) -> None:
    order = list(range(len(jobs)))
    random.Random(GENRE_SEED).shuffle(order)
    chosen = set(order[: int(len(jobs) * ratio / 100)])
    for index, job in enumerate(jobs):
        override = job.sample.get("prompt_override")
        wants_genre = override == "genre" or (override != "caption" and index in chosen)
        job.use_genre = bool(wants_genre and str(job.sample.get("genre") or "").strip())


def apply_tag(text: str, tag: str, position: str) -> str:
    if not tag:
        return text
    if position == "replace":
        return tag
    if position == "append":
        return f"{text}, {tag}" if text else tag
    return f"{tag}, {text}" if text else tag


def format_prompt(caption: str, *, bpm: Any = None, timesignature: Any = "", keyscale: Any = "", duration: int = 0) -> str:
    """ACE-Step's text-encoder prompt (§5.3); missing metas read ``N/A``."""

    def meta(value: Any) -> str:
        return "N/A" if value is None or str(value).strip() == "" else str(value).strip()

    metas = f"- bpm: {meta(bpm)}\n- timesignature: {meta(timesignature)}\n- keyscale: {meta(keyscale)}\n- duration: {int(duration)} seconds\n"
    return PROMPT_TEMPLATE.format(instruction=DIT_INSTRUCTION, caption=caption, metas=metas)


def job_prompt(job: Job, jobs: JobList, duration_s: int) -> str:
    """The full prompt for ``job``: genre or caption with the trigger tag applied, plus its metas."""
    text = str((job.sample.get("genre") if job.use_genre else job.sample.get("caption")) or "").strip()
    tag, position = jobs.tag(job)
    s = job.sample
    return format_prompt(
        apply_tag(text, tag, position),
        bpm=s.get("bpm"),
        timesignature=s.get("timesignature"),
        keyscale=s.get("keyscale"),
        duration=duration_s,
    )


def format_lyrics(lyrics: str, language: str) -> str:
    """The lyric-encoder input ACE-Step builds at inference (§19): ``# Languages`` / ``# Lyric`` sections."""
    return LYRICS_TEMPLATE.format(language=language, lyrics=lyrics)


def job_language(job: Job) -> str:
    """The sample's vocal language (``language`` from dataset.json or a sidecar), else ``unknown``."""
    return str(job.sample.get("language") or "").strip() or UNKNOWN_LANGUAGE
