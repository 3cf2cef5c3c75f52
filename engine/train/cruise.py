"""Cruise control (Side-Step's ``--target-loss``, ACE_STEP.md §6.5): damp the LR as the loss nears a target.

The controller watches an EMA of the optimizer-step loss (``smoothing`` = β, 0.98 by default). Once it
is engaged (after ``max(target_loss_warmup, LR warm-up)`` steps) the LR of each optimizer step is
multiplied by ``damping(ema)``:

- ``ema >= target * (1 + BAND)``: 1 (full LR);
- ``target <= ema < target * (1 + BAND)``: a smoothstep from 1 down to ``floor`` across the band;
- ``ema < target``: ``floor * exp(-10 * overshoot)`` with ``overshoot = (target - ema) / target``.

The factor is continuous everywhere (1 at the band's top, ``floor`` at the target). The scheduler
always steps on the undamped LR: the damping is put on the param groups for ``optimizer.step()``
only and the exact undamped values are put back before ``scheduler.step()`` (chainable schedulers
read the group LR), so turning cruise control off mid-run, or resuming, continues the schedule
unchanged. The state (EMA, last factor) travels in training_state.pt as plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BAND = 0.3  # the smoothstep band above the target, as a fraction of the target
OVERSHOOT_RATE = 10.0


def damping(ema: float, target: float, floor: float) -> float:
    """The LR factor for a smoothed loss ``ema`` (see the module docstring)."""
    top = target * (1.0 + BAND)
    if ema >= top:
        return 1.0
    if ema >= target:
        x = (ema - target) / (top - target)
        smooth = x * x * (3.0 - 2.0 * x)
        return floor + (1.0 - floor) * smooth
    overshoot = (target - ema) / target
    return floor * math.exp(-OVERSHOOT_RATE * overshoot)


class CruiseControl:
    def __init__(self, *, target: float, floor: float, smoothing: float, engage_after: int) -> None:
        self.target = target
        self.floor = floor
        self.smoothing = smoothing
        self.engage_after = engage_after
        self.ema: float | None = None
        self.scale = 1.0

    def update(self, loss: float, step: int) -> float:
        """Feed the (finite) loss of optimizer step ``step`` (1-based); returns that step's LR factor."""
        self.ema = loss if self.ema is None else self.smoothing * self.ema + (1.0 - self.smoothing) * loss
        self.scale = damping(self.ema, self.target, self.floor) if step > self.engage_after else 1.0
        return self.scale

    @contextmanager
    def applied(self, optimizer: Any) -> Iterator[None]:
        """The param groups' LR times ``scale`` for the ``with`` body; the exact undamped LRs after."""
        if self.scale == 1.0:
            yield
            return
        undamped = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, undamped, strict=True):
            group["lr"] = lr * self.scale
        try:
            yield
        finally:
            for group, lr in zip(optimizer.param_groups, undamped, strict=True):
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = None if state["ema"] is None else float(state["ema"])
        self.scale = float(state["scale"])


def from_config(config: Any, *, lr_warmup: int) -> CruiseControl | None:
    """The run's controller, or ``None`` when ``target_loss`` is 0 (off)."""
    if config.target_loss <= 0:
        return None
    return CruiseControl(
        target=config.target_loss,
        floor=config.target_loss_floor,
        smoothing=config.target_loss_smoothing,
        engage_after=max(config.target_loss_warmup, lr_warmup),
    )
