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
import shutil
import time
from typing import Any

ADAPTER_DIR_FINAL = "final"
ADAPTER_DIR_BEST = "best"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "training_state.pt"
CHECKPOINT_META_FILE = "checkpoint.json"
CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
ENGINE_FILE = "engine.json"
LOG_FILE = "sidestep.log"
STATE_SCHEMA_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_checkpoint_dir(
    target: str,
    *,
    adapter: Any,
    metadata: dict[str, str],
    config_json: str,
    info: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> str:
    """Write adapter files (+ optional training state) into ``target`` atomically; returns ``target``."""
    import torch

    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.writing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        adapter.save(tmp, metadata)
        if training_state is not None:
            torch.save(training_state, os.path.join(tmp, TRAINER_STATE_FILE))
        atomic_write_text(os.path.join(tmp, CONFIG_FILE), config_json)
        atomic_write_text(os.path.join(tmp, CHECKPOINT_META_FILE), json.dumps({**info, "saved_at": time.time()}, indent=2))
        old = None
        if os.path.exists(target):
            old = os.path.join(parent, f".{os.path.basename(target)}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------- RNG


def capture_rng(device: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype("int64")), int(np_state[2]), int(np_state[3]), float(np_state[4])),
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


def read_meta(ckpt_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(ckpt_dir, CHECKPOINT_META_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint with a training state, oldest first."""
    root = os.path.join(output_dir, CHECKPOINTS_DIR)
    found: list[tuple[int, str]] = []
    if not os.path.isdir(root):
        return found
    for name in os.listdir(root):
        path = os.path.join(root, name)
        meta = read_meta(path)
        if name.startswith(".") or meta is None or not os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)):
            continue
        found.append((int(meta.get("step", 0)), path))
    return sorted(found)


def find_resume_dir(resume_from: str, output_dir: str) -> str:
    """``auto`` = newest checkpoint of ``output_dir``; a file inside a checkpoint means its folder."""
    if resume_from == "auto":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(f"--resume-from auto: no checkpoint with {TRAINER_STATE_FILE} under {os.path.join(output_dir, CHECKPOINTS_DIR)}; start without --resume-from")
        return found[-1][1]
    path = os.path.abspath(os.path.expanduser(resume_from))
    if os.path.isfile(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"--resume-from {resume_from}: no such checkpoint folder; point it at a checkpoints/<name>/ folder or use 'auto'")
    if not os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)):
        raise CheckpointError(f"--resume-from {path}: no {TRAINER_STATE_FILE} in it (final/ and best/ hold adapters only); use a folder under checkpoints/")
    return path


def load_training_state(ckpt_dir: str) -> dict[str, Any]:
    import torch

    path = os.path.join(ckpt_dir, TRAINER_STATE_FILE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete, resume from another one") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a damaged zip/pickle
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); the file is corrupt, resume from another checkpoint") from None
    if not isinstance(state, dict) or state.get("schema_version") != STATE_SCHEMA_VERSION:
        raise CheckpointError(f"{path}: not a Side-Step TUI training state (schema {state.get('schema_version') if isinstance(state, dict) else '?'}); resume from a checkpoint this version wrote")
    return state
