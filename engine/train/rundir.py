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
    # A run stopped before it trained (during its --auto-estimate) holds nothing to protect.
    return any(isinstance(e, protocol.RunFinished) and (e.steps or e.adapter_path) for e in events)


class RunClaim:
    """This process's hold on a run folder: an exclusive lock on ``layout.LOCK_FILE`` taken before
    anything else is written there and kept for the run's life (the OS drops it when the process dies,
    however it dies), plus ``engine.json``. ``release`` removes engine.json, then lets the lock go."""

    def __init__(self, run_dir: str, fd: int) -> None:
        self.run_dir = run_dir
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        remove_engine_file(self.run_dir)
        os.close(self._fd)  # closing the only descriptor drops the lock
        self._fd = None


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on ``fd``; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte instead
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _holder(run_dir: str) -> str:
    """The pid written into the lock file by the process that holds it (it writes it right after
    taking the lock, so wait a moment for it), else the one in engine.json, else "another process"."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            with open(layout.lock_path(run_dir), encoding="utf-8") as fh:
                text = fh.read().split()
        except OSError:
            text = []
        if text and text[0].isdigit():
            return f"pid {text[0]}"
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    from engine.runs import engine_state

    _state, info = engine_state(run_dir)
    return f"pid {info['pid']}" if info and isinstance(info.get("pid"), int) else "another process"


def _in_use(run_dir: str, who: str) -> RunDirError:
    return RunDirError(
        f"--output-dir {run_dir} is in use by {who}; attach with `sidestep attach {run_dir}` or choose another folder"
    )


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _make_dir(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"--output-dir {run_dir}: a part of the path is a file, not a folder; choose another folder") from None
    except PermissionError:
        parent = _nearest_existing(os.path.dirname(run_dir))
        raise RunDirError(
            f"--output-dir {run_dir} cannot be created: {parent} is not writable (permission denied); choose a folder you can write to"
        ) from None
    except OSError as exc:
        raise RunDirError(f"--output-dir {run_dir} cannot be created ({exc.strerror}); choose another folder") from None


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def claim(
    output_dir: str, *, resuming: bool, overwrite: bool, run_id: str, keep_out: tuple[tuple[str, str], ...] = ()
) -> RunClaim:
    """Claim ``output_dir`` for one run, atomically: exactly one of two runs started together on one
    folder gets it; the other gets "in use by pid N" and has written nothing. Then, under the lock,
    the rules above (never overwrite a finished run unless asked) and ``engine.json``. ``keep_out``:
    (flag, folder) pairs the run folder must not be or lie inside (the dataset, the checkpoint root)."""
    run_dir = os.path.abspath(os.path.expanduser(output_dir))
    for flag, folder in keep_out:
        if folder and _inside(run_dir, os.path.abspath(os.path.expanduser(folder))):
            raise RunDirError(f"--output-dir {run_dir} is inside {flag} {folder}; choose an output folder outside it")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"--output-dir {run_dir} is a file, not a folder; choose a folder")
    _make_dir(run_dir)
    try:
        fd = os.open(layout.lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"--output-dir {run_dir} is not writable ({exc.strerror}); choose another folder") from None
    if not _try_lock(fd):
        os.close(fd)
        raise _in_use(run_dir, _holder(run_dir))
    held = RunClaim(run_dir, fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        info = live_engine(run_dir)  # another host sharing the folder (locks may not cross hosts)
        if info is not None and not (info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()):
            raise _in_use(
                run_dir, f"pid {info['pid']}" + (f" on {info['host']}" if info.get("host") != socket.gethostname() else "")
            )
        if not resuming and _finished(run_dir):
            if not overwrite:
                raise RunDirError(
                    f"--output-dir {run_dir} holds a finished run; choose another folder, continue it with --resume-from auto, or pass --overwrite"
                )
            # --overwrite: keep the old history beside the new one rather than destroying it.
            old = layout.events_path(run_dir)
            if os.path.exists(old):
                os.replace(old, layout.archived_events_path(run_dir, time.time()))
        try:
            write_engine_file(run_dir, run_id)
        except OSError as exc:
            raise RunDirError(f"--output-dir {run_dir} is not writable ({exc.strerror}); choose another folder") from None
    except BaseException:
        os.close(fd)
        held._fd = None
        raise
    return held


def clean_stale_temps(run_dir: str) -> list[str]:
    """Clear what saves killed half way left in the run folder and its checkpoints/ (``fsutil``:
    only temps whose writer died; a live writer's are kept). Returns what was removed or restored."""
    done = fsutil.clean_stale_temps(run_dir)
    return done + fsutil.clean_stale_temps(layout.checkpoints_dir(run_dir))


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
