"""Adapters behind one small interface: PEFT LoRA/DoRA (``lora.py``) and LyCORIS LoKR, LoHA and diagonal
OFT (``lyco.py``; ``lokr.py`` keeps the LoKR names).

``attach_adapter(decoder, config)`` freezes the decoder, adds fp32 adapter weights on the targets of
``engine.config.resolve_targets(config)`` and returns an ``Adapter``:

- ``.module``: the nn.Module to train and call (``PeftModel`` for LoRA; the decoder itself, with the
  LyCORIS network registered as its ``lycoris_net`` submodule, for LoKR/LoHA/OFT). Call it with keyword
  arguments, exactly like the bare decoder.
- ``.parameters()``: the trainable tensors only; ``.trainable_params``, ``.adapted_modules``.
- ``.state_dict()`` / ``.load_state_dict(sd)``: adapter tensors only (CPU copies), in the same key
  format as the saved file; loading is exact or raises ``AdapterMismatchError``.
- ``.save(dir, metadata)``: inference-ready flat files, written to a temp folder first;
  ``.write(dir, metadata)`` the same files into a folder the caller commits (a checkpoint being built).
- ``.load(dir)``: read what ``save`` wrote (resume); unreadable files raise ``AdapterLoadError``.

The interface and its helpers live in ``base.py``; this module only picks the kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from engine.adapters.base import Adapter, AdapterLoadError, AdapterMismatchError, describe_mismatch, target_regex

if TYPE_CHECKING:
    from engine.config import TrainConfig
    from engine.fishermap import FisherMap


def attach_adapter(decoder: nn.Module, config: TrainConfig, *, fisher: FisherMap | None = None) -> Adapter:
    """Freeze ``decoder`` and attach the adapter named by ``config.adapter_type``. ``fisher`` (LoRA/DoRA
    only): a PP++ map whose per-module ranks and targets replace the uniform rank."""
    decoder.requires_grad_(False)
    if config.selected_modules:
        check_selection(decoder, config.selected_modules)
    if config.adapter_type == "lora":
        from engine.adapters.lora import attach_lora

        return attach_lora(decoder, config, fisher=fisher)
    if fisher is not None:
        raise ValueError(f"a Fisher rank map applies to LoRA/DoRA, not {config.adapter_type}")
    if config.adapter_type in ("lokr", "loha", "oft"):
        from engine.adapters.lyco import attach_lycoris

        return attach_lycoris(decoder, config)
    raise ValueError(f"adapter_type {config.adapter_type!r} is not lora, lokr, loha or oft")


def check_selection(decoder: nn.Module, names: tuple[str, ...]) -> None:
    """``ValueError`` (one line) when a selected module name is no module of ``decoder``."""
    from engine.moduleconfig import display

    present = {n for n, _ in decoder.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"selected module {display(missing[0])}{more} matches no decoder module; estimate again on this model")


__all__ = [
    "Adapter",
    "AdapterLoadError",
    "AdapterMismatchError",
    "attach_adapter",
    "check_selection",
    "describe_mismatch",
    "target_regex",
]
