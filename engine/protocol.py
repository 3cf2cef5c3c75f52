"""The wire protocol between the UI process and the training engine (stdlib only).

    UI process                                            engine process
    EngineClient.send(cmd) --> cmd_q --> CommandInbox.poll() (at step boundaries) --> Trainer
    RunState reducer <-- Textual message <-- pump worker <-- evt_q <-- EventSink fan-out <-- Trainer
                                                                  \\-> run_dir/events.jsonl, TensorBoard

Rules
- One frozen dataclass per command and per event. Commands are imperative (``StartRun``), events are
  past tense (``RunStarted``); ``Heartbeat`` and ``LogRecord`` are the neutral exceptions.
- Fields are primitives or tuples of primitives only: no tensors, no Paths, no exceptions, no dicts.
  That keeps pickling across a spawned process cheap and lets the same objects round-trip through
  ``events.jsonl`` unchanged. A run config travels as JSON text (``config_json``) and is re-validated
  by the engine, so the schema in ``engine.config`` stays the single source of truth.
- Closed vocabularies (phase, run status, checkpoint kind, log level, preprocessing stage and file
  status) are ``Literal`` types declared here, once. ``Literal`` and not ``StrEnum``: the values on the
  wire stay exact ``str`` builtins, so a pickled event refers to no class, ``events.jsonl`` is unchanged
  and a JSON round trip gives back equal values with no conversion. (A ``StrEnum`` member is a ``str``
  subclass: ``stamp`` would have to turn it back into a plain ``str`` for the cheap-pickle rule, and
  the field would then hold a value its annotation does not name.) The type checker checks every
  constructor call and comparison against the vocabulary; at run time ``stamp`` (the engine's one
  way out) and ``from_dict`` (the one way in from text) refuse a value outside it.
- Every event carries the envelope ``run_id`` (empty while the engine is idle), ``seq`` (monotonic per
  engine process, so a gap reveals a drop) and ``ts`` (wall clock, for display only).
- ``EngineReady`` carries ``PROTOCOL_VERSION``; a client refuses to talk to a different version.
- Rates are bounded at the source: ``StepMetrics`` is time-gated and summarises every step it covers
  (mean / min / max loss, ``steps_covered``), ``ResourceSample`` and ``Heartbeat`` come every ~2 s
  from a daemon thread, ``TimestepHistogram`` every ``log_heavy_every`` optimizer steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

PROTOCOL_VERSION = 1

_T = TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, kw_only_default=True)
def _frozen(cls: type[_T]) -> type[_T]:
    """Every message is a frozen, slotted, keyword-only dataclass. ``dataclass_transform`` tells type
    checkers so (they then check every constructor call's keywords)."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


# --------------------------------------------------------------------------- vocabularies

Phase = Literal[
    "idle", "loading_model", "preparing_data", "training", "paused", "saving", "sampling", "preprocessing", "finished"
]
"""What an engine is doing (``Heartbeat.phase``, ``PhaseChanged.phase``)."""
RunStatus = Literal["completed", "stopped"]
"""How a job that did not fail ended (``RunFinished.status``)."""
CheckpointKind = Literal["periodic", "requested", "stop", "best", "final"]
LogLevel = Literal["debug", "info", "warning", "error"]
PreprocessStage = Literal["scan", "pass1", "pass2", "done"]
FileStatus = Literal["ok", "skipped", "failed"]
"""One file's outcome in a preprocessing stage; on the ``done`` event, the job's: ok, skipped (stopped
early), failed (nothing written)."""

PHASES: tuple[Phase, ...] = typing.get_args(Phase)
RUN_STATUSES: tuple[RunStatus, ...] = typing.get_args(RunStatus)


# --------------------------------------------------------------------------- commands


@_frozen
class StartRun:
    """Train an adapter. ``config_json`` is ``engine.config.to_json(RunConfig)``."""

    run_id: str
    config_json: str


@_frozen
class StartPreprocess:
    """Turn audio (a folder or a dataset.json) into training tensors. ``config_json`` is a
    ``PreprocessConfig`` as JSON."""

    run_id: str
    config_json: str


@_frozen
class StartAnalysis:
    """PP++ (``sidestep analyze``): measure the dataset's Fisher map and write ``fisher_map.json`` into its
    folder. ``options_json`` is ``engine.analysis.fisher.AnalyzeOptions`` as JSON. ``StopRun`` stops it
    between batches and nothing is written."""

    run_id: str
    options_json: str


@_frozen
class StartEstimate:
    """Gradient-sensitivity estimate (``sidestep estimate``): rank the decoder's modules over the dataset
    and write the top ``top_k`` to ``output`` (Side-Step's module-config JSON, atomically). ``config_json``
    is a ``TrainConfig`` as JSON (model, dataset, device, batch, seed, ``estimate_batches``, ``top_k``,
    ``granularity``). ``StopRun`` stops it between batches and nothing is written."""

    run_id: str
    config_json: str
    output: str


@_frozen
class StopRun:
    """Finish the current optimizer step (preprocessing: the current file), save a checkpoint, then
    emit ``RunFinished(stopped)``. A stop always saves: no command throws the work away."""


@_frozen
class SaveCheckpoint:
    """Save a checkpoint after the current optimizer step and keep training."""


@_frozen
class PauseRun:
    """Hold before the next optimizer step; heartbeats continue."""


@_frozen
class ResumeRun:
    """Continue a paused run."""


@_frozen
class Shutdown:
    """Stop (saving) whatever runs, flush the sinks and exit the engine process with 0."""


Command = StartRun | StartPreprocess | StartAnalysis | StartEstimate | StopRun | SaveCheckpoint | PauseRun | ResumeRun | Shutdown
COMMAND_TYPES: tuple[type, ...] = typing.get_args(Command)


# --------------------------------------------------------------------------- events


@_frozen
class EngineReady:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    pid: int
    protocol_version: int
    torch_version: str
    python_version: str
    cuda_available: bool
    device_names: tuple[str, ...] = ()


@_frozen
class Heartbeat:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    phase: Phase
    last_step: int


@_frozen
class RunStarted:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    run_dir: str
    config_json: str
    adapter_type: str
    model_dir: str
    model_variant: str
    device: str
    precision: str
    attention_backend: str
    adapted_modules: int
    trainable_params: int
    total_params: int
    num_samples: int
    steps_per_epoch: int
    total_steps: int
    start_step: int
    start_epoch: int  # 1-based: the epoch this segment starts (or, resuming, continues) in
    timestep_mu: float
    timestep_sigma: float
    timestep_mode: str


@_frozen
class PhaseChanged:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    phase: Phase
    detail: str = ""


@_frozen
class StepMetrics:
    """A summary of every optimizer step since the previous ``StepMetrics`` (``steps_covered``)."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    step: int
    epoch: int  # 1-based: the epoch ``step`` belongs to
    total_steps: int
    loss: float
    loss_min: float
    loss_max: float
    steps_covered: int
    lr: float
    grad_norm: float
    samples_per_s: float
    eta_s: float
    skipped_steps: int = 0
    cruise_scale: float = -1.0  # cruise control's LR factor in (0, 1] (``lr`` already includes it); -1 = off
    cruise_ema: float = -1.0  # the smoothed loss cruise control watches; -1 = off
    data_wait_frac: float = -1.0  # share of the wall time spent waiting for batches; -1 = not measured
    step_time_s: float = -1.0  # mean wall time per optimizer step over the steps covered; -1 = not measured
    # Several training processes: each rank's (index = rank) last step time (forward and backward of the
    # window) and memory (CUDA peak allocated, else resident); () with one process.
    rank_step_time_s: tuple[float, ...] = ()
    rank_memory_mb: tuple[float, ...] = ()


@_frozen
class EpochCompleted:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    epoch: int  # 1-based number of the epoch that ended
    step: int
    mean_loss: float
    duration_s: float


@_frozen
class ResourceSample:
    """Memory and device readings; ``-1`` means "not available" (no GPU, no NVML), never a guess."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    device: str
    allocated_mb: float = -1.0
    reserved_mb: float = -1.0
    peak_allocated_mb: float = -1.0
    gpu_used_mb: float = -1.0
    gpu_total_mb: float = -1.0
    gpu_util_pct: float = -1.0
    gpu_temp_c: float = -1.0
    gpu_power_w: float = -1.0
    process_rss_mb: float = -1.0


@_frozen
class TimestepHistogram:
    """Sampled timesteps: ``recent`` since the last histogram, ``cumulative`` since the run started, and
    ``expected`` = the sampler's probability mass per bin (so the UI can overlay it)."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    step: int
    bin_edges: tuple[float, ...]
    recent: tuple[int, ...]
    cumulative: tuple[int, ...]
    expected: tuple[float, ...]


@_frozen
class CheckpointSaved:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    step: int
    epoch: int  # 1-based: the epoch ``step`` belongs to
    path: str
    kind: CheckpointKind
    loss: float = float("nan")
    comfyui_path: str = ""  # the single-file ComfyUI export inside ``path`` ("" when none was written)


@_frozen
class SampleRendered:
    """One audio sample rendered during training (``run_dir/samples/step_<N>/<slug>.flac`` + ``.json``).
    Step 0 with ``adapter_scale`` 0 is the base model (the A side); later steps are the adapter."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    step: int
    path: str  # the FLAC file; its JSON sidecar has the same name with .json
    prompt: str
    seed: int
    duration_s: float
    adapter_scale: float
    wall_s: float
    index: int = 1  # this prompt's number in the round (1-based)
    total: int = 1  # prompts in the round


@_frozen
class LogRecord:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    level: LogLevel
    message: str
    logger: str = "engine"


@_frozen
class RunPaused:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    step: int


@_frozen
class RunResumed:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    step: int


@_frozen
class PreprocessProgress:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    stage: PreprocessStage
    index: int
    total: int
    file: str
    status: FileStatus
    message: str = ""
    audio_seconds: float = 0.0  # scan: all the job will encode; pass1 ok/skipped: this file (cropped); done: encoded by this run
    elapsed_s: float = 0.0  # since the job started


@_frozen
class AnalysisProgress:
    """One measured batch of a PP++ analysis: run ``run``/``runs``, group pass ``pass_index``/``passes``
    (``group`` = self_attn, cross_attn or mlp), batch ``batch``/``batches``; ``done``/``total`` over all."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    run: int
    runs: int
    group: str
    pass_index: int
    passes: int
    batch: int
    batches: int
    done: int
    total: int
    elapsed_s: float = 0.0


@_frozen
class AnalysisDone:
    """A PP++ analysis ended: ``completed`` with ``path`` (the fisher_map.json written) and a one-line
    ``summary``, or ``stopped`` with nothing written (``path`` empty). Failures are ``RunFailed``."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    status: RunStatus
    path: str
    summary: str = ""
    wall_s: float = 0.0


@_frozen
class EstimateProgress:
    """One measured batch of a gradient-sensitivity estimate: ``done`` of ``total``."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    done: int
    total: int
    elapsed_s: float = 0.0


@_frozen
class EstimateDone:
    """An estimate ended: ``completed`` with ``path`` (the module config written: the top ``top_k``) and
    the whole ranking, best first (``modules`` as ``layers.N[.kind.proj]``, ``scores`` beside them); or
    ``stopped`` with nothing written (``path`` empty, no ranking). Failures are ``RunFailed``."""

    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    status: RunStatus
    path: str
    modules: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    top_k: int = 0
    granularity: str = "module"
    wall_s: float = 0.0


@_frozen
class RunFinished:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    status: RunStatus
    steps: int
    epochs: int  # epochs finished
    final_loss: float
    best_loss: float
    adapter_path: str
    wall_s: float


@_frozen
class RunFailed:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    error_type: str
    message: str
    traceback: str = ""
    hint: str = ""
    oom: bool = False
    step: int = 0


@_frozen
class EngineStopping:
    run_id: str = ""
    seq: int = 0
    ts: float = 0.0
    reason: str = ""


Event = (
    EngineReady
    | Heartbeat
    | RunStarted
    | PhaseChanged
    | StepMetrics
    | EpochCompleted
    | ResourceSample
    | TimestepHistogram
    | CheckpointSaved
    | SampleRendered
    | LogRecord
    | RunPaused
    | RunResumed
    | PreprocessProgress
    | AnalysisProgress
    | AnalysisDone
    | EstimateProgress
    | EstimateDone
    | RunFinished
    | RunFailed
    | EngineStopping
)
EVENT_TYPES: tuple[type, ...] = typing.get_args(Event)

_BY_NAME: dict[str, type] = {cls.__name__: cls for cls in COMMAND_TYPES + EVENT_TYPES}
_PRIMITIVES = (str, int, float, bool, type(None))


def _vocabulary_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


_VOCABULARY: dict[type, dict[str, tuple[Any, ...]]] = {cls: _vocabulary_fields(cls) for cls in COMMAND_TYPES + EVENT_TYPES}
"""Per message type, its ``Literal`` fields and their allowed values."""


class ProtocolError(ValueError):
    """A message that is not part of this protocol (unknown type, bad fields)."""


def check_vocabulary(message: Any) -> None:
    """Raise ``ProtocolError`` when a phase, status, kind, level or stage field holds a value outside
    its ``Literal`` (the type checker catches literals in code; this catches computed values and text)."""
    for name, allowed in _VOCABULARY.get(type(message), {}).items():
        value = getattr(message, name)
        if value not in allowed:
            raise ProtocolError(f"{type(message).__name__}.{name} = {value!r} is not one of {', '.join(map(str, allowed))}")


def _plain(value: Any) -> Any:
    """The exact builtin behind a primitive-like value. Subclasses pickle by reference: a
    ``torch.__version__`` (a ``str`` subclass) or a ``numpy.float64`` (a ``float`` subclass) would make
    the UI import torch or numpy just to unpickle an event."""
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return value if type(value) is kind else kind(value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    raise ProtocolError(f"event field of type {type(value).__name__} is not a primitive")


def stamp(event: Any, *, run_id: str, seq: int, ts: float | None = None) -> Any:
    """Return ``event`` with its envelope filled in and every field a plain builtin (events are
    frozen, so this copies). A field outside its vocabulary is a ``ProtocolError``."""
    fields = {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    fields.update(run_id=run_id, seq=seq, ts=time.time() if ts is None else ts)
    stamped = type(event)(**fields)
    check_vocabulary(stamped)  # never write what ``from_dict`` would refuse to read back
    return stamped


def to_dict(message: Any) -> dict[str, Any]:
    """A JSON-able dict: ``{"type": ClassName, **fields}`` with tuples as lists."""
    if type(message).__name__ not in _BY_NAME:
        raise ProtocolError(f"not a protocol message: {type(message).__name__}")
    out: dict[str, Any] = {"type": type(message).__name__}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a message from ``to_dict`` output; unknown types and unknown fields are errors."""
    name = data.get("type")
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {name!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "type":
            continue
        if key not in names:
            raise ProtocolError(f"{name}: unknown field {key!r}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        message = cls(**kwargs)
    except TypeError as exc:
        raise ProtocolError(f"{name}: {exc}") from None
    check_vocabulary(message)
    return message


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def dumps(message: Any) -> str:
    """One line of JSON. NaN/inf are written as JSON's non-standard tokens, which ``loads`` reads."""
    return json.dumps(to_dict(message), separators=(",", ":"), default=_json_default)


def loads(line: str) -> Any:
    return from_dict(json.loads(line))


def is_primitive(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(isinstance(v, _PRIMITIVES) for v in value)
    return isinstance(value, _PRIMITIVES)


def read_events(path: str, *, strict: bool = False) -> list[Any]:
    """Read an ``events.jsonl``. A torn last line (the engine died mid-write) is dropped unless
    ``strict``; any other bad line raises ``ProtocolError`` naming the line number."""
    events: list[Any] = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(loads(line))
        except (ValueError, ProtocolError) as exc:
            is_last = all(not rest.strip() for rest in lines[number:])
            if is_last and not strict:
                break
            raise ProtocolError(f"{path}:{number}: {exc}") from None
    return events
