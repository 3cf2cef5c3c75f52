"""The preprocessing config (stdlib only, so the UI can import it): audio -> training tensors.

Same rules as ``engine.config``: every field carries ``metadata`` (label, help, group, choices,
min/max, CLI flag and aliases named after Side-Step's ``sidestep preprocess``), and ``parse()`` is
strict: unknown keys are errors, values are coerced explicitly and every problem is reported at once.
It travels to the engine as JSON inside ``StartPreprocess.config_json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from engine.config import PRECISIONS, ConfigError, FieldError, parse_schema
from engine.ptinspect import CONDITIONING_MODES
from engine.sidecars import TAG_POSITIONS

SCHEMA_VERSION = 1
NORMALIZE_MODES = ("none", "peak", "lufs")


def _f(default: Any, label: str, help: str, *, flag: str | None = None, **meta: Any) -> Any:
    meta.update(label=label, help=help, group="Preprocess", flag=flag)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """Everything one preprocessing job needs; recorded in ``<output_dir>/preprocess_meta.json``."""

    checkpoint_dir: str = _f(
        "",
        "Checkpoint root",
        "Folder holding the model folders, vae/, Qwen3-Embedding-0.6B/ and silence_latent.pt.",
        required=True,
        kind="path",
        aliases=("-c",),
    )
    model_variant: str = _f(
        "base",
        "Model",
        "Whose condition encoder builds the conditioning: turbo, base, sft, xl-*, or a folder name. Train with the same model.",
        flag="--model",
        aliases=("--model-variant", "-M"),
    )
    audio_dir: str | None = _f(
        None,
        "Audio folder",
        "Folder of audio files with sidecar .txt files (scanned recursively).",
        kind="path",
        aliases=("-i", "--input"),
    )
    dataset_json: str | None = _f(
        None, "dataset.json", "A dataset.json from 'sidestep dataset' (instead of an audio folder).", kind="path"
    )
    output_dir: str = _f(
        "",
        "Tensor folder",
        "Where the .pt files, manifest.json and preprocess_meta.json go.",
        required=True,
        kind="path",
        flag="--output",
        aliases=("-o", "--tensor-output"),
    )
    max_duration: float = _f(
        0.0, "Max seconds", "Crop each file to this many seconds (0 = the longest file, so nothing is cut).", min=0.0, max=3600.0
    )
    normalize: str = _f(
        "none",
        "Normalise",
        "none, peak (to target dB) or lufs (to target LUFS, with a limiter so it never clips).",
        choices=NORMALIZE_MODES,
    )
    target_db: float = _f(-1.0, "Peak target dBFS", "Peak level for 'peak' normalisation.", min=-60.0, max=0.0)
    target_lufs: float = _f(-14.0, "Target LUFS", "Integrated loudness for 'lufs' normalisation.", min=-60.0, max=0.0)
    tag: str = _f("", "Trigger tag", "Added to every caption (a sample's own custom_tag wins).", aliases=("--custom-tag",))
    tag_position: str = _f(
        "prepend", "Tag position", "prepend ('tag, caption'), append ('caption, tag') or replace ('tag').", choices=TAG_POSITIONS
    )
    genre_ratio: int = _f(
        0, "Genre ratio %", "Percent of samples prompted with their genre instead of the caption.", min=0, max=100
    )
    conditioning: str = _f(
        "inference",
        "Conditioning",
        "inference (encode prompt and lyrics as ACE-Step does when generating: language header on the lyrics, no "
        "padding tokens, silence-latent timbre) or legacy (the upstream trainer's format, for comparison).",
        choices=CONDITIONING_MODES,
    )
    device: str = _f("auto", "Device", "auto (CUDA, else MPS, else CPU), cuda, cuda:N, mps or cpu.")
    precision: str = _f(
        "auto",
        "Precision",
        "Compute precision: auto = bf16 on GPUs, fp32 on CPU. Tensors are stored in bf16.",
        choices=PRECISIONS,
    )

    def source(self) -> str:
        return self.dataset_json or self.audio_dir or ""


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(PreprocessConfig)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
for _fld in FIELDS:
    if _fld.metadata.get("flag") is None:
        _fld.metadata = type(_fld.metadata)({**_fld.metadata, "flag": "--" + _fld.name.replace("_", "-")})


@dataclass(frozen=True)
class PreprocessFieldError(FieldError):
    """A ``FieldError`` that names this schema's flag."""

    def __str__(self) -> str:
        f = FIELD_BY_NAME.get(self.field)
        return f"{self.field} ({f.metadata['flag']}): {self.message}" if f else f"{self.field}: {self.message}"


def _cross_checks(c: PreprocessConfig) -> list[FieldError]:
    errors: list[FieldError] = []
    if bool(c.audio_dir) == bool(c.dataset_json):
        errors.append(PreprocessFieldError("audio_dir", "give exactly one of an audio folder or a dataset.json"))
    if (
        c.device != "auto"
        and c.device not in ("cpu", "mps", "cuda")
        and not (c.device.startswith("cuda:") and c.device[5:].isdigit())
    ):
        errors.append(PreprocessFieldError("device", f"{c.device!r} is not auto, cpu, mps, cuda or cuda:N"))
    if not c.model_variant:
        errors.append(PreprocessFieldError("model_variant", "is required"))
    return errors


def parse(data: dict[str, Any]) -> PreprocessConfig:
    """Build a config from ``data`` over the defaults; ``ConfigError`` with every problem at once."""
    return parse_schema(PreprocessConfig, data, cross_checks=_cross_checks, error_cls=PreprocessFieldError)


def to_dict(config: PreprocessConfig) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(config)}


def to_json(config: PreprocessConfig) -> str:
    return json.dumps(to_dict(config), indent=2)


def from_json(text: str) -> PreprocessConfig:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError([PreprocessFieldError("config", "expected a JSON object")])
    return parse(data)
