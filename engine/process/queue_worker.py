"""The queue worker: one process works through ``engine.queue`` back to back, unattended.

``start_detached`` spawns it the way the TUI spawns its engine (``multiprocessing`` spawn, non-daemonic,
``os.setsid()`` first, stdio to a log file, then dropped from the parent's children so the parent exits at
once): it survives the terminal, tmux and a dropped SSH session like any run. ``work_queue`` is the loop
(also run in the foreground by ``sidestep queue run --foreground``, e.g. inside a SLURM job).

Each entry is trained by ``engine.train.trainer.run_training``, the same call the engine process makes,
so its folder is an ordinary run folder (config.json, events.jsonl, engine.json with this worker's pid:
``sidestep attach RUN --plain --stop`` stops it). How it ended goes back into the queue file: done,
stopped, or failed with the one-line reason. A failed run does not stop the queue unless asked
(``stop_on_failure``); SIGTERM/SIGINT stop the current run (it saves) and end the worker, leaving the
rest queued. Only one worker at a time: it holds the queue's worker lock for its life.

The module's top level imports the standard library only (the CLI imports it to start the child).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.process
import os
import sys
import time
from typing import Any

from engine.queue import QueueError, RunQueue, WorkerBusy

log = logging.getLogger("sidestep.queue")
START_TIMEOUT_S = 60.0


def outcome(final: Any) -> tuple[str, str]:
    """(queue state, one-line error) from a run's final event."""
    from engine import protocol

    if isinstance(final, protocol.RunFinished):
        return ("done" if final.status == "completed" else "stopped"), ""
    if isinstance(final, protocol.RunFailed):
        return "failed", final.message
    return "failed", f"the run ended without a final event ({type(final).__name__})"


def work_queue(q: RunQueue, *, stop_on_failure: bool, make_sink: Any = None, say: Any = None) -> int:
    """Run queued entries until none is left, a stop is asked (signal) or, with ``stop_on_failure``,
    one fails. The caller holds the worker lock. ``make_sink()``: an event sink for each run (the
    foreground's printer); ``say(line)``: where the worker's own lines go (default its log). Returns 0
    when every run it took ended done."""
    from engine.channel.control import CommandInbox
    from engine.channel.events import EventBus
    from engine.process.monitor import ResourceMonitor
    from engine.train.trainer import run_training

    say = say or log.info
    inbox = CommandInbox(None)
    inbox.install_signal_handlers()
    for entry in q.recover(os.getpid()):
        say(f"entry {entry.id}: {entry.error}")
    bad = 0
    while not inbox.state.shutdown_requested:
        entry = q.claim_next(os.getpid())
        if entry is None:
            say("the queue is empty; the worker ends")
            break
        say(f"entry {entry.id}: {entry.name} starts in {entry.output_dir}")
        bus = EventBus([make_sink()] if make_sink is not None else [])
        monitor = ResourceMonitor(bus.emit, phase=lambda: "loading_model", last_step=lambda: 0)
        monitor.start()
        state, error = "failed", "the queue worker was interrupted"
        try:
            run_id = f"q{entry.id}-{time.strftime('%Y%m%d-%H%M%S')}"
            final = run_training(json.dumps(entry.config), bus, inbox, run_id=run_id, monitor=monitor)
            state, error = outcome(final)
        finally:
            monitor.stop()
            bus.close()
            q.finish(entry.id, state, error)
        say(f"entry {entry.id}: {state}" + (f": {error}" if error else ""))
        if state != "done":
            bad += 1
        if state == "failed" and stop_on_failure:
            say("stopping the queue: a run failed (--stop-on-failure); the rest stay queued")
            break
        inbox.reset_for_next_job()
    if inbox.state.shutdown_requested:
        say("stop asked: the worker ends; the rest stay queued")
    return 1 if bad else 0


def worker_main(conn: Any, boot: dict[str, Any]) -> None:
    """The detached worker's process main (the spawn target)."""
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    q = RunQueue(boot["folder"])
    try:
        lock = q.acquire_worker_lock()
    except QueueError as exc:
        conn.send(("busy", str(exc)))
        conn.close()
        return
    conn.send(("ok", os.getpid()))
    conn.close()
    from engine.process.entry import _redirect_stdio

    _redirect_stdio(q.worker_log_path)
    code = 1
    try:
        code = work_queue(q, stop_on_failure=bool(boot.get("stop_on_failure")))
    except BaseException:
        log.exception("the queue worker failed")
    finally:
        lock.release()
    sys.exit(code)


def start_detached(q: RunQueue, *, stop_on_failure: bool) -> int:
    """Spawn the worker, wait until it holds the worker lock, let it go; returns its pid.
    Raises ``WorkerBusy`` when another worker holds the lock, ``QueueError`` when it did not start."""
    pid = q.worker_pid()
    if pid is not None:
        raise WorkerBusy(pid)
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    boot = {"folder": q.folder, "stop_on_failure": stop_on_failure}
    process = ctx.Process(target=worker_main, args=(writer, boot), name="sidestep-queue", daemon=False)
    process.start()
    writer.close()
    try:
        message = reader.recv() if reader.poll(START_TIMEOUT_S) else ("late", None)
    except EOFError:
        message = ("died", None)
    finally:
        reader.close()
    kind, detail = message
    if kind == "ok":
        # Detach (as the TUI's EngineClient.detach): multiprocessing would join it at our exit.
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        return int(detail)
    process.join(timeout=5.0)
    if kind == "busy":
        raise WorkerBusy(q.worker_pid())
    raise QueueError(f"the queue worker did not start ({kind}); see {q.worker_log_path}")
