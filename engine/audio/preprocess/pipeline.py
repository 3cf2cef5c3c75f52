"""Two-pass preprocessing: audio + text -> one training ``.pt`` per song (ACE_STEP.md §4.1, §5.7).

Pass 1 loads the VAE and the text encoder; per file it decodes, normalises, VAE-encodes (tiled) and
encodes prompt and lyrics, writing ``<stem>.tmp.pt``. Both models are then unloaded and pass 2 loads
only the DiT checkpoint's condition encoder; per intermediate it builds ``encoder_hidden_states`` and
``context_latents``, writes ``<stem>.pt`` and deletes the intermediate. Peak device memory is the
larger of the two passes, never their sum.

Crash safety and resume: every file is written through ``engine.fsutil`` (a temp file renamed into
place), so a file that exists is complete. A re-run skips finished ``.pt`` files, reuses intermediates whose
fingerprint (settings + prompt + lyrics + audio size/mtime) still matches, and redoes the rest.
One bad file (unreadable, too short, NaN latents, out of memory) is reported by name and skipped.
A finished file made with different settings is kept and reported; delete it to redo it.

Progress goes to ``emit`` as ``PreprocessProgress`` events: one ``scan`` event (plus one per file
the scan rejected), one event per file per pass (``index`` counts from 1), then ``done``.
``should_stop()`` is polled between files; a stopped run resumes on the next call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine import fsutil
from engine import prepconfig as cfgmod
from engine.audio.builder import AudioReadError
from engine.audio.preprocess.output import now, read_json, save_tensors, write_manifest
from engine.audio.preprocess.samples import Job, JobList, collect_jobs, format_lyrics, job_language, job_prompt
from engine.protocol import FileStatus, PreprocessProgress, PreprocessStage
from engine.ptinspect import INTERMEDIATE_SUFFIX, MIXED_CONDITIONING, TENSOR_FORMAT
from engine.ptinspect import PREPROCESS_META_FILE as META
from engine.sidecars import error_line

TMP_SUFFIX = INTERMEDIATE_SUFFIX
Emit = Callable[[Any], None]


@dataclass
class PreprocessSummary:
    output_dir: str
    total: int = 0
    processed: int = 0  # final files written by this run
    skipped: int = 0  # final files that already existed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[str] = field(default_factory=list)
    stopped: bool = False
    audio_seconds: float = 0.0  # audio encoded in pass 1 by this run
    elapsed_s: float = 0.0
    pass_seconds: dict[str, float] = field(default_factory=dict)  # "pass1"/"pass2": wall time incl. model load
    peak_gpu_mb: dict[str, float] = field(default_factory=dict)  # "pass1"/"pass2": torch peak allocated (CUDA only)

    def line(self) -> str:
        speed = (
            f", {self.audio_seconds / self.elapsed_s:.1f} s of audio per second"
            if self.elapsed_s > 0 and self.audio_seconds
            else ""
        )
        state = "stopped; run again to resume" if self.stopped else "done"
        return (
            f"{state}: {self.processed} written, {self.skipped} already done, {len(self.failed)} failed "
            f"of {self.total} in {self.elapsed_s:.1f} s{speed} -> {self.output_dir}"
        )


class _Run:
    """One call of ``run_preprocess``: the job list, the output folder and the event helper."""

    def __init__(self, config: cfgmod.PreprocessConfig, emit: Emit, should_stop: Callable[[], bool]) -> None:
        self.config = config
        self.out = os.path.abspath(os.path.expanduser(config.output_dir))
        self.emit_fn = emit
        self.should_stop = should_stop
        self.start = time.monotonic()
        self.summary = PreprocessSummary(output_dir=self.out)
        self.previous = read_json(os.path.join(self.out, META)) or {}
        self.checksums: dict[str, str] = dict(self.previous.get("checksums") or {})
        self.fingerprints: dict[str, str] = dict(self.previous.get("fingerprints") or {})
        self.written: set[str] = set()  # final files written by this call
        # Conditioning of every final file; files from before formats were recorded are legacy.
        self.conditioning: dict[str, str] = dict(self.previous.get("file_conditioning") or {})

    def emit(
        self,
        stage: PreprocessStage,
        index: int,
        total: int,
        file: str,
        status: FileStatus,
        message: str = "",
        audio_seconds: float = 0.0,
    ) -> None:
        self.emit_fn(
            PreprocessProgress(
                stage=stage,
                index=index,
                total=total,
                file=file,
                status=status,
                message=message,
                audio_seconds=audio_seconds,
                elapsed_s=round(time.monotonic() - self.start, 3),
            )
        )

    def path(self, job: Job, suffix: str = ".pt") -> str:
        return os.path.join(self.out, job.stem + suffix)


def run_preprocess(
    config: cfgmod.PreprocessConfig,
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    model_ready: Callable[[], object] | None = None,
) -> PreprocessSummary:
    """Preprocess ``config``'s audio into ``config.output_dir``. Raises only for problems that stop
    everything (no audio, missing model folders); per-file problems land in ``summary.failed``.

    ``model_ready``: for a caller still writing the DiT checkpoint (the demo builds it meanwhile); it is
    called after pass 1, which needs only the VAE and text encoder, and the model folder is checked then
    instead of up front. Its exceptions propagate."""
    from engine.audio.preprocess import encode
    from engine.models.loader import resolve_device, resolve_dtype

    run = _Run(config, emit, should_stop)
    if os.path.exists(run.out) and not os.path.isdir(run.out):
        raise ValueError(f"output folder {run.out} is a file, not a folder; choose a folder for the tensors")
    try:
        os.makedirs(run.out, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"output folder {run.out} cannot be created ({exc.strerror}); choose a folder you can write to"
        ) from None
    for name in os.listdir(run.out):
        if fsutil.is_temp(name):  # torn writes of a crashed run
            os.remove(os.path.join(run.out, name))
    jobs = collect_jobs(config)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    model_dir = _model_dir(config) if model_ready is None else _expected_model_dir(config)
    _scan_events(run, jobs)
    if not jobs.jobs:
        raise ValueError(f"nothing to preprocess: no readable audio in {config.source()}")

    total = len(jobs.jobs)
    settings = _settings(config, jobs, model_dir)
    fingerprints = {job.stem: _fingerprint(settings, job, jobs) for job in jobs.jobs}
    try:
        todo1 = _pass1_plan(run, jobs, fingerprints, total)
        if todo1 and not run.should_stop():
            with _measure(run, "pass1", device):
                models = encode.load_pass1(config.checkpoint_dir, device, dtype)
                try:
                    _pass1(run, jobs, todo1, models, fingerprints, total)
                finally:
                    models.close()
        if model_ready is not None:
            model_ready()
            _model_dir(config)  # now it must be there
        todo2 = _pass2_plan(run, jobs)
        if todo2 and not run.should_stop():
            with _measure(run, "pass2", device):
                models2 = encode.load_pass2(config.checkpoint_dir, model_dir, device, dtype)
                try:
                    _pass2(run, jobs, todo2, models2, total)
                finally:
                    models2.close()
        elif todo2:
            run.summary.stopped = True
    finally:
        _write_index(run, jobs, settings, str(dtype).removeprefix("torch."), str(device))
    run.summary.total = total + len(jobs.failed)  # the unreadable files were tried too
    run.summary.elapsed_s = time.monotonic() - run.start
    s = run.summary
    status: FileStatus = "skipped" if s.stopped else "failed" if s.failed and not (s.processed or s.skipped) else "ok"
    run.emit("done", total, total, "", status, s.line(), s.audio_seconds)
    return run.summary


@contextlib.contextmanager
def _measure(run: _Run, name: str, device: Any) -> Iterator[None]:
    """Wall time and (on CUDA) peak allocated memory of one pass, models included."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.monotonic()
    try:
        yield
    finally:
        run.summary.pass_seconds[name] = time.monotonic() - start
        if cuda:
            run.summary.peak_gpu_mb[name] = torch.cuda.max_memory_allocated(device) / 2**20


def _model_dir(config: cfgmod.PreprocessConfig) -> str:
    from engine.audio.preprocess.encode import PreprocessModelError
    from engine.discovery import DiscoveryError, resolve_model_dir

    try:
        return resolve_model_dir(config.checkpoint_dir, config.model_variant)
    except DiscoveryError as exc:
        raise PreprocessModelError(str(exc)) from None


def _expected_model_dir(config: cfgmod.PreprocessConfig) -> str:
    """Where ``_model_dir`` will find the model once it is written (the same path, not yet checked)."""
    from engine.audio.preprocess.encode import PreprocessModelError
    from engine.discovery import DiscoveryError, check_model_name

    try:
        return check_model_name(config.checkpoint_dir, config.model_variant)
    except DiscoveryError as exc:
        raise PreprocessModelError(str(exc)) from None


def _scan_events(run: _Run, jobs: JobList) -> None:
    run.summary.failed += jobs.failed
    run.summary.warnings += jobs.warnings  # duplicates left out get their own "skipped" event below
    seconds = sum(min(j.duration_s, jobs.max_duration) for j in jobs.jobs)
    message = (
        f"{len(jobs.jobs)} files, {seconds / 60:.1f} min of audio (crop {jobs.max_duration:g} s), {len(jobs.failed)} unreadable"
    )
    run.emit("scan", 0, len(jobs.jobs), "", "ok", message, seconds)
    for display, reason in jobs.failed:
        run.emit("scan", 0, len(jobs.jobs), display, "failed", reason)
    for display, reason in jobs.skipped:
        run.emit("scan", 0, len(jobs.jobs), display, "skipped", reason)


def _settings(config: cfgmod.PreprocessConfig, jobs: JobList, model_dir: str) -> dict[str, Any]:
    """What the tensors depend on (recorded, and hashed into every fingerprint)."""
    return {
        "checkpoint_dir": os.path.abspath(os.path.expanduser(config.checkpoint_dir)),
        "model_variant": config.model_variant,
        "model_dir": os.path.abspath(model_dir),
        "normalize": config.normalize,
        "target_db": config.target_db if config.normalize == "peak" else None,
        "target_lufs": config.target_lufs if config.normalize == "lufs" else None,
        "max_duration": jobs.max_duration,
        "custom_tag": jobs.metadata["custom_tag"],
        "tag_position": jobs.metadata["tag_position"],
        "genre_ratio": jobs.metadata["genre_ratio"],
        "conditioning": config.conditioning,
    }


def _fingerprint(settings: dict[str, Any], job: Job, jobs: JobList) -> str:
    stat = os.stat(job.audio_path)
    data = {
        "settings": settings,
        "audio": [job.audio_path, stat.st_size, int(stat.st_mtime)],
        "prompt": job_prompt(job, jobs, 0),
        "lyrics": job.sample.get("lyrics"),
        "language": job_language(job) if settings["conditioning"] == "inference" else None,
    }
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _pass1_plan(run: _Run, jobs: JobList, fingerprints: dict[str, str], total: int) -> list[Job]:
    """Report the files pass 1 can skip; return the ones it must encode."""
    todo = []
    for index, job in enumerate(jobs.jobs, start=1):
        final, tmp = run.path(job), run.path(job, TMP_SUFFIX)
        seconds = min(job.duration_s, jobs.max_duration)  # carried so a UI's ETA leaves skipped audio out
        if os.path.isfile(final):
            run.summary.skipped += 1
            old = run.fingerprints.get(job.stem + ".pt")
            if old is not None and old != fingerprints[job.stem]:
                note = "finished earlier with different settings or text; kept (delete it to redo)"
                run.summary.warnings.append(f"{job.display}: {note}")
            else:
                note = "already done"
                run.fingerprints[job.stem + ".pt"] = fingerprints[job.stem]
            run.emit("pass1", index, total, job.display, "skipped", note, seconds)
        elif os.path.isfile(tmp) and _tmp_fingerprint(tmp) == fingerprints[job.stem]:
            run.emit("pass1", index, total, job.display, "skipped", "encoded earlier; pass 2 will finish it", seconds)
        else:
            todo.append(job)
    return todo


def _pass2_plan(run: _Run, jobs: JobList) -> list[Job]:
    """Intermediates to finish. One whose final file exists is a leftover of a crash between the
    final rename and the delete: it is removed, not redone."""
    todo = []
    for job in jobs.jobs:
        tmp = run.path(job, TMP_SUFFIX)
        if os.path.isfile(tmp):
            if os.path.isfile(run.path(job)):
                os.remove(tmp)
            else:
                todo.append(job)
    return todo


def _tmp_fingerprint(path: str) -> str | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("fingerprint")
    except Exception:  # a torn or foreign file: treated as absent, pass 1 redoes it
        return None


def _pass1(run: _Run, jobs: JobList, todo: list[Job], models: Any, fingerprints: dict[str, str], total: int) -> None:
    import torch

    from engine.audio.preprocess import encode
    from engine.audio.preprocess.audio import SAMPLE_RATE, load_audio
    from engine.audio.preprocess.normalize import normalize

    index_of = {job.stem: i for i, job in enumerate(jobs.jobs, start=1)}
    cfg = run.config
    for job in todo:
        index = index_of[job.stem]
        if run.should_stop():
            run.summary.stopped = True
            return
        try:
            audio = load_audio(job.audio_path, max_duration=jobs.max_duration)
            audio = normalize(audio, cfg.normalize, target_db=cfg.target_db, target_lufs=cfg.target_lufs)
            seconds = audio.shape[1] / SAMPLE_RATE
            duration = round(seconds)
            generator = torch.Generator().manual_seed(int(hashlib.sha1(job.stem.encode("utf-8")).hexdigest()[:8], 16))
            latents = encode.vae_encode(models, audio, generator=generator)
            if not torch.isfinite(latents).all():
                raise ValueError("the VAE produced NaN/Inf latents")
            prompt = job_prompt(job, jobs, duration)
            lyrics = str(job.sample.get("lyrics") or "[Instrumental]")
            mode = cfg.conditioning
            lyric_text = lyrics if mode == "legacy" else format_lyrics(lyrics, job_language(job))
            text, text_mask = encode.encode_text(models, prompt, mode)
            lyric, lyric_mask = encode.encode_lyrics(models, lyric_text, mode)
        except AudioReadError as exc:
            _fail(run, "pass1", index, total, job, exc.reason)
            continue
        except Exception as exc:  # one bad file must not end the run; the reason is reported
            _fail(run, "pass1", index, total, job, _reason(exc))
            continue
        record = {
            "target_latents": latents,
            "attention_mask": torch.ones(latents.shape[0]),
            "text_hidden_states": text,
            "text_attention_mask": text_mask,
            "lyric_hidden_states": lyric,
            "lyric_attention_mask": lyric_mask,
            "latent_length": int(latents.shape[0]),
            "fingerprint": fingerprints[job.stem],
            "metadata": _metadata(job, jobs, duration, lyrics),
        }
        save_tensors(record, run.path(job, TMP_SUFFIX))
        run.summary.audio_seconds += seconds
        run.emit("pass1", index, total, job.display, "ok", f"{latents.shape[0]} frames, {seconds:.1f} s", seconds)


def _metadata(job: Job, jobs: JobList, duration: int, lyrics: str) -> dict[str, Any]:
    s = job.sample
    tag, _ = jobs.tag(job)
    return {
        "audio_path": job.audio_path,
        "filename": os.path.basename(job.audio_path),
        "caption": str(s.get("caption") or ""),
        "lyrics": lyrics,
        "duration": duration,
        "bpm": s.get("bpm"),
        "keyscale": str(s.get("keyscale") or ""),
        "timesignature": str(s.get("timesignature") or ""),
        "genre": str(s.get("genre") or ""),
        "is_instrumental": bool(s.get("is_instrumental")),
        "custom_tag": tag,
        "prompt_override": s.get("prompt_override"),
        "repeat": int(s.get("repeat") or 1),
    }


def _pass2(run: _Run, jobs: JobList, todo: list[Job], models: Any, total: int) -> None:
    import torch

    from engine.audio.preprocess import encode

    index_of = {job.stem: i for i, job in enumerate(jobs.jobs, start=1)}
    for job in todo:
        index = index_of[job.stem]
        if run.should_stop():
            run.summary.stopped = True
            return
        tmp_path = run.path(job, TMP_SUFFIX)
        try:
            tmp = torch.load(tmp_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign intermediate: drop it so the next run redoes pass 1
            os.remove(tmp_path)
            _fail(run, "pass2", index, total, job, f"unreadable intermediate ({_reason(exc)}); run again to redo it")
            continue
        try:
            states, mask = encode.condition(models, tmp, run.config.conditioning)
            frames = int(tmp["latent_length"])
            record = {
                "target_latents": tmp["target_latents"].to(torch.bfloat16),
                "attention_mask": torch.ones(frames, dtype=torch.bfloat16),
                "encoder_hidden_states": states.to(torch.bfloat16),
                "encoder_attention_mask": mask,
                "context_latents": encode.context_latents(models.silence, frames).to(torch.bfloat16),
                "metadata": tmp["metadata"],
            }
            if not all(torch.isfinite(record[k].float()).all() for k in ("encoder_hidden_states", "context_latents")):
                raise ValueError("the condition encoder produced NaN/Inf")
        except Exception as exc:  # one failing file (e.g. out of memory): report it, keep its intermediate
            _fail(run, "pass2", index, total, job, _reason(exc) + "; run again to retry it")
            continue
        run.checksums[job.stem + ".pt"] = save_tensors(record, run.path(job))
        run.written.add(job.stem + ".pt")
        run.conditioning[job.stem + ".pt"] = run.config.conditioning
        run.fingerprints[job.stem + ".pt"] = tmp["fingerprint"]
        os.remove(tmp_path)
        run.summary.processed += 1
        run.emit("pass2", index, total, job.display, "ok", f"{frames} frames, {states.shape[0]} condition tokens")


def _fail(run: _Run, stage: PreprocessStage, index: int, total: int, job: Job, reason: str) -> None:
    run.summary.failed.append((job.display, reason))
    run.emit(stage, index, total, job.display, "failed", reason)


def _reason(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory on this file (try a smaller --max-duration)"
    return f"{type(exc).__name__}: {error_line(exc)}"


def _write_index(run: _Run, jobs: JobList, settings: dict[str, Any], dtype: str, device: str) -> None:
    """``manifest.json`` and ``preprocess_meta.json`` for every finished file of this job list."""
    names = [job.stem + ".pt" for job in jobs.jobs if os.path.isfile(run.path(job))]
    write_manifest(run.out, names, jobs.metadata, rewritten=run.written, checksums=run.checksums)
    per_file = {n: run.conditioning.get(n, "legacy") for n in names}
    modes = set(per_file.values())
    conditioning = modes.pop() if len(modes) == 1 else MIXED_CONDITIONING if modes else run.config.conditioning
    meta = {
        "schema_version": 1,
        "created_at": run.previous.get("created_at") or now(),
        "updated_at": now(),
        "audio_dir": jobs.base_dir,
        "source_audio_dir": run.config.audio_dir,
        "dataset_json": run.config.dataset_json,
        **settings,
        "conditioning": conditioning,  # of the files in the folder; settings' is this run's
        "tensor_format": TENSOR_FORMAT,
        "file_conditioning": per_file,
        "device": device,
        "compute_dtype": dtype,
        "storage_dtype": "bfloat16",
        "total": len(jobs.jobs),
        "processed": len(names),
        "failed": len(run.summary.failed),
        "failures": [{"file": f, "reason": r} for f, r in run.summary.failed],
        "checksums": {n: run.checksums[n] for n in names if n in run.checksums},
        "fingerprints": {n: run.fingerprints[n] for n in names if n in run.fingerprints},
        "config": cfgmod.to_dict(run.config),
    }
    fsutil.write_json(os.path.join(run.out, META), meta)
