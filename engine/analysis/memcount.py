"""Count the bytes autograd keeps for backward, on the ``meta`` device (no memory, no GPU): the
calibration of ``engine/vram.py``'s activation term, and its GPU check (``cuda_peak``).

The demo decoder (the shipped decoder's module tree and math, ``engine/models/demo``) is built at the
checkpoint's shapes on ``torch.device("meta")``, the run's real adapter is attached
(``engine.adapters.attach_adapter``) and checkpointing applied exactly as training does
(``engine.models.loader.enable_gradient_checkpointing``). One forward pass and the loss then run under
``torch.autograd.graph.saved_tensors_hooks`` that record every saved tensor, deduplicated by storage
(a view and its base count once; frozen and trainable parameters count as weights, not activations).
A checkpointed layer hides its insides from these hooks and keeps its inputs alive instead: those are
counted from a forward pre-hook.

A training step on a GPU runs under bf16 autocast with CUDA kernels; meta tensors get neither, so three
ops are made to save what they save on CUDA (``_CudaLike``), and the count says so:
- ``F.linear`` casts its floating inputs to the compute dtype (autocast's rule for linear; the fp32
  LoRA branch otherwise keeps fp32 copies), except where the code turns autocast off (the flag of
  "cpu" autocast stands in for CUDA's: meta tensors ignore it);
- ``F.dropout`` keeps a bool mask (``native_dropout``, CUDA's kernel; the CPU fallback keeps a mask
  of the input's dtype);
- ``F.scaled_dot_product_attention`` keeps q, k, v, the mask, the output and an fp32 log-sum-exp per
  query row (the flash / memory-efficient kernels; meta would take the math path, which keeps the
  whole attention matrix);
and the RoPE tables are made as empty tensors of their shape (Qwen3's rotary embedding opens an
autocast region that the meta device refuses).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from engine.config import TrainConfig

ENCODER_LEN = 769


class _FusedAttention(torch.autograd.Function):
    """Shape-only stand-in for a fused attention kernel: the output, and the tensors its backward keeps."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty_like(q)
        rows = q.shape[-2] if mask is None else math.ceil(q.shape[-2] / 32) * 32  # the efficient kernel pads to 32
        lse = torch.empty((*q.shape[:-2], rows), dtype=torch.float32, device=q.device)
        saved = (q, k, v, out, lse) + ((mask,) if mask is not None else ())
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # never run: the count stops before backward
        raise NotImplementedError


class _CudaLike(TorchFunctionMode):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        # The autocast flag of "cpu" stands in for CUDA's (count_saved_bytes turns it on): a region that
        # turns autocast off (the LyCORIS fp32 bypass, engine/adapters/lyco.py) keeps its fp32 linears.
        if func is F.linear and self.dtype != torch.float32 and torch.is_autocast_enabled("cpu"):
            args = tuple(
                a.to(self.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != self.dtype else a
                for a in args
            )
            kwargs = {
                k: v.to(self.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kwargs.items()
            }
        elif func is F.dropout:
            x, p = args[0], kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            if training and p > 0:
                return torch.native_dropout(x, p, True)[0]
            return x
        elif func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            return _FusedAttention.apply(q, k, v, mask)
        return func(*args, **kwargs)


@dataclass
class MetaDecoder:
    module: nn.Module  # the adapter-wrapped decoder, training mode
    bare: Any  # the demo AceStepDiTModel inside
    checkpointed: int
    dtype: torch.dtype


def build(config: TrainConfig, model_config: dict[str, Any] | None = None, *, layers: int | None = None) -> MetaDecoder:
    """The demo decoder at ``model_config``'s shapes (default: the shipped 2B values) on the meta
    device, with ``config``'s adapter and checkpointing; ``layers`` overrides the depth."""
    from engine.adapters import attach_adapter
    from engine.models.demo.acestep_demo_modeling import AceStepDiTModel
    from engine.models.demo.configuration_acestep_demo import AceStepDemoConfig
    from engine.models.loader import enable_gradient_checkpointing

    fields = dict(model_config or {})
    fields.pop("auto_map", None)
    fields.pop("model_type", None)
    if layers is not None:
        fields["num_hidden_layers"] = layers
        fields.pop("layer_types", None)
    cfg = AceStepDemoConfig(**fields)
    backend = "sdpa" if config.attention_backend in ("auto", "flash_attention_2") else config.attention_backend
    cfg._attn_implementation = backend
    dtype = torch.float32 if config.precision == "fp32" else torch.bfloat16
    with torch.device("meta"):
        built: nn.Module = AceStepDiTModel(cfg)
    bare: Any = built.to(dtype)

    def rope(hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (positions.shape[0], positions.shape[1], cfg.head_dim)
        return torch.empty(shape, device=hidden.device, dtype=hidden.dtype), torch.empty(
            shape, device=hidden.device, dtype=hidden.dtype
        )

    bare.rotary_emb.forward = rope
    adapter = attach_adapter(bare, config)
    count = (
        enable_gradient_checkpointing(adapter.module, config.gradient_checkpointing_ratio) if config.gradient_checkpointing else 0
    )
    adapter.module.train()
    return MetaDecoder(adapter.module, bare, count, dtype)


def _inputs(batch: int, frames: int, encoder_len: int, hidden: int, dtype: torch.dtype, device: Any) -> dict[str, torch.Tensor]:
    t = torch.rand(batch, device=device).to(dtype)
    return {
        "hidden_states": torch.randn(batch, frames, 64, device=device).to(dtype),
        "timestep": t,
        "timestep_r": t,
        "encoder_hidden_states": torch.randn(batch, encoder_len, hidden, device=device).to(dtype),
        "context_latents": torch.randn(batch, frames, 128, device=device).to(dtype),
    }


def _step(model: MetaDecoder, inputs: dict[str, torch.Tensor], checkpointing: bool) -> torch.Tensor:
    """The trainer's forward and loss (engine/train/trainer.py): x_t needs grad when checkpointing."""
    x_t = inputs["hidden_states"]
    if checkpointing:
        x_t.requires_grad_(True)
    pred = model.module(
        hidden_states=x_t,
        timestep=inputs["timestep"],
        timestep_r=inputs["timestep_r"],
        attention_mask=None,
        encoder_hidden_states=inputs["encoder_hidden_states"],
        encoder_attention_mask=None,
        context_latents=inputs["context_latents"],
    )[0]
    target = torch.randn(pred.shape, device=pred.device)
    return ((pred.float() - target) ** 2).mean()


@contextlib.contextmanager
def _layer_inputs(model: MetaDecoder, record: Any) -> Iterator[None]:
    """Record the inputs of every checkpointed layer (the checkpoint keeps them for its recompute)."""
    bare: Any = model.bare
    handles = []
    for layer in bare.layers:
        checkpointed = getattr(layer, "_sidestep_checkpointed", False) or getattr(layer, "gradient_checkpointing", False)
        if checkpointed:

            def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                for value in (*args, *kwargs.values()):
                    for tensor in value if isinstance(value, tuple) else (value,):
                        if isinstance(tensor, torch.Tensor):
                            record(tensor)

            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def count_saved_bytes(model: MetaDecoder, *, frames: int, batch: int = 1, encoder_len: int = ENCODER_LEN) -> int:
    """Bytes of the distinct storages autograd keeps after forward + loss (no backward)."""
    weights = {p.untyped_storage()._cdata for p in model.module.parameters()}
    saved: dict[int, tuple[torch.Tensor, int]] = {}

    def record(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights and storage._cdata not in saved:
            saved[storage._cdata] = (tensor, storage.nbytes())  # the tensor keeps the storage (and its id) alive

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        record(tensor)
        return tensor

    hidden = int(model.bare.config.hidden_size)
    inputs = _inputs(batch, frames, encoder_len, hidden, model.dtype, "meta")
    autocast = torch.autocast("cpu", dtype=model.dtype, enabled=model.dtype != torch.float32)  # read by _CudaLike only
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        autocast,
        _CudaLike(model.dtype),
        _layer_inputs(model, record),
    ):
        _step(model, inputs, model.checkpointed > 0)
    return sum(nbytes for _, nbytes in saved.values())


def cuda_peak(config: TrainConfig, model_config: dict[str, Any] | None = None, *, frames: int, batch: int = 1) -> dict[str, int]:
    """On a CUDA GPU: the same decoder with real (random) weights, one forward + backward + AdamW step;
    ``torch.cuda.max_memory_allocated`` before the step (weights + adapter), after forward (+ activations)
    and over the whole step (the peak the estimate predicts, less the CUDA context)."""
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: the GPU comparison needs one (the meta-device count runs anywhere)")
    from engine.adapters import attach_adapter
    from engine.models.demo.acestep_demo_modeling import AceStepDiTModel
    from engine.models.demo.configuration_acestep_demo import AceStepDemoConfig
    from engine.models.loader import enable_gradient_checkpointing
    from engine.train.optim import build_optimizer

    device = torch.device("cuda")
    cfg = AceStepDemoConfig(**{k: v for k, v in (model_config or {}).items() if k not in ("auto_map", "model_type")})
    cfg._attn_implementation = "sdpa" if config.attention_backend == "auto" else config.attention_backend
    dtype = torch.float32 if config.precision == "fp32" else torch.bfloat16
    torch.cuda.reset_peak_memory_stats()
    with torch.device(device):
        built: nn.Module = AceStepDiTModel(cfg)
    bare: Any = built.to(dtype)
    adapter = attach_adapter(bare, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(adapter.module, config.gradient_checkpointing_ratio)
    adapter.module.train()
    optimizer = build_optimizer(adapter.parameters(), config, device_type="cuda")
    model = MetaDecoder(adapter.module, bare, 1 if config.gradient_checkpointing else 0, dtype)
    inputs = _inputs(batch, frames, ENCODER_LEN, cfg.hidden_size, dtype, device)
    torch.cuda.synchronize()
    static = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        loss = _step(model, inputs, config.gradient_checkpointing)
    after_forward = torch.cuda.memory_allocated()
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize()
    return {
        "static": static,
        "activations": after_forward - static,
        "peak": torch.cuda.max_memory_allocated(),
        "after_step": torch.cuda.memory_allocated(),
    }
