"""Optimizers and LR schedules (ACE_STEP.md §8), built from a ``TrainConfig``.

Differences from Side-Step, on purpose: an optimizer whose package is missing is an error, never a
silent switch to AdamW; Prodigy gets LR 1.0 whenever the user left the LR empty (Side-Step kept 3e-4
unless the LR was exactly 1e-4, §12.2-7), and a user-set LR is kept.

Resume: build the optimizer and the scheduler exactly as for a fresh run, *then* call
``load_training_state`` (the scheduler's constructor rewrites the group LRs, so loading before
building would leave the restored LR overwritten).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LinearLR,
    LRScheduler,
    SequentialLR,
)

from engine.config import OPTIMIZERS, SCHEDULERS, TrainConfig

LogFn = Callable[[str], Any]
LINEAR_END_FACTOR = 0.01


class OptimizerUnavailable(RuntimeError):
    """The chosen optimizer's package cannot be imported. Never answered with a different optimizer."""


def _import(optimizer_type: str, module: str, attr: str, package: str) -> Any:
    try:
        mod = __import__(module, fromlist=[attr])
        return getattr(mod, attr)
    except Exception as exc:  # ImportError, or a package that fails while importing (bnb's CUDA setup)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OptimizerUnavailable(
            f"optimizer {optimizer_type!r} needs {package} ({type(exc).__name__}: {first}); "
            f"install it (pip install '{package}') or choose another --optimizer-type"
        ) from exc


def build_optimizer(params: Iterable[Any], config: TrainConfig, *, device_type: str, log: LogFn = lambda _: None) -> Optimizer:
    """The optimizer named by ``config.optimizer_type`` over ``params`` (tensors or param groups),
    at ``config.resolved_learning_rate()`` with ``config.weight_decay``."""
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters to optimize")
    lr = config.resolved_learning_rate()
    wd = config.weight_decay
    kind = config.optimizer_type
    if kind == "adamw":
        fused = device_type == "cuda"
        log(f"optimizer: AdamW lr={lr:g} weight_decay={wd:g}" + (" (fused)" if fused else ""))
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused or None)
    if kind == "adamw8bit":
        adamw8bit = _import(kind, "bitsandbytes.optim", "AdamW8bit", "bitsandbytes>=0.50")
        log(f"optimizer: bitsandbytes AdamW8bit lr={lr:g} weight_decay={wd:g}")
        return adamw8bit(params, lr=lr, weight_decay=wd)
    if kind == "adafactor":
        adafactor = _import(kind, "transformers.optimization", "Adafactor", "transformers")
        log(f"optimizer: Adafactor lr={lr:g} weight_decay={wd:g} (external schedule, no relative step)")
        return adafactor(params, lr=lr, weight_decay=wd, scale_parameter=False, relative_step=False, warmup_init=False)
    if kind == "prodigy":
        prodigy = _import(kind, "prodigyopt", "Prodigy", "prodigyopt>=1.1.2")
        if config.learning_rate is None:
            log("optimizer: Prodigy lr=1.0 (the default: Prodigy estimates its own step size; the LR only scales it)")
        else:
            log(f"optimizer: Prodigy lr={lr:g} as set (Prodigy is meant for lr=1.0; its effective step is d*lr)")
        return prodigy(
            params,
            lr=lr,
            weight_decay=wd,
            betas=(0.9, 0.99),
            eps=1e-8,
            safeguard_warmup=True,
            use_bias_correction=True,
        )
    raise ValueError(f"optimizer {kind!r} is not one of {', '.join(OPTIMIZERS)}")


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """Warm-up length: the configured steps, capped at 10 % of training (at least 1); 0 = none."""
    if config.warmup_steps <= 0:
        return 0
    return min(config.warmup_steps, max(1, total_steps // 10))


def build_scheduler(optimizer: Optimizer, config: TrainConfig, total_steps: int) -> LRScheduler:
    """Per-optimizer-step schedule: a linear warm-up from ``warmup_start_factor`` to 1, then
    ``config.scheduler_type`` over the remaining steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = warmup_steps(config, total_steps)
    remaining = max(1, total_steps - warmup)
    eta_min = config.resolved_learning_rate() * config.cosine_eta_min_ratio
    kind = config.scheduler_type
    main: LRScheduler
    if kind == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=remaining, eta_min=eta_min)
    elif kind == "cosine_restarts":
        t0 = max(1, remaining // config.cosine_restarts_count)
        main = CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=1, eta_min=eta_min)
    elif kind == "linear":
        main = LinearLR(optimizer, start_factor=1.0, end_factor=LINEAR_END_FACTOR, total_iters=remaining)
    elif kind in ("constant", "constant_with_warmup"):
        main = ConstantLR(optimizer, factor=1.0, total_iters=remaining)
    else:
        raise ValueError(f"scheduler {kind!r} is not one of {', '.join(SCHEDULERS)}")
    if warmup == 0:
        return main
    ramp = LinearLR(optimizer, start_factor=config.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, schedulers=[ramp, main], milestones=[warmup])


def load_training_state(optimizer: Optimizer, scheduler: LRScheduler, optimizer_state: dict, scheduler_state: dict) -> None:
    """Restore both from a checkpoint into a freshly built pair, leaving the group LRs equal to the
    scheduler's last LR (so the next ``scheduler.step()`` continues the schedule exactly)."""
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr


def effective_lr(optimizer: Optimizer) -> float:
    """The step size actually applied by the first param group: ``d * lr`` for Prodigy, else ``lr``."""
    group = optimizer.param_groups[0]
    return float(group["d"] * group["lr"]) if "d" in group else float(group["lr"])


__all__ = [
    "OptimizerUnavailable",
    "build_optimizer",
    "build_scheduler",
    "effective_lr",
    "load_training_state",
    "warmup_steps",
]
