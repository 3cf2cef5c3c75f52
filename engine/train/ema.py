"""EMA of the adapter weights (SimpleTuner's ``--use-ema``; Side-Step's ``--ema-decay``).

An fp32 shadow of the trainable parameters only (never the frozen base), on the training device or,
with ``ema_cpu_only``, in CPU memory. Every ``ema_update_interval`` optimizer steps::

    shadow = decay * shadow + (1 - decay) * weight

Saved adapters (best, final, every checkpoint) are written from the shadow, with the raw weights
beside them in ``raw/`` (``EmaAdapterWriter``); training itself always continues on the raw weights,
and training_state.pt holds both (the raw ones under ``adapter``, the shadow under ``ema``), so a
resume restores each bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

RAW_DIR = "raw"


class AdapterEMA:
    def __init__(self, module: nn.Module, *, decay: float, update_interval: int = 1, cpu_only: bool = False) -> None:
        self.decay = decay
        self.update_interval = update_interval
        self.params: dict[str, nn.Parameter] = {n: p for n, p in module.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("EMA: the model has no trainable parameters")
        self.cpu_only = cpu_only
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0
        self.reset()

    def _home(self, p: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.cpu_only else p.device

    def reset(self) -> None:
        """Shadow = the current weights (a fresh run, or a resume from a checkpoint without EMA state)."""
        self.shadow = {n: p.detach().to(device=self._home(p), dtype=torch.float32, copy=True) for n, p in self.params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """After optimizer step ``step`` (1-based): update the shadow when the interval says so."""
        if step % self.update_interval != 0:
            return False
        for name, p in self.params.items():
            s = self.shadow[name]
            s.mul_(self.decay).add_(p.detach().to(device=s.device, dtype=torch.float32), alpha=1.0 - self.decay)
        self.updates += 1
        return True

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The shadow in the live parameters for the ``with`` body, the exact raw weights back after."""
        raw = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(raw[name])

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "update_interval": self.update_interval,
            "updates": self.updates,
            "shadow": {n: s.detach().to("cpu", copy=True) for n, s in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str = "EMA state") -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.params) or any(shadow[n].shape != p.shape for n, p in self.params.items()):
            raise ValueError(f"{source}: the EMA shadow does not match this adapter's parameters; resume without --use-ema")
        self.shadow = {n: shadow[n].to(device=self._home(p), dtype=torch.float32, copy=True) for n, p in self.params.items()}
        self.updates = int(state["updates"])


class EmaAdapterWriter:
    """Stands in for the adapter when a checkpoint folder is written: the EMA weights at the top
    (what inference and export load), the raw weights in ``raw/``."""

    def __init__(self, adapter: Any, ema: AdapterEMA) -> None:
        self.adapter = adapter
        self.ema = ema

    @property
    def module(self) -> nn.Module:
        """The adapted model (the ComfyUI export reads its frozen base weights, which EMA never changes)."""
        return self.adapter.module

    def write(self, directory: str | Path, metadata: dict[str, str] | None = None) -> None:
        meta = dict(metadata or {})
        raw = Path(directory) / RAW_DIR
        raw.mkdir()
        self.adapter.write(raw, {**meta, "ema": "raw"})
        with self.ema.swapped_in():
            self.adapter.write(directory, {**meta, "ema": f"decay {self.ema.decay:g}, {self.ema.updates} updates"})


def from_config(config: Any, module: nn.Module) -> AdapterEMA | None:
    if not config.use_ema:
        return None
    return AdapterEMA(module, decay=config.ema_decay, update_interval=config.ema_update_interval, cpu_only=config.ema_cpu_only)
