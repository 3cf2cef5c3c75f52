"""A quantised frozen base (``--base-quantization int8|nf4``): the decoder's transformer Linear layers
held by bitsandbytes (``Linear8bitLt``, LLM.int8 with outlier threshold 6; ``LinearNF4`` with double
quantisation, as QLoRA), the adapter training in fp32 on top of them.

Only the Linear layers inside ``decoder.layers`` (attention and MLP projections: almost all of the
weights) are quantised; the embedders, ``proj_in``/``proj_out`` and the norms stay in the base dtype,
as transformers keeps ``lm_head``. Each layer is moved to the device as it is quantised, so the device
never holds the unquantised base.

``check_available(kind, device)`` runs a real forward and backward of one small quantised layer on the
device before anything loads: where bitsandbytes is missing or has no kernel for the type there, the run
fails with one line instead of falling back or failing mid-step.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

KINDS = ("int8", "nf4")
INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold (transformers' BitsAndBytesConfig default)


class QuantizationError(ValueError):
    """A quantised base that cannot run here; the message says why and what to do instead."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def quantized_linear(linear: nn.Linear, kind: str, *, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes copy of the frozen ``linear`` (weights from its current values), quantised on ``device``."""
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    weight = linear.weight.detach()
    q: nn.Module
    if kind == "int8":
        q = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False, threshold=INT8_THRESHOLD
        )
        q.weight = bnb.nn.Int8Params(weight.to(dtype), requires_grad=False, has_fp16_weights=False)
    elif kind == "nf4":
        # LinearNF4 (not Linear4bit(quant_type="nf4")): LyCORIS recognises the class and runs beside it.
        q = bnb.nn.LinearNF4(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=dtype, compress_statistics=True
        )
        q.weight = bnb.nn.Params4bit(weight.to(dtype), requires_grad=False, quant_type="nf4", compress_statistics=True)
    else:
        raise ValueError(f"base quantization {kind!r} is not one of {', '.join(KINDS)}")
    if has_bias:
        assert linear.bias is not None
        q.bias = nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
    return q.to(device)  # bitsandbytes quantises on this move


@functools.cache
def _probe(kind: str, device: str) -> str | None:
    """None when a ``kind`` layer runs forward and backward (input gradients, what an adapter needs) on ``device``."""
    try:
        dev = torch.device(device)
        torch.manual_seed(0)
        layer = quantized_linear(nn.Linear(64, 64), kind, device=dev, dtype=torch.float32)
        x = torch.randn(2, 64, device=dev, requires_grad=True)
        y = layer(x)
        y.float().sum().backward()
        if x.grad is None or not bool(torch.isfinite(x.grad).all()):
            return "its backward gave no finite input gradient"
    except Exception as exc:  # bitsandbytes raises RuntimeError, NotImplementedError, its own types
        return _first_line(exc)
    return None


def check_available(kind: str, device: torch.device) -> None:
    """Raise ``QuantizationError`` (one line) unless a ``kind`` base can train on ``device``."""
    if kind == "none":
        return
    if kind not in KINDS:
        raise QuantizationError(f"base quantization {kind!r} is not none, int8 or nf4")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise QuantizationError(
            f"base quantization {kind} needs bitsandbytes ({_first_line(exc)}); pip install bitsandbytes "
            "or set --base-quantization none"
        ) from None
    problem = _probe(kind, str(device))
    if problem:
        raise QuantizationError(
            f"bitsandbytes {bnb.__version__} cannot run an {kind} base on {device} ({problem}); "
            "train on a CUDA GPU or set --base-quantization none"
        )


def quantize_decoder(decoder: nn.Module, kind: str, *, device: torch.device, dtype: torch.dtype) -> int:
    """Replace every ``nn.Linear`` under ``decoder.layers`` by its ``kind`` bitsandbytes copy on
    ``device``; returns how many. Marks the decoder as PEFT expects (``is_loaded_in_8bit`` /
    ``is_loaded_in_4bit``) so LoRA/DoRA wrap the layers with PEFT's bitsandbytes layers."""
    layers = decoder.layers
    assert isinstance(layers, nn.Module)
    targets = [(name, module) for name, module in layers.named_modules() if type(module) is nn.Linear]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = layers.get_submodule(parent_name) if parent_name else layers
        setattr(parent, child, quantized_linear(linear, kind, device=device, dtype=dtype))
        del linear
    flag = "is_loaded_in_8bit" if kind == "int8" else "is_loaded_in_4bit"
    setattr(decoder, flag, True)
    setattr(decoder, "sidestep_base_quantization", kind)  # noqa: B010 - a plain attribute; nn.Module's setattr types take tensors
    return len(targets)


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """The float values a bitsandbytes weight stands for (int8 rows times their scale / 127; nf4 blocks
    dequantised); any other tensor as it is. What exports that need base weights (DoRA's row norms) read."""
    state = getattr(weight, "quant_state", None)
    if state is not None:
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(weight.data, state)
    scb = getattr(weight, "SCB", None)
    if weight.dtype == torch.int8 and isinstance(scb, torch.Tensor):
        return weight.data.float() * scb.float()[:, None] / 127
    return weight


def parameter_count(decoder: nn.Module) -> int:
    """Parameters as the unquantised model counts them (a packed nf4 tensor holds two weights per byte)."""
    total = 0
    for p in decoder.parameters():
        state = getattr(p, "quant_state", None)
        total += int(torch.Size(state.shape).numel()) if state is not None else p.numel()
    return total


def weight_bytes(decoder: nn.Module) -> int:
    """Bytes the decoder's parameters and buffers hold on the device (quantisation statistics included)."""
    total = 0
    for t in [*decoder.parameters(), *decoder.buffers()]:
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:
            for part in (state.absmax, getattr(state, "state2", None) and state.state2.absmax):
                if isinstance(part, torch.Tensor):
                    total += part.numel() * part.element_size()
        scb = getattr(t, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total
