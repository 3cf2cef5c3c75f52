"""The queue worker: one process works through ``engine.queue`` back to back, unattended.

``start_detached`` starts it detached like the TUI's engine (its own session, stdio on a log file, the
parent exits at once without waiting): it survives the terminal, tmux and a dropped SSH session like any
run. ``work_queue`` is the loop
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
import os
import subprocess
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
    from engine.analysis.sensitivity import run_training  # the trainer's, after any --auto-estimate
    from engine.channel.control import CommandInbox
    from engine.channel.events import EventBus
    from engine.process.monitor import ResourceMonitor

    say = say or log.info
    inbox = CommandInbox(None)
    inbox.install_signal_handlers()
    for lost in q.recover(os.getpid()):
        say(f"entry {lost.id}: {lost.error}")
    bad = 0
    while not inbox.state.shutdown_requested:
        entry = q.claim_next(os.getpid())
        if entry is None:
            say(
                "the queue is paused; the worker ends (`sidestep queue run` goes on)"
                if q.paused()
                else "the queue is empty; the worker ends"
            )
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


BUSY_EXIT = 3  # the worker's exit code when another worker holds the lock


def worker_main(folder: str, *, stop_on_failure: bool) -> int:
    """The detached worker's main (``python -m engine.process.queue_worker FOLDER``): take the worker
    lock or exit ``BUSY_EXIT``, send stdio to the worker log, work the queue."""
    q = RunQueue(folder)
    try:
        lock = q.acquire_worker_lock()
    except QueueError as exc:
        print(f"queue worker {os.getpid()}: {exc}", flush=True)
        return BUSY_EXIT
    from engine.process.entry import _redirect_stdio

    _redirect_stdio(q.worker_log_path)
    try:
        return work_queue(q, stop_on_failure=stop_on_failure)
    except BaseException:
        log.exception("the queue worker failed")
        return 1
    finally:
        lock.release()


def start_detached(q: RunQueue, *, stop_on_failure: bool) -> int:
    """Start the worker in its own session, wait until it holds the worker lock, let it go; returns its pid.
    Raises ``WorkerBusy`` when another worker holds the lock, ``QueueError`` when it did not start.

    A plain child in a new session (``start_new_session``: no SIGHUP from a closed terminal or SSH
    connection), its stdio on the worker log and /dev/null from the first instruction: unlike a
    ``multiprocessing`` spawn child (the TUI's engine), it needs no resource-tracker process, which
    would inherit and hold this terminal's stdout and stderr for the worker's whole life."""
    pid = q.worker_pid()
    if pid is not None:
        raise WorkerBusy(pid)
    os.makedirs(q.folder, exist_ok=True)
    args = [sys.executable, "-m", "engine.process.queue_worker", q.folder] + (["--stop-on-failure"] if stop_on_failure else [])
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    with open(q.worker_log_path, "ab") as out:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code == BUSY_EXIT:
            raise WorkerBusy(q.worker_pid())
        if code is not None:
            raise QueueError(f"the queue worker exited at start (code {code}); see {q.worker_log_path}")
        if q.worker_pid() == process.pid:
            process.returncode = 0  # let it go: no "still running" warning when this Popen is dropped
            return process.pid
        time.sleep(0.05)
    process.kill()
    raise QueueError(f"the queue worker did not start within {START_TIMEOUT_S:.0f} s; see {q.worker_log_path}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(worker_main(argv[0], stop_on_failure="--stop-on-failure" in argv[1:]))
