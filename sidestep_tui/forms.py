"""The Setup form's model, derived from ``engine.config`` (pure: no Textual, no I/O).

Everything the form shows comes from ``dataclasses.fields(TrainConfig)`` and its metadata: which
widget a field gets, its section, whether it is Advanced, its label, help, choices and placeholder.
There is no hand-kept list of fields here, so a field added to the schema appears in the form and a
removed one disappears (Side-Step's TUI drifted from its engine exactly there).

The form holds *raw* values (text, bools, tuples) and hands them to ``engine.config.parse`` as they
are: parsing, coercion and every error message belong to the schema, never to the UI.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine import config as cfg

BASIC, ADVANCED = "basic", "advanced"
ADAPTER_GROUPS = {"lora": "LoRA", "lokr": "LoKR", "loha": "LoHA", "oft": "OFT"}
"""Adapter type -> the group holding its own settings; the other adapters' groups are hidden."""
SHARED_GROUPS = {"LyCORIS": cfg.LYCORIS_TYPES}  # sections that several adapter types own

RawValue = str | bool | tuple[str, ...]


@dataclass(frozen=True)
class FieldSpec:
    """What the form needs to know about one schema field."""

    name: str
    label: str
    help: str
    group: str
    kind: str  # bool | choice | multi | path | int | float | text
    optional: bool
    advanced: bool
    required: bool
    choices: tuple[str, ...]
    flag: str
    default: Any
    minimum: float | None
    maximum: float | None

    @property
    def range_text(self) -> str:
        """``1 – 1024`` for numbers with bounds, else empty."""
        if self.minimum is None and self.maximum is None:
            return ""
        lo = "" if self.minimum is None else _num(self.minimum)
        hi = "" if self.maximum is None else _num(self.maximum)
        return f"{lo} – {hi}".strip()


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _kind(f: dataclasses.Field, base: str) -> str:
    meta = f.metadata
    if base == "bool":
        return "bool"
    if meta.get("item_choices"):
        return "multi"
    if meta.get("choices"):
        return "choice"
    if meta.get("kind") == "path":
        return "path"
    return {"int": "int", "float": "float"}.get(base, "text")


def _spec(f: dataclasses.Field) -> FieldSpec:
    ann = str(f.type).replace(" ", "")
    optional = ann.endswith("|None")
    base = ann.removesuffix("|None")
    meta = f.metadata
    kind = _kind(f, base)
    choices = tuple(meta.get("item_choices") or meta.get("choices") or ())
    return FieldSpec(
        name=f.name,
        label=meta["label"],
        help=meta["help"],
        group=meta["group"],
        kind=kind,
        optional=optional,
        advanced=bool(meta.get("advanced", False)),
        required=bool(meta.get("required", False)),
        choices=choices,
        flag=meta["flag"],
        default=f.default,
        minimum=meta.get("min"),
        maximum=meta.get("max"),
    )


def field_spec(f: dataclasses.Field) -> FieldSpec:
    """The form's view of any schema field built by ``engine.config.parse_schema``'s rules (the
    preprocessing config uses the same metadata)."""
    return _spec(f)


SPECS: tuple[FieldSpec, ...] = tuple(_spec(f) for f in cfg.FIELDS)
SPEC_BY_NAME = {s.name: s for s in SPECS}


def grouped(specs: Iterable[FieldSpec] = SPECS) -> list[tuple[str, list[FieldSpec]]]:
    """Sections in the schema's ``GROUPS`` order (any group the list lacks goes last, in field order)."""
    order = {g: i for i, g in enumerate(cfg.GROUPS)}
    groups: dict[str, list[FieldSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.group, []).append(spec)
    return sorted(groups.items(), key=lambda kv: order.get(kv[0], len(order)))


def group_visible(group: str, adapter_type: str) -> bool:
    """Each adapter's section only for that adapter (LyCORIS settings for lokr, loha and oft); every other group always."""
    if group in SHARED_GROUPS:
        return adapter_type in SHARED_GROUPS[group]
    owner = {g: a for a, g in ADAPTER_GROUPS.items()}.get(group)
    return owner is None or owner == adapter_type


def field_visible(spec: FieldSpec, *, depth: str, adapter_type: str, has_error: bool = False) -> bool:
    """A field with an error is always shown: a problem must never hide behind a switch."""
    if has_error:
        return True
    if not group_visible(spec.group, adapter_type):
        return False
    return depth == ADVANCED or not spec.advanced


# --------------------------------------------------------------------------- values


def to_raw(spec: FieldSpec, value: Any) -> RawValue:
    """A config value (typed, or text from a draft / preset) as the form widget holds it."""
    if spec.kind == "bool":
        if isinstance(value, str):
            return value.strip().lower() in ("true", "yes", "on", "1")
        return bool(value)
    if spec.kind == "multi":
        if isinstance(value, str):
            return tuple(value.replace(",", " ").split())
        return tuple(value or ())
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):  # a free list of names (no item choices): space separated, as parse splits it
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def default_raw() -> dict[str, RawValue]:
    """The schema defaults as raw form values."""
    return {s.name: to_raw(s, s.default) for s in SPECS}


def merge_raw(base: dict[str, RawValue], values: dict[str, Any]) -> dict[str, RawValue]:
    """``base`` with ``values`` (typed or raw) laid over it; keys outside the schema are kept so
    ``parse`` reports them as unknown instead of them vanishing."""
    out = dict(base)
    for key, value in values.items():
        spec = SPEC_BY_NAME.get(key)
        out[key] = to_raw(spec, value) if spec else value
    return out


def parse_raw(raw: dict[str, Any]) -> tuple[cfg.TrainConfig | None, dict[str, str]]:
    """(config, {}) or (None, {field: message}) — straight from ``engine.config.parse``."""
    try:
        return cfg.parse(raw), {}
    except cfg.ConfigError as exc:
        return None, exc.by_field()


def config_values(config: cfg.TrainConfig) -> dict[str, Any]:
    """A parsed config as a plain dict (for a draft or a preset)."""
    return {s.name: getattr(config, s.name) for s in SPECS}


# --------------------------------------------------------------------------- placeholders

_EMPTY_RE = re.compile(r"[Ee]mpty = ([^.;]+)")


def placeholders(raw: dict[str, Any], model_config: dict[str, Any] | None = None) -> dict[str, str]:
    """What an empty optional field means, shown as the input's placeholder. Variant-aware values
    come from ``engine.config.resolve_variant_defaults`` (the one place they are decided), fed with
    the chosen model's config.json (timestep mu/sigma, ``is_turbo``)."""
    variant = str(raw.get("model_variant") or SPEC_BY_NAME["model_variant"].default)
    base_model = str(raw.get("base_model") or "") or None
    probe = dataclasses.replace(cfg.TrainConfig(), model_variant=variant, base_model=base_model)
    resolved = cfg.resolve_variant_defaults(probe, model_config)
    family = resolved.base_model or "base"
    source = "model config" if model_config else "default"
    optimizer = str(raw.get("optimizer_type") or "")
    lr = "1.0 (prodigy)" if optimizer == "prodigy" else f"{cfg.DEFAULT_LEARNING_RATE:g}"
    out: dict[str, str] = {}
    for spec in SPECS:
        if not spec.optional:
            continue
        match = _EMPTY_RE.search(spec.help)
        out[spec.name] = f"empty = {match.group(1).strip()}" if match else "empty = off"
    out.update(
        learning_rate=f"auto: {lr}",
        shift=f"auto: {float(resolved.shift or 0)!r} for {family}",
        num_inference_steps=f"auto: {resolved.num_inference_steps} for {family}",
        timestep_mu=f"auto: {float(resolved.timestep_mu or 0)!r} ({source})",
        timestep_sigma=f"auto: {float(resolved.timestep_sigma or 0)!r} ({source})",
        base_model=f"auto: {family}",
    )
    out["resume_from"] = "empty = start fresh"
    for spec in SPECS:
        if spec.required:
            out[spec.name] = "required"
    return {k: v for k, v in out.items() if k in SPEC_BY_NAME}


# --------------------------------------------------------------------------- steps preview


@dataclass(frozen=True)
class StepsPreview:
    """How long a run is, counted as the trainer counts (ACE_STEP.md §6.5): micro-batches per epoch
    = ceil(samples × repeats / batch); optimizer steps per epoch = ceil(micro-batches / GA), the last
    partial accumulation group being flushed; total = steps/epoch × epochs, capped by max steps."""

    samples: int | None
    effective_batch: int | None
    micro_batches_per_epoch: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    capped_by_max_steps: bool


def _int(raw: Any) -> int | None:
    """Display-only reading of a raw value: an unreadable one shows as n/a (its error is shown
    next to its field by the parser)."""
    try:
        value = int(str(raw).strip()) if not isinstance(raw, bool) else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def steps_preview(raw: dict[str, Any], samples: int | None) -> StepsPreview:
    batch, ga = _int(raw.get("batch_size")), _int(raw.get("gradient_accumulation"))
    repeats, epochs = _int(raw.get("dataset_repeats")), _int(raw.get("epochs"))
    max_steps = _int(raw.get("max_steps"))
    effective = batch * ga if batch and ga else None
    micro = per_epoch = total = None
    capped = False
    if samples is not None and batch and ga and repeats:
        micro = math.ceil(samples * repeats / batch)
        per_epoch = math.ceil(micro / ga)
        if epochs:
            total = per_epoch * epochs
            if max_steps:
                capped = max_steps < total
                total = min(total, max_steps)
    elif max_steps:
        total, capped = max_steps, True
    return StepsPreview(samples, effective, micro, per_epoch, total, capped)


# --------------------------------------------------------------------------- review


def command_line(config: cfg.TrainConfig) -> str:
    """The ``sidestep train ...`` command that reproduces ``config`` (defaults left out)."""
    return shlex.join(["sidestep", "train", *cfg.cli_args(config)])
