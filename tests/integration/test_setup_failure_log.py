"""A run that fails while being set up (after its run folder exists, before the first step) leaves
its traceback in the run's sidestep.log, where the failure dialog points."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from pathlib import Path

import pytest

from engine import config as cfgmod
from engine import layout, protocol
from engine.process.entry import run_engine

pytestmark = pytest.mark.integration


def _wait_for(evt_q, proc, kind: type, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = evt_q.get(timeout=0.5)
        except queue.Empty:
            assert proc.is_alive(), f"engine exited with {proc.exitcode}"
            continue
        if isinstance(event, kind):
            return event
    raise AssertionError(f"timed out waiting for {kind.__name__}")


def test_setup_failure_traceback_is_in_the_run_log(demo_config_values: dict, tmp_path: Path) -> None:
    empty = tmp_path / "no-tensors"
    empty.mkdir()
    values = dict(demo_config_values, dataset_dir=str(empty), max_steps=2)
    ctx = mp.get_context("spawn")
    cmd_q, evt_q = ctx.Queue(), ctx.Queue()
    boot = {"log_path": str(tmp_path / "engine.log"), "parent_pid": os.getpid()}
    proc = ctx.Process(target=run_engine, args=(cmd_q, evt_q, boot), daemon=False)
    proc.start()
    try:
        _wait_for(evt_q, proc, protocol.EngineReady)
        cmd_q.put(protocol.StartRun(run_id="setup-fails", config_json=cfgmod.to_json(cfgmod.parse(values))))
        failed = _wait_for(evt_q, proc, protocol.RunFailed)
        assert failed.step == 0 and "Traceback" in failed.traceback
        log = Path(layout.log_path(values["output_dir"])).read_text(encoding="utf-8")
        assert failed.error_type in log and failed.message in log, log
        assert failed.traceback.strip().splitlines()[-1] in log  # the traceback itself, not only a summary
        assert "Traceback (most recent call last)" in log
        cmd_q.put(protocol.Shutdown())
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10)
