"""``sidestep queue [list|add|remove|move|clear|pause|run]``: the run queue from the command line.

``add`` resolves and checks the config now, through the same path as ``sidestep train`` (defaults <
``--preset`` < ``--config`` < flags; ``engine.cli.main.config_from_args``), so a bad entry is refused at
once, in one line, and a stored entry runs the same from any folder (paths made absolute). ``run``
starts the one worker (``engine.process.queue_worker``), detached unless ``--foreground``. Every error
is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from engine import config as cfgmod
from engine import queue as queue_mod


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def resolve_entry_config(ns: argparse.Namespace) -> cfgmod.TrainConfig:
    """The config ``queue add`` stores: validated like ``sidestep train``'s, with absolute paths."""
    from engine.cli.main import config_from_args

    if ns.source:
        if ns.config_file or ns.preset:
            raise ValueError(f"give CONFIG ({ns.source}) or --config/--preset, not both")
        if os.path.isfile(ns.source) or ns.source.endswith(".json"):
            ns.config_file = ns.source
        else:
            ns.preset = ns.source
    config = config_from_args(ns)
    changes = {}
    for f in cfgmod.FIELDS:
        value = getattr(config, f.name)
        if f.metadata.get("kind") == "path" and isinstance(value, str) and value and value != "auto":
            changes[f.name] = os.path.abspath(os.path.expanduser(value))
    return cfgmod.parse({**cfgmod.to_dict(config), **changes})


def _refuse_used_output(config: cfgmod.TrainConfig) -> None:
    """The run-folder rules of ``sidestep train``, checked at add time (the worker checks them again)."""
    from engine import layout, runs

    out = config.output_dir
    if not runs.is_run_dir(out) or config.resume_from:
        return
    summary = runs.summarize_run(out)
    status = summary.status
    if status == "stopped" and not summary.steps and not summary.adapter_path:
        status = "not_started"  # stopped during its --auto-estimate: it trained nothing (as ``sidestep train`` sees it)
    if status == "running":
        raise ValueError(f"--output-dir {out} is in use by a running run; choose another folder")
    if (status in ("completed", "stopped") or os.path.isdir(layout.final_dir(out))) and not config.overwrite:
        raise ValueError(
            f"--output-dir {out} holds a finished run; choose another folder, continue it with --resume-from auto, or pass --overwrite"
        )


def cmd_add(q: queue_mod.RunQueue, ns: argparse.Namespace) -> int:
    try:
        config = resolve_entry_config(ns)
    except cfgmod.ConfigError as exc:
        return _error("not queued: " + "; ".join(str(e) for e in exc.errors))
    except ValueError as exc:  # a preset that does not load, CONFIG and --config together
        return _error(f"not queued: {exc}")
    try:
        _refuse_used_output(config)
    except ValueError as exc:
        return _error(f"not queued: {exc}")
    entry = q.add(cfgmod.to_dict(config), name=ns.queue_name or config.run_name or "")
    waiting = sum(1 for e in q.entries() if e.state == "queued")
    worker = q.worker_pid()
    tail = f"the worker (pid {worker}) will take it" if worker else "start the queue with `sidestep queue run`"
    print(f"queued entry {entry.id} ({entry.name}) -> {entry.output_dir}; {waiting} waiting; {tail}")
    return 0


def _when(ts: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_list(q: queue_mod.RunQueue) -> int:
    entries = q.entries()
    worker = q.worker_pid()
    if not entries:
        print(f"the queue is empty ({q.path}); add a run with `sidestep queue add CONFIG` or the flags of `sidestep train`")
    else:
        print(f"{'#':>3} {'id':>4}  {'state':8} {'started':11}  {'name':20}  run folder")
        for pos, e in enumerate(entries, 1):
            state = e.state if not (e.state == "running" and worker is None) else "running?"
            print(f"{pos:>3} {e.id:>4}  {state:8} {_when(e.started):11}  {e.name[:20]:20}  {e.output_dir}")
            if e.error:
                print(f"{'':10}! {e.error}")
    paused = q.paused()
    if worker is not None:
        pause = "; paused: it ends after the current run" if paused else ""
        print(f"worker: pid {worker} working (log {q.worker_log_path}){pause}")
    elif any(e.state == "queued" for e in entries):
        print(f"worker: not running{' (paused)' if paused else ''}; `sidestep queue run` starts it")
    return 0


def cmd_run(q: queue_mod.RunQueue, ns: argparse.Namespace) -> int:
    from engine.process import queue_worker

    if not any(e.state == "queued" for e in q.entries()):
        return _error("nothing is queued; add a run with `sidestep queue add`")
    busy = q.worker_pid()
    if busy is not None and q.paused():
        q.set_paused(False)
        print(f"pause lifted: the worker (pid {busy}) goes on after its current run")
        return 0
    if busy is not None:
        raise queue_mod.WorkerBusy(busy)
    q.set_paused(False)
    if ns.foreground:
        from engine.cli.plain import PlainPrinter

        lock = q.acquire_worker_lock()
        try:
            return queue_worker.work_queue(
                q,
                stop_on_failure=ns.stop_on_failure,
                make_sink=PlainPrinter,
                say=lambda line: print(f"queue: {line}", flush=True),
            )
        finally:
            lock.release()
    pid = queue_worker.start_detached(q, stop_on_failure=ns.stop_on_failure)
    print(f"queue worker started (pid {pid}); it runs detached, log {q.worker_log_path}; follow with `sidestep queue list`")
    return 0


def cmd_queue(ns: argparse.Namespace) -> int:
    q = queue_mod.RunQueue()
    action = ns.action or "list"
    try:
        if action == "list":
            return cmd_list(q)
        if action == "add":
            return cmd_add(q, ns)
        if action == "remove":
            entry = q.remove(ns.id)
            print(f"removed entry {entry.id} ({entry.name}, {entry.state})")
        elif action == "move":
            entries = q.move(ns.id, ns.position)
            pos = next(i for i, e in enumerate(entries, 1) if e.id == ns.id)
            print(f"entry {ns.id} is now #{pos} of {len(entries)}")
        elif action == "clear":
            gone = q.clear(finished_only=ns.finished)
            print(f"removed {len(gone)} entr{'y' if len(gone) == 1 else 'ies'}")
        elif action == "pause":
            q.set_paused(True)
            worker = q.worker_pid()
            tail = f"the worker (pid {worker}) ends after its current run" if worker else "no worker is running"
            print(f"queue paused: {tail}; `sidestep queue run` goes on")
        elif action == "run":
            return cmd_run(q, ns)
    except queue_mod.QueueError as exc:
        return _error(str(exc))
    return 0
