"""LyCORIS adapters (LoKR, LoHA, diagonal OFT) on the bare decoder: one network builder, one
``Adapter`` class, and the fp32 adapter path for half-precision bases.

Pitfalls honoured (ecosystem.md §3.2, ACE_STEP.md §7.2): ``target_name`` alone narrows nothing (we pass
``target_module: []``), ``apply_preset`` is class-level state (every key, every time, under a lock), the
network is no submodule unless registered (``decoder.lycoris_net``), DoRA is ``weight_decompose``.

Precision. LyCORIS's default ("rebuild") forward computes ``(W + dW) - W`` in the base weight's dtype;
on a bf16 base most elements of a young dW are below half an ulp of W and round away (the forward
delta was about 0.2x the fp32 one). With ``bypass`` this module replaces each wrapped layer's
forward by ``y = base(x) + d(x)`` where ``d`` is LyCORIS's own bypass term (``bypass_forward_diff``:
``x @ dW^T`` without building ``W + dW``; for OFT ``(R - I) y``) evaluated on fp32 inputs with fp32
factors and autocast off, then added to the base output in fp32 and rounded once to the base dtype.
"""

from __future__ import annotations

import json
import os
import re
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.adapters.base import Adapter, read_safetensors, target_regex

if TYPE_CHECKING:
    from lycoris import LycorisNetwork

    from engine.config import TrainConfig

NET_ATTR = "lycoris_net"  # where the network is registered on the decoder
WEIGHTS_FILES = {"lokr": "lokr_weights.safetensors", "loha": "loha_weights.safetensors", "oft": "oft_weights.safetensors"}
HALF_DTYPES = (torch.bfloat16, torch.float16)
_PRESET_LOCK = threading.Lock()  # LycorisNetwork.apply_preset mutates class attributes

# Side-Step's LoKR targets: every Linear/Conv1d of the decoder (ACE_STEP.md §3.5, §7.2), named.
ALL_LINEAR_EXTRA = ("condition_embedder", r"time_embed(?:_r)?\.(?:linear_1|linear_2|time_proj)", r"proj_in\.1")


def algo_settings(config: TrainConfig) -> dict[str, Any]:
    """Every field of the run's LyCORIS algorithm, under LyCORIS's names (also stored in the file's metadata)."""
    kind = config.adapter_type
    if kind == "lokr":
        return {
            "algo": "lokr",
            "linear_dim": config.lokr_linear_dim,
            "linear_alpha": config.lokr_linear_alpha,
            "factor": config.lokr_factor,
            "decompose_both": config.lokr_decompose_both,
            "use_tucker": config.lokr_use_tucker,
            "use_scalar": config.lokr_use_scalar,
            "weight_decompose": config.lokr_weight_decompose,
            "full_matrix": config.lokr_full_matrix,
            "rs_lora": config.lokr_rs_lora,
            "unbalanced_factorization": config.lokr_unbalanced_factorization,
        }
    if kind == "loha":
        return {
            "algo": "loha",
            "linear_dim": config.loha_linear_dim,
            "linear_alpha": config.loha_linear_alpha,
            "use_scalar": config.loha_use_scalar,
        }
    if kind == "oft":
        return {"algo": "diag-oft", "linear_dim": config.oft_dim, "constraint": config.oft_constraint, "rescaled": False}
    raise ValueError(f"adapter_type {kind!r} is not a LyCORIS adapter (lokr, loha, oft)")


def _network_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """``LycorisNetwork`` keyword arguments for ``settings`` (the network class directly:
    ``create_lycoris`` drops ``rs_lora`` and re-applies its global "full" preset)."""
    s = dict(settings)
    algo = s.pop("algo")
    dim = s.pop("linear_dim")
    alpha = s.pop("linear_alpha", dim)
    return dict(
        multiplier=1.0,
        lora_dim=dim,
        conv_lora_dim=dim,
        alpha=alpha,
        conv_alpha=alpha,
        network_module=algo,
        bypass_mode=False,  # LyCORIS's own bypass runs in the input dtype; ours is installed below
        warn_on_unmatched=False,
        **s,
    )


def target_pattern(config: TrainConfig) -> tuple[str, tuple[str, ...]]:
    """(anchored regex for LyCORIS's ``re.match``, the target names it stands for)."""
    from engine.config import resolve_targets

    if config.adapter_type == "lokr" and config.lokr_targets == "all-linear":
        from engine.config import MLP_PROJECTIONS, PROJECTIONS

        layer = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in PROJECTIONS] + [f"mlp.{p}" for p in MLP_PROJECTIONS]
        pattern = "(?:" + target_regex(tuple(layer)) + "|" + "|".join(ALL_LINEAR_EXTRA) + ")$"
        return pattern, ("all-linear",)
    if config.selected_modules:  # exact names (--module-config / --auto-estimate)
        return "(?:" + "|".join(re.escape(n) for n in config.selected_modules) + ")$", tuple(config.selected_modules)
    targets = resolve_targets(config)
    return target_regex(targets) + "$", targets  # re.match anchors only the start


def resolve_bypass(choice: str, base_dtype: torch.dtype, weight_decompose: bool) -> tuple[bool, str]:
    """(use the fp32 bypass path?, the one-line reason logged at run start)."""
    dtype = str(base_dtype).removeprefix("torch.")
    if choice == "on":
        return True, f"fp32 bypass (forced; base {dtype})"
    if choice == "off":
        lossy = " - small updates round away in the base dtype" if base_dtype in HALF_DTYPES else ""
        return False, f"LyCORIS rebuild (forced; base {dtype}){lossy}"
    if base_dtype not in HALF_DTYPES:
        return False, f"LyCORIS rebuild (base {dtype} is exact enough)"
    if weight_decompose:
        return False, f"LyCORIS rebuild (weight decomposition needs it; base {dtype}, small updates may round away)"
    return True, f"fp32 bypass (base {dtype})"


class _Fp32FrozenLinear(torch.autograd.Function):
    """``linear(x32, W.float(), b)`` for a frozen half-precision ``W`` that keeps no fp32 copy of ``W``
    for backward: autograd would save the upcast weight (4 bytes per base parameter of every adapted
    layer, twice the bf16 base, alive until backward); this saves the bf16 parameter itself and upcasts
    it again in backward. The values are the same: the upcast is exact."""

    @staticmethod
    def forward(ctx: Any, x32: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return torch.nn.functional.linear(x32, weight.float(), None if bias is None else bias.float())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        return (grad @ weight.float() if ctx.needs_input_grad[0] else None), None, None


def _frozen_base(self: Any, x32: torch.Tensor) -> torch.Tensor:
    weight, bias = self._current_weight(), self._current_bias()
    if self.op is torch.nn.functional.linear and not weight.requires_grad and (bias is None or not bias.requires_grad):
        return _Fp32FrozenLinear.apply(x32, weight, bias)
    return self.op(x32, weight.float(), None if bias is None else bias.float(), **self.kw_dict)


def _autocast_device(x: torch.Tensor) -> str:
    """The device type autocast is asked about: the memory count (``engine.analysis.memcount``) runs on
    ``meta``, which autocast does not know; no autocast applies there, as on a plain CPU run."""
    return "cpu" if x.device.type == "meta" else x.device.type


def _fp32_bypass_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Installed as a LyCORIS module's ``forward``: the whole layer, base and adapter term, in fp32
    from the (exact) upcast base weights, rounded once to the activation dtype."""
    device = _autocast_device(x)
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    with torch.autocast(device_type=device, enabled=False):
        x32 = x.float()
        base = _frozen_base(self, x32)
        if hasattr(self, "oft_blocks"):  # diag-OFT rotates the base output: its term needs y, not x
            from lycoris.functional.diag_oft import bypass_forward_diff as oft_diff

            need_transpose = self.op in (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)
            rescale = self.rescale if self.rescaled else None
            diff = oft_diff(x32, base, self.oft_blocks, rescale, constraint=self.constraint, need_transpose=need_transpose)
        else:
            diff = self.bypass_forward_diff(x32, scale=self.multiplier)
        return (base + diff).to(out_dtype)


def _quantized_bypass_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Installed as a LyCORIS module's ``forward`` over a bitsandbytes (int8/nf4) base: the base runs its
    own quantised kernel; the adapter term is computed in fp32 beside it and added once."""
    device = _autocast_device(x)
    out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    base = self.org_forward(x, *args, **kwargs)
    with torch.autocast(device_type=device, enabled=False):
        x32, base32 = x.float(), base.float()
        if hasattr(self, "oft_blocks"):  # diag-OFT rotates the base output
            from lycoris.functional.diag_oft import bypass_forward_diff as oft_diff

            rescale = self.rescale if self.rescaled else None
            diff = oft_diff(x32, base32, self.oft_blocks, rescale, constraint=self.constraint, need_transpose=False)
        else:
            diff = self.bypass_forward_diff(x32, scale=self.multiplier)
        return (base32 + diff).to(out_dtype)


class LycorisAdapter(Adapter):
    """A registered ``LycorisNetwork``; ``kind`` is lokr, loha or oft."""

    def __init__(
        self,
        module: nn.Module,
        net: LycorisNetwork,
        settings: dict,
        targets: tuple[str, ...],
        *,
        kind: str,
        bypass: bool = False,
        precision_note: str = "",
    ) -> None:
        super().__init__(module, len(net.loras))
        self.kind = kind
        self.net = net
        self.settings = settings
        self.targets = targets
        self.bypass = bypass
        self.precision_note = precision_note

    @property
    def weights_file(self) -> str:
        return WEIGHTS_FILES[self.kind]

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def _live_state(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state, strict=True)

    def _write(self, directory: Path, metadata: dict[str, str]) -> None:
        algo_config = {**self.settings, "targets": list(self.targets)}
        meta = {**metadata, "algo": self.settings["algo"], "format": "lycoris", f"{self.kind}_config": json.dumps(algo_config)}
        self.net.save_weights(str(directory / self.weights_file), None, meta)

    def load(self, directory: str | os.PathLike) -> int:
        path = Path(directory)
        if path.is_dir():
            path = path / self.weights_file
        return self.load_state_dict(read_safetensors(path), source=str(path))


def apply_target_preset(pattern: str) -> None:
    """Point LyCORIS at the modules whose full name matches ``pattern``. Every key, every time: the
    preset is class-level state that outlives the call (hold ``_PRESET_LOCK`` around it and the build)."""
    from lycoris import LycorisNetwork

    LycorisNetwork.apply_preset(
        {
            "enable_conv": True,
            "target_module": [],
            "target_name": [pattern],
            "module_algo_map": {},
            "name_algo_map": {},
            "lora_prefix": "lycoris",
            "use_fnmatch": False,
            "exclude_name": [],
            "unet_target_module": [],
            "unet_target_name": [],
            "text_encoder_target_module": [],
            "text_encoder_target_name": [],
        }
    )


def build_network(decoder: nn.Module, config: TrainConfig) -> tuple[LycorisNetwork, dict, tuple[str, ...], bool, str]:
    """Build, hook and register the run's LyCORIS network on ``decoder`` (frozen by the caller)."""
    from lycoris import LycorisNetwork

    if isinstance(getattr(decoder, NET_ATTR, None), nn.Module):
        raise ValueError("this decoder already carries a LyCORIS network; load a fresh decoder")
    base_dtype = next(decoder.parameters()).dtype
    pattern, targets = target_pattern(config)
    settings = algo_settings(config)
    bypass, note = resolve_bypass(config.lycoris_bypass, base_dtype, bool(settings.get("weight_decompose")))
    quantized = getattr(decoder, "sidestep_base_quantization", "none")  # engine/models/quant.py
    if quantized != "none":  # LyCORIS cannot rebuild W + dW from int8/nf4 weights: the adapter runs beside them
        bypass, note = True, f"fp32 bypass beside the {quantized} base"
    with _PRESET_LOCK:
        apply_target_preset(pattern)
        net = LycorisNetwork(decoder, **_network_kwargs(settings))
    if not net.loras:
        raise ValueError(f"{config.adapter_type} matched no decoder modules for targets {', '.join(targets)}")
    if bypass:
        for lora in net.loras:  # before apply_to, which hooks `lora.forward` onto the wrapped layer
            forward = _quantized_bypass_forward if quantized != "none" else _fp32_bypass_forward
            lora.forward = types.MethodType(forward, lora)
    net.apply_to()
    device = next(decoder.parameters()).device
    net.to(device=device, dtype=torch.float32)  # LyCORIS builds on the CPU; adapter weights stay fp32
    net.requires_grad_(True)
    for buffer in net.buffers():  # `alpha` etc. are bookkeeping, not trainable
        buffer.requires_grad_(False)
    setattr(decoder, NET_ATTR, net)  # a real submodule: .to(), Fabric and DDP see it
    return net, settings, targets, bypass, f"{config.adapter_type} adapter path: {note}"


def attach_lycoris(decoder: nn.Module, config: TrainConfig) -> LycorisAdapter:
    net, settings, targets, bypass, note = build_network(decoder, config)
    return LycorisAdapter(decoder, net, settings, targets, kind=config.adapter_type, bypass=bypass, precision_note=note)
