"""Crop windows for long clips, planned in the main process (ACE_STEP.md §4.4).

Side-Step's coverage sampler lived inside the dataset, so with DataLoader workers each worker had its
own copy and the copy that was decayed and checkpointed was not the one sampling (§12.2-12). Here the
``ChunkPlanner`` runs where the epoch order is drawn and hands each item its start offset, so there is
one state, and it is a plain dict.

Coverage weighting as Side-Step: each clip's valid start offsets are split into (up to) 32 bins; a bin
is picked with weight ``1 / (hits + 1)``, the offset uniformly inside it; all hit counts are halved
(floor) every ``decay_every`` epochs. Unlike Side-Step the last valid start (``T - crop``) is reachable.

Exact resume: planning epoch ``e`` is a pure function of (state before ``e``, generator), and the state
remembers the hits as they were before the last planned epoch. Planning that epoch again (a resume in
the middle of it) starts from those hits and therefore reproduces the same offsets.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

LATENT_FPS = 25  # 48 kHz / hop 1920
COVERAGE_BINS = 32


def crop_length(config: Any) -> int | None:
    """Crop window in latent frames: ``max_latent_length``, else ``chunk_duration`` seconds x 25, else
    None (whole clips)."""
    if config.max_latent_length:
        return int(config.max_latent_length)
    if config.chunk_duration:
        return int(config.chunk_duration * LATENT_FPS)
    return None


class ChunkPlanner:
    """Start offsets for crop windows of ``crop_length`` frames over clips of ``lengths`` frames.
    ``names`` (one per clip, stable across runs) key the coverage counts in the state dict."""

    def __init__(
        self,
        names: Sequence[str],
        lengths: Sequence[int],
        crop_length: int | None,
        *,
        decay_every: int = 10,
        n_bins: int = COVERAGE_BINS,
    ) -> None:
        if len(names) != len(lengths):
            raise ValueError("one name per clip length is needed")
        if crop_length is not None and crop_length < 1:
            raise ValueError(f"crop length must be >= 1 frame, got {crop_length}")
        self.names = tuple(names)
        self.lengths = tuple(int(n) for n in lengths)
        self.crop_length = crop_length
        self.decay_every = decay_every
        self.n_bins = n_bins
        self._hits: dict[str, list[int]] = {
            name: [0] * min(n_bins, self.max_start(i) + 1) for i, name in enumerate(self.names) if self.max_start(i) > 0
        }
        self._epoch: int | None = None
        self._hits_before: dict[str, list[int]] | None = None

    def max_start(self, index: int) -> int:
        """The last valid start offset of clip ``index`` (0 when it is not cropped)."""
        if self.crop_length is None:
            return 0
        return max(0, self.lengths[index] - self.crop_length)

    def cropped_length(self, index: int) -> int:
        length = self.lengths[index]
        return length if self.crop_length is None else min(length, self.crop_length)

    def plan_epoch(self, epoch: int, indices: Sequence[int], generator: torch.Generator) -> list[int]:
        """Start offsets for the clips ``indices`` (in epoch order), updating the coverage counts."""
        if self._epoch == epoch and self._hits_before is not None:
            self._hits = copy.deepcopy(self._hits_before)  # re-plan of the same epoch: same start state
        else:
            self._epoch, self._hits_before = epoch, copy.deepcopy(self._hits)
        if epoch > 0 and self.decay_every > 0 and epoch % self.decay_every == 0:
            for hist in self._hits.values():
                hist[:] = [h // 2 for h in hist]
        return [self._pick(i, generator) for i in indices]

    def _pick(self, index: int, generator: torch.Generator) -> int:
        max_start = self.max_start(index)
        if max_start <= 0:
            return 0
        hist = self._hits[self.names[index]]
        weights = torch.tensor([1.0 / (h + 1) for h in hist], dtype=torch.float64)
        b = int(torch.multinomial(weights, 1, generator=generator))
        n_starts, nb = max_start + 1, len(hist)
        lo, hi = b * n_starts // nb, (b + 1) * n_starts // nb  # nb <= n_starts, so hi > lo
        hist[b] += 1
        return lo + int(torch.randint(hi - lo, (1,), generator=generator))

    def coverage(self, index: int) -> tuple[int, ...]:
        """Hit counts per bin for clip ``index`` (empty when it is not cropped)."""
        return tuple(self._hits.get(self.names[index], ()))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "crop_length": self.crop_length,
            "n_bins": self.n_bins,
            "epoch": self._epoch,
            "hits": copy.deepcopy(self._hits),
            "hits_before": copy.deepcopy(self._hits_before),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counts saved by ``state_dict``. Clips absent from the state keep fresh counts; a
        different crop length or bin count makes the saved counts meaningless and is an error."""
        if state.get("crop_length") != self.crop_length or state.get("n_bins") != self.n_bins:
            raise ValueError(
                f"chunk coverage was saved for crop {state.get('crop_length')} / {state.get('n_bins')} bins, "
                f"this run uses crop {self.crop_length} / {self.n_bins} bins"
            )

        def merged(saved: dict[str, list[int]] | None) -> dict[str, list[int]]:
            fresh = {name: [0] * len(h) for name, h in self._hits.items()}
            for name, hist in (saved or {}).items():
                if name in fresh and len(hist) == len(fresh[name]):
                    fresh[name] = [int(h) for h in hist]
            return fresh

        self._hits = merged(state.get("hits"))
        self._epoch = state.get("epoch")
        self._hits_before = merged(state["hits_before"]) if state.get("hits_before") is not None else None
