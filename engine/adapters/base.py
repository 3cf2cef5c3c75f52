"""What every adapter kind shares: the ``Adapter`` interface, its errors, and the file helpers the
LoRA (``lora.py``) and LoKR (``lokr.py``) modules build on. Imports no other module of the package."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from engine import fsutil


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
        parts.append(f"{len(shapes)} with another shape, e.g. {k} {list(given[k])} vs {list(expected[k])}")
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


class Adapter:
    """Common part of both adapter kinds; subclasses fill ``_live_state`` / ``_load`` / ``_write`` / ``load``."""

    kind: str = ""

    def __init__(self, module: nn.Module, adapted_modules: int) -> None:
        self.module = module
        self.adapted_modules = adapted_modules
        # The module's full state (parameter name -> tensor) that ``write`` takes instead of the live
        # tensors, while set: a sharded run's adapter gathered onto rank 0 (``engine.train.dist``).
        self.full_state: dict[str, torch.Tensor] | None = None

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

    def write(self, directory: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write the inference-ready files into ``directory``, an existing folder that the caller
        commits as a whole (``fsutil.atomic_dir``: a checkpoint folder being built)."""
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        was_training = self.module.training
        self.module.eval()
        try:
            self._write(Path(directory), meta)
        finally:
            self.module.train(was_training)

    def save(self, directory: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """``write`` into a temp folder that then becomes ``directory``; into an existing folder each
        file replaces its namesake and the other files (a checkpoint's training state) stay."""
        with fsutil.atomic_dir(directory, merge=True) as tmp:
            self.write(tmp, metadata)

    def load(self, directory: str | os.PathLike) -> int:
        raise NotImplementedError


def target_regex(targets: tuple[str, ...]) -> str:
    """A full-match regex for the decoder's ``layers.N.<suffix>`` modules named by the target suffixes."""
    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"layers\.\d+\.(?:{alternatives})"
