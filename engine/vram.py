"""Peak GPU memory of a training run, before it starts (stdlib only: the Setup form calls it per keystroke).

Everything is derived from the decoder's own shapes (the checkpoint's ``config.json``: hidden size,
intermediate size, layers, heads, KV heads, head dim, patch size, sliding window, layer types) and the
``TrainConfig``; no figure is copied from another tool. The activation term follows what autograd
keeps for backward in ``engine/models/demo/acestep_demo_modeling.py`` (= the shipped decoder's math,
ACE_STEP.md §3) under bf16 autocast with a PEFT LoRA, op by op (see ``_layer_saved``); it is calibrated
against a byte count of the tensors autograd actually saves on the full-size model
(``engine/analysis/memcount.py``, ``tests/engine/test_vram_calibration.py``, ``benchmarks/vram.py``).

Peak = base weights + adapter + gradients + optimizer state + saved activations (end of forward) +
workspace (backward: one checkpointed layer recomputed, gradient and kernel temporaries) + the CUDA
context. It is compared with each visible GPU's free memory, and when it does not fit, the one change
that would make it fit is named (``fit_line``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine import config as cfgmod

GIB = 2**30
LATENT_FPS = 25  # latent frames per second (48 kHz / hop 1920)
ENCODER_CONTEXT = 769  # condition-encoder tokens: text 256 + lyrics 512 + timbre 1 (ACE_STEP.md §15)
WHOLE_CLIP_FRAMES = 240 * LATENT_FPS  # no crop set: assume clips up to 240 s (said in the breakdown)
CUDA_CONTEXT = 512 * 2**20  # CUDA context + kernels of torch/cuBLAS: outside torch's allocator, inside used memory
QUANTIZATIONS = ("none", "int8", "nf4")
_TIMESTEP_FEATURES = 256  # sinusoid width fed to time_embed.linear_1


@dataclass(frozen=True)
class ModelShape:
    """The decoder's dimensions, from config.json (defaults = the shipped 2B values, ACE_STEP.md §1.3)."""

    hidden: int = 2048
    intermediate: int = 6144
    layers: int = 24
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128
    in_channels: int = 192
    latent_channels: int = 64
    patch: int = 2
    sliding_window: int | None = 128
    sliding_layers: int = 12  # layers whose self-attention uses the window

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> ModelShape:
        def num(key: str, default: int) -> int:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

        d = cls()
        layers = num("num_hidden_layers", d.layers)
        heads = num("num_attention_heads", d.heads)
        hidden = num("hidden_size", d.hidden)
        window = num("sliding_window", 128) if data.get("use_sliding_window", True) else None
        types = data.get("layer_types")
        if isinstance(types, list) and types:
            sliding = sum(1 for t in types[:layers] if t == "sliding_attention")
        else:
            sliding = (layers + 1) // 2 if window else 0
        return cls(
            hidden=hidden,
            intermediate=num("intermediate_size", d.intermediate),
            layers=layers,
            heads=heads,
            kv_heads=num("num_key_value_heads", d.kv_heads),  # absent: the config class's default, as transformers reads it
            head_dim=num("head_dim", hidden // heads),
            in_channels=num("in_channels", d.in_channels),
            latent_channels=num("audio_acoustic_hidden_dim", d.latent_channels),
            patch=num("patch_size", d.patch),
            sliding_window=window,
            sliding_layers=sliding if window else 0,
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every adaptable projection of one layer, by target suffix."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        out: dict[str, tuple[int, int]] = {}
        for kind in ("self_attn", "cross_attn"):
            out |= {f"{kind}.q_proj": (h, q), f"{kind}.k_proj": (h, kv), f"{kind}.v_proj": (h, kv), f"{kind}.o_proj": (q, h)}
        return out | {"mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h)}

    def params(self) -> tuple[int, int]:
        """(parameters of the decoder + null embedding, of them in the layers' Linear weights)."""
        h, c, p = self.hidden, self.latent_channels, self.patch
        linear = sum(a * b for a, b in self.linears().values()) * self.layers
        norms = (3 * h + 4 * self.head_dim + 6 * h) * self.layers  # 3 RMSNorms, q/k norms x2, scale_shift_table
        time_embed = 2 * (_TIMESTEP_FEATURES * h + h + h * h + h + h * 6 * h + 6 * h)
        rest = self.in_channels * h * p + h + time_embed + h * h + h + h + 2 * h + h * c * p + c + h
        return linear + norms + rest, linear


@dataclass(frozen=True)
class Estimate:
    """Bytes per part of the peak; ``notes`` say what was assumed."""

    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int
    context: int
    trainable_params: int
    frames: int
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.gradients + self.optimizer + self.activations + self.workspace + self.context

    def parts(self) -> list[tuple[str, int]]:
        return [
            ("base weights", self.weights),
            ("adapter", self.adapter),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
            ("workspace", self.workspace),
            ("CUDA context", self.context),
        ]


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# --------------------------------------------------------------------------- pieces


def crop_frames(config: cfgmod.TrainConfig) -> int | None:
    """Latent frames per sample the run trains on (None = whole clips, length unknown here)."""
    if config.max_latent_length:
        return config.max_latent_length
    if config.chunk_duration:
        return int(config.chunk_duration * LATENT_FPS)
    return None


def _compute_bytes(config: cfgmod.TrainConfig) -> int:
    return 4 if config.precision == "fp32" else 2  # auto on a GPU = bf16 (fp16 where bf16 is missing)


def _adapted(shape: ModelShape, config: cfgmod.TrainConfig) -> list[tuple[str, int, int]]:
    """(suffix, in, out) of the adapted projections of one layer."""
    linears = shape.linears()
    if config.adapter_type == "lokr" and config.lokr_targets == "all-linear":
        return [(k, *v) for k, v in linears.items()]
    return [(t, *linears[t]) for t in cfgmod.resolve_targets(config) if t in linears]


def _factor(dim: int, factor: int) -> tuple[int, int]:
    """LyCORIS's ``factorization``: dim = m * n with m <= n, m <= factor (-1: most balanced)."""
    if factor > 0 and dim % factor == 0:
        m, n = factor, dim // factor
        return (m, n) if m <= n else (n, m)
    limit = dim if factor < 0 else factor
    m, n, best = 1, dim, (1, dim)
    while m < n:
        m += 1
        while dim % m and m < n:
            m += 1
        n = dim // m
        if m > n or m > limit:
            break
        best = (m, n)
    return best


def adapter_params(shape: ModelShape, config: cfgmod.TrainConfig) -> int:
    """Trainable parameters: LoRA/DoRA exactly (PEFT's layout); LyCORIS kinds from their factor shapes."""
    total = 0
    for _, d_in, d_out in _adapted(shape, config):
        kind = config.adapter_type
        if kind == "lora":
            total += config.rank * (d_in + d_out) + (d_out if config.use_dora else 0)
        elif kind == "loha":
            total += 2 * config.loha_linear_dim * (d_in + d_out)
        elif kind == "oft":
            total += d_out * config.oft_dim
        else:  # lokr: w1 full (m_out x m_in), w2 low-rank unless the rank is too large for it
            m_in, n_in = _factor(d_in, config.lokr_factor)
            m_out, n_out = _factor(d_out, config.lokr_factor)
            r = config.lokr_linear_dim
            w2 = n_out * n_in if config.lokr_full_matrix or r >= max(n_out, n_in) / 2 else r * (n_out + n_in)
            total += m_out * m_in + w2
    return total * shape.layers


def optimizer_bytes(kind: str, params: int, shape_pairs: list[tuple[int, int]] | None = None) -> int:
    """State of each optimizer over ``params`` fp32 adapter parameters."""
    if kind == "adamw":  # exp_avg + exp_avg_sq, fp32
        return 8 * params
    if kind == "adamw8bit":  # two uint8 moments + one fp32 absmax per 2048-value block each
        return 2 * params + 2 * 4 * math.ceil(params / 2048)
    if kind == "prodigy":  # exp_avg, exp_avg_sq, s, p0
        return 16 * params
    if kind == "adafactor":  # factored second moment (row + column), no first moment
        return 4 * sum(a + b for a, b in shape_pairs or []) if shape_pairs else 4 * params
    raise ValueError(f"optimizer {kind!r} is not one of {', '.join(cfgmod.OPTIMIZERS)}")


def _adapter_matrices(shape: ModelShape, config: cfgmod.TrainConfig) -> list[tuple[int, int]]:
    if config.adapter_type == "lora":
        r = config.rank
        pairs = [p for _, d_in, d_out in _adapted(shape, config) for p in ((r, d_in), (d_out, r))]
    else:
        pairs = [(d_out, d_in) for _, d_in, d_out in _adapted(shape, config)]
    return pairs * shape.layers


def _attention_saved(shape: ModelShape, backend: str, tokens: int, keys: int, windowed: bool, a: int) -> int:
    """What one attention call keeps for backward (per sample): fused kernels (flash / sdpa's
    flash and memory-efficient paths) q, k, v, the output and an fp32 log-sum-exp per query row; sdpa
    with a window mask cannot use GQA, so k and v are first repeated to every head; eager keeps the
    softmax probabilities (fp32 and their cast) and q, k, v."""
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    if backend == "eager":
        probs = shape.heads * tokens * keys * (4 + a)
        return probs + a * (tokens * q_width + 2 * keys * q_width)
    repeat = backend == "sdpa" and windowed
    kv = keys * (q_width if repeat else kv_width)
    lse_rows = math.ceil(tokens / 32) * 32 if windowed and backend == "sdpa" else tokens  # efficient kernel pads to 32
    return a * (2 * tokens * q_width + 2 * kv) + 4 * shape.heads * lse_rows


def _layer_saved(shape: ModelShape, config: cfgmod.TrainConfig, tokens: int, keys: int, windowed: bool, backend: str) -> int:
    """Bytes one DiT layer keeps for backward, per sample, op by op (compute dtype ``a``; RMSNorm works in fp32)."""
    a, f = _compute_bytes(config), 4
    h, i = shape.hidden, shape.intermediate
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    # RMSNorm keeps its fp32 input and the fp32 rsqrt per row: three layer norms, q/k norms of both attentions.
    norms = 3 * f * tokens * (h + 1)
    norms += 2 * f * tokens * (q_width + shape.heads) + f * (tokens + keys) * (kv_width + shape.kv_heads)
    attention = _attention_saved(shape, backend, tokens, tokens, windowed, a) + _attention_saved(
        shape, backend, tokens, keys, False, a
    )
    mlp = 3 * a * tokens * i  # SiLU input, and both operands of the gate * up product
    adapter = 0
    for suffix, d_in, d_out in _adapted(shape, config):
        rows = keys if suffix in ("cross_attn.k_proj", "cross_attn.v_proj") else tokens
        grad_input = rows == tokens  # the encoder states need no gradient: no dropout mask kept there
        if config.adapter_type == "lora":
            mask = rows * d_in if grad_input and config.dropout > 0 else 0  # bool dropout mask
            adapter += mask + a * rows * (d_in + config.rank) + a * config.rank * (d_in + d_out)
            if config.use_dora:  # PEFT's DoRA: both outputs it rescales, and B @ A rebuilt from an identity
                r = config.rank
                adapter += 2 * a * rows * d_out + a * (d_in * d_in + d_in * d_out + 2 * d_in * r + r * d_out) + 8 * d_out
        else:  # LyCORIS fp32 bypass (engine/adapters/lyco.py), all fp32; counted by memcount per kind
            adapter += _lycoris_saved(config, rows, d_in, d_out)
    return norms + attention + mlp + adapter


def _lycoris_saved(config: cfgmod.TrainConfig, rows: int, d_in: int, d_out: int) -> int:
    """What one LyCORIS layer's fp32 adapter term keeps for backward (the base's fp32 matmul keeps only
    its frozen weight). LoHA: the input and the rebuilt delta weight. LoKR: the input, reshaped to the
    Kronecker factors, the product with w2 (and the rank-wide one between w2's factors when w2 is
    low-rank). Diagonal OFT: the base output it rotates and three block-sized tensors per block."""
    if config.adapter_type == "loha":
        return 4 * rows * d_in + 4 * d_in * d_out
    if config.adapter_type == "oft":
        return 4 * rows * d_out + 12 * d_out * config.oft_dim
    m_in, n_in = _factor(d_in, config.lokr_factor)
    _, n_out = _factor(d_out, config.lokr_factor)
    r = config.lokr_linear_dim
    low_rank = not (config.lokr_full_matrix or r >= max(n_out, n_in) / 2)
    return 4 * rows * (d_in + m_in * n_out + (m_in * r if low_rank else 0))


def activation_bytes(shape: ModelShape, config: cfgmod.TrainConfig, frames: int, *, encoder_len: int = ENCODER_CONTEXT) -> int:
    """Saved activations at the end of the forward pass (the top of the memory curve)."""
    backend = "sdpa" if config.attention_backend == "auto" else config.attention_backend
    tokens = math.ceil(frames / shape.patch)
    a = _compute_bytes(config)
    windowed = backend in ("sdpa", "eager") and shape.sliding_window is not None  # flash-attn applies the window itself
    full = _layer_saved(shape, config, tokens, encoder_len, False, backend)
    sliding = _layer_saved(shape, config, tokens, encoder_len, windowed, backend)
    checkpointed = 0
    if config.gradient_checkpointing:
        ratio = config.gradient_checkpointing_ratio
        checkpointed = shape.layers if ratio >= 1 else max(1, min(shape.layers, round(shape.layers * ratio)))
    chosen = _checkpointed_layers(shape.layers, checkpointed)
    per_sample = 0
    for index in range(shape.layers):
        if index in chosen:
            per_sample += a * tokens * shape.hidden  # a checkpointed layer keeps only its input
        else:
            per_sample += sliding if index < 2 * shape.sliding_layers and index % 2 == 0 else full
    # After the layers: norm_out (fp32), proj_out's input; the velocity and the loss (fp32, per frame).
    per_sample += 4 * tokens * (shape.hidden + 1) + a * tokens * shape.hidden + 3 * 4 * frames * shape.latent_channels
    shared = a * tokens * tokens if windowed else 0  # the one window mask every sliding layer reads
    if chosen:  # checkpoints keep their layers' other inputs too: the embedded encoder states, RoPE tables, AdaLN terms
        shared += config.batch_size * a * (encoder_len * shape.hidden + 6 * shape.hidden) + 2 * a * tokens * shape.head_dim
    return config.batch_size * per_sample + shared


def _checkpointed_layers(layers: int, count: int) -> set[int]:
    """The layers ``engine.models.loader.enable_gradient_checkpointing`` wraps: evenly spaced."""
    if count <= 0:
        return set()
    if count >= layers:
        return set(range(layers))
    return {int(i * layers / count) for i in range(count)}


def estimate(
    shape: ModelShape,
    config: cfgmod.TrainConfig,
    *,
    frames: int | None = None,
    quantization: str = "none",
    encoder_len: int = ENCODER_CONTEXT,
) -> Estimate:
    """The peak for ``config`` on a decoder of ``shape``; ``frames`` overrides the crop length;
    ``quantization`` (none / int8 / nf4) is the storage of the frozen layers' Linear weights."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    notes: list[str] = []
    if frames is None:
        frames = crop_frames(config)
    if frames is None:
        frames = WHOLE_CLIP_FRAMES
        notes.append(f"no crop set: assumed clips up to {WHOLE_CLIP_FRAMES // LATENT_FPS} s (set Chunk seconds to bound it)")
    a = _compute_bytes(config)
    total_params, linear = shape.params()
    if quantization == "none":
        weights = a * total_params
    else:  # the layers' Linear weights quantised (int8: 1 byte + fp32 scale per row; nf4: 4 bits + absmax per 64)
        per = 1.0 if quantization == "int8" else 0.5 + 4 / 64
        weights = a * (total_params - linear) + int(per * linear) + (4 * linear // shape.hidden if quantization == "int8" else 0)
    params = adapter_params(shape, config)
    optimizer = optimizer_bytes(config.optimizer_type, params, _adapter_matrices(shape, config))
    activations = activation_bytes(shape, config, frames, encoder_len=encoder_len)
    tokens = math.ceil(frames / shape.patch)
    # Backward: a checkpointed layer is recomputed whole (its saved tensors live again for a moment);
    # plus the gradient of the hidden states and the MLP's widest temporaries.
    recompute = 0
    if config.gradient_checkpointing:
        recompute = config.batch_size * _layer_saved(
            shape, config, tokens, encoder_len, True, "sdpa" if config.attention_backend == "auto" else config.attention_backend
        )
    temporaries = config.batch_size * tokens * (4 * a * shape.hidden + 2 * a * shape.intermediate)
    return Estimate(
        weights=weights,
        adapter=4 * params,
        gradients=4 * params,
        optimizer=optimizer,
        activations=activations,
        workspace=recompute + temporaries,
        context=CUDA_CONTEXT,
        trainable_params=params,
        frames=frames,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- fit


def _candidates(config: cfgmod.TrainConfig, quantization: str) -> list[tuple[str, cfgmod.TrainConfig, str]]:
    """Single changes, least harmful first: (what to do, changed config, quantization)."""
    out: list[tuple[str, cfgmod.TrainConfig, str]] = []
    rep = dataclasses.replace
    if not config.gradient_checkpointing:
        out.append(
            (
                "turn gradient checkpointing on",
                rep(config, gradient_checkpointing=True, gradient_checkpointing_ratio=1.0),
                quantization,
            )
        )
    elif config.gradient_checkpointing_ratio < 1:
        out.append(("checkpoint every layer (ratio 1.0)", rep(config, gradient_checkpointing_ratio=1.0), quantization))
    if config.optimizer_type in ("adamw", "prodigy"):
        out.append(("use the adamw8bit optimizer", rep(config, optimizer_type="adamw8bit"), quantization))
    if config.batch_size > 1:
        out.append(
            (
                "use batch size 1 (raise grad accumulation instead)",
                rep(config, batch_size=1, gradient_accumulation=config.gradient_accumulation * config.batch_size),
                quantization,
            )
        )
    frames = crop_frames(config)
    if frames is None or frames > 60 * LATENT_FPS:
        out.append(
            ("train on 60-second chunks (Chunk seconds 60)", rep(config, chunk_duration=60, max_latent_length=None), quantization)
        )
    if frames is None or frames > 30 * LATENT_FPS:
        out.append(
            ("train on 30-second chunks (Chunk seconds 30)", rep(config, chunk_duration=30, max_latent_length=None), quantization)
        )
    if "base_quantization" in cfgmod.FIELD_BY_NAME:
        for q in ("int8", "nf4"):
            if QUANTIZATIONS.index(q) > QUANTIZATIONS.index(quantization):
                out.append((f"quantise the frozen base to {q}", rep(config, **{"base_quantization": q}), q))
    if config.adapter_type == "lora" and config.rank > 16:
        out.append(
            (
                f"lower the rank to {config.rank // 2}",
                rep(config, rank=config.rank // 2, alpha=max(1, config.alpha // 2)),
                quantization,
            )
        )
    return out


def fit_line(
    shape: ModelShape,
    config: cfgmod.TrainConfig,
    free_bytes: int,
    *,
    quantization: str = "none",
    encoder_len: int = ENCODER_CONTEXT,
) -> str | None:
    """None when the run fits in ``free_bytes``; else the one change that makes it fit, as
    ``"turn gradient checkpointing on: 11.2 GiB -> 6.8 GiB"``, or why no single change does."""
    now = estimate(shape, config, quantization=quantization, encoder_len=encoder_len).total
    if now <= free_bytes:
        return None
    best: tuple[int, str] | None = None
    for what, changed, q in _candidates(config, quantization):
        after = estimate(shape, changed, quantization=q, encoder_len=encoder_len).total
        if after <= free_bytes:
            return f"{what}: {gib(now)} -> {gib(after)}"
        if best is None or after < best[0]:
            best = (after, what)
    hint = f"; the largest single saving: {best[1]} ({gib(now)} -> {gib(best[0])})" if best else ""
    return f"no single change fits {gib(now)} into {gib(free_bytes)} free{hint}"


# --------------------------------------------------------------------------- inputs and text

_SHAPES: dict[tuple[str, float], ModelShape] = {}


def shape_for(model_dir: str | None) -> tuple[ModelShape, bool]:
    """The shape from ``model_dir/config.json`` (read once per file version), and whether it was read
    (False: the 2B defaults)."""
    if not model_dir:
        return ModelShape(), False
    path = os.path.join(model_dir, "config.json")
    try:
        key = (path, os.stat(path).st_mtime)
    except OSError:
        return ModelShape(), False
    if key not in _SHAPES:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return ModelShape(), False
        _SHAPES[key] = ModelShape.from_config(data if isinstance(data, dict) else {})
    return _SHAPES[key], True


def breakdown_lines(est: Estimate) -> list[str]:
    width = max(len(name) for name, _ in est.parts())
    lines = [f"{name.ljust(width)}  {gib(value):>10}" for name, value in est.parts()]
    lines.append(f"{'peak'.ljust(width)}  {gib(est.total):>10}")
    lines.append(
        f"({est.trainable_params:,} trainable parameters; {est.frames} latent frames = {est.frames / LATENT_FPS:g} s per sample)"
    )
    return lines + [f"note: {n}" for n in est.notes]


def gpu_lines(est: Estimate, gpus: Sequence[tuple[int, str, float, float]]) -> list[str]:
    """One line per GPU ((index, name, used MiB, total MiB) as ``discovery.gpus()`` gives): free memory and fit."""
    if not gpus:
        return ["no GPU visible (NVML found none): compare the peak with your GPU's free memory"]
    lines = []
    for index, name, used_mb, total_mb in gpus:
        free = int((total_mb - used_mb) * 2**20)
        verdict = "fits" if est.total <= free else "does NOT fit"
        lines.append(f"GPU {index} {name}: {gib(free)} free of {gib(total_mb * 2**20)}: {verdict}")
    return lines


def _target_gpus(
    config: cfgmod.TrainConfig, gpus: Sequence[tuple[int, str, float, float]]
) -> list[tuple[int, str, float, float]]:
    """The GPUs the run may land on: ``cuda:N`` that one (NVML numbering), ``auto``/``cuda`` any."""
    device = config.device.strip().lower()
    if device.startswith(("cpu", "mps")):
        return []
    if device.startswith("cuda:") and device[5:].isdigit():
        return [g for g in gpus if g[0] == int(device[5:])]
    return list(gpus)


def report(
    config: cfgmod.TrainConfig,
    gpus: Sequence[tuple[int, str, float, float]],
    *,
    shape: ModelShape | None = None,
    quantization: str = "none",
) -> tuple[list[str], bool | None]:
    """The breakdown, a line per GPU and (when it does not fit) the one change that makes it fit;
    and whether it fits the best target GPU (None: no GPU visible to compare with). ``shape``: the
    decoder's (default: read from the model folder's config.json)."""
    read = shape is not None
    if shape is None:
        shape, read = shape_for(config.model_dir() if config.checkpoint_dir else None)
    est = estimate(shape, config, quantization=quantization)
    lines = [
        f"VRAM estimate for {config.model_variant} ({shape.layers} layers, hidden {shape.hidden}), batch {config.batch_size}:"
    ]
    if not read:
        lines.append("note: the model's config.json was not found: assumed the 2B decoder's shapes")
    lines += ["  " + line for line in breakdown_lines(est)]
    lines += gpu_lines(est, gpus)
    targets = _target_gpus(config, gpus)
    if not targets:
        return lines, None
    free = max(int((t - u) * 2**20) for _, _, u, t in targets)
    fix = fit_line(shape, config, free, quantization=quantization)
    if fix:
        lines.append(f"to fit in {gib(free)}: {fix}")
    return lines, fix is None


def panel(
    config: cfgmod.TrainConfig, shape: ModelShape, gpus: Sequence[tuple[int, str, float, float]], *, quantization: str = "none"
) -> str:
    """Short lines (under 50 columns) for the Setup form's side panel; arithmetic only, so it is
    recomputed on every edit."""
    est = estimate(shape, config, quantization=quantization)
    g = 1 / GIB
    lines = [
        f"VRAM estimate       {gib(est.total)} peak",
        f"  base {est.weights * g:.1f} · adapter {(est.adapter + est.gradients + est.optimizer) * g:.1f}"
        f" · activations {est.activations * g:.1f}",
        f"  workspace {(est.workspace + est.context) * g:.1f} (GiB; Ctrl+R: details)",
    ]
    if est.notes:
        lines.append(f"  {est.frames // LATENT_FPS}-s clips assumed (no crop set)")
    targets = _target_gpus(config, gpus)
    if not targets:
        lines.append("  no GPU visible" if not gpus else f"  device {config.device}: not one of the visible GPUs")
        return "\n".join(lines)
    index, name, used, total = max(targets, key=lambda t: t[3] - t[2])
    free = int((total - used) * 2**20)
    lines.append(f"  GPU {index} {name}: {gib(free)} free")
    if est.total <= free:
        lines.append("  ✓ fits")
    else:
        fix = fit_line(shape, config, free, quantization=quantization) or ""
        what, _, figures = fix.rpartition(": ")
        lines += ["  ✗ does not fit; to fit:", f"  {what}:" if what else "", f"    {figures}"]
    return "\n".join(line for line in lines if line)
