"""Adapter folders to a single ComfyUI file (and ComfyUI LoRA files back to a PEFT folder).

ComfyUI's ACE-Step 1.5 loader (``comfy/lora.py``, ``model_lora_keys_unet``) maps, for every decoder weight
``diffusion_model.decoder.<path>.weight``, the keys ``base_model.model.<path>`` and
``lycoris_<path with . as _>`` onto it (ACE_STEP.md §17, §19). Per key it reads ``.alpha`` (a scalar; a
LoRA without one plays at scale 1.0), ``.dora_scale`` and the weights of the first adapter class that
recognises them (``lora_up``/``lora_down``, ``lokr_*``, ``hada_*``), and merges:

- LoRA: ``W + alpha / rank * up @ down`` (rank = ``down.shape[0]``);
- LoKR: ``W + s * kron(w1, w2)`` with ``w1``/``w2`` rebuilt from ``_a @ _b`` when factorised and
  ``s = alpha / dim`` (dim = the factorised side's inner size), ``s = 1`` when both sides are full;
- LoHA: ``W + alpha / dim * (w1_a @ w1_b) * (w2_a @ w2_b)``;
- with ``dora_scale`` of shape ``[out, 1, ...]``: ``dora_scale / (||W||_row + eps) * (W + delta)``, where
  ``||W||_row`` is the norm of the *base* weight's rows (PEFT and LyCORIS divide by the norm of the merged
  weight ``W + delta`` instead). A ``dora_scale`` of shape ``[1, in, ...]`` is normalised per input column of
  the merged weight, as LyCORIS does with ``wd_on_out=False``.

So a PEFT file needs a per-module ``.alpha`` that reproduces ``lora_alpha / r`` (or ``/ sqrt(r)`` with
rsLoRA, per ``rank_pattern``/``alpha_pattern``), and a DoRA magnitude needs the base weight's row norms to
be rewritten as the ``dora_scale`` that gives the trained weight: ``m * (||W|| + eps) / ||W + delta||``.
What cannot be expressed is refused with an ``ExportError`` naming the module and why.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import fsutil

COMFYUI_SUFFIX = "_comfyui.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LYCORIS_PREFIX = "lycoris_"
COMFY_DECODER_PREFIX = "diffusion_model.decoder."
_EPS = torch.finfo(torch.float32).eps  # what ComfyUI adds to the row norm (its merge runs in fp32)


class ExportError(ValueError):
    """An adapter that cannot be written in the requested form; the message names the module and why."""


class NeedsBaseModel(ExportError):
    """A DoRA adapter exported without the base model's weights (ComfyUI's dora_scale depends on them)."""


def comfyui_file_name(run_name: str) -> str:
    return f"{run_name}{COMFYUI_SUFFIX}"


# --------------------------------------------------------------------------- base weights


class BaseWeights:
    """The decoder's own weights by module path (``layers.0.self_attn.q_proj``), for DoRA and for
    turning LyCORIS / kohya underscore names back into paths."""

    def __init__(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.weights = dict(weights)
        self.by_lycoris_name = {LYCORIS_PREFIX + p.replace(".", "_"): p for p in self.weights}

    @classmethod
    def from_module(cls, module: nn.Module) -> BaseWeights:
        """From a bare decoder, a PEFT-wrapped one or one carrying a LyCORIS network: adapter tensors are
        skipped, PEFT's ``base_model.model.`` and ``.base_layer`` are taken off."""
        weights: dict[str, torch.Tensor] = {}
        for name, param in module.named_parameters():
            if not name.endswith(".weight"):
                continue
            path = name[: -len(".weight")].removeprefix(PEFT_PREFIX).replace(".base_layer", "")
            if any(part.startswith(("lora_", "lycoris")) for part in path.split(".")):
                continue
            weights[path] = param
        return cls(weights)

    def get(self, path: str) -> torch.Tensor | None:
        w = self.weights.get(path)
        if w is None:
            return None
        if w.dtype in (torch.int8, torch.uint8):  # a quantised base (--base-quantization): its float values
            from engine.models.quant import dequantized

            w = dequantized(w)
        return w.detach().to("cpu", torch.float32)


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1)


def _dora_scale_for_comfyui(module: str, magnitude: torch.Tensor, merged_norm: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The ``dora_scale`` with which ComfyUI (base-row-norm form) rebuilds ``magnitude / merged_norm * (W + delta)``."""
    if magnitude.numel() != base.shape[0]:
        raise ExportError(f"{module}: DoRA magnitude has {magnitude.numel()} values but the weight has {base.shape[0]} rows")
    scale = magnitude.reshape(-1).to(torch.float64) * (_row_norm(base).to(torch.float64) + _EPS) / merged_norm.to(torch.float64)
    return scale.to(torch.float32).reshape(base.shape[0], *[1] * (base.dim() - 1))


def _need_base(module: str, base: BaseWeights | None, path: str | None) -> torch.Tensor:
    w = base.get(path) if base is not None and path is not None else None
    if w is None:
        raise NeedsBaseModel(
            f"{module}: DoRA; ComfyUI divides dora_scale by the base weight's row norm, so the export needs the base model"
            " (pass --checkpoint-dir and --model-variant, or export from the run folder whose config names it)"
        )
    return w


# --------------------------------------------------------------------------- reading a folder


@dataclass
class AdapterSource:
    kind: str  # "peft" or "lycoris"
    folder: str
    weights_path: str
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)  # adapter_config.json (PEFT) or the algo config (LyCORIS)
    metadata: dict[str, str] = field(default_factory=dict)


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors: dict[str, torch.Tensor] = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
            metadata: dict[str, str] = dict(fh.metadata() or {})
        return tensors, metadata
    except Exception as exc:  # safetensors raises its own types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"{path}: not a readable safetensors file ({first})") from None


def read_adapter(folder: str | os.PathLike) -> AdapterSource:
    """A PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) or a folder holding one
    LyCORIS file (keys ``lycoris_*``; ``lokr_weights.safetensors``, ``loha_weights.safetensors``, ...)."""
    path = Path(folder)
    if not path.is_dir():
        raise ExportError(f"{path}: not a folder; point at an adapter folder (adapter_config.json or a LyCORIS file)")
    if (path / PEFT_CONFIG).is_file():
        try:
            config = json.loads((path / PEFT_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"{path / PEFT_CONFIG}: unreadable ({exc}); re-save the adapter") from None
        weights = path / PEFT_WEIGHTS
        if not weights.is_file():
            raise ExportError(f"{weights}: missing (a PEFT folder needs adapter_model.safetensors beside adapter_config.json)")
        tensors, metadata = _load(weights)
        return AdapterSource("peft", str(path), str(weights), tensors, config if isinstance(config, dict) else {}, metadata)
    for candidate in sorted(path.glob("*.safetensors")):
        if candidate.name.endswith(COMFYUI_SUFFIX) or fsutil.is_temp(candidate.name):
            continue
        tensors, metadata = _load(candidate)
        if tensors and all(k.startswith(LYCORIS_PREFIX) for k in tensors):
            algo_config: dict[str, Any] = {}
            for key, value in metadata.items():
                if key.endswith("_config"):
                    try:
                        algo_config = json.loads(value)
                    except ValueError:
                        pass
            return AdapterSource("lycoris", str(path), str(candidate), tensors, algo_config, metadata)
    raise ExportError(f"{path}: no adapter in it (neither adapter_config.json nor a LyCORIS .safetensors file)")


# --------------------------------------------------------------------------- PEFT LoRA / DoRA


_PEFT_KEY = re.compile(r"(?P<path>.+)\.(?P<role>lora_A|lora_B)(?:\.default)?\.weight")
_PEFT_MAGNITUDE = re.compile(r"(?P<path>.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?")


def _peft_modules(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        found = _PEFT_KEY.fullmatch(name)
        role = found["role"] if found else None
        if found is None:
            found = _PEFT_MAGNITUDE.fullmatch(name)
            role = "magnitude" if found else None
        if found is None or role is None:
            raise ExportError(
                f"{key}: not a LoRA/DoRA tensor (a trained bias, embedding or full module has no ComfyUI LoRA form); retrain with bias none"
            )
        path = found["path"].removeprefix("decoder.")  # ComfyUI maps paths relative to the decoder
        modules.setdefault(path, {})[role] = tensor
    return modules


def _pattern_value(patterns: Mapping[str, Any], path: str, default: Any) -> Any:
    from peft.utils.other import get_pattern_key  # the rule PEFT itself applies when it builds the layers

    if not patterns:
        return default
    return patterns.get(get_pattern_key(list(patterns), path), default)


def peft_to_comfyui(
    source: AdapterSource, *, normalize_alpha: bool = False, base: BaseWeights | None = None
) -> dict[str, torch.Tensor]:
    config = source.config
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ExportError(f"{source.folder}: PEFT {peft_type} adapters have no ComfyUI LoRA form; only LoRA and DoRA export")
    for flag, why in (
        ("fan_in_fan_out", "stores transposed weights"),
        ("lora_bias", "trains a bias on lora_B"),
        ("layer_replication", "replicates layers"),
    ):
        if config.get(flag):
            raise ExportError(f"{source.folder}: adapter_config {flag} is set ({why}); ComfyUI cannot load that")
    r_default = int(config.get("r", 8))
    alpha_default = float(config.get("lora_alpha", r_default))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    out: dict[str, torch.Tensor] = {}
    for path, parts in sorted(_peft_modules(source.tensors).items()):
        if "lora_A" not in parts or "lora_B" not in parts:
            missing = "lora_A" if "lora_A" not in parts else "lora_B"
            raise ExportError(f"{path}: {missing} missing from {source.weights_path}; the file is incomplete")
        down, up = parts["lora_A"], parts["lora_B"]
        rank = down.shape[0]
        if up.shape[1] != rank:
            raise ExportError(f"{path}: lora_A has rank {rank} but lora_B has {up.shape[1]}; the file is inconsistent")
        configured = int(_pattern_value(rank_pattern, path, r_default))
        if configured != rank:
            raise ExportError(f"{path}: adapter_config.json says rank {configured} but the tensors have rank {rank}")
        alpha = float(_pattern_value(alpha_pattern, path, alpha_default))
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        key = PEFT_PREFIX + path
        if normalize_alpha:
            up = up * scale
            out[key + ".alpha"] = torch.tensor(float(rank))
        else:
            out[key + ".alpha"] = torch.tensor(scale * rank)
        out[key + ".lora_down.weight"] = down.contiguous()
        out[key + ".lora_up.weight"] = up.contiguous()
        if "magnitude" in parts:
            w = _need_base(path, base, path)
            delta = scale * (parts["lora_B"].to(torch.float32).flatten(1) @ down.to(torch.float32).flatten(1))
            if delta.numel() != w.numel():
                raise ExportError(f"{path}: adapter delta has {delta.numel()} values but the base weight {tuple(w.shape)}")
            merged_norm = _row_norm(w + delta.reshape(w.shape))
            out[key + ".dora_scale"] = _dora_scale_for_comfyui(path, parts["magnitude"], merged_norm, w)
    return out


# --------------------------------------------------------------------------- LyCORIS (LoKR, LoHA)


_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")


def _lycoris_modules(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, param = key.partition(".")
        if not name.startswith(LYCORIS_PREFIX) or not param:
            raise ExportError(f"{key}: not a LyCORIS module tensor (lycoris_<module>.<param>)")
        modules.setdefault(name, {})[param] = tensor
    return modules


def _lokr_delta(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """kron(w1, w2) as ComfyUI builds it (no scale; 2-D w2 for 2-D and conv1d weights)."""
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
    if w2.dim() == 3:  # conv1d: the same values as LyCORIS's kron over the kernel axis, flattened
        w2 = w2.reshape(w2.shape[0], -1)
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1.to(torch.float32), w2.to(torch.float32))


def _lokr_to_comfyui(
    name: str, p: dict[str, torch.Tensor], config: Mapping[str, Any], normalize_alpha: bool
) -> tuple[dict, float]:
    """LyCORIS LoKR tensors as ComfyUI reads them, and the scale LyCORIS trained with."""
    extra = sorted(set(p) - {*_LOKR, "alpha", "dora_scale"})
    if extra:
        raise ExportError(f"{name}: LoKR tensor {extra[0]} has no ComfyUI counterpart")
    if "lokr_t2" in p and p["lokr_t2"].dim() != 4:
        raise ExportError(
            f"{name}: LoKR Tucker factor on a {p['lokr_t2'].dim() - 2}-D kernel; ComfyUI rebuilds Tucker only for 2-D convolutions"
        )
    p = dict(p)
    stored_alpha = float(p["alpha"]) if "alpha" in p else None
    dim = None
    if "lokr_w2_b" in p:
        dim = p["lokr_w2_b"].shape[0]
    elif "lokr_w1_b" in p:
        dim = p["lokr_w1_b"].shape[0]
    if dim is not None:
        # LyCORIS stores alpha * dim / r_factor, so alpha / dim is its scale (rsLoRA included); ComfyUI the same.
        trained = stored_alpha / dim if stored_alpha else 1.0
        comfy = trained
    else:
        # Both sides full: LyCORIS forces alpha = dim (scale 1, or sqrt(dim) with rsLoRA); ComfyUI uses 1.
        linear_dim = config.get("linear_dim")
        trained = stored_alpha / float(linear_dim) if stored_alpha and linear_dim else 1.0
        comfy = 1.0
    target = 1.0 if normalize_alpha else comfy
    fold = trained / target
    if normalize_alpha and dim is not None:
        p["alpha"] = torch.tensor(float(dim))
    if fold != 1.0:  # kron is linear in w1: carry the scale ComfyUI would not apply there
        w1_key = "lokr_w1" if "lokr_w1" in p else "lokr_w1_a"
        p[w1_key] = p[w1_key] * fold
    if "lokr_w2" in p and p["lokr_w2"].dim() == 3:  # conv1d: ComfyUI only broadcasts w1 over 2-D kernels
        p["lokr_w2"] = p["lokr_w2"].reshape(p["lokr_w2"].shape[0], -1)
    return p, trained


def _loha_to_comfyui(name: str, p: dict[str, torch.Tensor], normalize_alpha: bool) -> tuple[dict, float]:
    extra = sorted(set(p) - {*_LOHA, "alpha", "dora_scale"})
    if extra:
        raise ExportError(f"{name}: LoHA tensor {extra[0]} has no ComfyUI counterpart")
    for t in ("hada_t1", "hada_t2"):
        if t in p and p[t].dim() != 4:
            raise ExportError(
                f"{name}: LoHA Tucker factor on a {p[t].dim() - 2}-D kernel; ComfyUI rebuilds Tucker only for 2-D convolutions"
            )
    p = dict(p)
    dim = p["hada_w1_b"].shape[0]
    trained = float(p["alpha"]) / dim if "alpha" in p else 1.0
    if normalize_alpha:
        p["alpha"] = torch.tensor(float(dim))
        p["hada_w1_a"] = p["hada_w1_a"] * trained  # the Hadamard product is linear in each factor
    return p, trained


def _oft_to_comfyui(name: str, p: dict[str, torch.Tensor]) -> tuple[dict, float]:
    """Diag-OFT blocks as ComfyUI's OFT loader reads them. Both build R = (I + Q)(I - Q)^-1 from the
    skew part Q of the blocks and rotate the base weight's output rows block by block; the difference
    is the norm constraint: LyCORIS stores ``alpha`` per output dim and uses alpha * out_dim, ComfyUI
    uses ``.alpha`` as it is, so the file carries the product. ComfyUI ignores ``rescale``: refused."""
    extra = sorted(set(p) - {"oft_blocks", "alpha", "rescale"})
    if extra:
        raise ExportError(f"{name}: OFT tensor {extra[0]} has no ComfyUI counterpart")
    if "rescale" in p:
        raise ExportError(f"{name}: OFT with a rescale vector: ComfyUI's OFT loader ignores it, so it would not play as trained")
    blocks = p["oft_blocks"]
    if blocks.dim() != 3:
        raise ExportError(f"{name}: oft_blocks of shape {tuple(blocks.shape)}; diag-OFT stores (blocks, size, size)")
    out_dim = blocks.shape[0] * blocks.shape[1]
    per_dim = float(p["alpha"]) if "alpha" in p else 0.0
    return {"oft_blocks": blocks, "alpha": torch.tensor(per_dim * out_dim if per_dim > 0 else 0.0)}, 1.0


def _loha_delta(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    f = torch.float32
    return (p["hada_w1_a"].to(f) @ p["hada_w1_b"].to(f)) * (p["hada_w2_a"].to(f) @ p["hada_w2_b"].to(f))


def lycoris_to_comfyui(
    source: AdapterSource, *, normalize_alpha: bool = False, base: BaseWeights | None = None
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, params in sorted(_lycoris_modules(source.tensors).items()):
        if any(k.startswith("lokr_") for k in params):
            p, trained = _lokr_to_comfyui(name, params, source.config, normalize_alpha)
            rebuild = _lokr_delta
        elif any(k.startswith("hada_") for k in params):
            if "hada_t1" in params:
                raise ExportError(f"{name}: LoHA with Tucker factors is not exported yet")
            p, trained = _loha_to_comfyui(name, params, normalize_alpha)
            rebuild = _loha_delta
        elif "oft_blocks" in params:
            p, _ = _oft_to_comfyui(name, params)  # a rotation: no scale to carry, --normalize-alpha does not apply
            for param, tensor in p.items():
                out[f"{name}.{param}"] = tensor.contiguous()
            continue
        else:
            algo = source.metadata.get("algo") or "this"
            raise ExportError(
                f"{name}: LyCORIS {algo} modules ({', '.join(sorted(params))}) are not exported; LoKR, LoHA and diag-OFT are"
            )
        if "dora_scale" in p and p["dora_scale"].shape[0] != 1:
            # LyCORIS (wd_on_out) normalises by the merged row norm, ComfyUI by the base row norm.
            if "lokr_t2" in params:
                raise ExportError(f"{name}: LoKR with a Tucker factor and weight decomposition is not exported yet")
            path = base.by_lycoris_name.get(name) if base is not None else None
            w = _need_base(name, base, path)
            raw = rebuild(params)
            if raw.numel() != w.numel():
                raise ExportError(f"{name}: the adapter's delta has {raw.numel()} values but the base weight is {tuple(w.shape)}")
            merged_norm = _row_norm(w + trained * raw.reshape(w.shape)) + _EPS
            p["dora_scale"] = _dora_scale_for_comfyui(name, params["dora_scale"], merged_norm, w)
        for param, tensor in p.items():
            out[f"{name}.{param}"] = tensor.contiguous()
    return out


# --------------------------------------------------------------------------- files


def to_comfyui(
    source: AdapterSource, *, normalize_alpha: bool = False, base: BaseWeights | None = None
) -> dict[str, torch.Tensor]:
    if source.kind == "peft":
        return peft_to_comfyui(source, normalize_alpha=normalize_alpha, base=base)
    return lycoris_to_comfyui(source, normalize_alpha=normalize_alpha, base=base)


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save_file

    fsutil.atomic_write(path, lambda tmp: save_file(dict(tensors), tmp, metadata={str(k): str(v) for k, v in metadata.items()}))


def export_comfyui(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    normalize_alpha: bool = False,
    base: BaseWeights | None = None,
) -> str:
    """Read the adapter in ``folder`` and write its ComfyUI file at ``output``; returns ``output``."""
    source = read_adapter(folder)
    tensors = to_comfyui(source, normalize_alpha=normalize_alpha, base=base)
    meta = {k: v for k, v in source.metadata.items() if k not in ("format",)}
    meta.update(
        {"format": "pt", "sidestep_export": "comfyui", "source_kind": source.kind, "normalized_alpha": str(normalize_alpha)}
    )
    write_safetensors(tensors, output, meta)
    return os.fspath(output)


# --------------------------------------------------------------------------- ComfyUI LoRA file -> PEFT folder


_COMFY_ROLES = {"lora_up.weight": "B", "lora_B.weight": "B", "lora_down.weight": "A", "lora_A.weight": "A", "alpha": "alpha"}
_COMFY_REFUSED = ("dora_scale", "lora_mid.weight", "lokr_", "hada_", "oft_", "diff", "diff_b", "set_weight", "w_norm", "b_norm")


def _split_comfy_key(key: str) -> tuple[str, str]:
    for role in (*_COMFY_ROLES, *_COMFY_REFUSED):
        if role.endswith("_"):
            module, dot, rest = key.rpartition("." + role)
            if dot:
                return module, role + rest
        elif key.endswith("." + role):
            return key[: -len(role) - 1], role
    raise ExportError(f"{key}: not a per-module LoRA key (<module>.lora_up.weight, .lora_down.weight, .alpha)")


def comfyui_to_peft(path: str | os.PathLike, output: str | os.PathLike, *, base: BaseWeights | None = None) -> str:
    """A LoRA file in ComfyUI's ACE-Step key forms (``base_model.model.<path>``, ``diffusion_model.decoder.<path>``,
    or ``lycoris_``/``lora_unet_`` underscore names when ``base`` can resolve them) as a PEFT folder that
    ``PeftModel.from_pretrained(decoder, folder)`` loads with the same delta: each module's scale is
    folded into ``lora_B`` and ``lora_alpha`` equals the rank."""
    from peft import LoraConfig, TaskType

    tensors, _meta = _load(Path(path))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, role = _split_comfy_key(key)
        if role not in _COMFY_ROLES:
            raise ExportError(f"{module}: {role.split('.')[0]} has no PEFT LoRA form; only plain LoRA files convert to PEFT")
        if module.startswith(PEFT_PREFIX):
            mod_path = module[len(PEFT_PREFIX) :]
        elif module.startswith(COMFY_DECODER_PREFIX):
            mod_path = module[len(COMFY_DECODER_PREFIX) :]
        elif module.startswith(("lycoris_", "lora_unet_decoder_")):
            # ComfyUI's generic kohya form is lora_unet_<path under diffusion_model> with dots as underscores
            name = LYCORIS_PREFIX + module.removeprefix("lora_unet_decoder_").removeprefix(LYCORIS_PREFIX)
            if base is None:
                raise NeedsBaseModel(
                    f"{module}: an underscore name needs the base model to find its module (pass --checkpoint-dir and --model-variant)"
                )
            found = base.by_lycoris_name.get(name)
            if found is None:
                raise ExportError(f"{module}: no decoder module of that name in the base model")
            mod_path = found
        else:
            raise ExportError(
                f"{module}: not an ACE-Step decoder key (base_model.model.<path> or diffusion_model.decoder.<path>)"
            )
        modules.setdefault(mod_path, {})[_COMFY_ROLES[role]] = tensor
    if not modules:
        raise ExportError(f"{path}: no LoRA modules in it")
    weights: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for mod_path, parts in sorted(modules.items()):
        if "A" not in parts or "B" not in parts:
            raise ExportError(f"{mod_path}: lora_up or lora_down missing; the file is incomplete")
        rank = parts["A"].shape[0]
        scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0  # ComfyUI's rule
        weights[f"{PEFT_PREFIX}{mod_path}.lora_A.weight"] = parts["A"].contiguous()
        weights[f"{PEFT_PREFIX}{mod_path}.lora_B.weight"] = (parts["B"] * scale).contiguous()
        ranks[mod_path] = rank
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(p): k for p, k in ranks.items() if k != r}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),  # alpha = rank everywhere: scale 1, the file's scale is in lora_B
        target_modules=sorted(ranks),
        task_type=TaskType.FEATURE_EXTRACTION,
    )
    with fsutil.atomic_dir(output) as tmp:
        config.save_pretrained(str(tmp))
        config_path = tmp / PEFT_CONFIG
        data = json.loads(config_path.read_text())
        data["base_model_name_or_path"] = ""
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        from safetensors.torch import save_file

        save_file(weights, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt", "sidestep_export": "peft"})
    return os.fspath(output)
