"""What the monitor shows, as one immutable value, and the pure reducer that folds events into it.

``apply(state, event) -> RunState`` handles the whole ``engine.protocol.Event`` union with ``match`` and
``assert_never`` (a new event type is a type error until handled here). No Textual, no I/O, no clock:
the same reducer rebuilds a live run, a replayed ``events.jsonl`` and a test's scripted sequence.

Histories are bounded so a week-long run costs the same memory as a short one:
- the loss/LR/grad-norm history halves its resolution when full (adjacent points merge: mean weighted
  by steps covered, min of mins, max of maxes), so the whole curve stays, at coarser steps;
- resource samples and log lines keep the newest N.
Readings the engine marks ``-1`` ("not available") stay ``None`` here; the UI shows "n/a", never 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, assert_never

from engine.protocol import (
    AnalysisDone,
    AnalysisProgress,
    CheckpointSaved,
    EngineReady,
    EngineStopping,
    EpochCompleted,
    EstimateDone,
    EstimateProgress,
    Event,
    Heartbeat,
    LogRecord,
    Phase,
    PhaseChanged,
    PreprocessProgress,
    ResourceSample,
    RunFailed,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
    SampleRendered,
    StepMetrics,
    TimestepHistogram,
)
from engine.summary import EMPTY as EMPTY_SUMMARY
from engine.summary import Summary, fold

UiPhase = Literal["starting_engine", "preparing_demo", "failed", "engine_died"]
"""Phases no engine sends, that only the UI shows: before an engine exists (spawning it, writing the
demo), and after a job ended badly (``RunFailed``, the process died)."""
ShownPhase = Phase | UiPhase

MAX_METRIC_POINTS = 2048
MAX_RESOURCE_POINTS = 300  # ~10 minutes at one sample per 2 s
MAX_LOG_LINES = 500
MAX_CHECKPOINTS = 200


class MetricPoint(NamedTuple):
    """One ``StepMetrics`` summary (or several merged): covers ``steps`` optimizer steps ending at ``step``."""

    step: int
    loss: float
    loss_min: float
    loss_max: float
    steps: int
    lr: float
    grad_norm: float
    samples_per_s: float
    ts: float


class ResourcePoint(NamedTuple):
    """A ``ResourceSample`` with "not available" as ``None``."""

    ts: float
    allocated_mb: float | None
    reserved_mb: float | None
    peak_allocated_mb: float | None
    gpu_used_mb: float | None
    gpu_total_mb: float | None
    gpu_util_pct: float | None
    gpu_temp_c: float | None
    gpu_power_w: float | None
    process_rss_mb: float | None


class CheckpointInfo(NamedTuple):
    step: int
    epoch: int
    path: str
    kind: str
    loss: float
    ts: float


class LogLine(NamedTuple):
    ts: float
    level: str
    message: str


@dataclass(frozen=True, slots=True)
class Histogram:
    step: int
    bin_edges: tuple[float, ...]
    recent: tuple[int, ...]
    cumulative: tuple[int, ...]
    expected: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Failure:
    error_type: str
    message: str
    traceback: str
    hint: str
    oom: bool
    step: int


class FileProgress(NamedTuple):
    """The latest word on one file of a preprocessing job."""

    stage: str  # "scan" | "pass1" | "pass2"
    status: str  # "ok" | "skipped" | "failed"
    message: str
    audio_seconds: float


@dataclass(frozen=True, slots=True)
class PreprocessStatus:
    """A preprocessing job: counters of the current stage, every file's latest status, and what speed
    and ETA need. ``ok``/``skipped``/``failed`` count the current stage; ``failures`` counts files whose
    latest status is failed, whatever the stage (a file that fails in pass 1 never reaches pass 2)."""

    stage: str
    index: int
    total: int
    file: str
    ok: int
    skipped: int
    failed: int
    last_message: str
    elapsed_s: float
    files: dict[str, FileProgress] = field(default_factory=dict)
    audio_total: float = 0.0  # seconds of audio the job encodes (the scan's figure, crops applied)
    audio_done: float = 0.0  # seconds of audio encoded in pass 1 so far
    stage_started_s: float = 0.0  # ``elapsed_s`` when the current stage began (model loading included)
    failures: int = 0

    @property
    def audio_per_s(self) -> float | None:
        """Seconds of audio encoded per second of pass 1 (model loading included), once known."""
        spent = self.elapsed_s - self.stage_started_s
        return self.audio_done / spent if self.stage == "pass1" and self.audio_done > 0 and spent > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Time left in the current pass, from its pace so far (None until one file is done)."""
        if self.stage not in ("pass1", "pass2") or self.index >= self.total:
            return None
        spent, done = self.elapsed_s - self.stage_started_s, self.ok + self.failed
        if self.stage == "pass1" and self.audio_done > 0 and self.audio_total > 0:
            left = max(0.0, self.audio_total - self.audio_done - self._audio_skipped())
            return left * spent / self.audio_done
        return (self.total - self.index) * spent / done if done and spent > 0 else None

    def _audio_skipped(self) -> float:
        return sum(f.audio_seconds for f in self.files.values() if f.stage == "pass1" and f.status == "skipped")


# eq=False: identity equality. The App assigns a new RunState per batch; comparing two states field by
# field (thousands of points) on every assignment would cost more than the update itself.
@dataclass(frozen=True, slots=True)
class AnalysisStatus:
    """A PP++ job or a sensitivity estimate: measured batches of all, and once it ended its status and
    the file it wrote (an estimate's whole ranking too, best first, and how many of it the file holds)."""

    done: int = 0
    total: int = 0
    elapsed_s: float = 0.0
    status: str = ""  # "completed" | "stopped" once AnalysisDone / EstimateDone came
    path: str = ""
    summary: str = ""
    ranking: tuple[tuple[str, float], ...] = ()
    top_k: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class RunState:
    # engine
    engine_pid: int | None = None
    protocol_version: int | None = None
    cuda_available: bool | None = None
    device_names: tuple[str, ...] = ()
    engine_stopping: bool = False
    # run identity
    run_id: str = ""
    run_dir: str = ""
    adapter_type: str = ""
    model_variant: str = ""
    device: str = ""
    precision: str = ""
    attention_backend: str = ""
    trainable_params: int = 0
    num_samples: int = 0
    steps_per_epoch: int = 0
    timestep_mu: float | None = None
    timestep_sigma: float | None = None
    timestep_mode: str = ""
    started_ts: float | None = None
    # progress
    phase: ShownPhase = "idle"
    phase_detail: str = ""
    eta_s: float | None = None
    samples_per_s: float | None = None
    data_wait_frac: float | None = None  # share of the wall time the engine waited for batches
    slowest_rank: tuple[int, int, float, float] | None = None  # several processes: (rank, ranks, step s, memory MB)
    skipped_steps: int = 0
    # metrics
    history: tuple[MetricPoint, ...] = ()
    loss: float | None = None
    loss_ema: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    cruise: tuple[float, float] | None = None  # cruise control's (LR factor, loss EMA) while it is on
    epoch_losses: tuple[tuple[int, float], ...] = ()
    # resources, histogram, checkpoints, log
    resources: tuple[ResourcePoint, ...] = ()
    histogram: Histogram | None = None
    checkpoints: tuple[CheckpointInfo, ...] = ()
    samples_rendered: int = 0  # SampleRendered events so far: the Monitor's Samples panel rescans the run's samples/ on change
    log: tuple[LogLine, ...] = ()
    preprocess: PreprocessStatus | None = None
    analysis: AnalysisStatus | None = None  # a PP++ (``sidestep analyze``) job
    # outcome
    paused: bool = False
    wall_s: float | None = None
    failure: Failure | None = None
    # liveness / integrity
    engine_lost: str = ""  # set by ``engine_lost()`` when the process died mid-run (the reason)
    last_heartbeat_ts: float | None = None
    last_event_ts: float | None = None
    last_seq: int = -1
    seq_gaps: int = 0
    events_seen: int = 0
    # step, epoch, best and final loss, how the run ended: ``engine.summary``'s fold of the same events,
    # the one definition the Runs screen, ``sidestep runs`` and ``attach --plain`` use too.
    summary: Summary = EMPTY_SUMMARY

    # ------------------------------------------------------------------ derived
    @property
    def step(self) -> int:
        return self.summary.step

    @property
    def total_steps(self) -> int:
        return self.summary.total_steps

    @property
    def epoch(self) -> int:
        """1-based."""
        return self.summary.epoch

    @property
    def best_loss(self) -> float | None:
        """The loss of the adapter in best/ (``engine.summary``), None until one is written."""
        return self.summary.best_loss

    @property
    def final_loss(self) -> float | None:
        return self.summary.final_loss

    @property
    def finished_status(self) -> str | None:
        """ "completed" | "stopped" when the run's last segment (or the PP++ job) finished, else None."""
        if self.analysis is not None and self.analysis.status:
            return self.analysis.status
        return self.summary.status if self.summary.status in ("completed", "stopped") else None

    @property
    def adapter_path(self) -> str:
        return self.summary.adapter_path

    @property
    def active(self) -> bool:
        """A run is in progress (started, not finished or failed)."""
        return bool(self.run_id) and self.finished_status is None and self.failure is None and not self.engine_lost

    @property
    def progress(self) -> float | None:
        if self.total_steps <= 0:
            return None
        return min(1.0, self.step / self.total_steps)

    @property
    def resource(self) -> ResourcePoint | None:
        return self.resources[-1] if self.resources else None

    @property
    def best_checkpoint(self) -> CheckpointInfo | None:
        best = [c for c in self.checkpoints if c.kind == "best"]
        return best[-1] if best else None


EMA_ALPHA = 0.1
_NAMES = tuple(f.name for f in dataclasses.fields(RunState))
_NAME_SET = frozenset(_NAMES)
_DEFAULTS = {name: getattr(RunState(), name) for name in _NAMES}
_ENGINE_FIELDS = ("engine_pid", "protocol_version", "cuda_available", "device_names", "last_seq", "seq_gaps", "events_seen")


def _na(value: float) -> float | None:
    """``-1`` (or any negative / non-finite value) means "not available"."""
    return None if value is None or not math.isfinite(value) or value < 0 else value


def _merge(a: MetricPoint, b: MetricPoint) -> MetricPoint:
    n = a.steps + b.steps
    wa, wb = (a.steps / n, b.steps / n) if n > 0 else (0.5, 0.5)
    return MetricPoint(
        step=b.step,
        loss=a.loss * wa + b.loss * wb,
        loss_min=min(a.loss_min, b.loss_min),
        loss_max=max(a.loss_max, b.loss_max),
        steps=n,
        lr=b.lr,
        grad_norm=max(a.grad_norm, b.grad_norm),
        samples_per_s=b.samples_per_s,
        ts=b.ts,
    )


def compact(history: tuple[MetricPoint, ...]) -> tuple[MetricPoint, ...]:
    """Halve the number of points by merging neighbours (the last point of an odd count stays)."""
    merged = [_merge(history[i], history[i + 1]) for i in range(0, len(history) - 1, 2)]
    if len(history) % 2:
        merged.append(history[-1])
    return tuple(merged)


def _append_bounded(items: tuple, item: object, cap: int) -> tuple:
    items = (*items, item)
    return items[-cap:] if len(items) > cap else items


def _ema(previous: float | None, value: float) -> float:
    if previous is None or not math.isfinite(previous):
        return value
    return previous + EMA_ALPHA * (value - previous)


def _on_run_started(state: RunState, e: RunStarted) -> dict[str, Any]:
    if state.run_dir and state.run_dir == e.run_dir:
        # A resume of the run already on screen: keep the curve (up to where it restarts) and the
        # checkpoints it has written.
        history = tuple(p for p in state.history if p.step <= e.start_step)
        checkpoints = state.checkpoints
    else:
        history, checkpoints = (), ()
    return {
        **_DEFAULTS,  # a new run starts from a clean slate, except what describes the engine
        **{name: getattr(state, name) for name in _ENGINE_FIELDS},
        "run_id": e.run_id,
        "run_dir": e.run_dir,
        "adapter_type": e.adapter_type,
        "model_variant": e.model_variant,
        "device": e.device,
        "precision": e.precision,
        "attention_backend": e.attention_backend,
        "trainable_params": e.trainable_params,
        "num_samples": e.num_samples,
        "steps_per_epoch": e.steps_per_epoch,
        "timestep_mu": e.timestep_mu,
        "timestep_sigma": e.timestep_sigma,
        "timestep_mode": e.timestep_mode,
        "started_ts": e.ts,
        "phase": "training",
        "history": history,
        "loss": history[-1].loss if history else None,
        "loss_ema": history[-1].loss if history else None,
        "checkpoints": checkpoints,
        "log": state.log,
    }


def _on_step(state: RunState, e: StepMetrics) -> dict[str, Any]:
    point = MetricPoint(e.step, e.loss, e.loss_min, e.loss_max, e.steps_covered, e.lr, e.grad_norm, e.samples_per_s, e.ts)
    history = (*state.history, point)
    if len(history) > MAX_METRIC_POINTS:
        history = compact(history)
    finite = math.isfinite(e.loss)
    return {
        "phase": "paused" if state.paused else "training",
        "eta_s": e.eta_s if e.eta_s >= 0 and math.isfinite(e.eta_s) else None,
        "samples_per_s": e.samples_per_s if e.samples_per_s >= 0 else None,
        "data_wait_frac": e.data_wait_frac if 0 <= e.data_wait_frac <= 1 else state.data_wait_frac,
        "slowest_rank": _slowest_rank(e) or state.slowest_rank,
        "skipped_steps": state.skipped_steps + e.skipped_steps,
        "history": history,
        "loss": e.loss,
        "loss_ema": _ema(state.loss_ema, e.loss) if finite else state.loss_ema,
        "lr": e.lr,
        "grad_norm": e.grad_norm if math.isfinite(e.grad_norm) and e.grad_norm >= 0 else state.grad_norm,
        "cruise": (e.cruise_scale, e.cruise_ema) if e.cruise_scale >= 0 else None,
    }


def _slowest_rank(e: StepMetrics) -> tuple[int, int, float, float] | None:
    """The rank that took longest over its last step, with its memory (several processes only)."""
    times = e.rank_step_time_s
    if len(times) < 2 or len(e.rank_memory_mb) != len(times):
        return None
    rank = max(range(len(times)), key=times.__getitem__)
    return rank, len(times), times[rank], e.rank_memory_mb[rank]


def _on_resource(state: RunState, e: ResourceSample) -> dict[str, Any]:
    point = ResourcePoint(
        e.ts,
        _na(e.allocated_mb),
        _na(e.reserved_mb),
        _na(e.peak_allocated_mb),
        _na(e.gpu_used_mb),
        _na(e.gpu_total_mb),
        _na(e.gpu_util_pct),
        _na(e.gpu_temp_c),
        _na(e.gpu_power_w),
        _na(e.process_rss_mb),
    )
    return {"resources": _append_bounded(state.resources, point, MAX_RESOURCE_POINTS)}


def _on_preprocess(state: RunState, e: PreprocessProgress) -> dict[str, Any]:
    prev = state.preprocess
    same_stage = prev is not None and prev.stage == e.stage
    ok, skipped, failed = (prev.ok, prev.skipped, prev.failed) if prev is not None and same_stage else (0, 0, 0)
    ok += e.status == "ok"
    skipped += e.status == "skipped"
    failed += e.status == "failed"
    files = dict(prev.files) if prev is not None else {}  # copied: states are values (a few hundred files)
    if e.file:
        files[e.file] = FileProgress(e.stage, e.status, e.message, e.audio_seconds)
    audio_total = prev.audio_total if prev is not None else 0.0
    audio_done = prev.audio_done if prev is not None else 0.0
    if e.stage == "scan" and not e.file:
        audio_total = e.audio_seconds
    elif e.stage == "pass1" and e.status == "ok":
        audio_done += e.audio_seconds
    # A stage starts when its first event arrives; its first file's time includes loading the models.
    # (The scan is the start of pass 1: pass 1 loads its models right after it.)
    started = prev.stage_started_s if prev is not None and same_stage else (prev.elapsed_s if prev is not None else 0.0)
    message = e.message or (prev.last_message if prev else "")
    status = PreprocessStatus(
        e.stage, e.index, e.total, e.file, ok, skipped, failed, message, e.elapsed_s,
        files, audio_total, audio_done, started, sum(f.status == "failed" for f in files.values()),
    )  # fmt: skip
    return {"preprocess": status, "phase": "preprocessing" if e.stage != "done" else "finished"}


def _changes(state: RunState, event: Event) -> dict[str, Any]:
    """The fields ``event`` changes (the envelope bookkeeping is added by ``apply``)."""
    match event:
        case EngineReady():
            starting = state.phase == "starting_engine"
            return {
                "engine_pid": event.pid,
                "protocol_version": event.protocol_version,
                "cuda_available": event.cuda_available,
                "device_names": event.device_names,
                "engine_stopping": False,
                "phase": "idle" if starting else state.phase,
                "phase_detail": f"engine ready (pid {event.pid})" if starting else state.phase_detail,
            }
        case Heartbeat():
            phase = event.phase if state.active and event.phase and event.phase != "idle" else state.phase
            return {"last_heartbeat_ts": event.ts, "phase": phase}
        case RunStarted():
            return _on_run_started(state, event)
        case PhaseChanged():
            # Loading comes before RunStarted: adopt the run id so the run counts as active already.
            run_id = state.run_id or (event.run_id if state.finished_status is None and state.failure is None else "")
            return {"phase": event.phase, "phase_detail": event.detail, "run_id": run_id}
        case StepMetrics():
            return _on_step(state, event)
        case EpochCompleted():
            return {"epoch_losses": _append_bounded(state.epoch_losses, (event.epoch, event.mean_loss), MAX_METRIC_POINTS)}
        case ResourceSample():
            return _on_resource(state, event)
        case TimestepHistogram():
            return {"histogram": Histogram(event.step, event.bin_edges, event.recent, event.cumulative, event.expected)}
        case CheckpointSaved():
            info = CheckpointInfo(event.step, event.epoch, event.path, event.kind, event.loss, event.ts)
            return {"checkpoints": _append_bounded(state.checkpoints, info, MAX_CHECKPOINTS)}
        case LogRecord():
            return {"log": _append_bounded(state.log, LogLine(event.ts, event.level, event.message), MAX_LOG_LINES)}
        case SampleRendered():
            line = LogLine(event.ts, "info", f"sample written: {event.path}")
            return {"log": _append_bounded(state.log, line, MAX_LOG_LINES), "samples_rendered": state.samples_rendered + 1}
        case RunPaused():
            return {"paused": True, "phase": "paused"}
        case RunResumed():
            return {"paused": False, "phase": "training"}
        case PreprocessProgress():
            return _on_preprocess(state, event)
        case AnalysisProgress():
            detail = f"PP++ run {event.run}/{event.runs}, {event.group} pass {event.pass_index}/{event.passes}: {event.done}/{event.total}"
            analysis = AnalysisStatus(done=event.done, total=event.total, elapsed_s=event.elapsed_s)
            return {
                "phase": "preparing_data",
                "phase_detail": detail,
                "analysis": analysis,
                "run_id": state.run_id or event.run_id,
            }
        case AnalysisDone():
            prev = state.analysis or AnalysisStatus()
            analysis = AnalysisStatus(prev.done, prev.total, event.wall_s, event.status, event.path, event.summary)
            return {"phase": "finished", "paused": False, "wall_s": event.wall_s, "eta_s": None, "analysis": analysis}
        case EstimateProgress():
            analysis = AnalysisStatus(done=event.done, total=event.total, elapsed_s=event.elapsed_s)
            detail = f"estimate: batch {event.done}/{event.total}"
            return {
                "phase": "preparing_data",
                "phase_detail": detail,
                "analysis": analysis,
                "run_id": state.run_id or event.run_id,
            }
        case EstimateDone():
            prev = state.analysis or AnalysisStatus()
            ranking = tuple(zip(event.modules, event.scores, strict=False))
            analysis = AnalysisStatus(prev.done, prev.total, event.wall_s, event.status, event.path, "", ranking, event.top_k)
            return {"phase": "finished", "paused": False, "wall_s": event.wall_s, "eta_s": None, "analysis": analysis}
        case RunFinished():
            return {"phase": "finished", "paused": False, "wall_s": event.wall_s, "eta_s": None}
        case RunFailed():
            failure = Failure(event.error_type, event.message, event.traceback, event.hint, event.oom, event.step)
            return {"phase": "failed", "paused": False, "failure": failure, "eta_s": None}
        case EngineStopping():
            return {"engine_stopping": True}
        case _:
            assert_never(event)


def apply(state: RunState, event: Event) -> RunState:
    """The next state after ``event``. Pure: same inputs, same output."""
    changes = _changes(state, event)
    changes["summary"] = fold(state.summary, event)
    seq = event.seq
    gaps = state.seq_gaps
    # seq is per engine process: a smaller number means a new engine (resume, replay of a later run),
    # not a drop.
    if state.last_seq >= 0 and seq > state.last_seq + 1:
        gaps += seq - state.last_seq - 1
    changes["last_seq"] = seq
    changes["seq_gaps"] = gaps
    changes["last_event_ts"] = event.ts or state.last_event_ts
    changes["events_seen"] = state.events_seen + 1
    return _evolve(state, changes)


def _evolve(state: RunState, changes: dict[str, Any]) -> RunState:
    """``dataclasses.replace`` without its per-call overhead (this runs for every event): copy the
    slots, then set the changed ones. Only this module builds states this way. A key that is not a
    field is a bug in the reducer: it raises instead of being dropped."""
    if not _NAME_SET.issuperset(changes):
        raise KeyError(f"RunState has no field {', '.join(sorted(set(changes) - _NAME_SET))}")
    new = object.__new__(RunState)
    setter = object.__setattr__
    for name in _NAMES:
        setter(new, name, changes[name] if name in changes else getattr(state, name))
    return new


def engine_lost(state: RunState, reason: str) -> RunState:
    """The engine process died (no event says so: the client's sentinel does). A run in progress
    ends there; its last checkpoint is what survives."""
    if not state.active:
        return state
    return _evolve(state, {"engine_lost": reason, "phase": "engine_died", "phase_detail": reason, "paused": False, "eta_s": None})


def apply_all(state: RunState, events: Iterable[Event]) -> RunState:
    for event in events:
        state = apply(state, event)
    return state


def smooth(values: list[float] | tuple[float, ...], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (1 = the raw values); non-finite values skipped."""
    if window <= 1:
        return list(values)
    out: list[float] = []
    total = 0.0
    count = 0
    buf: deque[float] = deque()
    for v in values:
        buf.append(v)
        if math.isfinite(v):
            total += v
            count += 1
        if len(buf) > window:
            old = buf.popleft()
            if math.isfinite(old):
                total -= old
                count -= 1
        out.append(total / count if count else math.nan)
    return out


def expected_density_mass(hist: Histogram) -> list[float]:
    """The expected probability mass per bin, normalised to sum 1 (the engine sends mass already;
    this guards against rounding and empty inputs)."""
    total = sum(v for v in hist.expected if math.isfinite(v) and v > 0)
    return [v / total if total > 0 and math.isfinite(v) and v > 0 else 0.0 for v in hist.expected]
