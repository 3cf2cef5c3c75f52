"""The one training-config schema (stdlib only): CLI flags, TUI forms, presets and ``config.json``.

Every field carries ``metadata``: ``label``, ``help``, ``group``, optional ``choices``, ``min``/``max``,
``advanced`` (hidden at the Basic depth), ``flag`` (the CLI flag, named after Side-Step's so its users
feel at home) and ``aliases``. ``parse()`` is strict: unknown keys are errors, types are coerced
explicitly (strings from a form or a command line, JSON natives from a file) and *all* problems are
reported together, each naming its field and what is allowed. Nothing bad is replaced by a default.

Variant-aware values (inference shift and steps, timestep mu/sigma from the model's config.json) are
``None`` in a draft and filled by ``resolve_variant_defaults()`` only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

GROUPS = (
    "Model",
    "Data",
    "Adapter",
    "LoRA",
    "LoKR",
    "LoHA",
    "OFT",
    "LyCORIS",
    "Training",
    "Objective",
    "Memory",
    "Checkpoints",
    "Logging",
)
ADAPTER_TYPES = ("lora", "lokr", "loha", "oft")
LYCORIS_TYPES = ("lokr", "loha", "oft")  # the adapters built with LyCORIS
LYCORIS_BYPASS = ("auto", "on", "off")
LOKR_TARGETS = ("selected", "all-linear")
GRANULARITIES = ("module", "layer")  # engine.moduleconfig.GRANULARITIES
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy")
SCHEDULERS = ("cosine", "cosine_restarts", "linear", "constant", "constant_with_warmup")
ATTENTION_TYPES = ("both", "self", "cross")
ATTENTION_BACKENDS = ("auto", "flash_attention_2", "sdpa", "eager")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
STRATEGIES = ("auto", "ddp", "fsdp")
TIMESTEP_MODES = ("continuous", "discrete")
LOSS_WEIGHTINGS = ("none", "min_snr", "min_snr_v")
BASE_QUANTIZATIONS = ("none", "int8", "nf4")
BIASES = ("none", "all", "lora_only")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
VARIANT_ALIASES = {
    "turbo": "acestep-v15-turbo",
    "base": "acestep-v15-base",
    "sft": "acestep-v15-sft",
    "xl-turbo": "acestep-v15-xl-turbo",
    "xl-base": "acestep-v15-xl-base",
    "xl-sft": "acestep-v15-xl-sft",
}
# Inference metadata stored with the adapter (ACE_STEP.md §17): turbo = shift 3, 8 steps; base/sft = 1, 50.
VARIANT_INFERENCE = {"turbo": (3.0, 8), "base": (1.0, 50), "sft": (1.0, 50)}
DEFAULT_LEARNING_RATE = 3e-4
DEFAULT_TIMESTEP_MU = -0.4
DEFAULT_TIMESTEP_SIGMA = 1.0


def _f(default: Any, label: str, help: str, group: str, *, flag: str | None = None, **meta: Any) -> Any:
    """A schema field. ``flag`` defaults to ``--<name-with-dashes>`` (filled in below)."""
    meta.update(label=label, help=help, group=group, flag=flag)
    if isinstance(default, tuple):
        return field(default=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything needed to reproduce a training run; written resolved to ``run_dir/config.json``."""

    # ---- Model
    checkpoint_dir: str = _f(
        "",
        "Checkpoint root",
        "Folder holding the model folders (acestep-v15-*/, vae/, ...).",
        "Model",
        required=True,
        kind="path",
        aliases=("-c",),
    )
    model_variant: str = _f(
        "base",
        "Model",
        "turbo, base, sft, xl-turbo, xl-base, xl-sft, or the exact folder name of a fine-tune under the checkpoint root.",
        "Model",
        aliases=("--model", "-M"),
    )
    base_model: str | None = _f(
        None,
        "Base model",
        "What a fine-tune was trained from (turbo/base/sft); detected for official models.",
        "Model",
        choices=("turbo", "base", "sft"),
        advanced=True,
    )
    device: str = _f(
        "auto", "Device", "auto (the CUDA GPU with most memory, else MPS, else CPU), cuda, cuda:N, mps or cpu.", "Model"
    )
    precision: str = _f(
        "auto", "Precision", "auto = bf16 on GPUs, fp32 on CPU. Adapter weights always stay fp32.", "Model", choices=PRECISIONS
    )
    attention_backend: str = _f(
        "auto",
        "Attention",
        "auto tries flash_attention_2 (CUDA, bf16/fp16, installed), then sdpa, then eager; the choice is reported.",
        "Model",
        choices=ATTENTION_BACKENDS,
        advanced=True,
    )
    devices: str = _f(
        "1",
        "Devices",
        "Training processes per machine: a number, or auto = every visible GPU (1 without CUDA). More than one "
        "trains data-parallel; run it under torchrun or srun, or let the engine start them.",
        "Model",
        numbers_too=True,
        advanced=True,
    )
    num_nodes: int = _f(
        1,
        "Machines",
        "Machines in the run (each with --devices processes); launch with torchrun or srun.",
        "Model",
        min=1,
        max=4096,
        advanced=True,
    )
    strategy: str = _f(
        "auto",
        "Strategy",
        "How several processes share the work: auto (ddp when there are several), ddp (the frozen base on every "
        "device, adapter gradients averaged) or fsdp (the frozen base sharded across the devices, for a base that "
        "does not fit one; LoRA only).",
        "Model",
        choices=STRATEGIES,
        advanced=True,
    )
    collective_timeout: int = _f(
        1800,
        "Collective timeout",
        "Seconds a process waits for the others at a synchronisation point before the run fails (a dead or stuck "
        "process ends the run after at most this long).",
        "Model",
        min=5,
        max=86400,
        advanced=True,
    )

    # ---- Data
    dataset_dir: str = _f(
        "",
        "Dataset folder",
        "Folder of preprocessed .pt tensors (and manifest.json).",
        "Data",
        required=True,
        kind="path",
        aliases=("-d",),
    )
    num_workers: int = _f(
        2,
        "Loader workers",
        "DataLoader worker processes (0 = load in the training process).",
        "Data",
        min=0,
        max=64,
        advanced=True,
    )
    pin_memory: bool = _f(True, "Pin memory", "Page-lock batches for faster GPU copies (ignored on CPU).", "Data", advanced=True)
    prefetch_factor: int = _f(
        2, "Prefetch", "Batches each worker loads ahead (needs workers > 0).", "Data", min=1, max=64, advanced=True
    )
    persistent_workers: bool = _f(
        True,
        "Persistent workers",
        "Keep loader workers alive between epochs (avoids the epoch-boundary stall).",
        "Data",
        advanced=True,
    )
    dataset_repeats: int = _f(
        1, "Dataset repeats", "Each epoch walks the dataset this many times.", "Data", min=1, max=10000, aliases=("-R",)
    )
    chunk_duration: int | None = _f(
        None,
        "Chunk seconds",
        "Train on a random window of this many seconds per sample (saves memory; 60 is a good value). Empty = whole clips.",
        "Data",
        min=10,
        max=600,
    )
    max_latent_length: int | None = _f(
        None,
        "Max latent frames",
        "Crop window in latent frames (25 per second); overrides chunk seconds.",
        "Data",
        min=16,
        max=100000,
        advanced=True,
    )
    chunk_decay_every: int = _f(
        10, "Chunk decay", "Halve the chunk-coverage counts every N epochs.", "Data", min=1, max=100000, advanced=True
    )

    # ---- Adapter
    adapter_type: str = _f(
        "lora",
        "Adapter",
        "lora (PEFT LoRA/DoRA), or lokr, loha or oft (LyCORIS LoKR, LoHA, diagonal OFT).",
        "Adapter",
        choices=ADAPTER_TYPES,
        aliases=("--adapter", "-a"),
    )
    attention_type: str = _f(
        "both",
        "Attention layers",
        "Which attention blocks get adapters: self, cross or both.",
        "Adapter",
        choices=ATTENTION_TYPES,
    )
    target_modules: tuple[str, ...] = _f(
        PROJECTIONS, "Projections", "Attention projections to adapt (space separated).", "Adapter", item_choices=PROJECTIONS
    )
    self_target_modules: tuple[str, ...] = _f(
        (),
        "Self-attn projections",
        "With 'both': projections for self-attention only (overrides Projections there).",
        "Adapter",
        item_choices=PROJECTIONS,
        advanced=True,
    )
    cross_target_modules: tuple[str, ...] = _f(
        (),
        "Cross-attn projections",
        "With 'both': projections for cross-attention only (overrides Projections there).",
        "Adapter",
        item_choices=PROJECTIONS,
        advanced=True,
    )
    target_mlp: bool = _f(True, "Adapt MLP", "Also adapt the MLP projections (gate/up/down).", "Adapter")
    module_config: str | None = _f(
        None,
        "Module config",
        "A module list from `sidestep estimate` (Side-Step's JSON; a fisher_map.json works too): adapt only the "
        "modules it names instead of the projections above.",
        "Adapter",
        kind="path",
        advanced=True,
    )
    auto_estimate: bool = _f(
        False,
        "Auto-estimate",
        "Before training, rank the modules by gradient sensitivity on this dataset and adapt only the top-k "
        "(Side-Step's selective).",
        "Adapter",
        advanced=True,
    )
    top_k: int = _f(
        16, "Top-k", "How many modules (or layers) the estimate selects.", "Adapter", min=1, max=100000, advanced=True
    )
    granularity: str = _f(
        "module",
        "Granularity",
        "module = rank single projections; layer = rank whole decoder layers (each with all its projections).",
        "Adapter",
        choices=GRANULARITIES,
        advanced=True,
    )
    estimate_batches: int = _f(
        5, "Estimate batches", "Batches the gradient-sensitivity estimate measures.", "Adapter", min=1, max=100000, advanced=True
    )
    selected_modules: tuple[str, ...] = _f(
        (),
        "Selected modules",
        "Exact decoder modules to adapt (layers.N.self_attn.q_proj, ...; layers.N = a whole layer) instead of the "
        "projections above; filled in from the module config or the estimate when a run starts.",
        "Adapter",
        advanced=True,
    )

    # ---- LoRA
    rank: int = _f(64, "Rank", "LoRA rank: capacity and memory grow with it.", "LoRA", min=1, max=1024, aliases=("-r",))
    alpha: int = _f(128, "Alpha", "LoRA alpha; the update is scaled by alpha/rank (2x rank is usual).", "LoRA", min=1, max=4096)
    dropout: float = _f(0.1, "Dropout", "LoRA dropout.", "LoRA", min=0.0, max=0.9)
    bias: str = _f("none", "Bias", "Which biases train: none, all, lora_only.", "LoRA", choices=BIASES, advanced=True)
    use_dora: bool = _f(False, "DoRA", "Weight-decomposed LoRA (slower, sometimes better).", "LoRA", advanced=True)
    ignore_fisher_map: bool = _f(
        False,
        "Ignore Fisher map",
        "Train every module at the one rank above even when the dataset folder holds a fisher_map.json "
        "(per-module ranks from `sidestep analyze`, used by LoRA/DoRA otherwise).",
        "LoRA",
        advanced=True,
    )

    # ---- LoKR
    lokr_linear_dim: int = _f(64, "LoKR dim", "LoKR linear dimension (like rank).", "LoKR", min=1, max=100000)
    lokr_linear_alpha: int = _f(
        128,
        "LoKR alpha",
        "LoKR alpha. LyCORIS forces alpha = dim where both Kronecker factors are full matrices.",
        "LoKR",
        min=1,
        max=100000,
    )
    lokr_factor: int = _f(-1, "LoKR factor", "Kronecker factor; -1 = automatic (most balanced).", "LoKR", min=-1, max=8192)
    lokr_decompose_both: bool = _f(False, "Decompose both", "Low-rank decompose both Kronecker factors.", "LoKR", advanced=True)
    lokr_use_tucker: bool = _f(False, "Tucker", "Tucker decomposition (conv layers).", "LoKR", advanced=True)
    lokr_use_scalar: bool = _f(False, "Scalar", "Train an extra scalar per module.", "LoKR", advanced=True)
    lokr_weight_decompose: bool = _f(
        False, "Weight decompose", "DoRA-style weight decomposition (LyCORIS dora_wd).", "LoKR", advanced=True
    )
    lokr_full_matrix: bool = _f(False, "Full matrix", "Never factorise w2 (more parameters).", "LoKR", advanced=True)
    lokr_rs_lora: bool = _f(False, "rsLoRA scaling", "Scale by alpha/sqrt(dim) instead of alpha/dim.", "LoKR", advanced=True)
    lokr_unbalanced_factorization: bool = _f(False, "Unbalanced factors", "Put the larger factor first.", "LoKR", advanced=True)
    lokr_targets: str = _f(
        "selected",
        "LoKR targets",
        "selected = the Adapter section's attention/MLP choice; all-linear = every Linear/Conv1d of the decoder "
        "(also condition_embedder, time_embed(_r) and proj_in.1), as Side-Step's LoKR does.",
        "LoKR",
        choices=LOKR_TARGETS,
        advanced=True,
    )

    # ---- LoHA (LyCORIS)
    loha_linear_dim: int = _f(64, "LoHA dim", "LoHA rank of each Hadamard factor (like LoRA rank).", "LoHA", min=1, max=100000)
    loha_linear_alpha: int = _f(128, "LoHA alpha", "LoHA alpha; the update is scaled by alpha/dim.", "LoHA", min=1, max=100000)
    loha_use_scalar: bool = _f(False, "Scalar", "Train an extra scalar per module.", "LoHA", advanced=True)

    # ---- OFT (LyCORIS diag-oft)
    oft_dim: int = _f(
        32,
        "OFT block factor",
        "LyCORIS diag-OFT dim f: an output dimension d is split into blocks of min(f, d/f) when f divides d "
        "(32 gives 32-wide blocks on every 2B projection); the rotation starts at the identity.",
        "OFT",
        min=1,
        max=100000,
    )
    oft_constraint: float = _f(
        0.0,
        "OFT constraint",
        "Cap on the rotation's norm (COFT), as a multiple of the output dimension; 0 = unconstrained.",
        "OFT",
        min=0.0,
        max=1000.0,
        advanced=True,
    )

    # ---- LyCORIS (LoKR, LoHA, OFT)
    lycoris_bypass: str = _f(
        "auto",
        "fp32 adapter path",
        "on = the adapter's contribution is computed in fp32 beside the frozen base (bypass), so small updates "
        "survive a bf16/fp16 base; off = LyCORIS rebuilds W+dW in the base dtype (small updates round away there); "
        "auto = on for a bf16/fp16 base without weight decomposition. The choice is logged at run start.",
        "LyCORIS",
        choices=LYCORIS_BYPASS,
        advanced=True,
    )

    # ---- Training
    learning_rate: float | None = _f(
        None,
        "Learning rate",
        "Peak learning rate; empty = 3e-4 (1.0 for Prodigy, which scales it itself).",
        "Training",
        min=0.0,
        max=10.0,
        exclusive_min=True,
        flag="--lr",
        aliases=("--learning-rate", "-l"),
    )
    batch_size: int = _f(
        1,
        "Batch size",
        "Samples per micro-batch (batches longer than 1 are length-bucketed).",
        "Training",
        min=1,
        max=1024,
        aliases=("-b",),
    )
    gradient_accumulation: int = _f(
        4, "Grad accumulation", "Micro-batches per optimizer step.", "Training", min=1, max=1024, aliases=("-g",)
    )
    epochs: int = _f(1000, "Epochs", "Passes over the dataset.", "Training", min=1, max=1000000, aliases=("-e",))
    max_steps: int = _f(
        0,
        "Max steps",
        "Stop after this many optimizer steps (0 = run all epochs).",
        "Training",
        min=0,
        max=100000000,
        aliases=("-m",),
    )
    warmup_steps: int = _f(
        100,
        "Warmup steps",
        "Linear warm-up from 10% to 100% of the LR, capped at 10% of training.",
        "Training",
        min=0,
        max=10000000,
    )
    weight_decay: float = _f(0.01, "Weight decay", "Decoupled weight decay.", "Training", min=0.0, max=1.0)
    max_grad_norm: float = _f(
        1.0, "Max grad norm", "Gradient clipping norm.", "Training", min=0.0, max=1000.0, exclusive_min=True
    )
    seed: int = _f(
        42, "Seed", "Random seed (data order, timesteps, noise, dropout).", "Training", min=0, max=2**32 - 1, aliases=("-s",)
    )
    optimizer_type: str = _f(
        "adamw",
        "Optimizer",
        "adamw, adamw8bit (bitsandbytes), adafactor or prodigy (set-free LR).",
        "Training",
        choices=OPTIMIZERS,
    )
    scheduler_type: str = _f("cosine", "Scheduler", "LR schedule after warm-up.", "Training", choices=SCHEDULERS)
    warmup_start_factor: float = _f(
        0.1,
        "Warmup start",
        "Warm-up starts at this fraction of the LR.",
        "Training",
        min=0.0,
        max=1.0,
        exclusive_min=True,
        advanced=True,
    )
    cosine_eta_min_ratio: float = _f(
        0.01, "Cosine floor", "Cosine schedules end at this fraction of the LR.", "Training", min=0.0, max=1.0, advanced=True
    )
    cosine_restarts_count: int = _f(
        4, "Cosine restarts", "Cycles for cosine_restarts.", "Training", min=1, max=1000, advanced=True
    )
    # Cruise control (Side-Step's names and defaults, ACE_STEP.md §6.5/§16)
    target_loss: float = _f(
        0.0,
        "Target loss",
        "Cruise control: as the smoothed loss nears this value the LR is damped toward the floor (0 = off).",
        "Training",
        min=0.0,
        max=100.0,
        advanced=True,
    )
    target_loss_floor: float = _f(
        0.01,
        "Target floor",
        "Cruise control: the LR factor reached at the target (it decays further below it).",
        "Training",
        min=0.0,
        max=1.0,
        exclusive_min=True,
        advanced=True,
    )
    target_loss_warmup: int = _f(
        50,
        "Target warmup",
        "Cruise control engages after this many optimizer steps (and never before the LR warm-up ends).",
        "Training",
        min=0,
        max=100000000,
        advanced=True,
    )
    target_loss_smoothing: float = _f(
        0.98,
        "Target smoothing",
        "Cruise control: EMA factor of the step loss it watches (higher = smoother, slower).",
        "Training",
        min=0.0,
        max=0.9999,
        advanced=True,
    )
    # EMA of the adapter weights (SimpleTuner's names)
    use_ema: bool = _f(
        False,
        "EMA weights",
        "Keep an fp32 moving average of the adapter; best/final/checkpoint adapters are written from it (raw ones in raw/).",
        "Training",
        advanced=True,
    )
    ema_decay: float = _f(
        0.995,
        "EMA decay",
        "shadow = decay * shadow + (1 - decay) * weights at each EMA update (closer to 1 = slower).",
        "Training",
        min=0.0,
        max=0.99999,
        exclusive_min=True,
        advanced=True,
    )
    ema_update_interval: int = _f(
        1, "EMA interval", "Update the EMA every N optimizer steps.", "Training", min=1, max=1000000, advanced=True
    )
    ema_cpu_only: bool = _f(
        False,
        "EMA on CPU",
        "Keep the EMA shadow in CPU memory instead of on the training device (saves device memory, slower updates).",
        "Training",
        advanced=True,
    )

    # ---- Objective
    timestep_mode: str = _f(
        "continuous",
        "Timesteps",
        "continuous = logit-normal (the model's own recipe); discrete = the 8 turbo values.",
        "Objective",
        choices=TIMESTEP_MODES,
    )
    timestep_mu: float | None = _f(
        None,
        "Timestep mu",
        "Logit-normal mean; empty = the model config's timestep_mu.",
        "Objective",
        min=-10.0,
        max=10.0,
        advanced=True,
    )
    timestep_sigma: float | None = _f(
        None,
        "Timestep sigma",
        "Logit-normal std; empty = the model config's timestep_sigma.",
        "Objective",
        min=0.0,
        max=10.0,
        exclusive_min=True,
        advanced=True,
    )
    cfg_ratio: float = _f(
        0.15,
        "CFG dropout",
        "Chance a sample trains unconditioned (null embedding); the base model used 0.15.",
        "Objective",
        min=0.0,
        max=1.0,
    )
    loss_weighting: str = _f(
        "none",
        "Loss weighting",
        "none = flat velocity MSE. min_snr = Side-Step's min(SNR,g)/SNR with SNR=((1-t)/t)^2: weight 1 for every "
        "t above 1/(1+sqrt(g)) (0.31 at g=5), lower only for the CLEANEST samples (small t); it does not "
        "down-weight noisy ones. min_snr_v = min-SNR carried over to the velocity target: min((1-t)^2, g*t^2), "
        "peak 1 at t=1/(1+sqrt(g)), down-weighting both the cleanest and the noisiest samples.",
        "Objective",
        choices=LOSS_WEIGHTINGS,
    )
    snr_gamma: float = _f(
        5.0, "SNR gamma", "Gamma (g) for min_snr and min_snr_v.", "Objective", min=0.0, max=100.0, exclusive_min=True
    )
    shift: float | None = _f(
        None,
        "Inference shift",
        "Stored with the adapter for inference; empty = variant default (turbo 3, base/sft 1).",
        "Objective",
        min=1.0,
        max=5.0,
        advanced=True,
    )
    num_inference_steps: int | None = _f(
        None,
        "Inference steps",
        "Stored with the adapter; empty = variant default (turbo 8, base/sft 50).",
        "Objective",
        min=1,
        max=1000,
        advanced=True,
    )

    # ---- Memory
    gradient_checkpointing: bool = _f(
        True, "Grad checkpointing", "Recompute activations in backward: far less memory, some speed.", "Memory"
    )
    gradient_checkpointing_ratio: float = _f(
        1.0,
        "Checkpoint ratio",
        "Fraction of DiT layers to checkpoint (1 = all).",
        "Memory",
        min=0.0,
        max=1.0,
        exclusive_min=True,
        advanced=True,
    )
    base_quantization: str = _f(
        "none",
        "Base quantisation",
        "Hold the frozen decoder's transformer Linear weights in int8 (LLM.int8) or nf4 (QLoRA's 4-bit) with bitsandbytes; "
        "the adapter still trains in fp32 on top and loads into the unquantised model. int8 saves about half, nf4 about "
        "three quarters of a bf16 base's weight memory; fails (never falls back) where bitsandbytes has no kernels.",
        "Memory",
        choices=BASE_QUANTIZATIONS,
        advanced=True,
    )
    offload_encoder: bool = _f(
        True,
        "Drop encoders",
        "Keep only the decoder and null embedding on the device (the encoders are not needed to train).",
        "Memory",
        advanced=True,
    )

    # ---- Checkpoints
    output_dir: str = _f(
        "",
        "Output folder",
        "Run directory: adapters, checkpoints, logs, events.",
        "Checkpoints",
        required=True,
        kind="path",
        aliases=("-o",),
    )
    save_every: int = _f(50, "Save every (epochs)", "Checkpoint every N epochs.", "Checkpoints", min=1, max=1000000)
    save_every_n_steps: int = _f(
        0,
        "Save every (steps)",
        "Also checkpoint every N optimizer steps (0 = off).",
        "Checkpoints",
        min=0,
        max=100000000,
        advanced=True,
    )
    keep_checkpoints: int = _f(
        0,
        "Keep checkpoints",
        "Keep only the newest N periodic checkpoints (0 = keep all).",
        "Checkpoints",
        min=0,
        max=100000,
        advanced=True,
    )
    resume_from: str | None = _f(
        None, "Resume from", "A checkpoint folder, or 'auto' for the newest in this output folder.", "Checkpoints", kind="path"
    )
    strict_resume: bool = _f(
        True,
        "Strict resume",
        "Refuse to resume when the optimizer, scheduler or adapter shape differ.",
        "Checkpoints",
        advanced=True,
    )
    overwrite: bool = _f(
        False, "Overwrite", "Allow reusing an output folder that holds a finished run.", "Checkpoints", advanced=True
    )
    run_name: str = _f("", "Run name", "A label for this run (shown in run history).", "Checkpoints", aliases=("-n",))
    save_best: bool = _f(True, "Save best", "Keep best/ = adapter with the lowest smoothed epoch loss.", "Checkpoints")
    save_best_after: int = _f(
        200, "Best after epoch", "Start best-model tracking at this epoch.", "Checkpoints", min=0, max=1000000, advanced=True
    )
    early_stop_patience: int = _f(
        0, "Early stop", "Stop after N epochs without a new best (0 = off).", "Checkpoints", min=0, max=1000000, advanced=True
    )
    post_checkpoint_script: str = _f(
        "",
        "Checkpoint hook",
        "Command run after each checkpoint is written, e.g. 'rsync -a {checkpoint_path} host:ckpts/' "
        "({checkpoint_path}, {step}, {run_dir} are filled in; no shell). Its failure never stops training.",
        "Checkpoints",
        advanced=True,
    )

    # ---- Logging
    log_dir: str | None = _f(None, "TensorBoard dir", "Empty = <output>/runs.", "Logging", kind="path", advanced=True)
    log_every: int = _f(10, "Log every", "TensorBoard scalars every N optimizer steps.", "Logging", min=1, max=1000000)
    log_heavy_every: int = _f(
        50, "Heavy log every", "Timestep histogram and per-layer grad norms every N steps.", "Logging", min=1, max=1000000
    )
    sample_every: int = _f(
        0,
        "Sample every",
        "Render audio samples every N optimizer steps (0 = off); the base model is rendered once at step 0 "
        "with the same prompts and seeds. Files: <output>/samples/step_<N>/, and TensorBoard.",
        "Logging",
        min=0,
        max=100000000,
        advanced=True,
    )
    sample_prompts: str | None = _f(
        None,
        "Sample prompts",
        "A prompts file (one per line: plain text, or JSON with prompt, lyrics, duration, seed); "
        "empty = up to 3 captions and lyrics from the dataset's own samples.",
        "Logging",
        kind="path",
        advanced=True,
    )
    sample_duration: float = _f(
        10.0, "Sample seconds", "Length of each rendered sample in seconds.", "Logging", min=1.0, max=600.0, advanced=True
    )
    sample_seed: int = _f(
        42,
        "Sample seed",
        "Noise seed of the samples: the same seed every time, so checkpoints compare by ear.",
        "Logging",
        min=0,
        max=2**31 - 1,
        advanced=True,
    )

    # derived values (methods, never stored)
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation

    def resolved_learning_rate(self) -> float:
        """The LR the optimizer gets: the user's, else 1.0 for Prodigy (its step size is adaptive and
        1.0 is its intended setting), else 3e-4."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1.0 if self.optimizer_type == "prodigy" else DEFAULT_LEARNING_RATE

    def model_dir(self) -> str:
        from engine.discovery import model_folder  # discovery imports this module

        return model_folder(self.checkpoint_dir, self.model_variant)

    def variant_family(self) -> str | None:
        """turbo / base / sft, from an alias, the explicit base model, or the folder name."""
        if self.base_model:
            return self.base_model
        name = self.model_variant.lower()
        for family in ("turbo", "base", "sft"):
            if family in name:
                return family
        return None


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(TrainConfig)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
for _fld in FIELDS:
    if _fld.metadata.get("flag") is None:
        # metadata is a read-only mapping; rebuild it with the default flag filled in.
        _fld.metadata = type(_fld.metadata)({**_fld.metadata, "flag": "--" + _fld.name.replace("_", "-")})
FLAG_TO_FIELD = {}
for _fld in FIELDS:
    for _name in (_fld.metadata["flag"], *_fld.metadata.get("aliases", ())):
        FLAG_TO_FIELD[_name] = _fld.name


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        flag = FIELD_BY_NAME[self.field].metadata["flag"] if self.field in FIELD_BY_NAME else self.field
        return f"{self.field} ({flag}): {self.message}"


class ConfigError(ValueError):
    """All problems of one config, each naming its field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

    def by_field(self) -> dict[str, str]:
        return {e.field: e.message for e in self.errors}


# --------------------------------------------------------------------------- coercion

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_of(f: dataclasses.Field) -> tuple[str, bool]:
    """(base type name, optional?) from the string annotation."""
    ann = str(f.type).replace(" ", "")
    optional = ann.endswith("|None")
    base = ann.removesuffix("|None")
    return base, optional


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` to the field's type or raise ``ValueError`` with a message for the user."""
    base, optional = _type_of(f)
    if value is None or (optional and isinstance(value, str) and value.strip() == ""):
        if optional:
            return None
        raise ValueError("a value is required")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if base == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a whole number, got {value!r}")
    if base == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        else:
            raise ValueError(f"expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if base == "str":
        if isinstance(value, str):
            return value.strip()
        if f.metadata.get("numbers_too") and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # --devices 2 written as a JSON number
        raise ValueError(f"expected text, got {value!r}")
    if base == "tuple[str,...]":
        if isinstance(value, str):
            items = value.replace(",", " ").split()
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            items = [v.strip() for v in value if v.strip()]
        else:
            raise ValueError(f"expected a list of names, got {value!r}")
        return tuple(items)
    raise AssertionError(f"unsupported field type {f.type}")  # a schema bug, not user input


def _check_field(f: dataclasses.Field, value: Any) -> str | None:
    meta = f.metadata
    if value is None:
        return None
    if meta.get("required") and value == "":
        return "is required"
    choices = meta.get("choices")
    if choices and value not in choices:
        return f"{value!r} is not one of {', '.join(choices)}"
    item_choices = meta.get("item_choices")
    if item_choices:
        bad = [v for v in value if v not in item_choices]
        if bad:
            return f"unknown {', '.join(bad)}; allowed: {', '.join(item_choices)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("exclusive_min") and value == lo)):
            op = ">" if meta.get("exclusive_min") else ">="
            return f"must be {op} {lo}, got {value}"
        if hi is not None and value > hi:
            return f"must be <= {hi}, got {value}"
    return None


def _cross_checks(c: TrainConfig) -> list[FieldError]:
    errors: list[FieldError] = []
    if (
        c.device != "auto"
        and c.device not in ("cpu", "mps", "cuda")
        and not (c.device.startswith("cuda:") and c.device[5:].isdigit())
    ):
        errors.append(FieldError("device", f"{c.device!r} is not auto, cpu, mps, cuda or cuda:N"))
    devices = parse_devices(c.devices)
    if devices is None:
        errors.append(FieldError("devices", f"{c.devices!r} is not auto or a whole number from 1 to 1024"))
    elif (devices != 1 or c.num_nodes > 1) and (c.device == "mps" or c.device.startswith("cuda:")):
        errors.append(
            FieldError(
                "devices",
                f"several processes pick their own devices; set device auto, cuda or cpu instead of {c.device} "
                "(choose GPUs with CUDA_VISIBLE_DEVICES)",
            )
        )
    if c.attention_type != "both" and (c.self_target_modules or c.cross_target_modules):
        errors.append(FieldError("self_target_modules", "per-attention lists need attention_type both"))
    if not c.target_modules and not c.self_target_modules and not c.cross_target_modules and not c.target_mlp:
        errors.append(FieldError("target_modules", "nothing to adapt: pick projections or enable the MLP"))
    if c.optimizer_type == "prodigy" and c.scheduler_type not in ("constant", "constant_with_warmup", "cosine"):
        errors.append(FieldError("scheduler_type", "prodigy adapts its own step size; use constant or cosine"))
    if c.num_workers == 0 and c.persistent_workers and c.prefetch_factor != 2:
        errors.append(FieldError("prefetch_factor", "prefetch needs num_workers > 0"))
    if c.use_dora and c.adapter_type != "lora":
        errors.append(FieldError("use_dora", "DoRA is a LoRA option; for LoKR use lokr_weight_decompose"))
    if c.target_loss > 0 and c.optimizer_type == "prodigy":
        errors.append(
            FieldError("target_loss", "cruise control damps the LR, which Prodigy sets itself; use adamw or target_loss 0")
        )
    if c.target_loss > 0 and c.early_stop_patience:
        errors.append(
            FieldError(
                "early_stop_patience", "cruise control holds the loss near the target on purpose; set early_stop_patience 0"
            )
        )
    if c.post_checkpoint_script:
        try:
            hook_argv(c.post_checkpoint_script, {k: "" for k in HOOK_PLACEHOLDERS})
        except ValueError as exc:
            errors.append(FieldError("post_checkpoint_script", str(exc)))
    if c.lokr_targets != "selected" and c.adapter_type != "lokr":
        errors.append(FieldError("lokr_targets", "all-linear is a LoKR option; set adapter_type lokr or lokr_targets selected"))
    errors += _selection_checks(c)
    if c.lycoris_bypass == "on" and c.adapter_type == "lokr" and c.lokr_weight_decompose:
        errors.append(
            FieldError(
                "lycoris_bypass",
                "the fp32 bypass path cannot apply weight decomposition; turn lokr_weight_decompose off or use bypass auto/off",
            )
        )
    if c.base_quantization != "none" and c.adapter_type == "lokr" and c.lokr_weight_decompose:
        errors.append(
            FieldError(
                "base_quantization",
                "weight decomposition needs the unquantised base weights; turn lokr_weight_decompose off or use base_quantization none",
            )
        )
    if c.base_quantization != "none" and c.adapter_type in LYCORIS_TYPES and c.lycoris_bypass == "off":
        errors.append(
            FieldError(
                "base_quantization",
                f"{c.adapter_type} on a quantised base runs beside it (bypass); set lycoris_bypass auto/on or base_quantization none",
            )
        )
    return errors


# Bytes one frozen base weight takes on the device, by quantisation (bitsandbytes' layouts): int8 is one
# byte plus a float32 scale per output row; nf4 is half a byte plus one absmax per 64-weight block, itself
# 8-bit with a float32 per 256 blocks (QLoRA's double quantisation): 0.5 + 1/64 + 4/(64*256).
_BASE_BYTES = {"int8": 1.0, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}
_PRECISION_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "auto": 2.0}


def base_weight_bytes(quantization: str, precision: str = "bf16") -> float:
    """Bytes per frozen base weight for ``quantization`` (none, int8, nf4) at ``precision`` (the dtype an
    unquantised base is held in; auto counts as bf16, the GPU default). Only the quantised Linear weights
    shrink: the per-row int8 scales are a negligible term left out."""
    if quantization not in BASE_QUANTIZATIONS:
        raise ValueError(f"base quantization {quantization!r} is not one of {', '.join(BASE_QUANTIZATIONS)}")
    if precision not in _PRECISION_BYTES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(_PRECISION_BYTES)}")
    return _BASE_BYTES.get(quantization, _PRECISION_BYTES[precision])


def quantizable_params(model_config: dict[str, Any]) -> int | None:
    """Weights of the decoder's transformer Linear layers (what ``base_quantization`` shrinks) from a model's
    config.json: per layer, self- and cross-attention q/k/v/o plus the MLP's gate/up/down (ACE_STEP.md §3.1;
    1.51e9 of the 2B decoder). None when the config lacks a size."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
    values = [v for v in (model_config.get(k) for k in keys) if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    if len(values) != len(keys):
        return None
    hidden, inter, layers, heads, kv_heads, head_dim = values
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    return layers * (2 * attention + 3 * hidden * inter)


def quantization_savings(params: int, precision: str = "bf16") -> dict[str, float]:
    """Bytes saved on ``params`` base weights by each quantisation, against an unquantised base at ``precision``."""
    plain = base_weight_bytes("none", precision)
    return {q: params * (plain - base_weight_bytes(q, precision)) for q in BASE_QUANTIZATIONS}


def _selection_checks(c: TrainConfig) -> list[FieldError]:
    """Module selection (``sidestep train --module-config`` / ``--auto-estimate``, Side-Step's selective)."""
    from engine import moduleconfig

    errors: list[FieldError] = []
    if c.module_config and c.auto_estimate:
        errors.append(FieldError("auto_estimate", "a module config already selects the modules; drop one of the two"))
    bad = [n for n in c.selected_modules if moduleconfig.canonical(n) is None]
    if bad:
        errors.append(
            FieldError(
                "selected_modules", f"{bad[0]!r} is not an adaptable decoder module; names look like {moduleconfig.EXAMPLE}"
            )
        )
    if (c.selected_modules or c.module_config or c.auto_estimate) and c.lokr_targets != "selected":
        errors.append(FieldError("lokr_targets", "a module selection names its own modules; set lokr_targets selected"))
    return errors


def parse_devices(value: str) -> int | str | None:
    """``--devices``: "auto", or a whole number from 1 to 1024; None when it is neither."""
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    if text.isdigit() and 1 <= int(text) <= 1024:
        return int(text)
    return None


HOOK_PLACEHOLDERS = ("checkpoint_path", "step", "run_dir", "local_checkpoint_path", "global_step")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def hook_argv(template: str, values: dict[str, str]) -> list[str]:
    """The argument list of a ``post_checkpoint_script``: split like a POSIX shell would (``shlex``,
    quotes group words) but never run by one; each ``{name}`` inside an argument is replaced by
    ``values[name]`` (SimpleTuner's ``{local_checkpoint_path}``/``{global_step}`` are accepted too).
    Raises ``ValueError`` naming the problem (unbalanced quote, unknown placeholder, empty)."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"cannot split {template!r} into arguments ({exc}); balance the quotes") from None
    if not words:
        raise ValueError("is empty; give a command such as 'python sync.py {checkpoint_path}'")
    unknown = sorted({m for w in words for m in _PLACEHOLDER.findall(w) if m not in HOOK_PLACEHOLDERS})
    if unknown:
        names = ", ".join("{" + n + "}" for n in unknown)
        allowed = ", ".join("{" + n + "}" for n in HOOK_PLACEHOLDERS[:3])
        raise ValueError(f"unknown placeholder {names}; use {allowed}")
    aliases = {"local_checkpoint_path": "checkpoint_path", "global_step": "step"}
    return [_PLACEHOLDER.sub(lambda m: values[aliases.get(m.group(1), m.group(1))], w) for w in words]


def parse_schema(
    cls: type,
    data: dict[str, Any],
    *,
    base_values: dict[str, Any] | None = None,
    cross_checks: Any = None,
    error_cls: type = FieldError,
) -> Any:
    """The strict parse shared by every schema built with ``_f`` (this one, the preprocess config):
    unknown keys (with a did-you-mean), coercion, per-field checks, then cross-field checks, each
    stage reporting every problem at once in one ``ConfigError``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors: list[FieldError] = []
    values: dict[str, Any] = dict(base_values or {})
    for key, raw in data.items():
        if key == "schema_version":
            continue
        f = fields.get(key)
        if f is None:
            hint = _closest(key, fields)
            errors.append(error_cls(key, "unknown setting" + (f"; did you mean {hint}?" if hint else "")))
            continue
        try:
            values[key] = _coerce(f, raw)
        except ValueError as exc:
            errors.append(error_cls(key, str(exc)))
    bad_keys = {e.field for e in errors}
    for f in fields.values():
        if f.name not in bad_keys:
            problem = _check_field(f, values.get(f.name, f.default))
            if problem:
                errors.append(error_cls(f.name, problem))
    if errors:
        raise ConfigError(errors)
    config = cls(**{k: v for k, v in values.items() if k in fields})
    cross = cross_checks(config) if cross_checks else []
    if cross:
        raise ConfigError(cross)
    return config


def parse(data: dict[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from ``data`` (over ``base`` or the defaults). Raises ``ConfigError`` with every
    problem at once: unknown keys, uncoercible values, out-of-range values, cross-field conflicts.
    A ``schema_version`` newer than this program's is refused: its settings may mean something else."""
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ConfigError(
            [
                FieldError(
                    "schema_version",
                    f"{version} was made by a newer sidestep (this one reads up to {SCHEMA_VERSION}); upgrade sidestep to use it",
                )
            ]
        )
    return parse_schema(TrainConfig, data, base_values=dataclasses.asdict(base) if base else None, cross_checks=_cross_checks)


def _closest(key: str, names: Iterable[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(names), n=1, cutoff=0.75)
    return match[0] if match else None


def to_dict(config: TrainConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
    return {"schema_version": SCHEMA_VERSION, **out}


def to_json(config: TrainConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False)


def from_json(text: str) -> TrainConfig:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError([FieldError("config", "expected a JSON object")])
    return parse(data)


def diff_from_defaults(config: TrainConfig) -> dict[str, Any]:
    """Only the fields that differ from the defaults (for presets and the equivalent CLI command)."""
    defaults = TrainConfig()
    return {f.name: getattr(config, f.name) for f in FIELDS if getattr(config, f.name) != getattr(defaults, f.name)}


def resolve_variant_defaults(config: TrainConfig, model_config: dict[str, Any] | None = None) -> TrainConfig:
    """The one place variant-aware defaults are applied: inference shift/steps from the variant family,
    timestep mu/sigma from the model's config.json. Only ``None`` fields are filled; a value the user
    set is never replaced."""
    family = config.variant_family() or ("turbo" if (model_config or {}).get("is_turbo") else "base")
    shift, steps = VARIANT_INFERENCE.get(family, VARIANT_INFERENCE["base"])
    mc = model_config or {}
    return dataclasses.replace(
        config,
        base_model=config.base_model or family,
        shift=config.shift if config.shift is not None else shift,
        num_inference_steps=config.num_inference_steps if config.num_inference_steps is not None else steps,
        timestep_mu=config.timestep_mu if config.timestep_mu is not None else float(mc.get("timestep_mu", DEFAULT_TIMESTEP_MU)),
        timestep_sigma=config.timestep_sigma
        if config.timestep_sigma is not None
        else float(mc.get("timestep_sigma", DEFAULT_TIMESTEP_SIGMA)),
    )


def resolve_targets(config: TrainConfig) -> tuple[str, ...]:
    """Module-name suffixes to adapt, honouring attention type, per-type lists and the MLP switch.
    Suffixes are matched against full module paths (``layers.3.self_attn.q_proj``)."""
    targets: list[str] = []
    if config.attention_type == "both" and (config.self_target_modules or config.cross_target_modules):
        self_list = config.self_target_modules or config.target_modules
        cross_list = config.cross_target_modules or config.target_modules
        targets += [f"self_attn.{p}" for p in self_list] + [f"cross_attn.{p}" for p in cross_list]
    elif config.attention_type == "both":
        targets += [f"{kind}.{p}" for kind in ("self_attn", "cross_attn") for p in config.target_modules]
    else:
        targets += [f"{config.attention_type}_attn.{p}" for p in config.target_modules]
    if config.target_mlp:
        targets += [f"mlp.{p}" for p in MLP_PROJECTIONS]
    return tuple(targets)


def cli_args(config: TrainConfig) -> list[str]:
    """The ``sidestep train`` arguments that reproduce ``config`` (defaults omitted)."""
    args: list[str] = []
    for name, value in diff_from_defaults(config).items():
        flag = FIELD_BY_NAME[name].metadata["flag"]
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            args += [flag, *value] if value else [flag, ""]
        elif value is None:
            continue
        else:
            args += [flag, repr(value) if isinstance(value, float) else str(value)]
    return args
