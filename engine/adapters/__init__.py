"""Adapters behind one small interface: PEFT LoRA/DoRA (``lora.py``) and LyCORIS LoKR (``lokr.py``).

``attach_adapter(decoder, config)`` freezes the decoder, adds fp32 adapter weights on the targets of
``engine.config.resolve_targets(config)`` and returns an ``Adapter``:

- ``.module``: the nn.Module to train and call (``PeftModel`` for LoRA; the decoder itself, with the
  LyCORIS network registered as its ``lycoris_net`` submodule, for LoKR). Call it with keyword
  arguments, exactly like the bare decoder.
- ``.parameters()``: the trainable tensors only; ``.trainable_params``, ``.adapted_modules``.
- ``.state_dict()`` / ``.load_state_dict(sd)``: adapter tensors only (CPU copies), in the same key
  format as the saved file; loading is exact or raises ``AdapterMismatchError``.
- ``.save(dir, metadata)``: inference-ready flat files, written to a temp folder first.
- ``.load(dir)``: read what ``save`` wrote (resume); unreadable files raise ``AdapterLoadError``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from engine.config import TrainConfig


class AdapterMismatchError(ValueError):
    """Adapter tensors whose keys or shapes differ from the live adapter."""


class AdapterLoadError(ValueError):
    """An adapter file that is missing, corrupt or not what this run expects."""


def describe_mismatch(expected: dict[str, torch.Size], given: dict[str, torch.Size], source: str) -> str | None:
    """One line naming missing, unexpected and shape-mismatched keys, or None when they match exactly."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if tuple(expected[k]) != tuple(given[k]))
    if not (missing or unexpected or shapes):
        return None

    def sample(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {sample(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {sample(unexpected)}")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} with another shape, e.g. {k} {list(given[k])} vs {list(expected[k])}"
        )
    return f"{source} does not match this adapter (rank, targets or type differ): " + "; ".join(parts)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise AdapterLoadError(f"{path} is missing; point resume at a folder written by this trainer")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AdapterLoadError(f"{path} is corrupt or truncated ({first}); use another checkpoint") from None


def write_dir_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_dir)`` and move the result to ``target``. A new target is renamed into place in
    one step; into an existing folder (a checkpoint that also holds training_state.pt) each file is
    moved with ``os.replace``, so no file is ever half written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.__writing__"
    tmp.mkdir()
    try:
        write(tmp)
        if not target.exists():
            os.replace(tmp, target)
            return
        for item in tmp.iterdir():
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Adapter:
    """Common part of both adapter kinds; subclasses fill ``_live_state`` / ``_load`` / ``_write`` / ``load``."""

    kind: str = ""

    def __init__(self, module: nn.Module, adapted_modules: int) -> None:
        self.module = module
        self.adapted_modules = adapted_modules

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- state
    def _live_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self._live_state().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "adapter state") -> int:
        live = self._live_state()
        problem = describe_mismatch({k: v.shape for k, v in live.items()}, {k: v.shape for k, v in state.items()}, source)
        if problem:
            raise AdapterMismatchError(problem)
        self._load(state)
        return len(state)

    # ---- files
    def _write(self, directory: Path, metadata: dict[str, str]) -> None:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        was_training = self.module.training
        self.module.eval()
        try:
            write_dir_atomically(directory, lambda tmp: self._write(tmp, meta))
        finally:
            self.module.train(was_training)

    def load(self, directory: str | os.PathLike) -> int:
        raise NotImplementedError


def attach_adapter(decoder: nn.Module, config: "TrainConfig") -> Adapter:
    """Freeze ``decoder`` and attach the adapter named by ``config.adapter_type``."""
    decoder.requires_grad_(False)
    if config.adapter_type == "lora":
        from engine.adapters.lora import attach_lora

        return attach_lora(decoder, config)
    if config.adapter_type == "lokr":
        from engine.adapters.lokr import attach_lokr

        return attach_lokr(decoder, config)
    raise ValueError(f"adapter_type {config.adapter_type!r} is not lora or lokr")


def target_regex(targets: tuple[str, ...]) -> str:
    """A full-match regex for the decoder's ``layers.N.<suffix>`` modules named by the target suffixes."""
    import re

    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"layers\.\d+\.(?:{alternatives})"


__all__ = [
    "Adapter",
    "AdapterLoadError",
    "AdapterMismatchError",
    "attach_adapter",
    "describe_mismatch",
    "target_regex",
]
