"""Permission denied is called permission denied (not "corrupt", not "delete it", not a bare
PermissionError). The command runs in a child process that file modes do stop: run as root, the child
drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set before exec (so it is root
without the power to ignore modes) and the files are handed to ``nobody`` with no access for others;
run as a normal user, the files are simply made unreadable (or the folder unwritable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.reliability.conftest import demo_argv

pytestmark = pytest.mark.integration

ROOT = os.geteuid() == 0
NOBODY = 65534
REPO = str(Path(__file__).resolve().parents[2])


def _drop() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; PR_CAPBSET_DROP = 24
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def deny(path: Path) -> None:
    """Make ``path`` unreadable (a file) or unwritable (a folder) for the child."""
    if ROOT:
        os.chown(path, NOBODY, NOBODY)
    path.chmod(0o555 if path.is_dir() else 0o000)


def run_cli(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(home), TMPDIR=str(home), XDG_CONFIG_HOME=str(home / "cfg"))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_drop if ROOT else None,  # only setuid/setgid, before exec
    )


@pytest.fixture
def world(demo_paths):
    """A folder the child's user can reach, with its own copy of the demo model and tensors."""
    base = Path(tempfile.mkdtemp(prefix="perm-"))
    base.chmod(0o755)
    shutil.copytree(demo_paths["checkpoint_dir"], base / "ck")
    shutil.copytree(demo_paths["dataset_dir"], base / "data")
    for folder in ("home", "out"):
        (base / folder).mkdir()
        (base / folder).chmod(0o777)
    paths = dict(demo_paths, checkpoint_dir=str(base / "ck"), dataset_dir=str(base / "data"))
    yield base, paths
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o700)
    shutil.rmtree(base, ignore_errors=True)


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text
    return errors[0]


def test_unreadable_model_weights_are_permission_denied_not_corrupt(world) -> None:
    base, paths = world
    weights = base / "ck" / paths["model_variant"] / "model.safetensors"
    deny(weights)
    proc = run_cli(demo_argv(paths, base / "out" / "run"), base / "home")
    assert proc.returncode == 1
    line = one_error(proc)
    assert str(weights) in line and "permission denied" in line and "corrupt" not in line


def test_unreadable_tensor_file_is_permission_denied_not_delete_it(world) -> None:
    base, paths = world
    victim = sorted((base / "data").glob("*.pt"))[0]
    deny(victim)
    proc = run_cli(demo_argv(paths, base / "out" / "run"), base / "home")
    assert proc.returncode == 1
    line = one_error(proc)
    assert victim.name in line and "permission denied" in line and "delete it" not in line


def test_output_dir_under_an_unwritable_parent(world) -> None:
    base, paths = world
    locked = base / "locked"
    locked.mkdir()
    deny(locked)
    proc = run_cli(demo_argv(paths, locked / "sub" / "run"), base / "home")
    assert proc.returncode == 1
    line = one_error(proc)
    assert "not writable (permission denied)" in line and str(locked) in line
    assert not (locked / "sub").exists()


def test_presets_show_into_a_closed_pipe_exits_quietly(tmp_path) -> None:
    """``sidestep presets show NAME | head``: the reader has gone before the write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "engine.cli", "presets", "show", "recommended"],
            env=dict(os.environ, PYTHONPATH=REPO, XDG_CONFIG_HOME=str(tmp_path)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
