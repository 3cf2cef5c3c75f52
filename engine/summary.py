"""The summary of a run, folded from its event stream: the one definition of every figure the Monitor, the
Runs screen, ``sidestep runs`` and ``sidestep attach --plain`` show (stdlib only; imports only
``engine.protocol``).

``fold(summary, event) -> Summary`` is pure: no I/O, no clock. The same fold runs over a live stream
(``sidestep_tui.state`` keeps a ``Summary`` in its ``RunState``), over a whole ``events.jsonl``
(``engine.runs``) and line by line while following one (``engine.cli.plain``). Whatever is not an event
(the engine's liveness, folders on disk) is not in here: ``engine.runs`` adds it.

Definitions
- **segment**: one engine's go at the run, opened by a ``RunStarted``. A resume appends a new segment to
  the same ``events.jsonl``. A ``RunStarted`` that resumes (``start_step > 0``, or a ``resume_from`` in
  its config) the run already folded continues this summary; any other (another run folder, or a fresh
  start in the same folder) starts a new one. ``segments`` counts the segments of this run.
- **status**: how the *last* segment ended: ``"completed"`` / ``"stopped"`` (``RunFinished``) or
  ``"failed"`` (``RunFailed``, also a resume that failed before its ``RunStarted``); ``""`` while it is
  open (running, or its engine died: only ``engine.runs`` can tell which, from ``engine.json``).
- **step / total_steps**: the last optimizer step the last segment reached (``RunStarted.start_step``,
  then ``StepMetrics``, ``CheckpointSaved``, pauses; ``RunFinished.steps`` is the engine's own count).
- **epoch**: 1-based, the epoch ``step`` belongs to (``StepMetrics.epoch``; ``RunStarted.start_epoch``,
  the epoch a segment starts in, until its first step). ``EpochCompleted`` / ``RunFinished.epochs``
  count finished epochs and only ever raise it. Every epoch an event carries is 1-based
  (``engine.train.trainer`` converts its 0-based counter at the event boundary).
- **final_loss**: the training loss where the run ended: ``RunFinished.final_loss`` (the loss of the last
  optimizer step, the one stored with ``final/`` or the stop checkpoint) once the last segment
  finished; until then the latest ``StepMetrics.loss`` (the mean over the steps it covers). A failed
  segment keeps the latest reading. Non-finite readings are ``None``.
- **best_loss**: the loss of the adapter in ``best/``, i.e. the ``loss`` of the most recent
  ``CheckpointSaved(kind="best")`` of the run, across segments (each write replaces the folder). The
  trainer writes ``best/`` at the end of an epoch when the mean of the last ``BEST_WINDOW`` (5) epoch
  mean losses improves on its best by more than ``BEST_MIN_DELTA`` (from ``save_best_after`` on), so
  this is that smoothed epoch mean, neither the lowest step loss nor the lowest epoch mean.
  ``best_step``, ``best_epoch`` and ``best_path`` say where. ``None`` while no ``best/`` was written
  (``save_best`` off, or before ``save_best_after``). ``RunFinished.best_loss`` (the trainer's tracker,
  set even when nothing was saved) is not used.
- **adapter_path**: the newest adapter folder the run wrote: ``RunFinished.adapter_path`` once the last
  segment finished (``final/``, or the stop checkpoint), else the path of the latest ``CheckpointSaved``.
- **failure**: the ``RunFailed`` message (with its hint) that ended the last segment; ``last_error``: the
  last error log line of the last segment.
- **history**: the run's earlier segments, closed (``Segment``); ``segments(summary)`` adds the last one.
  A segment ends ``completed`` / ``stopped`` / ``failed`` by its end event, ``died`` when the next
  ``RunStarted`` came without one, ``""`` while the last one is open. A ``RunFailed`` after the last
  segment had ended (a resume that failed before its ``RunStarted``) is a segment of its own.
- **redone steps**: steps a segment trained again because it resumed from a checkpoint older than the
  furthest step an earlier segment reached: ``min(end_step, furthest before) - start_step`` when positive.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any

from engine import protocol

TERMINAL = ("completed", "stopped", "failed")


@dataclass(frozen=True, slots=True)
class Segment:
    """One engine's go at a run (see ``segments``)."""

    number: int  # 1-based, in the order they ran
    run_id: str = ""
    started: float | None = None  # ts of its RunStarted (or of the RunFailed of a start that failed)
    ended: float | None = None  # ts of its last event
    start_step: int = 0  # the step it resumed from (0: a fresh start)
    end_step: int = 0  # the last optimizer step it reached
    how: str = ""  # "completed" | "stopped" | "failed" | "died" | "" (the last one, still open)
    message: str = ""  # the failure, for a failed one
    redone: int = 0  # steps it trained again that an earlier segment had already reached


@dataclass(frozen=True, slots=True)
class Summary:
    """Every summary figure of one run (see the module docstring for what each one means)."""

    run_id: str = ""  # the engine's id of the last segment
    run_dir: str = ""  # as the engine named it in RunStarted
    adapter_type: str = ""
    model_variant: str = ""
    segments: int = 0
    status: str = ""  # "" (open) | "completed" | "stopped" | "failed"
    step: int = 0
    total_steps: int = 0
    epoch: int = 0  # 1-based; 0 before the first RunStarted
    final_loss: float | None = None
    best_loss: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    best_path: str = ""
    adapter_path: str = ""
    failure: str = ""  # "message (hint)" of the RunFailed that ended the last segment
    last_error: str = ""  # the last error log line of the last segment
    phase: str = ""  # the engine's last reported phase
    started: float | None = None  # ts of the run's first RunStarted
    last_ts: float | None = None  # ts of the latest event
    events: int = 0  # events folded
    segment_start_step: int = 0  # where the last segment started
    segment_started: float | None = None  # ts of the last segment's RunStarted
    history: tuple[Segment, ...] = ()  # the earlier segments, closed (``segments`` adds the last)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def error(self) -> str:
        """What went wrong: the failure, else the last error line (empty when nothing did)."""
        return self.failure or self.last_error


_FIELDS = tuple(f.name for f in fields(Summary))
EMPTY = Summary()


def _with(s: Summary, changes: dict[str, Any]) -> Summary:
    """``dataclasses.replace`` without its per-call overhead (this runs for every event)."""
    new = object.__new__(Summary)
    for name in _FIELDS:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(s, name))
    return new


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def loss_text(value: float | None) -> str:
    """How every view writes a loss: 4 decimals, ``n/a`` when there is none."""
    value = finite(value)
    return "n/a" if value is None else f"{value:.4f}"


def is_resume(e: protocol.RunStarted) -> bool:
    """The segment continues a run from a checkpoint (``start_step > 0``, or a ``resume_from`` in its config)."""
    if e.start_step > 0:
        return True
    try:
        config = json.loads(e.config_json)
    except ValueError:
        return False
    return isinstance(config, dict) and config.get("resume_from") not in (None, "")


def _resumes(s: Summary, e: protocol.RunStarted) -> bool:
    """A RunStarted continues the run already folded (a resume of the same run folder)."""
    if s.segments == 0 or (s.run_dir and e.run_dir and s.run_dir != e.run_dir):
        return False
    return is_resume(e)


def _closed(s: Summary, how: str | None = None) -> tuple[Segment, ...]:
    """``s.history`` with the last segment appended as it stands (``died`` when it has no end event)."""
    last = Segment(
        number=len(s.history) + 1,
        run_id=s.run_id,
        started=s.segment_started,
        ended=s.last_ts,
        start_step=s.segment_start_step,
        end_step=s.step,
        how=how if how is not None else (s.status or "died"),
        message=s.failure if s.status == "failed" else "",
    )
    return (*s.history, last)


def segments(s: Summary, last_how: str | None = None) -> tuple[Segment, ...]:
    """Every segment of the run, oldest first, with its redone steps; the last one ends ``last_how``
    when given (``engine.runs`` knows whether an open one runs or died), else as the events say."""
    if s.segments == 0:
        return ()
    out: list[Segment] = []
    furthest = 0
    for seg in _closed(s, last_how if last_how is not None else s.status):
        redone = max(0, min(seg.end_step, furthest) - seg.start_step)
        out.append(replace(seg, redone=redone))
        furthest = max(furthest, seg.end_step)
    return tuple(out)


def segment_text(seg: Segment, total_steps: int = 0) -> str:
    """One line of a run's history: ``2  started 2026-11-30 14:05 from step 200, completed at step 400/400 (redid 100)``."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seg.started)) if seg.started else "?"
    start = f" from step {seg.start_step}" if seg.start_step else ""
    how = {"": "open", "died": "died (no end event)"}.get(seg.how, seg.how)
    at = f"{seg.end_step}/{total_steps}" if total_steps else str(seg.end_step)
    text = f"{seg.number}  started {when}{start}, {how} at step {at}"
    if seg.redone:
        text += f" (redid {seg.redone} step{'s' if seg.redone != 1 else ''})"
    if seg.message:
        text += f": {seg.message}"
    return text


def _on_run_started(s: Summary, e: protocol.RunStarted) -> dict[str, Any]:
    segment = {
        "run_id": e.run_id or s.run_id,
        "run_dir": e.run_dir or s.run_dir,
        "adapter_type": e.adapter_type,
        "model_variant": e.model_variant,
        "status": "",
        "step": e.start_step,
        "total_steps": e.total_steps,
        "epoch": e.start_epoch,
        "failure": "",
        "last_error": "",
        "phase": "",  # until a Heartbeat or PhaseChanged says
        "segment_start_step": e.start_step,
        "segment_started": e.ts if e.ts > 0 else None,
    }
    if _resumes(s, e):
        # The run goes on: its best/ and what it wrote stay; how the previous segment ended is history.
        return {**segment, "segments": s.segments + 1, "history": _closed(s)}
    return {
        **{name: getattr(EMPTY, name) for name in _FIELDS},
        **segment,
        "segments": 1,
        "started": e.ts if e.ts > 0 else None,
        "last_ts": s.last_ts,
    }


def _changes(s: Summary, event: Any) -> dict[str, Any]:
    match event:
        case protocol.RunStarted():
            return _on_run_started(s, event)
        case protocol.StepMetrics():
            loss = finite(event.loss)
            return {
                "step": max(s.step, event.step),
                "epoch": event.epoch if event.step >= s.step else s.epoch,
                "total_steps": event.total_steps or s.total_steps,
                "final_loss": s.final_loss if loss is None else loss,
            }
        case protocol.EpochCompleted():
            return {"epoch": max(s.epoch, event.epoch), "step": max(s.step, event.step)}
        case protocol.CheckpointSaved():
            changes: dict[str, Any] = {"step": max(s.step, event.step), "adapter_path": event.path}
            if event.kind == "best":
                changes.update(best_loss=finite(event.loss), best_step=event.step, best_epoch=event.epoch, best_path=event.path)
            return changes
        case protocol.RunFinished():
            final = finite(event.final_loss)
            return {
                "status": event.status if event.status in ("completed", "stopped") else "completed",
                "step": event.steps,
                "epoch": max(s.epoch, event.epochs),
                "final_loss": s.final_loss if final is None else final,
                "adapter_path": event.adapter_path or s.adapter_path,
                "phase": "finished",
            }
        case protocol.RunFailed() if s.finished and s.segments:
            # A go at the run that failed before its RunStarted (a resume refused late): a segment of its own.
            return {
                "history": _closed(s),  # ``segments`` still counts RunStarted (engines that started)
                "segment_start_step": s.step,
                "segment_started": event.ts if event.ts > 0 else None,
                "status": "failed",
                "step": max(s.step, event.step),
                "failure": event.message + (f" ({event.hint})" if event.hint else ""),
                "phase": "finished",
            }
        case protocol.RunFailed():
            return {
                "status": "failed",
                "step": max(s.step, event.step),
                "failure": event.message + (f" ({event.hint})" if event.hint else ""),
                "phase": "finished",
            }
        case protocol.LogRecord() if event.level == "error":
            return {"last_error": event.message}
        case protocol.Heartbeat() | protocol.PhaseChanged():
            return {"phase": event.phase}
        case protocol.RunPaused():
            return {"phase": "paused", "step": max(s.step, event.step)}
        case protocol.RunResumed():
            return {"phase": "training", "step": max(s.step, event.step)}
        case _:
            return {}


def fold(s: Summary, event: Any) -> Summary:
    """The summary after ``event``. Pure: same inputs, same output."""
    changes = _changes(s, event)
    changes["events"] = s.events + 1
    ts = event.ts
    if isinstance(ts, (int, float)) and ts > 0:
        changes["last_ts"] = ts if s.last_ts is None else max(s.last_ts, ts)
    if event.run_id and not (changes.get("run_id") or s.run_id):
        changes["run_id"] = event.run_id
    return _with(s, changes)


def fold_all(events: Any, s: Summary = EMPTY) -> Summary:
    for event in events:
        s = fold(s, event)
    return s
