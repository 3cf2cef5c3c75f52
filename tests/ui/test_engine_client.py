"""EngineClient against a real spawned process (a stub engine, no torch): handshake, protocol check,
death reasons, send on a dead engine, shutdown escalation, detach; plus exit-code mapping (the one test
here that starts no process)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
from fake_engine import stub_engine
from ui_helpers import wait_until

from engine import protocol as p
from sidestep_tui.engine_client import EngineClient, EngineDeadError, EngineHandshakeError, exit_reason

pytestmark = pytest.mark.timeout(120)
spawns = pytest.mark.integration


_started: list[EngineClient] = []


@pytest.fixture(autouse=True)
def _no_engine_left_behind():
    """A failed assertion must not leave a stub engine running: the interpreter's exit would wait on it."""
    yield
    while _started:
        client = _started.pop()
        if client.pid is not None and client.is_alive:
            os.kill(client.pid, signal.SIGKILL)
            client.wait_exit(10)


def _client(tmp_path, **boot) -> EngineClient:
    client = EngineClient(log_path=str(tmp_path / "engine.log"), handshake_timeout=60, target=stub_engine, boot_extra=boot)
    _started.append(client)
    return client


def _drain_until(client: EngineClient, kind: type, timeout: float = 30.0) -> list:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += client.poll(0.2)
        if any(isinstance(e, kind) for e in seen):
            return seen
    raise AssertionError(f"no {kind.__name__} in {seen}")


@spawns
def test_handshake_commands_and_clean_shutdown(tmp_path) -> None:
    client = _client(tmp_path)
    client.start()
    assert client.ready is not None and client.is_alive
    assert isinstance(client.poll(0.5)[0], p.EngineReady)  # the handshake event is still delivered
    client.send(p.StartRun(run_id="r", config_json="{}"))
    _drain_until(client, p.PhaseChanged)
    client.shutdown(10)
    assert not client.is_alive and client.exit_code == 0 and client.death_reason() == "exited normally"
    assert any(isinstance(e, p.EngineStopping) for e in client.poll(0.1))
    with pytest.raises(EngineDeadError):
        client.send(p.PauseRun())


@spawns
def test_protocol_mismatch_is_refused(tmp_path) -> None:
    client = _client(tmp_path, protocol_version=p.PROTOCOL_VERSION + 1)
    with pytest.raises(EngineHandshakeError, match="protocol"):
        client.start()
    assert not client.is_alive


@spawns
def test_handshake_timeout(tmp_path) -> None:
    client = _client(tmp_path, silent=True)
    client.handshake_timeout = 2.0
    with pytest.raises(EngineHandshakeError, match="did not start within"):
        client.start()
    assert client.wait_exit(10) and not client.is_alive


@spawns
def test_sigkill_is_reported_as_the_oom_killer(tmp_path) -> None:
    client = _client(tmp_path)
    client.start()
    os.kill(client.pid, signal.SIGKILL)
    assert client.wait_exit(10)
    assert client.exit_code == -9 and client.death_reason() == "killed (likely the OOM killer)"
    with pytest.raises(EngineDeadError, match="OOM killer"):
        client.send(p.StopRun())


@spawns
def test_crash_is_exit_code_one(tmp_path) -> None:
    client = _client(tmp_path, crash_on_stop=True)
    client.start()
    client.send(p.StopRun())
    assert client.wait_exit(20)
    assert client.exit_code == 1 and client.death_reason().startswith("crashed")


@spawns
def test_shutdown_escalates_to_kill(tmp_path) -> None:
    client = _client(tmp_path, ignore_shutdown=True, ignore_sigterm=True)
    client.start()
    t0 = time.monotonic()
    client.shutdown(grace_s=1.0)
    assert not client.is_alive and client.exit_code == -signal.SIGKILL
    assert time.monotonic() - t0 < 15


@spawns
def test_detach_leaves_the_engine_running(tmp_path) -> None:
    client = _client(tmp_path)
    client.start()
    assert client.pid in [child.pid for child in multiprocessing.active_children()]
    client.detach()
    assert client.pid not in [child.pid for child in multiprocessing.active_children()]
    assert client.is_alive
    os.kill(client.pid, signal.SIGKILL)  # clean up the test's own engine
    assert client.wait_exit(10)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (None, "still running"),
        (0, "exited normally"),
        (-9, "killed (likely the OOM killer)"),
        (137, "killed (likely the OOM killer)"),
        (-15, "killed by SIGTERM"),
        (1, "crashed (exit code 1; see sidestep.log)"),
        (143, "exited after SIGTERM"),
        (3, "exited with code 3"),
    ],
)
def test_exit_reasons(code, reason) -> None:
    assert exit_reason(code) == reason


@spawns
async def test_app_exit_shuts_an_idle_engine_down_and_detaches_a_training_one(tmp_path, build_app) -> None:
    """Tests and crashes end the app without the quit dialog: no engine may be left holding the exit."""
    idle = _client(tmp_path / "idle")
    app = build_app(idle)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: bool(app.run_state.engine_pid), 15, "the idle engine's handshake")
        assert app.run_state.engine_pid == idle.pid
    assert not idle.is_alive and idle.exit_code == 0

    busy = _client(tmp_path / "busy")
    app = build_app(busy)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: bool(app.run_state.engine_pid), 15, "the busy engine's handshake")
        busy.send(p.StartRun(run_id="r", config_json="{}"))
        await wait_until(pilot, lambda: app.run_state.active, 5, "the run to start")
    # detached: the run outlives its UI, and this interpreter's exit will not wait for it
    assert busy.is_alive and busy.pid not in [child.pid for child in multiprocessing.active_children()]
    os.kill(busy.pid, signal.SIGKILL)
    assert busy.wait_exit(10)


@spawns
def test_a_forgotten_engine_does_not_hold_the_interpreter_exit(tmp_path) -> None:
    """A script that starts an engine and simply ends: the atexit hook shuts the idle engine down
    instead of multiprocessing joining it forever."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "forget.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from fake_engine import stub_engine\n"
        "from sidestep_tui.engine_client import EngineClient\n"
        "if __name__ == '__main__':\n"
        f"    c = EngineClient(log_path={str(tmp_path / 'e.log')!r}, target=stub_engine)\n"
        "    c.start()\n"
        "    print(c.pid, flush=True)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    pid = int(result.stdout.split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the engine outlived its forgetful parent")
