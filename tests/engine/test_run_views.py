"""One run, one set of figures: the Monitor (a replay and a TUI attach through the ``RunState`` reducer), the
Runs screen, ``sidestep runs`` and ``sidestep attach --plain`` show the same status, step, final loss and
best loss for runs the real trainer wrote on the demo model: one completed straight (its best-model tracking
starts after its last epoch, the default case for short runs: no best/), one stopped and then resumed to
completion, one whose resume failed. The expected figures come from the run folder itself (``checkpoint.json``
of ``best/``, ``final/``, the stop checkpoint), never from ``engine.summary``."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from engine import config as cfgmod
from engine import protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.summary import loss_text
from engine.train.trainer import Trainer

SAMPLES = 2  # 2 samples, batch 1: 2 optimizer steps per epoch
EPOCHS = 3


def train(values: dict, *, stop_at: int | None = None) -> object:
    inbox = CommandInbox(None)

    def collect(event: object) -> None:
        if stop_at is not None and isinstance(event, protocol.StepMetrics) and event.step >= stop_at:
            inbox.state.stop_requested = True  # applied at the step boundary right after this step

    bus = EventBus([CallbackSink(collect)])
    return Trainer(
        cfgmod.parse(values), bus, inbox, run_id=f"test-{os.path.basename(values['output_dir'])}", metrics_hz=math.inf
    ).fit()


@pytest.fixture(scope="module")
def runs_root(demo_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("views")
    data = root.parent / f"{root.name}-data"
    data.mkdir()
    for name in sorted(n for n in os.listdir(demo_paths["dataset_dir"]) if n.endswith(".pt"))[:SAMPLES]:
        shutil.copy(os.path.join(demo_paths["dataset_dir"], name), data / name)
    base = {
        "checkpoint_dir": demo_paths["checkpoint_dir"], "model_variant": demo_paths["model_variant"], "dataset_dir": str(data),
        "rank": 4, "alpha": 8, "learning_rate": 1e-3, "epochs": EPOCHS, "batch_size": 1, "gradient_accumulation": 1, "warmup_steps": 1, "num_workers": 0, "device": "cpu",
        "log_every": 1, "log_heavy_every": 2, "save_every": 1, "save_best_after": 1,
    }  # fmt: skip
    done = train({**base, "output_dir": str(root / "completed"), "save_best_after": EPOCHS + 1})
    # no best/, but the trainer's own best figure is a number: a view that showed it would disagree
    assert done.status == "completed" and math.isfinite(done.best_loss) and not (root / "completed" / "best").exists()
    assert train({**base, "output_dir": str(root / "resumed")}, stop_at=3).status == "stopped"
    shutil.copytree(root / "resumed", root / "resume-failed")
    assert train({**base, "output_dir": str(root / "resumed"), "resume_from": "auto"}).status == "completed"
    failed = train({**base, "output_dir": str(root / "resume-failed"), "resume_from": "auto", "rank": 8})
    assert isinstance(failed, protocol.RunFailed) and "rank" in failed.message
    return root


def checkpoint_loss(folder: Path) -> float:
    return json.loads((folder / "checkpoint.json").read_text())["loss"]


def expected(run_dir: Path) -> dict:
    """What the run folder says, independent of engine.summary."""
    best = checkpoint_loss(run_dir / "best") if (run_dir / "best").is_dir() else None
    if run_dir.name == "resume-failed":  # the refused resume left the stopped run exactly as it was
        return {"status": "stopped", "step": 3, "final": checkpoint_loss(run_dir / "checkpoints" / "step_3"), "best": best}
    return {"status": "completed", "step": SAMPLES * EPOCHS, "final": checkpoint_loss(run_dir / "final"), "best": best}


def monitor_text(state) -> str:
    from sidestep_tui.widgets.progress_panel import render_progress

    return render_progress(state, 200)


def attach_tui(run_dir: Path):
    """The TUI's ``sidestep attach``: AttachClient's events through the reducer."""
    from sidestep_tui.engine_client import AttachClient
    from sidestep_tui.state import RunState, apply_all

    client = AttachClient(str(run_dir), sleep=lambda _s: None)
    client.start()
    state = RunState()
    while batch := client.poll(0.0):
        state = apply_all(state, batch)
    client.shutdown()
    assert client.parse_errors == 0
    return state


def plain_attach(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from engine.cli.main import main

    code = main(["attach", str(run_dir), "--plain"])
    return code, capsys.readouterr().out


def runs_cli(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    from engine.cli.main import main

    assert main(["runs", str(root)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["completed", "resumed", "resume-failed"])
def test_every_view_shows_the_same_figures(runs_root: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.runs import summarize_run
    from sidestep_tui.screens.runs import COLUMNS, replay_state, run_row

    run_dir = runs_root / name
    want = expected(run_dir)
    assert (want["best"] is None) == (name == "completed"), "resumed and resume-failed write best/ (save_best_after=1)"
    status, step, final, best = want["status"], want["step"], loss_text(want["final"]), loss_text(want["best"])
    steps = f"{step}/{SAMPLES * EPOCHS}"

    # the Runs screen (and the summary behind it)
    row = dict(zip(COLUMNS, run_row(summarize_run(str(run_dir))), strict=True))
    assert (row["Status"], row["Steps"], row["Final"], row["Best"]) == (status, steps, final, best)

    # `sidestep runs`
    line = next(ln for ln in runs_cli(runs_root, capsys).splitlines() if ln.rstrip().endswith(str(run_dir)))
    assert line.split()[:5] == [status, "lora", steps, best, final]

    # the Monitor: a replay from the Runs screen, and a live attach through AttachClient
    for state in (replay_state(str(run_dir)), attach_tui(run_dir)):
        text = monitor_text(state)
        assert f" {status.upper()} " in text and f"step {steps} " in text, text
        assert f"final loss {final}" in text and f"best {best}" in text, text
        assert (state.summary.status, state.step, loss_text(state.final_loss), loss_text(state.best_loss)) == (
            status,
            step,
            final,
            best,
        )

    # `sidestep attach --plain`: its last word is the whole run's, not the first segment's
    code, out = plain_attach(run_dir, capsys)
    assert code == (1 if status == "failed" else 0)
    ends = re.findall(r"^run (\w+): step (\d+)/\d+, epoch \d+.*; final loss (\S+), best (\S+)", out, flags=re.MULTILINE)
    assert ends and ends[-1] == (status, str(step), final, best), out
    if name == "resumed":
        assert [e[0] for e in ends] == ["stopped", "completed"]  # the first segment's end is history, not the answer


def test_epochs_are_counted_from_one(runs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = protocol.read_events(str(runs_root / "completed" / "events.jsonl"))
    steps = [(e.step, e.epoch) for e in events if isinstance(e, protocol.StepMetrics)]
    assert steps == [(s, (s - 1) // SAMPLES + 1) for s in range(1, SAMPLES * EPOCHS + 1)]
    # every epoch completes, the last one too (it ends on the run's last step)
    assert [(e.epoch, e.step) for e in events if isinstance(e, protocol.EpochCompleted)] == [
        (n, n * SAMPLES) for n in range(1, EPOCHS + 1)
    ]
    saves = {e.kind: e for e in events if isinstance(e, protocol.CheckpointSaved)}
    assert saves["final"].epoch == EPOCHS
    # epoch_N folders are named after the epoch that ended; the last epoch ends the run (final/, no epoch_3)
    assert sorted(os.listdir(runs_root / "completed" / "checkpoints")) == [f"epoch_{n}" for n in range(1, EPOCHS)]
    assert json.loads((runs_root / "completed" / "checkpoints" / "epoch_1" / "checkpoint.json").read_text())["epoch"] == 1
    finished = next(e for e in events if isinstance(e, protocol.RunFinished))
    assert finished.epochs == EPOCHS

    resumed = protocol.read_events(str(runs_root / "resumed" / "events.jsonl"))
    starts = [(e.start_step, e.start_epoch) for e in resumed if isinstance(e, protocol.RunStarted)]
    assert starts == [(0, 1), (3, 2)]  # step 3 stopped inside epoch 2; the resume continues epoch 2
    stop = next(e for e in resumed if isinstance(e, protocol.CheckpointSaved) and e.kind == "stop")
    assert (stop.step, stop.epoch) == (3, 2)
    bests = [(e.step, e.epoch) for e in resumed if isinstance(e, protocol.CheckpointSaved) and e.kind == "best"]
    assert bests and all(step % SAMPLES == 0 and epoch == step // SAMPLES for step, epoch in bests)  # saved as an epoch ends

    _code, out = plain_attach(runs_root / "completed", capsys)
    assert "epoch 0" not in out and f"epoch {EPOCHS} done" in out and "epoch 1 done" in out
