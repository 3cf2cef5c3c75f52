"""Helpers for the reliability suite: a finished demo run made by the real command line, and a
byte-for-byte picture of a folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.cli.main import main


def demo_argv(demo_paths: dict[str, str], out: Path | str, *extra: str) -> list[str]:
    return [
        "train",
        "--checkpoint-dir", demo_paths["checkpoint_dir"],
        "--model-variant", demo_paths["model_variant"],
        "--dataset-dir", demo_paths["dataset_dir"],
        "--device", "cpu", "--rank", "4", "--num-workers", "0", "--max-steps", "2",
        "-o", str(out), *extra,
    ]  # fmt: skip


def snapshot(folder: Path | str) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes, plus every folder (as b"<dir>")."""
    found: dict[str, bytes] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = b"<dir>"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, folder)] = fh.read()
    return found


@pytest.fixture(scope="module")
def finished_run(demo_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed 4-step LoRA run with periodic checkpoints at steps 2 and 4 (rank 4)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(demo_argv(demo_paths, run, "--max-steps", "4", "--save-every-n-steps", "2")) == 0
    assert (run / "final").is_dir() and (run / "checkpoints" / "step_2").is_dir()
    return run
