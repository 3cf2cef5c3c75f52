"""engine.cli.plain: the end line states engine.summary's figures for the whole run, also in a headless resume
(which sees only its own segment's events)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from engine import protocol
from engine.cli.plain import PlainPrinter
from engine.summary import fold_all

from .event_factory import run_started, step_metrics


def started(run_dir: str, start_step: int) -> protocol.RunStarted:
    return run_started(
        run_dir=run_dir,
        config_json=json.dumps({"resume_from": "auto" if start_step else None}),
        model_variant="v",
        num_samples=2,
        start_step=start_step,
        start_epoch=start_step // 2 + 1,
        timestep_mu=0.0,
    )


def stamped(events: list, run_id: str) -> list:
    return [protocol.stamp(e, run_id=run_id, seq=i + 1, ts=100.0 + i) for i, e in enumerate(events)]


def test_a_headless_resume_ends_with_the_whole_runs_figures(tmp_path: Path) -> None:
    run_dir = str(tmp_path)
    first = stamped([
        started(run_dir, 0),
        protocol.CheckpointSaved(step=2, epoch=1, path=f"{run_dir}/best", kind="best", loss=0.9),
        protocol.CheckpointSaved(step=3, epoch=2, path=f"{run_dir}/checkpoints/step_3", kind="stop", loss=0.8),
        protocol.RunFinished(status="stopped", steps=3, epochs=1, final_loss=0.8, best_loss=0.9, adapter_path=f"{run_dir}/checkpoints/step_3", wall_s=1.0),
    ], "seg-1")  # fmt: skip
    loading = stamped([protocol.PhaseChanged(phase="loading_model")], "seg-2")
    (tmp_path / "events.jsonl").write_text("".join(protocol.dumps(e) + "\n" for e in first + loading))
    second = stamped([
        started(run_dir, 3),
        step_metrics(6, 0.7, epoch=3, steps_covered=3, eta_s=0.0),
        protocol.RunFinished(status="completed", steps=6, epochs=3, final_loss=0.65, best_loss=0.5, adapter_path=f"{run_dir}/final", wall_s=2.0),
    ], "seg-2")  # fmt: skip

    out = io.StringIO()
    printer = PlainPrinter(out, seed_from_run_dir=True)
    for event in loading + second:
        printer.emit(event)
    assert printer.summary.segments == 2 and printer.summary == fold_all(second, fold_all(first + loading))
    last = out.getvalue().rstrip().splitlines()
    # best is best/'s loss from the first segment (not RunFinished.best_loss 0.5); final is the last step's
    assert last[-2] == "run completed: step 6/6, epoch 3 in 0:02; final loss 0.6500, best 0.9000 (epoch 1, step 2)"
    assert last[-1] == f"adapter: {run_dir}/final"

    unseeded = io.StringIO()
    plain = PlainPrinter(unseeded)
    for event in second:
        plain.emit(event)
    assert "best n/a" in unseeded.getvalue()  # what a printer that sees one segment alone would have to say
