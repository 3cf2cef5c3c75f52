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


def test_resume_auto_says_which_checkpoint_it_skipped_and_why(finished_run, demo_paths, tmp_path, capsys) -> None:
    """The newest checkpoint's training state is corrupt, the one before it has a corrupt
    checkpoint.json: auto skips the first (saying so, with the reason), resumes from the second (noting
    its checkpoint.json), and the notes land in events.jsonl with the resumed segment."""
    run = _copy(finished_run, tmp_path)
    good, bad = run / "checkpoints" / "step_2", run / "checkpoints" / "step_4"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]
    (bad / "training_state.pt").write_bytes(b"torn by a crash")
    (good / "checkpoint.json").write_text('{"step": 2, "ep')
    argv = demo_argv(demo_paths, run, "--resume-from", "auto", "--max-steps", "4", "--save-every-n-steps", "2")
    assert main(argv) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and str(bad) in skipped[0] and "corrupt" in skipped[0], out
    assert any("checkpoint.json is missing or not valid JSON" in line and str(good) in line for line in out.splitlines()), out
    assert f"resumed from {good}: step 2" in out
    logged = [e.message for e in protocol.read_events(str(run / "events.jsonl")) if isinstance(e, protocol.LogRecord)]
    assert any(str(bad) in m and "skipped" in m for m in logged)
