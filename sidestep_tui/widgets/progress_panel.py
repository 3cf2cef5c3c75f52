"""Phase, progress and the headline numbers of a run (three lines, any width)."""

from __future__ import annotations

from textual.markup import escape
from textual.widgets import Static

from engine.summary import loss_text

from ..formatting import NA, fixed, human_duration, number
from ..state import RunState
from .sparklines import bar

# Every state has a word; colour only repeats it (readable with NO_COLOR and in 256 colours).
PHASE_STYLE = {
    "training": "$success",
    "paused": "$warning",
    "failed": "$error",
    "finished": "$primary",
    "idle": "$text-muted",
    "engine_died": "$error",
}


def phase_label(state: RunState) -> str:
    if state.failure is not None:
        return "FAILED"
    if state.finished_status is not None:
        return state.finished_status.upper()
    if state.paused:
        return "PAUSED"
    return state.phase.replace("_", " ").upper() or "IDLE"


def render_progress(state: RunState, width: int) -> str:
    """Textual markup for the panel; all dynamic text escaped."""
    width = max(20, width)
    label = phase_label(state)
    style = PHASE_STYLE.get(state.phase, "$accent")
    if state.failure is not None:
        style = "$error"
    elif state.finished_status is not None:
        style = "$primary"
    who = state.run_id or ("" if state.phase_detail else "no run: start one from Setup, or open one in Runs")
    if state.adapter_type:
        who += f" · {state.adapter_type} on {state.model_variant} · {state.device} {state.precision}"
    detail = f" ({state.phase_detail})" if state.phase_detail and (state.active or state.engine_lost or not state.run_id) else ""
    line1 = f"[b reverse {style}] {escape(label)} [/] {escape(who + detail)}"

    total = state.total_steps
    steps = f"step {state.step}/{total}" if total else f"step {state.step}"
    pct = f" {state.progress * 100:3.0f}%" if state.progress is not None else ""
    if state.paused:  # frozen figures would read as live ones
        eta, rate = "paused", "—"
    elif not state.active:
        eta, rate = "—", "—"
    else:
        eta, rate = human_duration(state.eta_s), number(state.samples_per_s, 3)
    tail = f"  ETA {eta}  {rate} samples/s"
    head = f"epoch {state.epoch}  {steps} "
    bar_width = max(4, width - len(head) - len(pct) - len(tail) - 1)
    line2 = escape(head) + f"[$primary]{bar(state.progress, bar_width)}[/]" + escape(pct + tail)

    ckpt = state.checkpoints[-1] if state.checkpoints else None
    summary = state.summary  # the figures the Runs screen and `sidestep runs` show too (engine.summary)
    best_where = f" (epoch {summary.best_epoch})" if summary.best_loss is not None and summary.best_epoch else ""
    parts = [
        f"{'final loss' if summary.finished else 'loss'} {loss_text(summary.final_loss)}",
        f"best {loss_text(summary.best_loss)}{best_where}",  # the adapter in best/
        f"lr {fixed(state.lr, '.2e', 8)}",  # fixed widths: the line must not jump as the numbers change
        f"grad {fixed(state.grad_norm, '7.3f', 7)}",
        *([f"cruise x{fixed(state.cruise[0], '.2f', 4)} (ema {loss_text(state.cruise[1])})"] if state.cruise else []),
        f"ckpt {f'step {ckpt.step} ({ckpt.kind})' if ckpt else NA}",
        # the share of each step spent waiting for batches (the engine warns with advice when it is high)
        f"data {NA.rjust(4) if state.data_wait_frac is None else format(state.data_wait_frac * 100, '3.0f') + '%'}",
    ]
    if state.slowest_rank is not None:  # several processes: the one the others wait for
        rank, ranks, step_s, memory_mb = state.slowest_rank
        parts.append(f"{ranks} ranks, slowest {rank}: {step_s:.2f} s/step {memory_mb / 1024:.1f} GiB")
    if state.skipped_steps:
        parts.append(f"skipped {state.skipped_steps}")
    if state.seq_gaps:
        parts.append(f"dropped events {state.seq_gaps}")
    line3 = ""
    for part in parts:
        if len(line3) + len(part) + 2 > width:
            break
        line3 += ("  " if line3 else "") + part
    if state.preprocess is not None:
        p = state.preprocess
        frac = p.index / p.total if p.total else None
        line2 = (
            escape(f"{p.stage} {p.index}/{p.total} ")
            + f"[$primary]{bar(frac, max(4, width - 40))}[/]"
            + escape(f"  ok {p.ok}  skipped {p.skipped}  failed {p.failed}")
        )
        line3 = escape(p.file[-width:] if p.file else p.last_message[:width])
    else:
        line3 = escape(line3)
    return "\n".join((line1, line2, line3))


class ProgressPanel(Static):
    DEFAULT_CSS = """
    ProgressPanel { height: 3; padding: 0 1; }
    """

    _shown = ""

    def show(self, state: RunState) -> None:
        text = render_progress(state, self.content_region.width or self.size.width or 80)
        if text != self._shown:  # the monitor asks twice a second, whether or not anything changed
            self._shown = text
            self.update(text, layout=False)  # a fixed height (CSS): new text never changes the layout
