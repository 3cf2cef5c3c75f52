"""kill -9 during a save leaves temp folders (``fsutil`` names them ``.<name>.<pid>-<start>-<random>.__writing__``).
A run that starts or resumes clears those of dead writers, puts back a folder a killed swap had moved
aside, and never touches a live writer's temps (same pid and start time)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import fsutil
from engine.cli.main import main
from tests.reliability.conftest import demo_argv

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]))


def _killed_during_save(target: Path, *, swap: bool = False) -> None:
    """A real writer process that dies by SIGKILL in the middle of ``atomic_dir(target)`` (``swap``: right
    after moving the old folder aside, before the new one took its name)."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from engine import fsutil
        target = {str(target)!r}
        if {swap!r}:
            os.replace(target, fsutil.temp_path(target, "old-"))
            os.kill(os.getpid(), signal.SIGKILL)
        with fsutil.atomic_dir(target) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr


def _live_writer(target: Path) -> tuple[subprocess.Popen, str]:
    code = textwrap.dedent(
        f"""
        import sys, time
        from engine import fsutil
        with fsutil.atomic_dir({str(target)!r}) as tmp:
            print(tmp, flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert line, "the live writer did not start"
    return proc, line


def temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if fsutil.is_temp(n))


@pytest.mark.integration
def test_dead_writers_temps_go_live_writers_stay(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    _killed_during_save(ckpts / "step_10")
    dead = temps(ckpts)
    assert len(dead) == 1 and str(os.getpid()) not in dead[0]
    proc, live = _live_writer(ckpts / "step_20")
    try:
        removed = fsutil.clean_stale_temps(ckpts)
        assert removed == [str(ckpts / dead[0])]
        assert temps(ckpts) == [os.path.basename(live)], "a live writer's temp must stay"
        assert os.path.isdir(live)
    finally:
        proc.kill()
        proc.wait(10)
    # its writer is dead now: the next clean takes it
    assert fsutil.clean_stale_temps(ckpts) == [live] and temps(ckpts) == []


@pytest.mark.integration
def test_a_swap_killed_between_its_renames_gets_the_old_folder_back(tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    (final / "adapter_model.safetensors").write_bytes(b"the good adapter")
    _killed_during_save(final, swap=True)
    assert not final.exists() and len(temps(tmp_path)) == 1
    done = fsutil.clean_stale_temps(tmp_path)
    assert len(done) == 1 and "restored as" in done[0]
    assert (final / "adapter_model.safetensors").read_bytes() == b"the good adapter" and temps(tmp_path) == []


def test_a_reused_pid_does_not_keep_a_dead_writers_temp(tmp_path: Path) -> None:
    """Our own pid, but a start time long before this process began: a leftover of an earlier process."""
    stale = tmp_path / f".step_5.{os.getpid()}-{int(time.time()) - 86400}-0123456789ab{fsutil.TEMP_SUFFIX}"
    stale.mkdir()
    mine = Path(fsutil.temp_path(tmp_path / "step_6"))
    mine.mkdir()
    keep = tmp_path / "step_4"
    keep.mkdir()
    assert fsutil.clean_stale_temps(tmp_path) == [str(stale)]
    assert mine.is_dir() and keep.is_dir()


@pytest.mark.integration
def test_a_run_starting_in_the_folder_clears_them(demo_paths, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _killed_during_save(run / "checkpoints" / "step_2")
    _killed_during_save(run / "best")
    assert temps(run / "checkpoints") and temps(run)
    assert main(demo_argv(demo_paths, run, "--max-steps", "1")) == 0
    assert temps(run / "checkpoints") == [] and temps(run) == []
    out = capsys.readouterr().out
    assert "left by a writer that died during a save" in out
