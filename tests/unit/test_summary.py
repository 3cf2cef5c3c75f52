"""engine.summary: the one fold of a run's events into the figures every view shows."""

from __future__ import annotations

import dataclasses
import json
import math

from engine import protocol
from engine.summary import EMPTY, fold, fold_all, is_resume, loss_text

from .event_factory import run_started, step_metrics

RUN_DIR = "/runs/demo"


class Stream:
    """Events stamped the way the engine's EventBus does."""

    def __init__(self) -> None:
        self.events: list = []

    def add(self, event, run_id: str = "run-1") -> Stream:
        self.events.append(protocol.stamp(event, run_id=run_id, seq=len(self.events) + 1, ts=1000.0 + len(self.events)))
        return self


def started(start_step: int = 0, *, run_dir: str = RUN_DIR, resume_from: str | None = None) -> protocol.RunStarted:
    return run_started(
        run_dir=run_dir,
        config_json=json.dumps({"resume_from": resume_from}),
        start_step=start_step,
        start_epoch=start_step // 2 + 1,
    )


def step(n: int, loss: float) -> protocol.StepMetrics:
    return step_metrics(n, loss, epoch=(n - 1) // 2 + 1)


def saved(n: int, kind: str, loss: float, path: str = "") -> protocol.CheckpointSaved:
    return protocol.CheckpointSaved(step=n, epoch=(n - 1) // 2 + 1, path=path or f"{RUN_DIR}/{kind}", kind=kind, loss=loss)


def finished(status: str, steps: int, final: float, *, best: float = 9.9) -> protocol.RunFinished:
    return protocol.RunFinished(
        status=status,
        steps=steps,
        epochs=steps // 2,
        final_loss=final,
        best_loss=best,
        adapter_path=f"{RUN_DIR}/{'final' if status == 'completed' else f'checkpoints/step_{steps}'}",
        wall_s=1.0,
    )


def test_a_completed_run() -> None:
    s = Stream().add(started()).add(step(1, 1.0)).add(step(2, 0.8))
    s.add(protocol.EpochCompleted(epoch=1, step=2, mean_loss=0.9, duration_s=1.0)).add(saved(2, "best", 0.9))
    s.add(step(3, 0.5)).add(step(4, 0.7)).add(protocol.EpochCompleted(epoch=2, step=4, mean_loss=0.6, duration_s=1.0))
    s.add(saved(4, "best", 0.75)).add(saved(4, "final", 0.7)).add(finished("completed", 4, 0.7))
    out = fold_all(s.events)
    assert (out.status, out.step, out.total_steps, out.epoch, out.segments) == ("completed", 4, 6, 2, 1)
    # best = the loss saved with best/ (the smoothed epoch mean 0.75): not the lowest step loss (0.5), not the lowest
    # epoch mean (0.6), not RunFinished.best_loss (9.9)
    assert (out.best_loss, out.best_step, out.best_epoch, out.best_path) == (0.75, 4, 2, f"{RUN_DIR}/best")
    assert out.final_loss == 0.7 and out.adapter_path == f"{RUN_DIR}/final" and out.finished and out.error == ""
    assert out.run_id == "run-1" and out.started == 1000.0 and out.last_ts == 1000.0 + len(s.events) - 1


def test_the_last_best_write_wins_even_when_it_is_higher() -> None:
    """A resume from an older checkpoint can write best/ again with a higher loss: best/ holds that one."""
    s = (
        Stream()
        .add(started())
        .add(step(4, 0.5))
        .add(saved(4, "best", 0.4))
        .add(saved(4, "stop", 0.5))
        .add(finished("stopped", 4, 0.5))
    )
    s.add(started(2, resume_from="/runs/demo/checkpoints/epoch_1")).add(step(4, 0.6)).add(saved(4, "best", 0.55))
    out = fold_all(s.events)
    assert (out.best_loss, out.best_step) == (0.55, 4) and out.status == "" and out.segments == 2


def test_stopped_then_resumed_to_completion_reports_the_last_segment() -> None:
    s = Stream().add(started()).add(step(2, 0.9)).add(saved(2, "best", 0.9)).add(step(3, 0.8)).add(saved(3, "stop", 0.8))
    s.add(finished("stopped", 3, 0.8))
    first = fold_all(s.events)
    assert (first.status, first.step, first.final_loss, first.adapter_path) == (
        "stopped",
        3,
        0.8,
        f"{RUN_DIR}/checkpoints/step_3",
    )
    s.add(started(3, resume_from="auto"), run_id="run-2")
    resumed = fold_all(s.events)
    assert (resumed.status, resumed.step, resumed.epoch, resumed.segments, resumed.run_id) == ("", 3, 2, 2, "run-2")
    assert resumed.best_loss == 0.9 and resumed.final_loss == 0.8  # the run's figures go on
    s.add(step(6, 0.6)).add(saved(6, "final", 0.55)).add(finished("completed", 6, 0.55))
    out = fold_all(s.events)
    assert (out.status, out.step, out.epoch, out.final_loss, out.best_loss, out.segments) == ("completed", 6, 3, 0.55, 0.9, 2)
    assert out.started == first.started  # the run's first start


def test_a_failure_ends_the_segment_and_a_resume_clears_it() -> None:
    s = Stream().add(started()).add(step(3, 0.8)).add(protocol.LogRecord(level="error", message="odd"))
    s.add(protocol.RunFailed(error_type="RuntimeError", message="boom", hint="lower the rank", step=3))
    out = fold_all(s.events)
    assert (out.status, out.step, out.failure, out.last_error, out.error) == (
        "failed",
        3,
        "boom (lower the rank)",
        "odd",
        "boom (lower the rank)",
    )
    assert out.final_loss == 0.8  # the latest reading
    s.add(started(3, resume_from="auto")).add(step(4, 0.7))
    out = fold_all(s.events)
    assert (out.status, out.failure, out.last_error, out.step) == ("", "", "", 4)


def test_a_resume_that_fails_before_it_starts_keeps_the_run_where_it_was() -> None:
    s = Stream().add(started()).add(step(3, 0.8)).add(saved(3, "stop", 0.8)).add(finished("stopped", 3, 0.8))
    s.add(protocol.PhaseChanged(phase="loading_model"))
    s.add(protocol.RunFailed(error_type="CheckpointError", message="settings differ", step=0))
    out = fold_all(s.events)
    assert (out.status, out.step, out.final_loss, out.segments, out.failure) == ("failed", 3, 0.8, 1, "settings differ")


def test_a_fresh_start_or_another_folder_starts_a_new_summary() -> None:
    s = Stream().add(started()).add(step(2, 0.9)).add(saved(2, "best", 0.9))
    s.add(protocol.RunFailed(error_type="E", message="m", step=2))
    again = fold_all(Stream().add(started()).events, fold_all(s.events))  # same folder, from scratch
    assert (again.best_loss, again.final_loss, again.segments, again.status, again.step) == (None, None, 1, "", 0)
    other = fold_all(Stream().add(started(4, run_dir="/runs/other")).events, fold_all(s.events))
    assert (other.best_loss, other.segments, other.run_dir) == (None, 1, "/runs/other")


def test_non_finite_losses_are_none_and_never_replace_a_reading() -> None:
    s = Stream().add(started()).add(step(1, 0.9)).add(step(2, math.nan)).add(saved(2, "best", math.inf))
    out = fold_all(s.events)
    assert out.final_loss == 0.9 and out.best_loss is None and out.best_step == 2
    out = fold(out, finished("stopped", 2, math.nan))
    assert out.final_loss == 0.9 and out.status == "stopped"


def test_steps_never_go_back_within_a_segment() -> None:
    s = Stream().add(started()).add(saved(5, "periodic", 0.5)).add(step(4, 0.6)).add(protocol.RunPaused(step=5))
    out = fold_all(s.events)
    assert (out.step, out.phase, out.adapter_path) == (5, "paused", f"{RUN_DIR}/periodic")


def test_fold_is_pure() -> None:
    events = Stream().add(started()).add(step(1, 0.9)).add(saved(1, "best", 0.9)).events
    before = fold_all(events[:2])
    after = fold(before, events[2])
    assert before.best_loss is None and after.best_loss == 0.9  # the input summary is unchanged
    assert dataclasses.astuple(fold_all(events)) == dataclasses.astuple(fold_all(events))
    assert fold_all([]) is EMPTY


def test_is_resume_and_loss_text() -> None:
    assert is_resume(started(3)) and is_resume(started(0, resume_from="auto")) and not is_resume(started(0))
    assert not is_resume(dataclasses.replace(started(0), config_json="not json"))
    assert (loss_text(0.123456), loss_text(None), loss_text(math.nan)) == ("0.1235", "n/a", "n/a")
