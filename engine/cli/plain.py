"""Plain-text rendering of engine events for headless runs and ``attach --plain`` (one line each).

The end of a run is stated from ``engine.summary``'s fold of every event so far (the figures the Monitor,
the Runs screen and ``sidestep runs`` show), never from the final event alone: a resumed run's best
loss, step and status are the run's, not the last segment's.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, TextIO

from engine import protocol
from engine.summary import EMPTY, Summary, fold, fold_all, is_resume, loss_text


def fmt_duration(seconds: float) -> str:
    if seconds < 0 or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_mb(value: float) -> str:
    return "n/a" if value < 0 else (f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB")


def summary_line(s: Summary, wall_s: float | None = None) -> str:
    """How the run stands (or ended): status, step, epoch, final and best loss, adapter."""
    steps = f"step {s.step}/{s.total_steps}" if s.total_steps else f"step {s.step}"
    took = f" in {fmt_duration(wall_s)}" if wall_s is not None else ""
    best = loss_text(s.best_loss) + (f" (epoch {s.best_epoch}, step {s.best_step})" if s.best_loss is not None else "")
    line = f"run {s.status or 'running'}: {steps}, epoch {s.epoch}{took}; final loss {loss_text(s.final_loss)}, best {best}"
    return line + (f"\nadapter: {s.adapter_path}" if s.adapter_path else "")


def render(event: Any, summary: Summary | None = None) -> str | None:
    """The line for ``event``, or None for events a person does not need to read (heartbeats).
    ``summary``: the fold up to and including ``event``, for the lines that state how the run ended."""
    match event:
        case protocol.EngineReady():
            return f"engine ready: pid {event.pid}, torch {event.torch_version}, {'CUDA: ' + ', '.join(event.device_names) if event.cuda_available else 'no CUDA GPU'}"
        case protocol.RunStarted():
            return (
                f"run {event.run_id}: {event.adapter_type} on {event.model_variant} ({event.device}, {event.precision}, attention {event.attention_backend})\n"
                f"  {event.adapted_modules} adapted modules, {event.trainable_params:,} trainable of {event.total_params:,} parameters\n"
                f"  {event.num_samples} samples, {event.steps_per_epoch} steps/epoch, {event.total_steps} steps"
                + (f", resuming at step {event.start_step}" if event.start_step else "")
                + f"\n  timesteps {event.timestep_mode} (mu {event.timestep_mu:g}, sigma {event.timestep_sigma:g})\n  run dir {event.run_dir}"
            )
        case protocol.PhaseChanged():
            return f"[{event.phase.replace('_', ' ')}] {event.detail}".rstrip()
        case protocol.StepMetrics():
            return (
                f"step {event.step}/{event.total_steps}  epoch {event.epoch}  loss {event.loss:.4f}"
                f" ({event.loss_min:.4f}..{event.loss_max:.4f} over {event.steps_covered})  lr {event.lr:.2e}"
                f"  grad {event.grad_norm:.3f}  {event.samples_per_s:.1f} samples/s  eta {fmt_duration(event.eta_s)}"
                + (f"  data {event.data_wait_frac * 100:.0f}%" if event.data_wait_frac >= 0 else "")
                + (f"  skipped {event.skipped_steps}" if event.skipped_steps else "")
                + _ranks(event)
            )
        case protocol.EpochCompleted():
            return f"epoch {event.epoch} done: mean loss {event.mean_loss:.4f} in {fmt_duration(event.duration_s)}"
        case protocol.CheckpointSaved():
            comfyui = f" (ComfyUI: {os.path.basename(event.comfyui_path)})" if event.comfyui_path else ""
            return f"saved {event.kind} checkpoint at step {event.step}: {event.path}{comfyui}"
        case protocol.SampleRendered():
            return f"sample written: {event.path}"
        case protocol.LogRecord():
            return f"{event.level}: {event.message}" if event.level != "info" else event.message
        case protocol.RunPaused():
            return f"paused at step {event.step}"
        case protocol.RunResumed():
            return f"resumed at step {event.step}"
        case protocol.PreprocessProgress():
            tail = f" ({event.message})" if event.message else ""
            return f"{event.stage} {event.index}/{event.total} {event.status}: {event.file}{tail}"
        case protocol.RunFinished():
            return summary_line(summary if summary is not None else fold(EMPTY, event), event.wall_s)
        case protocol.RunFailed():
            lines = [f"error: {event.message}"]
            if event.hint:
                lines.append(f"hint: {event.hint}")
            if summary is not None and summary.segments:
                lines.append(summary_line(summary))
            return "\n".join(lines)
        case protocol.ResourceSample() | protocol.Heartbeat() | protocol.TimestepHistogram() | protocol.EngineStopping():
            return None
        case _:
            return None


def _ranks(event: protocol.StepMetrics) -> str:
    """Several processes: every rank's last step time and memory, and which one the others wait for."""
    times, memory = event.rank_step_time_s, event.rank_memory_mb
    if len(times) < 2 or len(memory) != len(times):
        return ""
    slowest = max(range(len(times)), key=times.__getitem__)
    each = ", ".join(f"{rank} {t:.2f}s {fmt_mb(m)}" for rank, (t, m) in enumerate(zip(times, memory, strict=True)))
    return f"\n  ranks: {each} (slowest {slowest})"


class PlainPrinter:
    """An event sink that folds every event (``summary``) and prints ``render`` lines.

    ``seed_from_run_dir``: a headless resume sees only its own segment's events; when its ``RunStarted``
    says it resumes, the summary is first rebuilt from the run's events.jsonl (everything written before
    that RunStarted, including this engine's own lines so far), so the end line states the whole run."""

    def __init__(self, stream: TextIO | None = None, *, seed_from_run_dir: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.summary = EMPTY
        self.seed_from_run_dir = seed_from_run_dir

    def emit(self, event: Any) -> None:
        if self.seed_from_run_dir and isinstance(event, protocol.RunStarted) and event.run_dir and is_resume(event):
            self.summary = self._seeded(event.run_dir)
        self.summary = fold(self.summary, event)
        line = render(event, self.summary)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def _seeded(self, run_dir: str) -> Summary:
        from engine.runs import EVENTS_FILE
        from engine.tailer import read_run_events

        path = os.path.join(run_dir, EVENTS_FILE)
        if not os.path.isfile(path):
            return self.summary
        events, _tailer = read_run_events(path)
        return fold_all(events)

    def close(self) -> None:
        self.stream.flush()
