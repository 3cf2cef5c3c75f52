"""The real engine process (spawn, handshake, commands, signals), driven over the real queues."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from engine import config as cfgmod
from engine import protocol
from engine.process.entry import run_engine

pytestmark = pytest.mark.integration


class Engine:
    """A bare harness over the queues: what the UI's client does, without the UI."""

    def __init__(self, tmp_path):
        ctx = mp.get_context("spawn")
        self.cmd_q, self.evt_q = ctx.Queue(), ctx.Queue()
        boot = {"log_path": str(tmp_path / "engine.log"), "parent_pid": os.getpid()}
        self.proc = ctx.Process(target=run_engine, args=(self.cmd_q, self.evt_q, boot), daemon=False)
        self.proc.start()
        self.seen: list = []

    def wait_for(self, predicate, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.evt_q.get(timeout=0.5)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise AssertionError(
                        f"engine exited with {self.proc.exitcode}; saw {[type(e).__name__ for e in self.seen]}"
                    ) from None
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"timed out; saw {[type(e).__name__ for e in self.seen][-20:]}")

    def close(self):
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)


@pytest.fixture
def engine(tmp_path):
    e = Engine(tmp_path)
    yield e
    e.close()


def start_run(engine: Engine, values: dict) -> None:
    engine.cmd_q.put(protocol.StartRun(run_id="it", config_json=cfgmod.to_json(cfgmod.parse(values))))


def test_handshake_run_stop_and_clean_exit(capfd, tmp_path, demo_config_values):
    engine = Engine(tmp_path)  # started here, not in a fixture: capfd sees the fds it inherits only in the test's body
    try:
        _handshake_run_stop_and_clean_exit(engine, demo_config_values)
    finally:
        engine.close()
    # the engine's own prints and logging went to its log, never to our terminal (it inherited our fds)
    assert capfd.readouterr() == ("", "")
    assert os.path.getsize(tmp_path / "engine.log") > 0


def _handshake_run_stop_and_clean_exit(engine, demo_config_values):
    ready = engine.wait_for(lambda e: isinstance(e, protocol.EngineReady))
    assert ready.protocol_version == protocol.PROTOCOL_VERSION and ready.pid == engine.proc.pid
    start_run(engine, dict(demo_config_values, max_steps=100000, epochs=100000))
    engine.wait_for(lambda e: isinstance(e, protocol.StepMetrics) and e.step >= 3)
    engine.wait_for(lambda e: isinstance(e, protocol.Heartbeat) and e.phase == "training")
    engine.cmd_q.put(protocol.PauseRun())
    paused = engine.wait_for(lambda e: isinstance(e, protocol.RunPaused))
    # Paused means held: a heartbeat says "paused", and no step and no resume came before it.
    held_from = len(engine.seen)
    engine.wait_for(lambda e: isinstance(e, protocol.Heartbeat) and e.phase == "paused")
    held = engine.seen[held_from:]
    assert not any(isinstance(e, (protocol.StepMetrics, protocol.RunResumed)) for e in held), [type(e).__name__ for e in held]
    engine.cmd_q.put(protocol.SaveCheckpoint())
    engine.cmd_q.put(protocol.ResumeRun())
    engine.wait_for(lambda e: isinstance(e, protocol.RunResumed))
    saved = engine.wait_for(lambda e: isinstance(e, protocol.CheckpointSaved) and e.kind == "requested")
    assert saved.step == paused.step  # asked for while paused: written before the next step
    assert os.path.isfile(os.path.join(saved.path, "training_state.pt"))
    engine.cmd_q.put(protocol.StopRun())
    stop = engine.wait_for(lambda e: isinstance(e, protocol.CheckpointSaved) and e.kind == "stop")
    finished = engine.wait_for(lambda e: isinstance(e, protocol.RunFinished))
    assert finished.status == "stopped" and os.path.isfile(os.path.join(stop.path, "training_state.pt"))
    engine.cmd_q.put(protocol.Shutdown())
    engine.wait_for(lambda e: isinstance(e, protocol.EngineStopping))
    engine.proc.join(30)
    assert engine.proc.exitcode == 0


def test_bad_config_is_a_run_failed_and_the_engine_stays_up(engine, demo_config_values):
    engine.wait_for(lambda e: isinstance(e, protocol.EngineReady))
    engine.cmd_q.put(protocol.StartRun(run_id="bad", config_json='{"rank": 0, "learnin_rate": 1}'))
    failed = engine.wait_for(lambda e: isinstance(e, protocol.RunFailed))
    assert "rank" in failed.message and "learnin_rate" in failed.message and "learning_rate" in failed.message
    start_run(engine, dict(demo_config_values, max_steps=2))
    finished = engine.wait_for(lambda e: isinstance(e, (protocol.RunFinished, protocol.RunFailed)))
    assert isinstance(finished, protocol.RunFinished), finished


def test_sigterm_stops_and_saves(engine, demo_config_values):
    engine.wait_for(lambda e: isinstance(e, protocol.EngineReady))
    start_run(engine, dict(demo_config_values, max_steps=100000, epochs=100000))
    engine.wait_for(lambda e: isinstance(e, protocol.StepMetrics) and e.step >= 2)
    os.kill(engine.proc.pid, signal.SIGTERM)
    stop = engine.wait_for(lambda e: isinstance(e, protocol.CheckpointSaved) and e.kind == "stop")
    finished = engine.wait_for(lambda e: isinstance(e, protocol.RunFinished))
    assert finished.status == "stopped" and os.path.isfile(os.path.join(stop.path, "training_state.pt"))
    engine.proc.join(30)
    assert engine.proc.exitcode == 0


def test_sigkill_is_reported_by_exit_code(engine, demo_config_values):
    engine.wait_for(lambda e: isinstance(e, protocol.EngineReady))
    start_run(engine, dict(demo_config_values, max_steps=100000, epochs=100000))
    engine.wait_for(lambda e: isinstance(e, protocol.StepMetrics))
    os.kill(engine.proc.pid, signal.SIGKILL)
    engine.proc.join(10)
    assert engine.proc.exitcode == -signal.SIGKILL
    from sidestep_tui.engine_client import exit_reason

    assert "killed" in exit_reason(engine.proc.exitcode).lower()


PARENT = textwrap.dedent(
    """
    import json, multiprocessing as mp, os, sys, time
    from engine import config as cfgmod, protocol
    from engine.process.entry import run_engine
    if __name__ == "__main__":
        values = json.loads(sys.argv[1])
        ctx = mp.get_context("spawn")
        cmd_q, evt_q = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=run_engine, args=(cmd_q, evt_q, {"log_path": sys.argv[2], "parent_pid": os.getpid()}))
        p.start()
        cmd_q.put(protocol.StartRun(run_id="orphan", config_json=cfgmod.to_json(cfgmod.parse(values))))
        while True:
            e = evt_q.get()
            if isinstance(e, protocol.StepMetrics):
                print(p.pid, flush=True)
                os._exit(0)  # the UI dies without any goodbye
    """
)


def test_run_outlives_its_parent(demo_config_values, tmp_path):
    """The UI process vanishes mid-run: the engine keeps training, writing events.jsonl, and
    finishes the run; then, idle and orphaned, it exits on its own."""
    import json

    values = dict(demo_config_values, max_steps=40)
    proc = subprocess.run(
        [sys.executable, "-c", PARENT, json.dumps(values), str(tmp_path / "e.log")], capture_output=True, text=True, timeout=180
    )
    engine_pid = int(proc.stdout.strip().splitlines()[-1])
    events_path = os.path.join(values["output_dir"], "events.jsonl")
    deadline = time.monotonic() + 180
    finished = None
    while time.monotonic() < deadline and finished is None:
        time.sleep(0.5)
        finished = next((e for e in protocol.read_events(events_path) if isinstance(e, protocol.RunFinished)), None)
    assert finished is not None and finished.status == "completed" and finished.steps == 40
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(engine_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        os.kill(engine_pid, signal.SIGKILL)
        pytest.fail("the orphaned idle engine did not exit")
