"""A refused or failed resume leaves the run it refused exactly as it was: no config.json rewrite, no
failure event appended to its events.jsonl (which would make a finished run read "failed")."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine import protocol
from engine.cli.main import main
from tests.reliability.conftest import demo_argv, snapshot


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_refused_resume_changes_no_byte_of_the_finished_run(finished_run, demo_paths, tmp_path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    before = snapshot(run)
    argv = demo_argv(demo_paths, run, "--config", str(run / "config.json"), "--resume-from", "auto", "--rank", "16")
    assert main(argv) == 1
    out = capsys.readouterr()
    errors = [line for line in (out.out + out.err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "settings differ" in errors[0] and "rank 4 -> 16" in errors[0], errors
    assert "Traceback" not in out.out + out.err
    assert snapshot(run) == before, "the refused resume changed the run folder"
    # the run still reads as the finished run it was
    events = protocol.read_events(str(run / "events.jsonl"))
    assert isinstance(events[-1], protocol.RunFinished) and events[-1].status == "completed"


def test_resume_that_fails_while_restoring_leaves_the_run_record_alone(finished_run, demo_paths, tmp_path, capsys) -> None:
    """--no-strict-resume lets a rank change past the check; the adapter tensors then do not fit and the
    resume fails after the folder was claimed. Its record (config, events, checkpoints, adapters) stays
    as it was; only the engine's log says what happened."""
    run = _copy(finished_run, tmp_path)
    keep = lambda snap: {k: v for k, v in snap.items() if k not in ("sidestep.log", ".engine.lock")}  # noqa: E731
    before = keep(snapshot(run))
    argv = demo_argv(demo_paths, run, "--resume-from", "auto", "--rank", "16", "--no-strict-resume", "--max-steps", "6")
    assert main(argv) == 1
    out = capsys.readouterr()
    errors = [line for line in (out.out + out.err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training_state.pt" in errors[0], out
    assert keep(snapshot(run)) == before
    assert "training_state.pt" in (run / "sidestep.log").read_text()
