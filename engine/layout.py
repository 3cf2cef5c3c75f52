"""The run directory: the name of every file and folder a run writes, and the one rule for "the
newest checkpoint" (stdlib only; DESIGN.md §4). Nothing else spells these names.

    <run_dir>/
      config.json            the resolved run config
      engine.json            pid, host and start of the engine while it runs (removed at the end)
      .engine.lock           locked by the run's process for its life: one run per folder (pid inside)
      events.jsonl           every event of every segment (a resumed run appends)
      events.<time>.jsonl    the history of a finished run that --overwrite replaced
      sidestep.log           the engine's log
      runs/                  TensorBoard
      checkpoints/<name>/    resumable: adapter files + training_state.pt + config.json + checkpoint.json
      best/  final/          adapter only (inference-ready) + config.json + checkpoint.json
      samples/step_<N>/      audio rendered during training: <slug>.flac + <slug>.json (step 0 = the base model)
      chosen/                the adapter picked by ear from a sample (Runs screen): a copy of the one saved
                             at that sample's step, without its training state, + chosen.json

A folder being written has a hidden temp name (``engine.fsutil``) and is never a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

CONFIG_FILE = "config.json"
ENGINE_FILE = "engine.json"
LOCK_FILE = ".engine.lock"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "sidestep.log"
TENSORBOARD_DIR = "runs"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
FINAL_DIR = "final"
TRAINER_STATE_FILE = "training_state.pt"
CHECKPOINT_META_FILE = "checkpoint.json"
SAMPLES_DIR = "samples"
CHOSEN_DIR = "chosen"


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, CONFIG_FILE)


def engine_path(run_dir: str) -> str:
    return os.path.join(run_dir, ENGINE_FILE)


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


def events_path(run_dir: str) -> str:
    return os.path.join(run_dir, EVENTS_FILE)


def archived_events_path(run_dir: str, when: float) -> str:
    """Where ``--overwrite`` keeps the events of the finished run it replaces."""
    return os.path.join(run_dir, f"events.{int(when)}.jsonl")


def log_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOG_FILE)


def tensorboard_dir(run_dir: str) -> str:
    return os.path.join(run_dir, TENSORBOARD_DIR)


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR)


def checkpoint_dir(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR, name)


def step_checkpoint_name(step: int) -> str:
    return f"step_{step}"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch}"


def sample_dir(run_dir: str, step: int) -> str:
    """Where the samples rendered after optimizer step ``step`` go (step 0: the base model)."""
    return os.path.join(run_dir, SAMPLES_DIR, f"step_{step}")


def chosen_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHOSEN_DIR)


def best_dir(run_dir: str) -> str:
    return os.path.join(run_dir, BEST_DIR)


def final_dir(run_dir: str) -> str:
    return os.path.join(run_dir, FINAL_DIR)


def trainer_state_path(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, TRAINER_STATE_FILE)


def checkpoint_meta_path(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, CHECKPOINT_META_FILE)


# --------------------------------------------------------------------------- checkpoints


def read_checkpoint_meta(ckpt_dir: str) -> dict[str, Any] | None:
    """A checkpoint folder's ``checkpoint.json`` (step, epoch, kind, loss), or None when unreadable."""
    try:
        with open(checkpoint_meta_path(ckpt_dir), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def checkpoint_step(ckpt_dir: str) -> int | None:
    """The optimizer step a checkpoint folder was saved at: from ``checkpoint.json``, else from the
    pickle of ``training_state.pt`` (read without torch, never a tensor), else None."""
    step = _int((read_checkpoint_meta(ckpt_dir) or {}).get("step"))
    if step is not None:
        return step
    from engine import ptinspect

    try:
        state = ptinspect.read_structure(trainer_state_path(ckpt_dir))
    except ptinspect.PtError:
        return None
    if isinstance(state, dict):
        for key in ("global_step", "step"):
            if _int(state.get(key)) is not None:
                return state[key]
    return None


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every resumable checkpoint of ``run_dir``, oldest first: the one ordering
    behind "newest", ``--resume-from auto`` and pruning.

    A checkpoint is a folder under ``checkpoints/`` that holds ``training_state.pt`` and whose name does
    not start with a dot (one being written). Its step comes from ``checkpoint_step``, else the last
    number in its name (-1 without one); equal steps are ordered by the training state's mtime."""
    root = checkpoints_dir(run_dir)
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found: list[tuple[int, float, str]] = []
    for name in names:
        path = os.path.join(root, name)
        state = trainer_state_path(path)
        if name.startswith(".") or not os.path.isfile(state):
            continue
        step = checkpoint_step(path)
        if step is None:
            digits = re.findall(r"\d+", name)
            step = int(digits[-1]) if digits else -1
        try:
            mtime = os.path.getmtime(state)
        except OSError:
            mtime = 0.0
        found.append((step, mtime, path))
    return [(step, path) for step, _, path in sorted(found)]


def newest_checkpoint(run_dir: str) -> str | None:
    """The newest resumable checkpoint folder of ``run_dir`` (see ``list_checkpoints``), or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None
