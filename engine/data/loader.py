"""Collation and the DataLoader (ACE_STEP.md §4.3).

``build_loader`` is meant to be built once per run: its batch sampler's ``set_epoch(epoch, skip)``
moves it to the next epoch, so persistent workers survive epoch boundaries. The loader gets its own
``torch.Generator`` and never touches the global RNG; workers hold no random state at all (crop
offsets arrive in the ``SampleKey``s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from engine.data.chunking import ChunkPlanner, crop_length
from engine.data.dataset import TensorDataset
from engine.data.sampler import EpochBatchSampler


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Right-pad with zeros to the longest T and L in the batch and stack: ``target_latents
    [B,T,C]``, ``attention_mask [B,T]``, ``context_latents [B,T,Cc]``, ``encoder_hidden_states
    [B,L,H]``, ``encoder_attention_mask [B,L]`` (dtypes of the first sample), plus ``frame_mask
    [B,T]`` float32 (1 real frame, 0 padding; what the loss uses), ``lengths [B]`` and the lists
    ``metadata``, ``files`` and ``crops``."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    lengths = [item["target_latents"].shape[0] for item in batch]
    enc_lengths = [item["encoder_hidden_states"].shape[0] for item in batch]
    T, L, B = max(lengths), max(enc_lengths), len(batch)
    out: dict[str, Any] = {}
    for key, n in (
        ("target_latents", T),
        ("attention_mask", T),
        ("context_latents", T),
        ("encoder_hidden_states", L),
        ("encoder_attention_mask", L),
    ):
        first = batch[0][key]
        padded = first.new_zeros((B, n, *first.shape[1:]))
        for b, item in enumerate(batch):
            value = item[key]
            padded[b, : value.shape[0]] = value
        out[key] = padded
    out["lengths"] = torch.tensor(lengths, dtype=torch.long)
    out["frame_mask"] = (torch.arange(T)[None, :] < out["lengths"][:, None]).float()
    out["metadata"] = [item.get("metadata", {}) for item in batch]
    out["files"] = [item.get("file", "") for item in batch]
    out["crops"] = [item.get("crop", (0, n)) for item, n in zip(batch, lengths, strict=True)]
    return out


def steps_per_epoch(num_batches: int, grad_accum: int) -> int:
    """Optimizer steps per epoch: a partial accumulation group at the end still steps (§6.5)."""
    return math.ceil(num_batches / grad_accum)


def build_planner(dataset: TensorDataset, config: Any) -> ChunkPlanner:
    names = [dataset.name(i) for i in range(dataset.num_files)]
    return ChunkPlanner(names, dataset.lengths, crop_length(config), decay_every=config.chunk_decay_every)


def build_loader(
    dataset: TensorDataset,
    config: Any,
    *,
    epoch: int = 0,
    skip_batches: int = 0,
    device_type: str = "cpu",
    planner: ChunkPlanner | None = None,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """A DataLoader positioned at ``epoch`` (skipping ``skip_batches`` of it). Its
    ``batch_sampler`` (an ``EpochBatchSampler``) carries ``set_epoch`` and the ``planner`` whose
    ``state_dict`` belongs in checkpoints. ``rank``/``world``: this process's share (see the sampler)."""
    sampler = EpochBatchSampler(
        planner or build_planner(dataset, config),
        batch_size=config.batch_size,
        seed=config.seed,
        repeats=dataset.repeats,
        rank=rank,
        world=world,
    )
    sampler.set_epoch(epoch, skip_batches)
    workers = config.num_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=bool(config.pin_memory and device_type == "cuda"),
        prefetch_factor=config.prefetch_factor if workers > 0 else None,
        persistent_workers=bool(config.persistent_workers and workers > 0),
        generator=torch.Generator().manual_seed(config.seed),
    )
