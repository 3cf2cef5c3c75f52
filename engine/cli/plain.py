"""Plain-text rendering of engine events for headless runs and ``attach --plain`` (one line each)."""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

from engine import protocol


def fmt_duration(seconds: float) -> str:
    if seconds < 0 or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rem = divmod(seconds, 3600)
    minutes, secs = divmod(rem, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_mb(value: float) -> str:
    return "n/a" if value < 0 else (f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB")


def render(event: Any) -> str | None:
    """The line for ``event``, or None for events a person does not need to read (heartbeats)."""
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
                + (f"  skipped {event.skipped_steps}" if event.skipped_steps else "")
            )
        case protocol.EpochCompleted():
            return f"epoch {event.epoch} done: mean loss {event.mean_loss:.4f} in {fmt_duration(event.duration_s)}"
        case protocol.CheckpointSaved():
            return f"saved {event.kind} checkpoint at step {event.step}: {event.path}"
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
            return (
                f"run {event.status}: {event.steps} steps, {event.epochs} epochs in {fmt_duration(event.wall_s)}; "
                f"final loss {event.final_loss:.4f}, best {event.best_loss:.4f}\nadapter: {event.adapter_path}"
            )
        case protocol.RunFailed():
            lines = [f"error: {event.message}"]
            if event.hint:
                lines.append(f"hint: {event.hint}")
            return "\n".join(lines)
        case protocol.ResourceSample() | protocol.Heartbeat() | protocol.TimestepHistogram() | protocol.EngineStopping():
            return None
        case _:
            return None


class PlainPrinter:
    """An event sink that prints ``render`` lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, event: Any) -> None:
        line = render(event)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self.stream.flush()
