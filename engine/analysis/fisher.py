"""PP++ (``sidestep analyze``): the empirical diagonal Fisher of every adapter-target Linear of the decoder
over the user's own tensors, the spectral effective rank of each weight, and from both a per-module LoRA
rank map (ACE_STEP.md §10.2; the file format and the allocation are in ``engine.fishermap``).

Per run (``seed 1729 + run``, a shuffled subset of the files, batch 1) there is one full data pass per
module group (self-attention, cross-attention, MLP); only that group's weights have ``requires_grad``, so
only its gradients ever exist. The decoder runs in train mode with gradient checkpointing (HF skips
checkpointing in eval mode) and no CFG dropout. Each pass of a run draws the same timesteps and noise,
so the groups are measured on the same inputs. A module's score is sum(grad^2) / sum(numel): the mean
squared gradient per weight element. Runs give a mean and a sample standard deviation.

The noising and the velocity loss are the training recipe's own (``engine.train.recipe``), the model
and data load as training loads them (``engine.models.loader``, ``engine.data``)."""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import codehash, discovery, fishermap
from engine import config as cfgmod

log = logging.getLogger("sidestep.engine")

BASE_SEED = 1729
MIN_SAMPLES = 5
DEFAULT_DATA_PROPORTION = 0.5


@dataclass(frozen=True)
class AnalyzeOptions:
    """What ``sidestep analyze`` takes (Side-Step's flags: --dataset-dir, --rank, --rank-min, --rank-max,
    --timestep-focus, --runs, --batches), plus the model and device flags training has."""

    checkpoint_dir: str
    model_variant: str
    dataset_dir: str
    rank: int = 64
    rank_min: int = 16
    rank_max: int = 128
    timestep_focus: str = "balanced"
    runs: int | None = None
    batches: int | None = None
    device: str = "auto"
    precision: str = "auto"
    attention_backend: str = "auto"

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AnalyzeOptions:
        """From ``to_json`` or ``engine.fishermap.analyze_options_json`` (the UI's, same keys)."""
        return cls(**json.loads(text))

    def check(self) -> None:
        """One-line ``ValueError`` for values that cannot work (before anything loads)."""
        if not self.checkpoint_dir:
            raise ValueError("--checkpoint-dir is required: the folder holding the model folders")
        if not self.dataset_dir:
            raise ValueError("--dataset-dir is required: the folder of preprocessed .pt tensors")
        if not 1 <= self.rank_min <= self.rank <= self.rank_max:
            raise ValueError(f"need 1 <= --rank-min ({self.rank_min}) <= --rank ({self.rank}) <= --rank-max ({self.rank_max})")
        for name, value in (("--runs", self.runs), ("--batches", self.batches)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or left out for the automatic choice)")
        fishermap.focus_range(self.timestep_focus)


@dataclass(frozen=True)
class Progress:
    """One measured batch: run ``run`` of ``runs``, group pass ``pass_index`` of ``passes`` (``group``),
    batch ``batch`` of ``batches``; ``done``/``total`` count batches over the whole analysis."""

    run: int
    runs: int
    group: str
    pass_index: int
    passes: int
    batch: int
    batches: int
    done: int
    total: int
    elapsed_s: float


class Stopped(Exception):
    """The analysis was asked to stop; nothing is written."""


def _target_modules(decoder: nn.Module) -> dict[str, list[tuple[str, nn.Linear]]]:
    """Group -> [(full ``decoder.`` name, Linear)] for every q/k/v/o/gate/up/down projection."""
    groups: dict[str, list[tuple[str, nn.Linear]]] = {g: [] for g in fishermap.GROUPS}
    for name, module in decoder.named_modules():
        group = fishermap.group_of(name)
        if group is not None and isinstance(module, nn.Linear):
            groups[group].append((fishermap.DECODER_PREFIX + name, module))
    return {g: mods for g, mods in groups.items() if mods}


def _timesteps(focus: str, mu: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    from engine.train import recipe

    if focus == "balanced":
        return recipe.sample_timesteps(1, mode="continuous", mu=mu, sigma=sigma, generator=generator)
    lo, hi = fishermap.focus_range(focus)
    return lo + (hi - lo) * torch.rand(1, generator=generator, dtype=torch.float32)


def effective_rank_of(weight: torch.Tensor) -> int:
    """Spectral effective rank (fp32 singular values, 95 % of the energy)."""
    with torch.no_grad():
        sv = torch.linalg.svdvals(weight.detach().float())
    return fishermap.effective_rank(sv.cpu().tolist())


def run_analysis(
    options: AnalyzeOptions,
    *,
    progress: Callable[[Progress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    note: Callable[[str, str], None] = lambda level, message: None,
) -> dict[str, Any]:
    """Measure and return the schema-2 map (not written: the caller previews, confirms and writes it).
    ``note(level, line)`` receives the log lines; ``should_stop`` is polled between batches and raises
    ``Stopped``."""
    from engine.data.dataset import DatasetError, TensorDataset
    from engine.data.loader import collate
    from engine.models.loader import enable_gradient_checkpointing, load_decoder, read_model_config, resolve_device, resolve_dtype
    from engine.train import recipe
    from engine.train.trainer import is_out_of_memory

    options.check()
    started = time.monotonic()
    model_dir = discovery.resolve_model_dir(options.checkpoint_dir, options.model_variant)
    code = codehash.check(model_dir)
    note("info", code.log_line())
    if code.problem:
        note("warning", code.problem)
    model_config = read_model_config(Path(model_dir))

    dataset = TensorDataset(options.dataset_dir)  # every file checked up front: a bad one fails in seconds
    hidden = model_config.get("hidden_size")
    if isinstance(hidden, int) and dataset.hidden_size != hidden:
        raise DatasetError(
            f"{dataset.root}: tensors were made for hidden size {dataset.hidden_size}, the model {options.model_variant} has "
            f"{hidden}: preprocess again with this model"
        )
    n = dataset.num_files
    if n < MIN_SAMPLES:
        note("warning", f"only {n} samples: the module ranking may be unreliable (add data for a steadier map)")
    runs = options.runs or (2 if n <= 10 else 3)
    per_run = min(n, options.batches or min(n, 50))

    mu = float(model_config.get("timestep_mu", cfgmod.DEFAULT_TIMESTEP_MU))
    sigma = float(model_config.get("timestep_sigma", cfgmod.DEFAULT_TIMESTEP_SIGMA))
    data_proportion = float(model_config.get("data_proportion", DEFAULT_DATA_PROPORTION))

    device = resolve_device(options.device)
    dtype = resolve_dtype(options.precision, device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if free < 7000 * 1024**2:
            note("warning", f"only {free / 1024**2:.0f} MB free on {device}: the analysis may run out of memory")
    loaded = load_decoder(
        model_dir, device=device, dtype=dtype, attention_backend=options.attention_backend, log=lambda m: note("info", m)
    )
    decoder = loaded.decoder
    enable_gradient_checkpointing(decoder, 1.0)
    decoder.train()  # HF checkpoints only in train mode; the demo and ACE-Step have no dropout to disturb
    groups = _target_modules(decoder)
    if not groups:
        raise ValueError(f"{model_dir}: the decoder has no q/k/v/o/gate/up/down projections to analyse")
    names = [name for mods in groups.values() for name, _ in mods]
    note(
        "info",
        f"analysing {len(names)} modules over {n} samples: {runs} run(s) x {per_run} batch(es) x {len(groups)} group passes, "
        f"focus {options.timestep_focus}, on {device} ({str(dtype).removeprefix('torch.')})",
    )

    total = runs * per_run * len(groups)
    done = 0
    run_scores: list[dict[str, float]] = []
    coverage: list[dict[str, Any]] = []
    try:
        for run in range(runs):
            order = list(range(n))
            random.Random(BASE_SEED + run).shuffle(order)
            subset = order[:per_run]
            coverage.append(
                {
                    "run": run + 1,
                    "selected_count": len(subset),
                    "total_count": n,
                    "coverage_ratio": round(len(subset) / n, 6),
                    "selected_files": [dataset.name(i) for i in subset],
                }
            )
            sq: dict[str, float] = dict.fromkeys(names, 0.0)
            count: dict[str, int] = dict.fromkeys(names, 0)
            for pass_index, (group, modules) in enumerate(groups.items()):
                decoder.requires_grad_(False)
                for _, module in modules:
                    module.weight.requires_grad_(True)
                generator = torch.Generator().manual_seed(BASE_SEED + run)  # the same draws for every group
                ooms = 0
                for b, index in enumerate(subset):
                    if should_stop():
                        raise Stopped
                    batch = collate([dataset[index]])
                    t = _timesteps(options.timestep_focus, mu, sigma, generator)
                    x0 = batch["target_latents"].to(device).float()
                    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device)
                    try:
                        x_t = recipe.noisy_input(x0, noise, t.to(device)).to(dtype).requires_grad_(True)
                        frame_mask = batch["frame_mask"].to(device)
                        out = decoder(
                            hidden_states=x_t,
                            timestep=t.to(device, dtype),
                            timestep_r=t.to(device, dtype),
                            attention_mask=frame_mask.to(dtype),
                            encoder_hidden_states=batch["encoder_hidden_states"].to(device, dtype),
                            encoder_attention_mask=batch["encoder_attention_mask"].to(device),
                            context_latents=batch["context_latents"].to(device, dtype),
                        )
                        loss, _ = recipe.flow_matching_loss(out[0], noise, x0, frame_mask, t=t.to(device))
                        loss.backward()
                        ooms = 0
                    except Exception as exc:
                        if not is_out_of_memory(exc):
                            raise
                        ooms += 1
                        for _, module in modules:
                            module.weight.grad = None
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        note("warning", f"run {run + 1}, {group}: out of memory on {dataset.name(index)}; skipped")
                        if ooms >= 2:
                            note("warning", f"run {run + 1}, {group}: two out-of-memory errors in a row end this pass")
                            break
                        continue
                    with torch.no_grad():
                        for name, module in modules:
                            grad = module.weight.grad
                            if grad is not None:
                                sq[name] += float(grad.float().pow(2).sum())
                                count[name] += grad.numel()
                            module.weight.grad = None
                    done += 1
                    progress(
                        Progress(
                            run=run + 1,
                            runs=runs,
                            group=group,
                            pass_index=pass_index + 1,
                            passes=len(groups),
                            batch=b + 1,
                            batches=len(subset),
                            done=done,
                            total=total,
                            elapsed_s=time.monotonic() - started,
                        )
                    )
            run_scores.append({name: sq[name] / count[name] if count[name] else 0.0 for name in names})
    finally:
        decoder.requires_grad_(False)
        decoder.eval()

    scores = {name: statistics.fmean(r[name] for r in run_scores) for name in names}
    stds = {name: statistics.stdev(r[name] for r in run_scores) if len(run_scores) > 1 else 0.0 for name in names}
    note("info", f"spectral analysis of {len(names)} weights")
    effective = {name: effective_rank_of(module.weight) for mods in groups.values() for name, module in mods}
    if all(not math.isfinite(s) or s == 0.0 for s in scores.values()):
        raise ValueError("every Fisher score is zero or not finite: the gradients vanished; check the tensors and the model")
    num_layers = model_config.get("num_hidden_layers")
    return fishermap.build(
        model_variant=options.model_variant,
        timestep_focus=options.timestep_focus,
        timestep_params={"mu": mu, "sigma": sigma, "data_proportion": data_proportion},
        num_runs=runs,
        batches_per_run=per_run,
        total_batches=sum(c["selected_count"] for c in coverage),
        base_rank=options.rank,
        rank_min=options.rank_min,
        rank_max=options.rank_max,
        dataset_dir=dataset.root,
        scores=scores,
        stds=stds,
        effective_ranks=effective,
        sample_coverage=coverage,
        num_hidden_layers=num_layers if isinstance(num_layers, int) else None,
    )
