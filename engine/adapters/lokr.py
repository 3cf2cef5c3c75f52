"""LyCORIS LoKR on the bare decoder, restricted to the requested targets (ACE_STEP.md §7.2;
ecosystem.md §3.2 pitfalls: ``target_name`` alone narrows nothing, ``apply_preset`` is global state,
the network is not a submodule unless registered, DoRA is ``weight_decompose``/``dora_wd``)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.adapters.base import Adapter, read_safetensors, target_regex

if TYPE_CHECKING:
    from lycoris import LycorisNetwork

    from engine.config import TrainConfig

WEIGHTS_FILE = "lokr_weights.safetensors"
NET_ATTR = "lycoris_net"  # where the network is registered on the decoder
_PRESET_LOCK = threading.Lock()  # LycorisNetwork.apply_preset mutates class attributes


def lokr_settings(config: TrainConfig) -> dict:
    """Every LoKR field of the run, under LyCORIS's names (stored in the file's metadata too)."""
    return {
        "algo": "lokr",
        "linear_dim": config.lokr_linear_dim,
        "linear_alpha": config.lokr_linear_alpha,
        "factor": config.lokr_factor,
        "decompose_both": config.lokr_decompose_both,
        "use_tucker": config.lokr_use_tucker,
        "use_scalar": config.lokr_use_scalar,
        "weight_decompose": config.lokr_weight_decompose,
        "full_matrix": config.lokr_full_matrix,
        "rs_lora": config.lokr_rs_lora,
        "unbalanced_factorization": config.lokr_unbalanced_factorization,
    }


class LokrAdapter(Adapter):
    kind = "lokr"

    def __init__(self, module: nn.Module, net: LycorisNetwork, settings: dict, targets: tuple[str, ...]) -> None:
        super().__init__(module, len(net.loras))
        self.net = net
        self.settings = settings
        self.targets = targets

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def _live_state(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state, strict=True)

    def _write(self, directory: Path, metadata: dict[str, str]) -> None:
        lokr_config = {**self.settings, "targets": list(self.targets)}
        meta = {**metadata, "algo": "lokr", "format": "lycoris", "lokr_config": json.dumps(lokr_config)}
        self.net.save_weights(str(directory / WEIGHTS_FILE), None, meta)

    def load(self, directory: str | os.PathLike) -> int:
        path = Path(directory)
        if path.is_dir():
            path = path / WEIGHTS_FILE
        return self.load_state_dict(read_safetensors(path), source=str(path))


def attach_lokr(decoder: nn.Module, config: TrainConfig) -> LokrAdapter:
    from lycoris import LycorisNetwork

    from engine.config import resolve_targets

    if isinstance(getattr(decoder, NET_ATTR, None), nn.Module):
        raise ValueError("this decoder already carries a LyCORIS network; load a fresh decoder")
    targets = resolve_targets(config)
    pattern = target_regex(targets) + "$"  # LyCORIS uses re.match: anchored at the start only
    settings = lokr_settings(config)
    with _PRESET_LOCK:
        # Every key, every time: the preset is class-level state that outlives this call.
        LycorisNetwork.apply_preset(
            {
                "enable_conv": True,
                "target_module": [],
                "target_name": [pattern],
                "module_algo_map": {},
                "name_algo_map": {},
                "lora_prefix": "lycoris",
                "use_fnmatch": False,
                "exclude_name": [],
                "unet_target_module": [],
                "unet_target_name": [],
                "text_encoder_target_module": [],
                "text_encoder_target_name": [],
            }
        )
        # The network class directly: create_lycoris drops rs_lora and re-applies its "full" preset.
        net = LycorisNetwork(
            decoder,
            multiplier=1.0,
            lora_dim=config.lokr_linear_dim,
            conv_lora_dim=config.lokr_linear_dim,
            alpha=config.lokr_linear_alpha,
            conv_alpha=config.lokr_linear_alpha,
            network_module="lokr",
            use_tucker=config.lokr_use_tucker,
            use_scalar=config.lokr_use_scalar,
            factor=config.lokr_factor,
            decompose_both=config.lokr_decompose_both,
            weight_decompose=config.lokr_weight_decompose,
            full_matrix=config.lokr_full_matrix,
            rs_lora=config.lokr_rs_lora,
            unbalanced_factorization=config.lokr_unbalanced_factorization,
            bypass_mode=False,
            warn_on_unmatched=False,
        )
    if not net.loras:
        raise ValueError(f"LoKR matched no decoder modules for targets {', '.join(targets)}")
    net.apply_to()
    device = next(decoder.parameters()).device
    net.to(device=device, dtype=torch.float32)  # LyCORIS builds on the CPU; adapter weights stay fp32
    net.requires_grad_(True)
    for buffer in net.buffers():  # `alpha` etc. are bookkeeping, not trainable
        buffer.requires_grad_(False)
    setattr(decoder, NET_ATTR, net)  # a real submodule: .to(), Fabric and DDP see it
    return LokrAdapter(decoder, net, settings, targets)
