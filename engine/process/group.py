"""A several-process run started from the TUI: the engine process is its launcher (DESIGN §9).

The engine process does what ``torchrun`` does for one machine and nothing more: it starts one
``python -m engine.process.rank`` per device with torchrun's environment variables (Fabric's DDP
strategy then forms the group, as under torchrun), watches their exit codes, and ends the rest
when one dies. The UI keeps its one endpoint: rank 0's events come up its stdout and are passed on
(re-stamped into the engine's sequence), the UI's commands go down rank 0's stdin, and rank 0
shares them with every rank at the next step boundary (``engine.train.dist.sync_step``).

A rank that dies (killed, crashed) ends the run as ``RunFailed`` naming the rank and how it ended;
the others fail at their next collective (at once on gloo, within ``collective_timeout`` on NCCL)
or are ended after it. That event also goes into the run's ``events.jsonl``, after rank 0's last
line, so ``sidestep runs`` and ``attach`` say the same."""

from __future__ import annotations

import json
import os
import queue as queue_mod
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from engine import config as cfgmod
from engine import layout, protocol

KILL_GRACE_S = 10.0  # after SIGTERM, how long a rank may take to exit before SIGKILL


def processes_wanted(config_json: str) -> int:
    """How many processes a StartRun asks for (1 when the config does not parse: the ordinary path
    reports that). Several machines are refused: each machine runs its share under torchrun/srun."""
    try:
        config = cfgmod.from_json(config_json)
    except (cfgmod.ConfigError, ValueError):
        return 1
    from engine.train.dist import processes

    devices, nodes = processes(config)
    if nodes > 1:
        raise ValueError(
            f"num_nodes {nodes}: a run over several machines is started on each of them with torchrun or srun "
            "(sidestep train ... --num-nodes N); the TUI starts the processes of this machine only"
        )
    return devices


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Rank0Stream:
    """Reads rank 0's stdout: passes events on, keeps the final one until the group has ended."""

    def __init__(self, stream: Any, bus: Any) -> None:
        self.bus = bus
        self.final: Any = None
        self.phase: protocol.Phase = "loading_model"
        self.step = 0
        self.seq = 0
        self.run_dir = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), name="sidestep-rank0-events", daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            try:
                event = protocol.loads(line)
            except (protocol.ProtocolError, ValueError):
                continue  # not an event (a stray print before the redirect): the engine log has it
            self.seq = max(self.seq, event.seq)
            if isinstance(event, protocol.PhaseChanged):
                self.phase = event.phase
            elif isinstance(event, protocol.StepMetrics):
                self.step = event.step
            elif isinstance(event, protocol.RunStarted):
                self.run_dir = event.run_dir
            if isinstance(event, (protocol.RunFinished, protocol.RunFailed)):
                self.final = event
            else:
                self.bus.emit(event)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def run_group(config_json: str, bus: Any, inbox: Any, *, run_id: str, monitor: Any, world: int) -> Any:
    """Start ``world`` ranks on this machine, serve the UI's commands until they have all exited,
    and emit the run's final event (rank 0's, or a ``RunFailed`` naming a rank that died)."""
    config = cfgmod.from_json(config_json)
    bus.run_id = run_id
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    port = _free_port()
    ranks: list[subprocess.Popen[str]] = []
    for rank in range(world):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
            NODE_RANK="0",
            PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.process.rank"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if rank == 0 else None,  # the others' output joins the engine log
            env=env,
            text=True,
            encoding="utf-8",
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"config_json": config_json, "run_id": run_id}) + "\n")
        proc.stdin.flush()
        if rank:
            proc.stdin.close()  # rank 0 alone takes commands
        ranks.append(proc)
    assert ranks[0].stdout is not None and ranks[0].stdin is not None
    bus.log(
        "info",
        f"{world} training processes on this machine ({'fsdp' if config.strategy == 'fsdp' else 'ddp'}): "
        + ", ".join(f"rank {r} pid {p.pid}" for r, p in enumerate(ranks)),
    )
    stream = _Rank0Stream(ranks[0].stdout, bus)
    monitor.phase = lambda: stream.phase
    monitor.last_step = lambda: stream.step
    commands = ranks[0].stdin

    def send(cmd: Any) -> None:
        try:
            commands.write(protocol.dumps(cmd) + "\n")
            commands.flush()
        except (OSError, ValueError):
            pass  # rank 0 is gone: the exit watch below reports it

    failure: tuple[int, str] | None = None
    end_by = term_sent = 0.0
    stop_sent = False
    while True:
        cmd = _next_command(inbox)
        if isinstance(cmd, (protocol.StartRun, protocol.StartPreprocess)):
            bus.log("warning", f"ignored {type(cmd).__name__}: a run is already active")
        elif isinstance(cmd, protocol.Shutdown):
            inbox.state.shutdown_requested = inbox.state.stop_requested = True
        elif cmd is not None:
            send(cmd)
        if inbox.state.stop_requested and not stop_sent:  # Shutdown, or SIGTERM to the engine
            send(protocol.StopRun())
            stop_sent = True
        codes = [proc.poll() for proc in ranks]
        if failure is None:
            died = [(code > 0, rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if died:
                _, rank, code = min(died)  # a rank killed by a signal before one that failed at its collective
                failure = (rank, exit_reason(code))
                end_by = time.monotonic() + config.collective_timeout + 5.0
        if all(code is not None for code in codes):
            break
        now = time.monotonic()
        if failure is not None and now > end_by:
            if not term_sent:
                term_sent = now
                for proc in ranks:
                    if proc.poll() is None:
                        proc.terminate()
            elif now - term_sent > KILL_GRACE_S:
                for proc in ranks:
                    if proc.poll() is None:
                        proc.kill()
    stream.join(timeout=10)
    try:
        commands.close()
    except OSError:
        pass
    final = stream.final
    if failure is not None and not (failure[0] == 0 and isinstance(final, protocol.RunFailed)):
        rank, reason = failure
        detail = f"; rank 0 said: {final.message}" if isinstance(final, protocol.RunFailed) else ""
        final = protocol.RunFailed(
            error_type="RankDied",
            message=f"rank {rank} of {world} died ({reason}) at step {stream.step}{detail}",
            hint="each rank's output is in the engine log; resume from the last checkpoint with the same --devices",
            step=stream.step,
        )
        _record(stream, run_id, final, config)
    elif final is None:
        final = protocol.RunFailed(
            error_type="RankDied", message="rank 0 ended without a result; see the engine log", step=stream.step
        )
        _record(stream, run_id, final, config)
    return bus.emit(final)


def _next_command(inbox: Any) -> Any:
    if inbox.cmd_q is None:
        time.sleep(0.2)
        return None
    try:
        return inbox.cmd_q.get(timeout=0.2)
    except queue_mod.Empty:
        return None
    except (EOFError, OSError):
        inbox._lose_parent()  # the UI is gone: the ranks train on, headless
        time.sleep(0.2)
        return None


def _record(stream: _Rank0Stream, run_id: str, event: Any, config: cfgmod.TrainConfig) -> None:
    """Append the group's failure to the run's events.jsonl after rank 0's last line (rank 0 is gone)."""
    run_dir = stream.run_dir or os.path.abspath(os.path.expanduser(config.output_dir))
    path = layout.events_path(run_dir)
    if not os.path.isfile(path):
        return  # the run never got its folder: nothing to add to
    from engine.channel.events import JsonlSink

    sink = JsonlSink(path)
    try:
        sink.emit(protocol.stamp(event, run_id=run_id, seq=stream.seq + 1))
    finally:
        sink.close()
