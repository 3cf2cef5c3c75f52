"""Pure text helpers for the screens: sizes, durations, counts, model badges.

No Textual import and no I/O, so every function is unit-tested on plain values. "Unknown" is always
shown as ``n/a`` (never a made-up zero): a missing number must look missing.
"""

from __future__ import annotations

import math

from engine.ptinspect import TENSOR_FORMAT

NA = "n/a"
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_size(n_bytes: int | float | None) -> str:
    """``4.6 GB`` style (powers of 1024, as file managers and ``du -h`` count)."""
    if n_bytes is None or n_bytes < 0 or not math.isfinite(n_bytes):
        return NA
    size = float(n_bytes)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(size)} B"
            return f"{size:.1f} {unit}" if size < 100 else f"{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """``42 s``, ``4 m 05 s``, ``2 h 13 m``, ``3 d 04 h``; ``n/a`` for unknown or negative."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return NA
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} m"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def plural(count: int, word: str, plural_word: str | None = None) -> str:
    """``1 sample``, ``3 samples``."""
    return f"{count} {word if count == 1 else (plural_word or word + 's')}"


def number(value: float | int | None, digits: int = 3) -> str:
    """A short number: integers as is, floats with up to ``digits`` significant digits."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e6:
        return f"{value:.1f}"  # 1.0, not 1: a float stays recognisable as one
    return f"{value:.{digits}g}"


def fixed(value: float | None, spec: str, width: int) -> str:
    """``value`` in the format ``spec`` padded to ``width`` (``n/a`` too), for figures that change
    every second in one place (``8.40e-05`` and ``2.83e-04``, not ``8.4e-05`` and ``0.000283``)."""
    if value is None:
        return NA.rjust(width)
    return (format(value, spec) if math.isfinite(value) else str(value)).rjust(width)


def variant_badge(family: str | None, *, xl: bool = False, official: bool = True, base: str | None = None) -> str:
    """The short label the Models screen shows: ``turbo``, ``XL base``, ``fine-tune of sft``,
    ``fine-tune (base unknown)``. ``family`` is turbo/base/sft/None; ``base`` is the detected base
    of a custom model."""
    prefix = "XL " if xl else ""
    if official and family:
        return f"{prefix}{family}"
    detected = base or family
    if detected:
        return f"{prefix}fine-tune of {detected}"
    return f"{prefix}fine-tune (base unknown)"


def memory_pair(free_bytes: int | None, total_bytes: int | None) -> str:
    """``70.1 GB free of 79.6 GB``; ``n/a`` parts stay ``n/a``."""
    return f"{human_size(free_bytes)} free of {human_size(total_bytes)}"


def shorten_path(path: str, width: int) -> str:
    """Keep the end of a long path (the part that differs): ``…/ckpt/acestep-v15-base``."""
    if width <= 1 or len(path) <= width:
        return path
    return "…" + path[-(width - 1) :]


# --------------------------------------------------------------------------- models and GPUs
# These take the duck-typed records of ``engine.discovery`` (ModelInfo, GpuInfo) and return text.


def model_badge(model) -> str:  # type: ignore[no-untyped-def]
    """Badge of a discovery ``ModelInfo``: ``turbo``, ``XL sft``, ``fine-tune of base``."""
    family = model.variant if model.variant != "unknown" else None
    return variant_badge(family, xl=model.xl, official=model.official, base=model.base_model)


def model_status(model, code=None) -> str:  # type: ignore[no-untyped-def]
    """``✓ ok`` / ``✗ 2 problems``, and ``custom code`` when ``code`` (an ``engine.codehash.CodeReport``)
    differs from what was first seen."""
    status = "✓ ok" if not model.problems else f"✗ {plural(len(model.problems), 'problem')}"
    if code is not None and code.custom:
        status = "! custom code" if not model.problems else f"{status}, custom code"
    return status


def mu_sigma(mu: float | None, sigma: float | None) -> str:
    return f"{number(mu)} / {number(sigma)}"


def model_row(model, code=None) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    """Cells of the Models table: name, badge, official/custom, size, layers, hidden, mu/sigma, status."""
    return (
        model.name,
        model_badge(model),
        "official" if model.official else "custom",
        human_size(model.size_bytes),
        number(model.num_hidden_layers),
        number(model.hidden_size),
        mu_sigma(model.timestep_mu, model.timestep_sigma),
        model_status(model, code),
    )


MODEL_COLUMNS = ("Model", "Variant", "Kind", "Size", "Layers", "Hidden", "μ / σ", "Status")


def model_matches(model, query: str, code=None) -> bool:  # type: ignore[no-untyped-def]
    """Type-to-filter: every word of ``query`` appears (case-insensitive) in the model's name, alias,
    badge, kind, status or problems."""
    haystack = " ".join((*model_row(model, code), model.alias, *model.problems)).lower()
    return all(word in haystack for word in query.lower().split())


def code_lines(code) -> list[str]:  # type: ignore[no-untyped-def]
    """The model folder's Python files that run when it loads, with short sha256 hashes, and what
    changed since they were first seen (an ``engine.codehash.CodeReport``). Nothing for a folder without code."""
    lines: list[str] = []
    for i, f in enumerate(code.files):
        lines.append(f"{'code (runs)' if i == 0 else '':14}{f.name}  sha256 {f.short}")
    if code.custom:
        lines.append("! custom code: differs from what was first seen here")
        lines += [f"  ! {w}" for w in code.warnings()]
    if code.problem:
        lines.append(f"! {code.problem}")
    return lines


def model_detail(model, code=None) -> str:  # type: ignore[no-untyped-def]
    lines = [
        f"{model.name}  [{model_badge(model)}, {'official' if model.official else 'custom'}]",
        f"path          {model.path}",
        f"use as        --model {model.alias}",
        f"size          {human_size(model.size_bytes)} (weights {human_size(model.weights_bytes)})",
        f"layers        {number(model.num_hidden_layers)}",
        f"hidden size   {number(model.hidden_size)}",
        f"timestep μ/σ  {mu_sigma(model.timestep_mu, model.timestep_sigma)}",
        f"is_turbo      {NA if model.is_turbo is None else str(model.is_turbo).lower()}",
    ]
    params = getattr(model, "quantizable_params", None)
    if params:
        from engine.config import base_weight_bytes, quantization_savings

        saved = quantization_savings(params, "bf16")
        lines.append(
            f"quantised     int8 saves {human_size(saved['int8'])}, nf4 {human_size(saved['nf4'])} "
            f"of {human_size(params * base_weight_bytes('none', 'bf16'))} bf16 Linear weights (--base-quantization)"
        )
    if model.problems:
        lines.append("problems:")
        lines += [f"  ✗ {p}" for p in model.problems]
    else:
        lines.append("problems      none")
    if code is not None:
        lines += code_lines(code)
    return "\n".join(lines)


def shared_status(shared: dict[str, bool], problems: tuple[str, ...] | list[str]) -> str:
    names = {"vae": "vae/", "text_encoder": "text encoder", "silence_latent": "silence latent"}
    parts = [f"{'✓' if shared.get(k) else '✗'} {label}" for k, label in names.items()]
    lines = ["  ".join(parts)]
    lines += [f"! {p}" for p in problems]
    return "\n".join(lines)


def gpu_lines(gpus) -> list[str]:  # type: ignore[no-untyped-def]
    """One line per NVML GPU, or the honest "no GPU found"."""
    if not gpus:
        return ["no GPU found (NVML reports none; training would run on the CPU)"]
    mib = 2**20
    return [f"GPU {g.index}  {g.name}  {memory_pair(int((g.total_mb - g.used_mb) * mib), int(g.total_mb * mib))}" for g in gpus]


# --------------------------------------------------------------------------- datasets


def _family(variant: str | None) -> str | None:
    """``acestep-v15-turbo`` / ``turbo`` / ``xl-turbo`` -> a comparable short name."""
    if not variant:
        return None
    name = variant.lower().removeprefix("acestep-v15-")
    return name


def _shapes(samples: int, bad_files: int) -> str:
    if bad_files:
        return f"✗ {plural(bad_files, 'file')} failed the checks (see problems)"
    return "✓ every file has the expected keys and shapes" if samples else NA


def dataset_summary(report, model_variant: str | None = None, model_hidden: int | None = None) -> str:  # type: ignore[no-untyped-def]
    """The Dataset screen's numbers, from an ``engine.ptinspect.DatasetReport``."""
    bad_files = len({f for f, _ in report.problems if f != "."})
    lines = [
        f"samples         {report.samples} usable of {len(report.files)} files"
        + (f" ({bad_files} with problems)" if bad_files else ""),
        f"total duration  {human_duration(report.total_seconds) if report.samples else NA}",
        f"longest         {human_duration(report.longest_seconds) if report.samples else NA}",
        f"shapes          {_shapes(report.samples, bad_files)}",
        f"hidden width    {number(report.hidden_size)}",
        f"preprocessed    {report.variant or 'unknown (no preprocess_meta.json)'}"
        + ("" if not model_variant else f"; chosen model {model_variant}"),
        f"index           {'manifest.json' if report.used_manifest else 'scan of *.pt'}",
    ]
    fmt = getattr(report, "tensor_format", None)
    if fmt is not None:
        lines.insert(-1, f"format          {fmt.label()}")
    return "\n".join(lines)


def dataset_problems(report, model_variant: str | None = None, model_hidden: int | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    """Every problem, each naming its file; plus the mismatches with the chosen model."""
    lines = [f"✗ {message}" if file == "." else f"✗ {file}: {message}" for file, message in report.problems]
    chosen, made_for = _family(model_variant), _family(report.variant)
    if chosen and made_for and chosen != made_for:
        lines.append(
            f"! stale: preprocessed for {report.variant}, but the chosen model is {model_variant} (re-preprocess for this model)"
        )
    fmt = getattr(report, "tensor_format", None)
    if fmt is not None and fmt.recorded and not fmt.current and report.samples:  # no meta: the format line says so
        fix = (
            "made by a newer Side-Step; update it or preprocess again"
            if fmt.version > TENSOR_FORMAT
            else "not what ACE-Step feeds at inference; preprocess the audio again into a new folder "
            "(--conditioning inference is the default)"
        )
        lines.append(f"! {fmt.label()}: {fix}")
    if model_hidden and report.hidden_size and model_hidden != report.hidden_size:
        lines.append(f"! encoder_hidden_states width {report.hidden_size} differs from the model's hidden size {model_hidden}")
    return lines


# --------------------------------------------------------------------------- audio -> tensors

SIDECAR_LABELS = {
    "key_value": "key: value",
    "caption_lyrics": ".caption/.lyrics",
    "lyrics_txt": "lyrics .txt",
    "none": "none (file name)",
}
STAGE_LABELS = {"scan": "scan", "pass1": "pass 1 (audio, text)", "pass2": "pass 2 (conditions)", "done": "done"}


def audio_length(seconds: float | None) -> str:
    """A song's length: ``0.5 s``, ``12.0 s``, then ``4 m 05 s`` (clips are often a few seconds)."""
    if seconds is not None and math.isfinite(seconds) and 0 <= seconds < 60:
        return f"{seconds:.1f} s"
    return human_duration(seconds)


def audio_scan_summary(report) -> str:  # type: ignore[no-untyped-def]
    """One line on what the dataset builder found, from an ``engine.sidecars.BuildReport``."""
    found = len(report.files)
    parts = [
        plural(found, "audio file"),
        f"{audio_length(report.total_duration_s) if found else NA} of audio",
        f"{found - len(report.missing_sidecars)} with sidecars",
    ]
    if report.missing_sidecars:
        parts.append(f"{len(report.missing_sidecars)} without (file name as caption)")
    if report.unreadable:
        parts.append(f"{len(report.unreadable)} unreadable")
    if report.duplicates:
        parts.append(f"{plural(len(report.duplicates), 'duplicate')} left out")
    return " · ".join(parts)


def file_progress_text(progress) -> str:  # type: ignore[no-untyped-def]
    """A file's status cell from its latest ``state.FileProgress`` (glyph and words, never colour alone)."""
    message = progress.message
    if progress.status == "failed":
        return f"✗ {message or 'failed'}"
    if progress.status == "skipped":
        return f"↷ {message or 'skipped'}"
    if progress.stage == "pass1":
        return f"… pass 1 ✓ {message}".rstrip()
    if progress.stage == "pass2":
        return f"✓ done{f' ({message})' if message else ''}"
    return f"✓ {message}".rstrip()


def preprocess_progress_line(status) -> str:  # type: ignore[no-untyped-def]
    """Stage, files, speed and ETA of a running job, from a ``state.PreprocessStatus`` (no bar: the
    caller draws one at the width it has)."""
    parts = [STAGE_LABELS.get(status.stage, status.stage), f"{status.index}/{status.total}"]
    speed = status.audio_per_s
    if speed is not None:
        parts.append(f"{speed:.2f} s of audio/s")
    if status.eta_s is not None:
        parts.append(f"ETA {human_duration(status.eta_s)}")
    parts.append(f"✓ {status.ok}  ↷ {status.skipped}  ✗ {status.failures}")
    return " · ".join(parts)
