"""Two ``sidestep train`` processes started at the same moment on one ``-o``: exactly one trains, the
other gets the one-line "in use by pid N" error and writes nothing (events.jsonl keeps unique
sequence numbers and one run id).

Two real interpreters run the real command line (``engine.cli.main.main``, what the ``sidestep``
entry point calls). Each imports the training stack first, then waits for a start file, so both reach
the run folder within a millisecond or two of each other: a much tighter race than two shells
started together (where the import time differs by seconds). One pair of processes plays every
try, each try on a fresh folder, so the 20 tries cost 20 short runs, not 40 interpreter starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import protocol

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 20 tries take about 4.5 minutes on two busy CPU cores (measured, all one winner); the default is a
# quicker 6, SIDESTEP_RACE_TRIES=20 runs the full count.
TRIES = int(os.environ.get("SIDESTEP_RACE_TRIES", "6"))

WORKER = r"""
import contextlib, os, sys, time
import engine.train.trainer  # the heavy imports, before the start line
from engine.cli.main import main

me, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
argv = sys.argv[4:]
print(os.getpid(), flush=True)
for i in range(n):
    go = os.path.join(work, f"go_{i}")
    while not os.path.exists(go):
        time.sleep(0.0005)
    with open(os.path.join(work, f"out_{me}_{i}"), "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main([*argv, "-o", os.path.join(work, f"run_{i}")])
    with open(os.path.join(work, f"rc_{me}_{i}.tmp"), "w") as fh:
        fh.write(str(rc))
    os.replace(os.path.join(work, f"rc_{me}_{i}.tmp"), os.path.join(work, f"rc_{me}_{i}"))
"""


def _wait(path: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None and not path.exists():
            raise AssertionError(f"worker exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {path.name}")
        time.sleep(0.02)
    return path.read_text()


def test_two_trains_started_together_on_one_folder_exactly_one_wins(demo_paths, tmp_path: Path) -> None:
    argv = [
        "train",
        "--checkpoint-dir", demo_paths["checkpoint_dir"],
        "--model-variant", demo_paths["model_variant"],
        "--dataset-dir", demo_paths["dataset_dir"],
        "--max-steps", "1", "--device", "cpu", "--rank", "4", "--num-workers", "0", "--save-every", "1000",
    ]  # fmt: skip
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, name, str(tmp_path), str(TRIES), *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    try:
        pids = {name: int(p.stdout.readline()) for name, p in zip(("a", "b"), procs, strict=True)}  # type: ignore[union-attr]
        for i in range(TRIES):
            (tmp_path / f"go_{i}").write_text("")
            rcs = {name: int(_wait(tmp_path / f"rc_{name}_{i}", p, 300)) for name, p in zip(("a", "b"), procs, strict=True)}
            outs = {name: (tmp_path / f"out_{name}_{i}").read_text() for name in ("a", "b")}
            winners = [name for name, rc in rcs.items() if rc == 0]
            assert len(winners) == 1, f"try {i}: exit codes {rcs}\n{outs}"
            winner = winners[0]
            loser = "b" if winner == "a" else "a"
            errors = [line for line in outs[loser].splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and f"is in use by pid {pids[winner]}" in errors[0], f"try {i}: {outs[loser]}"
            assert "Traceback" not in outs[loser]
            run_dir = tmp_path / f"run_{i}"
            events = protocol.read_events(str(run_dir / "events.jsonl"))
            seqs = [e.seq for e in events]
            assert len(seqs) == len(set(seqs)), f"try {i}: duplicate sequence numbers"
            assert len({e.run_id for e in events}) == 1
            assert sum(isinstance(e, protocol.RunStarted) for e in events) == 1
            assert sum(isinstance(e, protocol.RunFinished) for e in events) == 1
            assert len(list((run_dir / "runs").iterdir())) == 1, "one TensorBoard file: the loser wrote none"
            assert not (run_dir / "engine.json").exists()
            assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 1
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
