"""LyCORIS LoKR on the bare decoder, restricted to the requested targets (ACE_STEP.md §7.2). The
builder, the adapter class and the fp32 path for half-precision bases are shared with LoHA and
OFT in ``lyco.py``; this module keeps the LoKR names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from engine.adapters.lyco import NET_ATTR, WEIGHTS_FILES, LycorisAdapter, algo_settings, attach_lycoris

if TYPE_CHECKING:
    from engine.config import TrainConfig

WEIGHTS_FILE = WEIGHTS_FILES["lokr"]
LokrAdapter = LycorisAdapter

__all__ = ["NET_ATTR", "WEIGHTS_FILE", "LokrAdapter", "attach_lokr", "lokr_settings"]


def lokr_settings(config: TrainConfig) -> dict:
    """Every LoKR field of the run, under LyCORIS's names (stored in the file's metadata too)."""
    return algo_settings(config)


def attach_lokr(decoder: nn.Module, config: TrainConfig) -> LycorisAdapter:
    if config.adapter_type != "lokr":
        raise ValueError(f"attach_lokr needs adapter_type lokr, got {config.adapter_type!r}")
    return attach_lycoris(decoder, config)
