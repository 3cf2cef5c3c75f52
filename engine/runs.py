"""Run history: find run directories and summarise them from ``config.json`` + ``events.jsonl``
(stdlib only; used by ``sidestep runs``, the Runs screen and ``--resume-from auto``).

A run directory (DESIGN.md §4) holds ``config.json`` (the resolved config), ``events.jsonl`` (every
event) and, while its engine lives, ``engine.json`` (pid, host, start time). Every figure read from the
events (steps, epoch, best and final loss, how the last segment ended ...) is ``engine.summary``'s fold;
this module adds what only the folder knows. Status rules:

- the last segment's ``RunFinished`` / ``RunFailed`` decides: completed / stopped / failed
  (``engine.summary``: a resume opens a new segment);
- otherwise ``running`` when engine.json names a live process on this host (a pid reused by a
  younger process does not count), ``unknown`` when it names another host, ``died`` when the engine
  is gone (or left events but no final event), and ``not_started`` when there are no events at all.

Big event logs are not parsed whole: lines are classified by their ``"type"`` prefix and only the
few kinds a summary needs are decoded (plus the last of the high-rate ones).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import psutil

from engine import layout, protocol
from engine.layout import BEST_DIR, CHECKPOINT_META_FILE, CONFIG_FILE, ENGINE_FILE, EVENTS_FILE, FINAL_DIR
from engine.samples_index import chosen_info
from engine.summary import EMPTY, Segment, Summary, fold, fold_all, segments
from engine.tailer import read_run_events

STATUSES = ("running", "completed", "stopped", "failed", "died", "unknown", "not_started")
BIG_EVENTS_BYTES = 2 * 2**20  # above this, the fast line classifier replaces read_events
PID_START_SLACK_S = 5.0

_TYPE_RE = re.compile(rb'^\s*\{\s*"type"\s*:\s*"([A-Za-z]+)"')
# Decoded every time they appear; the rest are only needed as "the last one" or not at all.
_ALL_KINDS = frozenset({"RunStarted", "EpochCompleted", "CheckpointSaved", "RunFinished", "RunFailed", "RunPaused", "RunResumed"})
_LAST_KINDS = frozenset({"StepMetrics", "Heartbeat", "PhaseChanged"})


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    name: str
    path: str
    status: str  # one of STATUSES
    adapter_type: str = ""
    model_variant: str = ""
    steps: int = 0
    total_steps: int = 0
    epoch: int = 0
    best_loss: float | None = None
    final_loss: float | None = None
    started: float | None = None  # epoch seconds
    last_update: float | None = None  # ts of the last event
    duration_s: float | None = None
    adapter_path: str | None = None
    error: str | None = None  # last RunFailed message (with its hint), else the last error log line
    phase: str = ""  # last Heartbeat / PhaseChanged phase
    pid: int | None = None  # the engine's pid while running
    problem: str | None = None  # why part of the run could not be read
    segments: int = 0  # engine runs (a resume adds one)
    best_step: int | None = None  # where best_loss (the adapter in best/) was saved
    best_epoch: int | None = None
    comfyui_path: str | None = None  # the single-file ComfyUI export inside adapter_path, when there is one
    history: tuple[Segment, ...] = ()  # every segment, oldest first; the last one ends as ``status`` says
    redone_steps: int = 0  # steps trained again after resuming from an earlier checkpoint
    chosen_path: str | None = None  # run_dir/chosen/: the adapter picked by ear (``engine.samples_index``)
    chosen_step: int | None = None  # the step it was saved at
    chosen_source: str = ""  # the folder it was copied from, relative to the run
    # steps, epoch (1-based), best_loss, final_loss, error: as ``engine.summary.Summary`` defines them

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "stopped", "failed")


# --------------------------------------------------------------------------- events digest


@dataclass(frozen=True, slots=True)
class _Digest:
    """The fold of a run's events.jsonl (``engine.summary``) and the first line that could not be read."""

    summary: Summary = EMPTY
    problem: str | None = None


def _digest_small(path: str) -> _Digest:
    events, tailer = read_run_events(path)
    return _Digest(fold_all(events), tailer.problem)


def _digest_fast(path: str) -> _Digest:
    """Classify lines by their type prefix; decode only what a summary needs. Undecodable lines are
    skipped and the first is reported in ``problem`` (a torn last line is not a problem), as
    ``engine.tailer`` does."""
    problem: str | None = None
    picked: list[tuple[int, bytes]] = []
    last_of: dict[str, tuple[int, bytes]] = {}
    tail: list[tuple[int, bytes]] = []  # the last two non-empty lines (the very last may be torn)
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    torn = len(lines)  # the number of the last line when it has no newline (split leaves it last)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        tail = [*tail[-1:], (number, raw)]
        match = _TYPE_RE.match(raw)
        kind = match.group(1).decode() if match else ""
        if kind == "RunStarted":  # the last step and time of the segment this one follows
            picked.extend(last_of.values())
            last_of.clear()
        if kind in _ALL_KINDS or (kind == "LogRecord" and b'"error"' in raw):
            picked.append((number, raw))
        elif kind in _LAST_KINDS:
            last_of[kind] = (number, raw)
        elif not match and problem is None and number != torn:
            problem = f"{path}:{number}: not an event (no message type)"
    picked.extend(last_of.values())
    for number, raw in reversed(tail):  # the last decodable line gives the last timestamp
        try:
            protocol.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if (number, raw) not in picked:
            picked.append((number, raw))
        break
    summary = EMPTY
    for number, raw in sorted(picked, key=lambda item: item[0]):
        try:
            event = protocol.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # ProtocolError and JSONDecodeError are ValueErrors
            if number != torn and problem is None:
                problem = f"{path}:{number}: not an event ({str(exc).splitlines()[0][:120]})"
            continue
        summary = fold(summary, event)
    return _Digest(summary, problem)


_CACHE: OrderedDict[str, tuple[tuple[int, int], _Digest]] = OrderedDict()
_CACHE_SIZE = 256


def _digest(path: str) -> _Digest | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(path)
    if cached and cached[0] == key:
        _CACHE.move_to_end(path)
        return cached[1]
    try:
        digest = _digest_small(path) if stat.st_size <= BIG_EVENTS_BYTES else _digest_fast(path)
    except OSError as exc:
        digest = _Digest(EMPTY, f"{path}: unreadable ({exc.strerror or exc})")
    _CACHE[path] = (key, digest)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return digest


# --------------------------------------------------------------------------- engine liveness


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start of ``pid`` (psutil: every platform), else None."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _pid_alive(pid: int) -> bool:
    """``pid`` names a running process (a zombie, dead but not yet reaped, does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True  # it exists, but we may not look at it (another user's process)


def engine_state(run_dir: str) -> tuple[str, dict[str, Any] | None]:
    """("absent" | "alive" | "dead" | "remote", engine.json contents)."""
    try:
        with open(os.path.join(run_dir, ENGINE_FILE), encoding="utf-8") as fh:
            info = json.load(fh)
    except FileNotFoundError:
        return "absent", None
    except (OSError, ValueError):
        return "dead", None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or isinstance(info.get("pid"), bool):
        return "dead", info if isinstance(info, dict) else None
    host = info.get("host")
    if isinstance(host, str) and host and host != socket.gethostname():
        return "remote", info
    pid = info["pid"]
    if not _pid_alive(pid):
        return "dead", info
    started = info.get("started")
    proc_start = _process_start_time(pid)
    if isinstance(started, (int, float)) and proc_start is not None and proc_start > started + PID_START_SLACK_S:
        return "dead", info  # the pid now belongs to a younger process
    return "alive", info


# --------------------------------------------------------------------------- runs


def _read_config(run_dir: str) -> tuple[dict[str, Any] | None, str | None]:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path}: unreadable ({exc})"
    return (data, None) if isinstance(data, dict) else (None, f"{path}: not a JSON object")


def is_run_dir(path: str) -> bool:
    """A folder with events.jsonl, or with a config.json that is a training config (not a model's
    config.json, not a checkpoint folder's copy)."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, CHECKPOINT_META_FILE)):
        return False
    if os.path.isfile(os.path.join(path, EVENTS_FILE)):
        return True
    config, _ = _read_config(path)
    return config is not None and "output_dir" in config and "dataset_dir" in config


def _adapter_path(run_dir: str, s: Summary) -> str | None:
    """The summary's adapter folder (inside ``run_dir`` even if the run folder was moved or copied since the
    engine named it), else the best adapter on disk: final/, best/, then the newest checkpoint."""
    recorded = s.adapter_path
    if recorded and s.run_dir and recorded.startswith(s.run_dir.rstrip(os.sep) + os.sep):
        recorded = os.path.join(run_dir, os.path.relpath(recorded, s.run_dir))  # this folder's copy
    if recorded and os.path.isdir(recorded):
        return recorded
    for candidate in (os.path.join(run_dir, FINAL_DIR), os.path.join(run_dir, BEST_DIR)):
        if os.path.isdir(candidate):
            return candidate
    return layout.newest_checkpoint(run_dir)


def comfyui_file(adapter_dir: str | None) -> str | None:
    """The ``<run>_comfyui.safetensors`` inside an adapter folder (what the engine and ``sidestep export`` write)."""
    if not adapter_dir:
        return None
    try:
        names = sorted(n for n in os.listdir(adapter_dir) if n.endswith("_comfyui.safetensors") and not n.startswith("."))
    except OSError:
        return None
    return os.path.join(adapter_dir, names[0]) if names else None


def summarize_run(run_dir: str) -> RunSummary:
    """The run's ``engine.summary.Summary`` (its figures are defined there, once) plus what only the
    folder knows: the engine's liveness, the config's name and the adapter folders on disk."""
    run_dir = os.path.abspath(run_dir)
    folder = os.path.basename(run_dir)
    config, config_problem = _read_config(run_dir)
    config = config or {}
    events_path = os.path.join(run_dir, EVENTS_FILE)
    digest = (_digest(events_path) if os.path.isfile(events_path) else None) or _Digest()
    s = digest.summary
    engine, info = engine_state(run_dir)

    if s.finished:
        status = s.status
    elif engine == "alive":
        status = "running"
    elif engine == "remote":
        status = "unknown"
    elif engine == "dead" or s.events:
        status = "died"
    else:
        status = "not_started"

    started = s.started
    if started is None and info and isinstance(info.get("started"), (int, float)):
        started = float(info["started"])
    end = time.time() if status == "running" else s.last_ts
    duration = max(0.0, end - started) if started is not None and end is not None else None

    adapter_path = _adapter_path(run_dir, s)
    history = segments(s, last_how=status if not s.finished else None)
    run_name = config.get("run_name")
    name = run_name if isinstance(run_name, str) and run_name else folder
    chosen = chosen_info(run_dir)
    chosen_step = (chosen or {}).get("step")
    return RunSummary(
        run_id=s.run_id or (info or {}).get("run_id") or folder,
        name=name,
        path=run_dir,
        status=status,
        adapter_type=str(config.get("adapter_type") or s.adapter_type or ""),
        model_variant=str(config.get("model_variant") or s.model_variant or ""),
        steps=s.step,
        total_steps=s.total_steps,
        epoch=s.epoch,
        best_loss=s.best_loss,
        final_loss=s.final_loss,
        started=started,
        last_update=s.last_ts,
        duration_s=duration,
        adapter_path=adapter_path,
        comfyui_path=comfyui_file(adapter_path),
        error=s.error or None,
        phase=s.phase,
        pid=info.get("pid") if status == "running" and info else None,
        problem=digest.problem or config_problem,
        segments=s.segments,
        best_step=s.best_step,
        best_epoch=s.best_epoch,
        history=history,
        redone_steps=sum(seg.redone for seg in history),
        chosen_path=layout.chosen_dir(run_dir) if chosen is not None else None,
        chosen_step=chosen_step if isinstance(chosen_step, int) and not isinstance(chosen_step, bool) else None,
        chosen_source=str((chosen or {}).get("source") or ""),
    )


def scan_runs(output_root: str) -> list[RunSummary]:
    """Summaries of the run at ``output_root`` itself, or of the runs one level below it; newest
    first."""
    root = os.path.abspath(os.path.expanduser(output_root))
    if is_run_dir(root):
        return [summarize_run(root)]
    try:
        children = sorted(e.path for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []
    runs = [summarize_run(child) for child in children if is_run_dir(child)]
    return sorted(runs, key=lambda r: (r.started or 0.0, r.path), reverse=True)
