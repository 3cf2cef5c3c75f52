"""Deterministic, resumable epoch order with length bucketing.

Epoch ``e``'s batches are a pure function of ``(seed, e)`` and the chunk planner's state before ``e``:
one ``torch.Generator().manual_seed(seed + e)`` draws the order, then the crop offsets, then the
bucket shuffle. A resumed run rebuilds the same epoch and skips the batches already trained.

With ``batch_size > 1`` items are sorted by cropped length (ties keep the random order) and cut into
consecutive batches whose order is then shuffled, so a batch holds clips of similar length and
padding stays small (the decoder ignores masks, ACE_STEP.md §3.4). ``drop_last`` is False.

Several processes (``world`` > 1): every rank draws the same global epoch with batches of
``batch_size * world`` (exactly what one process with that batch would train on) and takes its own
equal slice of each, rank ``r`` the ``r``-th. An epoch's items are first cut to a multiple of
``world`` (at most ``world - 1`` random items sit out that epoch) so every slice of every batch,
the short last one included, holds the same number of items and no rank ever waits on an empty
batch. The position (epoch, batches skipped) is the same number on every rank, so one saved value
resumes all of them, and it means nothing for another ``world``: resume refuses that.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from engine.data.chunking import ChunkPlanner
from engine.data.dataset import SampleKey


class EpochBatchSampler(torch.utils.data.Sampler[list[SampleKey]]):
    """Batches of ``SampleKey`` for one epoch at a time; ``set_epoch`` picks which (and how many
    leading batches to skip). Lives in the main process, so ``planner`` is the one true state."""

    def __init__(
        self, planner: ChunkPlanner, *, batch_size: int, seed: int, repeats: int = 1, rank: int = 0, world: int = 1
    ) -> None:
        if batch_size < 1 or repeats < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError("batch_size, repeats and world must be >= 1 and 0 <= rank < world")
        self.rank, self.world = rank, world
        self.planner = planner
        self.batch_size = batch_size
        self.seed = seed
        self.repeats = repeats
        self.num_files = len(planner.lengths)
        self.epoch = 0
        self.skip = 0

    @property
    def num_items(self) -> int:
        """Items in an epoch, all ranks together (cut to a multiple of ``world``)."""
        items = self.num_files * self.repeats
        return items - items % self.world

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch (the last one may be short); the same count on every rank."""
        return math.ceil(self.num_items / (self.batch_size * self.world))

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.epoch, self.skip = epoch, skip

    def batches(self, epoch: int, skip: int = 0) -> list[list[SampleKey]]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        items = self.num_files * self.repeats
        order = [i % self.num_files for i in torch.randperm(items, generator=generator).tolist()]
        starts = self.planner.plan_epoch(epoch, order, generator)
        crop = self.planner.crop_length
        keys = [SampleKey(index, start, crop) for index, start in zip(order, starts, strict=True)][: self.num_items]
        bs = self.batch_size * self.world
        if bs == 1:
            return [[key] for key in keys[skip:]]
        keys.sort(key=lambda k: self.planner.cropped_length(k.index))  # stable: ties stay shuffled
        chunks = [keys[i : i + bs] for i in range(0, len(keys), bs)]
        shuffled = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        if self.world > 1:
            shuffled = [batch[self.rank * (n := len(batch) // self.world) : (self.rank + 1) * n] for batch in shuffled]
        return shuffled[skip:]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        yield from self.batches(self.epoch, self.skip)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip)
