"""The run directory's one "newest checkpoint" rule, as ``--resume-from auto``, pruning, the Runs
screen and ``sidestep runs`` all use it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine import layout


def make_checkpoint(run_dir: Path, name: str, step: int | None, *, state: bool = True, kind: str = "periodic") -> Path:
    folder = run_dir / "checkpoints" / name
    folder.mkdir(parents=True)
    if state:
        (folder / "training_state.pt").write_bytes(b"not really torch")
    if step is not None:
        (folder / "checkpoint.json").write_text(json.dumps({"step": step, "epoch": 1, "kind": kind}))
    return folder


def test_names_are_the_run_directory_of_design_md(tmp_path: Path) -> None:
    run = str(tmp_path)
    assert os.path.relpath(layout.events_path(run), run) == "events.jsonl"
    assert os.path.relpath(layout.checkpoint_dir(run, layout.step_checkpoint_name(7)), run) == os.path.join(
        "checkpoints", "step_7"
    )
    assert os.path.relpath(layout.trainer_state_path(layout.final_dir(run)), run) == os.path.join("final", "training_state.pt")


def test_newest_is_the_highest_step(tmp_path: Path) -> None:
    assert layout.newest_checkpoint(str(tmp_path)) is None
    assert layout.list_checkpoints(str(tmp_path)) == []
    make_checkpoint(tmp_path, "epoch_9", 90)
    newest = make_checkpoint(tmp_path, "epoch_10", 100)
    make_checkpoint(tmp_path, "step_95", 95)
    make_checkpoint(tmp_path, ".epoch_11.writing-123", 110)  # being written
    make_checkpoint(tmp_path, "epoch_12", 120, state=False)  # adapter only: not resumable
    assert layout.newest_checkpoint(str(tmp_path)) == str(newest)
    assert [step for step, _ in layout.list_checkpoints(str(tmp_path))] == [90, 95, 100]


def test_step_from_training_state_without_torch_import(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    a = make_checkpoint(tmp_path, "a", None)
    b = make_checkpoint(tmp_path, "b", None)
    torch.save(
        {"global_step": 300, "epoch": 3, "optimizer_state_dict": {"state": {0: {"exp_avg": torch.zeros(4)}}}},
        a / "training_state.pt",
    )
    torch.save({"global_step": 200, "epoch": 2}, b / "training_state.pt")
    os.utime(a / "training_state.pt", (1, 1))  # older file, higher step: step wins
    assert layout.newest_checkpoint(str(tmp_path)) == str(a)


def test_falls_back_to_names_then_mtime(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, "epoch_5", None)
    last = make_checkpoint(tmp_path, "epoch_40", None)
    make_checkpoint(tmp_path, "epoch_7", None)
    assert layout.newest_checkpoint(str(tmp_path)) == str(last)
    same_a = make_checkpoint(tmp_path, "x", 50)
    same_b = make_checkpoint(tmp_path, "y", 50)
    os.utime(same_b / "training_state.pt", (1, 1))
    assert layout.newest_checkpoint(str(tmp_path)) == str(same_a), "equal steps: the newer training state wins"
