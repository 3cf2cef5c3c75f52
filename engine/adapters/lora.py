"""PEFT LoRA / DoRA on the bare decoder, saved in the layout ACE-Step's own loader reads (ACE_STEP.md §7.1, §17)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import torch
from torch import nn

from engine.adapters.base import Adapter, AdapterLoadError, read_safetensors, target_regex

if TYPE_CHECKING:
    from peft import PeftModel

    from engine.config import TrainConfig
    from engine.fishermap import FisherMap

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LoraBias = Literal["none", "all", "lora_only"]  # PEFT's values; engine.config.BIASES lists the same


class LoraAdapter(Adapter):
    kind = "lora"
    module: PeftModel

    def _live_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.module)

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.module, state)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:  # describe_mismatch already proved the keys match; this guards PEFT itself
            raise AdapterLoadError(f"PEFT ignored {len(unexpected)} adapter keys, e.g. {unexpected[0]}")

    def _write(self, directory: Path, metadata: dict[str, str]) -> None:
        from safetensors.torch import save_file

        # PEFT writes a README model card first (a jinja template compiled on every save, ~25 ms; the demo saves
        # ~28 times) that is not kept: skipped for this call, and any README still removed.
        setattr(self.module, "create_or_update_model_card", lambda output_dir: None)  # noqa: B010  # setattr: mypy forbids assigning a method
        try:
            self.module.save_pretrained(str(directory), safe_serialization=True, state_dict=self.full_state)
        finally:
            delattr(self.module, "create_or_update_model_card")
        (directory / "README.md").unlink(missing_ok=True)
        config_path = directory / CONFIG_FILE
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = ""  # a local path would leak and mislead loaders
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        # Re-write the tensors with our metadata (run name, variant, shift, ...) in the header.
        weights = read_safetensors(directory / WEIGHTS_FILE)
        save_file(weights, str(directory / WEIGHTS_FILE), metadata={"format": "pt", **metadata})

    def load(self, directory: str | os.PathLike) -> int:
        path = Path(directory)
        if path.is_dir():
            path = path / WEIGHTS_FILE
        return self.load_state_dict(read_safetensors(path), source=str(path))


def _is_lora_bias(value: str) -> TypeGuard[LoraBias]:
    from engine.config import BIASES

    return value in BIASES


def fisher_targets(fisher: FisherMap) -> str:
    """A full-match regex of exactly the modules a PP++ map ranks (its excluded modules get no adapter)."""
    return "(?:" + "|".join(re.escape(k) for k in sorted(fisher.rank_pattern)) + ")"


def lora_config(config: TrainConfig, fisher: FisherMap | None = None) -> Any:  # a peft.LoraConfig (peft loads on first use)
    """The PEFT ``LoraConfig`` for a run: every LoRA field, targets as one full-match regex. With a
    PP++ map (``fisher``), its ranked modules are the targets and its ``rank_pattern``/``alpha_pattern``
    give each its own rank and alpha."""
    from peft import LoraConfig, TaskType

    from engine.config import BIASES, resolve_targets

    bias = config.bias
    if not _is_lora_bias(bias):
        raise ValueError(f"bias {bias!r} is not one of {', '.join(BIASES)}; set bias to one of them")
    if fisher is not None:
        targets: dict[str, Any] = {
            "target_modules": fisher_targets(fisher),
            "rank_pattern": fisher.rank_pattern,
            "alpha_pattern": fisher.alpha_pattern,
        }
    else:
        # A module selection (--module-config / --auto-estimate) names exact modules; else suffixes as one regex.
        targets = {"target_modules": list(config.selected_modules) or target_regex(resolve_targets(config))}
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        bias=bias,
        use_dora=config.use_dora,
        task_type=TaskType.FEATURE_EXTRACTION,
        **targets,
    )


def attach_lora(decoder: nn.Module, config: TrainConfig, *, fisher: FisherMap | None = None) -> LoraAdapter:
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    # ``enable_input_require_grads`` has nothing to hook on the DiT (no input embeddings); PEFT calls
    # it when the model says it checkpoints. We checkpoint non-reentrantly, which needs no input grads.
    if not getattr(decoder, "_sidestep_input_grads_patched", False):
        # (torch types Module.__setattr__ as taking only tensors and modules, hence the ignores)
        decoder.enable_input_require_grads = lambda: None  # type: ignore[assignment]
        decoder._sidestep_input_grads_patched = True  # type: ignore[assignment]
    # PeftModel directly (not get_peft_model): the forward passes arguments through unchanged, and
    # autocast_adapter_dtype keeps adapter weights fp32 on a bf16/fp16 base.
    module = PeftModel(decoder, lora_config(config, fisher), autocast_adapter_dtype=True)
    adapted = sum(1 for m in module.modules() if isinstance(m, LoraLayer))
    return LoraAdapter(module, adapted)
