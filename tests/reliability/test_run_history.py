"""Issue 12, "History hides what happened": a run killed with kill -9 and resumed from an earlier checkpoint
shows each segment (started, ended how, at which step) and the steps trained again, in ``engine.runs`` (both
of its readers: the whole-file fold and the fast one for big logs) and in ``sidestep runs RUN_DIR``. The
events.jsonl files are written by hand the way the engine writes them (``protocol.stamp`` + ``dumps``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine import protocol, runs
from engine.cli.main import main
from tests.unit.event_factory import run_started, step_metrics

T0 = 1_700_000_000.0


class Events:
    """An events.jsonl written segment by segment, each engine with its own run id and seq numbers."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.lines, self.ts = run_dir, [], T0
        run_dir.mkdir(parents=True, exist_ok=True)

    def segment(self, run_id: str, start: int, *, total: int = 400) -> Events:
        self.run_id, self.seq = run_id, 0
        return self.add(run_started(run_dir=str(self.run_dir), start_step=start, total_steps=total, steps_per_epoch=100))

    def add(self, event: object) -> Events:
        self.seq += 1
        self.ts += 1
        self.lines.append(protocol.dumps(protocol.stamp(event, run_id=self.run_id, seq=self.seq, ts=self.ts)))
        return self

    def steps(self, first: int, last: int, *, total: int = 400) -> Events:
        for step in range(first, last + 1):
            self.add(step_metrics(step, 0.5, epoch=(step - 1) // 100 + 1, total_steps=total))
            self.add(protocol.Heartbeat(phase="training", last_step=step))
        return self

    def write(self) -> Path:
        (self.run_dir / "events.jsonl").write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        return self.run_dir


def killed_then_resumed_from_an_earlier_checkpoint(run_dir: Path) -> Path:
    """Segment 1 trains to step 300 (checkpoint at 200) and is killed -9 (no end event); segment 2 resumes
    from step 200 and stops at 350; segment 3 resumes from the stop checkpoint and completes 400/400."""
    log = Events(run_dir).segment("run-a", 0).steps(1, 200)
    log.add(
        protocol.CheckpointSaved(step=200, epoch=2, path=str(run_dir / "checkpoints" / "step_200"), kind="periodic", loss=0.5)
    )
    log.steps(201, 300)
    log.segment("run-b", 200).steps(201, 350)
    log.add(protocol.RunFinished(status="stopped", steps=350, epochs=3, final_loss=0.4, best_loss=0.4, adapter_path="", wall_s=1))
    log.segment("run-c", 350).steps(351, 400)
    log.add(
        protocol.RunFinished(status="completed", steps=400, epochs=4, final_loss=0.3, best_loss=0.3, adapter_path="", wall_s=1)
    )
    return log.write()


@pytest.mark.parametrize("reader", ["whole-file", "fast"])
def test_a_killed_and_resumed_run_shows_every_segment_and_the_redone_steps(tmp_path, monkeypatch, reader) -> None:
    if reader == "fast":  # the reader for big logs decodes only some lines: the segments must survive it
        monkeypatch.setattr(runs, "BIG_EVENTS_BYTES", 0)
    run = runs.summarize_run(str(killed_then_resumed_from_an_earlier_checkpoint(tmp_path / "run")))
    assert (run.status, run.steps, run.total_steps) == ("completed", 400, 400)
    got = [(s.number, s.run_id, s.start_step, s.end_step, s.how, s.redone) for s in run.history]
    assert got == [
        (1, "run-a", 0, 300, "died", 0),
        (2, "run-b", 200, 350, "stopped", 100),  # steps 201-300 trained again
        (3, "run-c", 350, 400, "completed", 0),
    ]
    assert run.redone_steps == 100
    # One second per event: 400 + 1 + 200 events in segment 1, 1 + 300 + 1 in segment 2.
    assert [s.started for s in run.history] == [T0 + 1, T0 + 603, T0 + 905]
    assert run.history[0].ended == T0 + 602  # its last heartbeat: when it died


def test_a_died_last_segment_and_a_failed_one_are_named(tmp_path) -> None:
    log = Events(tmp_path / "run").segment("run-a", 0).steps(1, 50)
    log.add(protocol.RunFailed(error_type="OutOfMemoryError", message="CUDA out of memory", step=50))
    log.segment("run-b", 0 + 40).steps(41, 60)  # resumed from step 40, then killed: no end event, no engine
    run = runs.summarize_run(str(log.write()))
    assert run.status == "died"
    assert [(s.how, s.start_step, s.end_step, s.redone) for s in run.history] == [("failed", 0, 50, 0), ("died", 40, 60, 10)]
    assert run.history[0].message == "CUDA out of memory"
    assert run.redone_steps == 10


def test_sidestep_runs_run_dir_prints_each_segment(tmp_path, capsys) -> None:
    def at(ts: float) -> str:  # the local time, as the command prints it
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

    run_dir = killed_then_resumed_from_an_earlier_checkpoint(tmp_path / "run")
    assert main(["runs", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "segments: 3, 100 step(s) trained again after resuming from an earlier checkpoint" in out
    assert f"1  started {at(T0 + 1)}, died (no end event) at step 300/400" in out
    assert f"2  started {at(T0 + 603)} from step 200, stopped at step 350/400 (redid 100 steps)" in out
    assert f"3  started {at(T0 + 905)} from step 350, completed at step 400/400" in out
