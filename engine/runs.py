"""Run history: find run directories and summarise them from ``config.json`` + ``events.jsonl``
(stdlib only; used by ``sidestep runs``, the Runs screen and ``--resume-from auto``).

A run directory (DESIGN.md §4) holds ``config.json`` (the resolved config), ``events.jsonl`` (every
event) and, while its engine lives, ``engine.json`` (pid, host, start time). Status rules:

- the last ``RunStarted`` opens the current segment (a resumed run appends a new one);
- a ``RunFinished`` / ``RunFailed`` after it decides: completed / stopped / failed;
- otherwise ``running`` when engine.json names a live process on this host (a pid reused by a
  younger process does not count), ``unknown`` when it names another host, ``died`` when the engine
  is gone (or left events but no final event), and ``not_started`` when there are no events at all.

Big event logs are not parsed whole: lines are classified by their ``"type"`` prefix and only the
few kinds a summary needs are decoded (plus the last of the high-rate ones).
"""

from __future__ import annotations

import json
import math
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

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "stopped", "failed")


# --------------------------------------------------------------------------- events digest


@dataclass(slots=True)
class _Digest:
    run_id: str = ""
    started: float | None = None
    last_ts: float | None = None
    adapter_type: str = ""
    model_variant: str = ""
    steps: int = 0
    total_steps: int = 0
    epoch: int = 0
    best_loss: float | None = None
    final_loss: float | None = None
    status: str | None = None  # terminal status of the current segment
    error: str | None = None
    phase: str = ""
    adapter_path: str = ""
    events: int = 0
    problem: str | None = None

    def feed(self, event: Any) -> None:
        self.events += 1
        if event.run_id and not self.run_id:
            self.run_id = event.run_id
        if isinstance(event.ts, (int, float)) and event.ts > 0:
            self.last_ts = event.ts if self.last_ts is None else max(self.last_ts, event.ts)
        match event:
            case protocol.RunStarted():
                self.run_id = event.run_id or self.run_id
                self.started = self.started if self.started is not None else event.ts
                self.adapter_type, self.model_variant = event.adapter_type, event.model_variant
                self.total_steps = event.total_steps
                self.steps = max(self.steps, event.start_step)
                self.status = self.error = None  # a new segment: whatever ended the previous one is history
                self.phase = ""  # until a Heartbeat or PhaseChanged says
            case protocol.StepMetrics():
                self.steps, self.epoch, self.total_steps = event.step, event.epoch, event.total_steps or self.total_steps
                self.final_loss = _finite(event.loss) if _finite(event.loss) is not None else self.final_loss
            case protocol.EpochCompleted():
                self.epoch = max(self.epoch, event.epoch)
                self.best_loss = _min(self.best_loss, event.mean_loss)
            case protocol.CheckpointSaved():
                self.steps = max(self.steps, event.step)
                if event.kind == "best":
                    self.best_loss = _min(self.best_loss, event.loss)
            case protocol.RunFinished():
                self.status = event.status if event.status in ("completed", "stopped") else "completed"
                self.steps = max(self.steps, event.steps)
                self.epoch = max(self.epoch, event.epochs)
                self.final_loss = _finite(event.final_loss) if _finite(event.final_loss) is not None else self.final_loss
                self.best_loss = _finite(event.best_loss) if _finite(event.best_loss) is not None else self.best_loss
                self.adapter_path = event.adapter_path
                self.phase = "finished"
            case protocol.RunFailed():
                self.status = "failed"
                self.error = event.message + (f" ({event.hint})" if event.hint else "")
                self.phase = "finished"
            case protocol.LogRecord() if event.level == "error":
                self.error = self.error if self.status == "failed" else event.message
            case protocol.Heartbeat() | protocol.PhaseChanged():
                self.phase = event.phase
            case protocol.RunPaused():
                self.phase = "paused"
            case protocol.RunResumed():
                self.phase = "training"
            case _:
                pass


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _min(current: float | None, value: Any) -> float | None:
    value = _finite(value)
    if value is None:
        return current
    return value if current is None else min(current, value)


def _digest_small(path: str) -> _Digest:
    digest = _Digest()
    try:
        events = protocol.read_events(path)
    except ValueError as exc:  # ProtocolError, or bytes that are not UTF-8
        digest = _digest_fast(path)
        digest.problem = digest.problem or (str(exc) if isinstance(exc, protocol.ProtocolError) else f"{path}: {exc}")
        return digest
    for event in events:
        digest.feed(event)
    return digest


def _digest_fast(path: str) -> _Digest:
    """Classify lines by their type prefix; decode only what a summary needs. Undecodable lines are
    skipped and the first is reported in ``problem`` (a torn last line is not a problem)."""
    digest = _Digest()
    picked: list[tuple[int, bytes]] = []
    last_of: dict[str, tuple[int, bytes]] = {}
    tail: list[tuple[int, bytes]] = []  # the last two non-empty lines (the very last may be torn)
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        tail = [*tail[-1:], (number, raw)]
        match = _TYPE_RE.match(raw)
        kind = match.group(1).decode() if match else ""
        if kind in _ALL_KINDS or (kind == "LogRecord" and b'"error"' in raw):
            picked.append((number, raw))
        elif kind in _LAST_KINDS:
            last_of[kind] = (number, raw)
        elif not match and digest.problem is None and any(r.strip() for r in lines[number:]):
            digest.problem = f"{path}:{number}: not an event line"
    picked.extend(last_of.values())
    for number, raw in reversed(tail):  # the last decodable line gives the last timestamp
        try:
            protocol.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if (number, raw) not in picked:
            picked.append((number, raw))
        break
    for number, raw in sorted(picked, key=lambda item: item[0]):
        try:
            event = protocol.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # ProtocolError and JSONDecodeError are ValueErrors
            is_last = all(not rest.strip() for rest in lines[number:])
            if not is_last and digest.problem is None:
                digest.problem = f"{path}:{number}: {exc}"
            continue
        digest.feed(event)
    return digest


_CACHE: "OrderedDict[str, tuple[tuple[int, int], _Digest]]" = OrderedDict()
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
        digest = _Digest(problem=f"{path}: unreadable ({exc.strerror or exc})")
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
    return bool(config) and "output_dir" in config and "dataset_dir" in config


def summarize_run(run_dir: str) -> RunSummary:
    run_dir = os.path.abspath(run_dir)
    folder = os.path.basename(run_dir)
    config, config_problem = _read_config(run_dir)
    config = config or {}
    events_path = os.path.join(run_dir, EVENTS_FILE)
    digest = _digest(events_path) if os.path.isfile(events_path) else None
    d = digest or _Digest()
    engine, info = engine_state(run_dir)

    if d.status is not None:
        status = d.status
    elif engine == "alive":
        status = "running"
    elif engine == "remote":
        status = "unknown"
    elif engine == "dead" or d.events:
        status = "died"
    else:
        status = "not_started"

    started = d.started
    if started is None and info and isinstance(info.get("started"), (int, float)):
        started = float(info["started"])
    end = time.time() if status == "running" else d.last_ts
    duration = max(0.0, end - started) if started is not None and end is not None else None

    adapter = None
    for candidate in (os.path.join(run_dir, FINAL_DIR), os.path.join(run_dir, BEST_DIR)):
        if os.path.isdir(candidate):
            adapter = candidate
            break
    adapter = adapter or layout.newest_checkpoint(run_dir) or (d.adapter_path if d.adapter_path and os.path.isdir(d.adapter_path) else None)

    name = config.get("run_name") if isinstance(config.get("run_name"), str) and config.get("run_name") else folder
    return RunSummary(
        run_id=d.run_id or (info or {}).get("run_id") or folder,
        name=name,
        path=run_dir,
        status=status,
        adapter_type=str(config.get("adapter_type") or d.adapter_type or ""),
        model_variant=str(config.get("model_variant") or d.model_variant or ""),
        steps=d.steps,
        total_steps=d.total_steps,
        epoch=d.epoch,
        best_loss=d.best_loss,
        final_loss=d.final_loss,
        started=started,
        last_update=d.last_ts,
        duration_s=duration,
        adapter_path=adapter,
        error=d.error,
        phase=d.phase,
        pid=info.get("pid") if status == "running" and info else None,
        problem=d.problem or config_problem,
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
