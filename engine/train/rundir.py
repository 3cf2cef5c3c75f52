"""The run directory's guard rails: never overwrite a finished run, never start two engines on one
folder, keep ``engine.json`` true while a run lives, and send the engine's logs to ``sidestep.log``."""

from __future__ import annotations

import logging
import os
import socket
import time

from engine import fsutil, layout, protocol


class RunDirError(ValueError):
    """The output folder cannot be used as asked; the message says why and what to pass instead."""


def live_engine(run_dir: str) -> dict | None:
    """The engine.json of a run whose engine still runs (here, or on another host sharing the
    folder), else None. ``engine.runs.engine_state`` also spots a pid reused by another process."""
    from engine.runs import engine_state

    state, info = engine_state(run_dir)
    return info if state in ("alive", "remote") else None


def _finished(run_dir: str) -> bool:
    if os.path.isdir(layout.final_dir(run_dir)):
        return True
    path = layout.events_path(run_dir)
    if not os.path.isfile(path):
        return False
    try:
        events = protocol.read_events(path)
    except (OSError, protocol.ProtocolError):
        return True  # unreadable history: treat as something worth keeping
    return any(isinstance(e, protocol.RunFinished) for e in events)


def prepare(output_dir: str, *, resuming: bool, overwrite: bool) -> str:
    """Create or reuse ``output_dir`` under the rules above; returns its absolute path."""
    run_dir = os.path.abspath(os.path.expanduser(output_dir))
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"--output-dir {run_dir} is a file; choose a folder")
    info = live_engine(run_dir)
    if info is not None:
        raise RunDirError(
            f"--output-dir {run_dir} is in use by a running engine (pid {info['pid']}); attach with `sidestep attach {run_dir}` or choose another folder"
        )
    if os.path.isdir(run_dir) and not resuming and _finished(run_dir):
        if not overwrite:
            raise RunDirError(
                f"--output-dir {run_dir} holds a finished run; choose another folder, continue it with --resume-from auto, or pass --overwrite"
            )
        # --overwrite: keep the old history beside the new one rather than destroying it.
        old = layout.events_path(run_dir)
        if os.path.exists(old):
            os.replace(old, layout.archived_events_path(run_dir, time.time()))
    os.makedirs(run_dir, exist_ok=True)
    probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
    try:
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise RunDirError(f"--output-dir {run_dir} is not writable ({exc.strerror}); choose another folder") from None
    return run_dir


def write_engine_file(run_dir: str, run_id: str) -> None:
    fsutil.write_json(
        layout.engine_path(run_dir),
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "protocol_version": protocol.PROTOCOL_VERSION,
            "run_id": run_id,
        },
    )


def remove_engine_file(run_dir: str) -> None:
    try:
        os.remove(layout.engine_path(run_dir))
    except FileNotFoundError:
        pass


def attach_log_file(run_dir: str) -> logging.Handler:
    """Route the engine's loggers (and warnings) to run_dir/sidestep.log for the length of a run."""
    handler = logging.FileHandler(layout.log_path(run_dir), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
