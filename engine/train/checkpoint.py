"""Checkpoints: self-describing folders, written atomically, verified on resume.

A checkpoint folder holds the adapter files flat and inference-ready (what ACE-Step's loader and
``PeftModel.from_pretrained`` expect), ``training_state.pt`` (everything needed to continue exactly:
adapter tensors, optimizer, scheduler, step, epoch, position inside the epoch, RNG, chunk planner,
best-model tracker), ``config.json`` (the resolved run config) and ``checkpoint.json`` (step, epoch,
kind, loss: readable without torch, so the UI and ``--resume-from auto`` never load a tensor).

Every folder is built under a temporary name and renamed into place, so a crash or a full disk never
leaves a half-written checkpoint where a resume would find it.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any, cast

from engine import fsutil, layout

STATE_SCHEMA_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def write_checkpoint_dir(
    target: str,
    *,
    adapter: Any,
    metadata: dict[str, str],
    config_json: str,
    info: dict[str, Any],
    training_state: dict[str, Any] | None = None,
    comfyui_name: str = "",
    warn: Any = None,
) -> str:
    """Write adapter files (+ optional training state) as the folder ``target``, all or nothing
    (``fsutil.atomic_dir``: an old folder of that name is replaced whole); returns ``target``.
    With ``comfyui_name`` the folder also gets that single-file ComfyUI export of the adapter; an
    adapter that ComfyUI cannot express is reported through ``warn`` and the checkpoint is kept."""
    import torch

    with fsutil.atomic_dir(target) as tmp:
        adapter.write(tmp, metadata)
        if comfyui_name:
            from engine.adapters import export

            try:
                export.export_comfyui(tmp, tmp / comfyui_name, base=export.BaseWeights.from_module(adapter.module))
            except export.ExportError as exc:
                if warn is not None:
                    warn(f"no ComfyUI file for {os.path.basename(target)}: {exc}")
        if training_state is not None:
            torch.save(training_state, layout.trainer_state_path(str(tmp)))
        (tmp / layout.CONFIG_FILE).write_text(config_json, encoding="utf-8")
        (tmp / layout.CHECKPOINT_META_FILE).write_text(json.dumps({**info, "saved_at": time.time()}, indent=2), encoding="utf-8")
    return target


# --------------------------------------------------------------------------- RNG


def capture_rng(device: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    # The legacy tuple (MT19937); numpy's stub types the call as returning the dict form too.
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            np_state[0],
            torch.from_numpy(np_state[1].astype("int64")),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
        "torch_cpu": torch.get_rng_state(),
    }
    if getattr(device, "type", None) == "cuda":
        state["cuda_index"] = device.index if device.index is not None else torch.cuda.current_device()
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: Any) -> list[str]:
    """Restore RNG streams; returns warnings (e.g. a CUDA state from another GPU index is skipped)."""
    import numpy as np
    import torch

    warnings: list[str] = []
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_cpu"])
    if "cuda" in state:
        if getattr(device, "type", None) == "cuda":
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            warnings.append("the checkpoint's CUDA random state was not restored (this run is not on CUDA)")
    return warnings


def _to_tuple(value: Any) -> Any:
    """torch.load(weights_only=True) gives lists where random.getstate had tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuple(v) for v in value)
    return value


# --------------------------------------------------------------------------- finding and loading


def find_resume_dir(resume_from: str, output_dir: str) -> str:
    """``auto`` = newest checkpoint of ``output_dir``; a file inside a checkpoint means its folder."""
    state_file = layout.TRAINER_STATE_FILE
    if resume_from == "auto":
        found = layout.newest_checkpoint(output_dir)
        if found is None:
            raise CheckpointError(
                f"--resume-from auto: no checkpoint with {state_file} under {layout.checkpoints_dir(output_dir)}; start without --resume-from"
            )
        return found
    path = os.path.abspath(os.path.expanduser(resume_from))
    if os.path.isfile(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise CheckpointError(
            f"--resume-from {resume_from}: no such checkpoint folder; point it at a {layout.CHECKPOINTS_DIR}/<name>/ folder or use 'auto'"
        )
    if not os.path.isfile(layout.trainer_state_path(path)):
        raise CheckpointError(
            f"--resume-from {path}: no {state_file} in it ({layout.FINAL_DIR}/ and {layout.BEST_DIR}/ hold adapters only); use a folder under {layout.CHECKPOINTS_DIR}/"
        )
    return path


def load_training_state(ckpt_dir: str) -> dict[str, Any]:
    import torch

    path = layout.trainer_state_path(ckpt_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete, resume from another one") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); the file is corrupt, resume from another checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("schema_version") != STATE_SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: not a Side-Step TUI training state (schema {state.get('schema_version') if isinstance(state, dict) else '?'}); resume from a checkpoint this version wrote"
        )
    return state
