"""``sidestep queue run``: one detached worker trains three queued demo runs back to back after the
command that started it has exited; the failing middle one is recorded and the third still runs; the
run folders are ordinary ones (``sidestep runs`` lists them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import runs
from engine.cli.main import main
from engine.queue import RunQueue

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_three_queued_runs_one_failing(
    demo_config_values: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path / "cfg"))
    base = tmp_path / "base.json"  # the shared fast demo settings, as a config file (CONFIG), flags on top
    base.write_text(json.dumps(dict(demo_config_values, max_steps=2, log_heavy_every=1000)), encoding="utf-8")
    empty = tmp_path / "no-tensors"
    empty.mkdir()
    root = tmp_path / "runs"
    for name, data in (("a", demo_config_values["dataset_dir"]), ("b", str(empty)), ("c", demo_config_values["dataset_dir"])):
        assert main(["queue", "add", str(base), "-d", data, "-o", str(root / name)]) == 0
    q = RunQueue()
    assert [e.state for e in q.entries()] == ["queued"] * 3

    started = subprocess.run(
        [sys.executable, "-m", "engine.cli", "queue", "run"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    pid = q.worker_pid()
    assert pid and f"pid {pid}" in started.stdout  # the worker outlives the command that started it
    capsys.readouterr()
    assert main(["queue", "run"]) == 2
    assert f"a queue worker is already working (pid {pid})" in capsys.readouterr().err

    deadline = time.monotonic() + 240
    while q.worker_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    log = Path(q.worker_log_path).read_text(encoding="utf-8")
    assert q.worker_pid() is None, f"the worker is still working:\n{log[-3000:]}"

    entries = q.entries()
    assert [e.state for e in entries] == ["done", "failed", "done"], log[-3000:]
    assert "holds no training tensors" in entries[1].error and "\n" not in entries[1].error
    assert not entries[0].error and not entries[2].error
    assert all(e.pid == pid for e in entries)
    found = {os.path.basename(r.path): r for r in runs.scan_runs(str(root))}
    assert found["a"].status == found["c"].status == "completed", found
    assert found["a"].steps == found["c"].steps == 2
    assert found.get("b") is None or found["b"].status == "failed"
    assert "the queue is empty; the worker ends" in log
