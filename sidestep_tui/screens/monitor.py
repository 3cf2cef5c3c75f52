"""The live (or replayed) run: progress, loss, timesteps, GPU memory, checkpoints, log, controls.

The screen watches ``app.run_state`` and redraws on its own timer: cheap text widgets at 2 Hz, the
plotext loss chart at most once a second, and only when something changed. Controls post intents
(``StopRequested`` ...); ``check_action`` shows each one only when it is valid for the run's state and
the engine connection (an attached run can only be stopped).

At large sizes a run that renders audio samples also gets a Samples panel (one row per prompt x step, the
base model's pinned first, then the newest; the highlighted one's spectrogram and loudness): its run folder's
samples are scanned again (in a thread) whenever a ``SampleRendered`` event arrives. Hidden at 80x24.

Constructed with ``state=`` it is a replay: a fixed ``RunState`` rebuilt from a finished run's
``events.jsonl`` (from the Runs screen), without controls.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import var
from textual.widgets import DataTable, Static

from engine.protocol import PauseRun, ResumeRun, SaveCheckpoint, StopRun
from engine.samples_index import Sample, scan_samples

from .. import messages as m
from ..appref import SidestepAppRef
from ..formatting import number
from ..state import RunState
from ..widgets.checkpoint_list import CheckpointList
from ..widgets.event_log import EventLog
from ..widgets.footer import SidestepFooter
from ..widgets.gpu_panel import GpuPanel
from ..widgets.loss_chart import SMOOTHING_WINDOWS, LossChart, chart_series
from ..widgets.progress_panel import ProgressPanel
from ..widgets.samples_panel import SamplesPanel, play_sample
from ..widgets.sparklines import sparkline
from ..widgets.timestep_histogram import TimestepHistogram
from .quick import QuickScreen

TICK_S = 0.5
CHART_EVERY_S = 1.0


@dataclass
class SamplesScanned(Message):
    key: tuple[str, int]  # (run_dir, samples_rendered) the scan was for
    samples: list[Sample]


class MonitorScreen(QuickScreen):
    app = SidestepAppRef()
    CSS_PATH = "monitor.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("s", "stop", "Stop (saves)", id="monitor.stop", tooltip="Finish the step, save a checkpoint, stop"),
        Binding("c", "save", "Save", id="monitor.save", tooltip="Save a checkpoint after this step, keep training"),
        Binding("p", "pause", "Pause", id="monitor.pause", tooltip="Hold before the next optimizer step"),
        Binding("r", "resume", "Resume", id="monitor.resume", tooltip="Continue the paused run"),
        Binding("w", "smoothing", "Smooth", id="monitor.smoothing", tooltip="Cycle the loss smoothing window"),
        Binding("t", "histogram", "t-hist", id="monitor.histogram", tooltip="Timestep histogram: recent or cumulative"),
        Binding("e", "show_error", "Error", id="monitor.error", tooltip="Show the failure: message, hint, traceback"),
        Binding(
            "l", "listen", "Listen", id="monitor.listen", tooltip="Play the highlighted sample (Enter in the Samples panel too)"
        ),
        Binding("escape", "back", "Back", id="monitor.back"),
        Binding("backspace", "back", "Back", id="monitor.back-alt", show=False),
    ]

    # ``var``, not ``reactive``: assigning a state must not repaint the whole screen (that ran the
    # compositor once per batch); the redraw timer updates the widgets that changed.
    state: var[RunState] = var(RunState, always_update=True, init=False)
    banner: var[str] = var("")

    def __init__(self, state: RunState | None = None, *, title: str = "") -> None:
        super().__init__()
        self.replay = state is not None
        self.replay_title = title
        if state is not None:
            self.set_reactive(MonitorScreen.state, state)
        self.window = SMOOTHING_WINDOWS[1]
        self._dirty = True
        self._chart_dirty = True
        self._chart_at = -1e9
        self._binding_key: tuple = ()
        self._samples_key: tuple[str, int] = ("", 0)
        self._spark_text = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="engine-banner", markup=False)
        if self.replay:
            yield Static(f"REPLAY (read-only): {self.replay_title}", id="replay-banner", markup=False)
        yield ProgressPanel(id="progress")
        with Horizontal(id="charts"):
            with Vertical(id="loss-box"):
                yield LossChart(id="loss-chart")
                yield Static("", id="loss-spark")
            yield TimestepHistogram(id="ts-hist")
        with Horizontal(id="lower"):
            yield GpuPanel(id="gpu")
            yield CheckpointList(id="checkpoints")
            yield EventLog(id="log")
        yield SamplesPanel(id="samples-panel", follow=True)
        yield SidestepFooter()

    def on_mount(self) -> None:
        if not self.replay:
            self.watch(self.app, "run_state", self._take_state, init=True)
            self.watch(self.app, "engine_banner", self._take_banner, init=True)
        self.set_interval(TICK_S, self._tick, name="monitor-redraw")
        self.call_after_refresh(self.redraw, True)

    def _take_state(self, state: RunState) -> None:
        self.state = state

    def _take_banner(self, banner: str) -> None:
        self.banner = banner

    def watch_state(self, _state: RunState) -> None:
        self._dirty = True
        self._chart_dirty = True
        key = self._controls_key()
        if key != self._binding_key:
            self._binding_key = key
            self.refresh_bindings()

    def watch_banner(self, banner: str) -> None:
        widget = self.query_one("#engine-banner", Static)
        widget.update(banner)
        widget.set_class(bool(banner), "-visible")

    def on_resize(self) -> None:
        self._dirty = self._chart_dirty = True
        self.call_after_refresh(self.redraw, True)

    # ------------------------------------------------------------------ drawing
    @property
    def compact(self) -> bool:
        return self.has_class("-narrow") or self.has_class("-short")

    def _tick(self) -> None:
        self.redraw(False)

    def redraw(self, force: bool = False) -> None:
        """Update every widget from ``self.state``; the plotext chart at most once a second."""
        if not (self._dirty or force):
            return
        self._dirty = False
        s = self.state
        self.set_class(s.paused, "-paused")
        self.set_class(s.failure is not None, "-failed")
        self.query_one(ProgressPanel).show(s)
        hist = self.query_one(TimestepHistogram)
        hist.show(s.histogram, s.timestep_mu, s.timestep_sigma)
        self.query_one(GpuPanel).show(s.resources, compact=self.compact, device=s.device)
        self.query_one(EventLog).show(s.log)
        self.query_one(CheckpointList).show(s.checkpoints, s.run_dir)
        self._draw_samples(s)
        if self.compact:
            self._draw_spark(s)
        else:
            now = self.app.clock()
            if self._chart_dirty and (force or now - self._chart_at >= CHART_EVERY_S):
                self._chart_dirty = False
                self._chart_at = now
                self.query_one(LossChart).set_history(s.history, self.window)
            elif self._chart_dirty:
                self._dirty = True  # draw on a later tick

    def _draw_samples(self, s: RunState) -> None:
        panel = self.query_one(SamplesPanel)
        shown = not self.compact and bool(panel.samples)
        if panel.display != shown:
            panel.display = shown
            self.refresh_bindings()
        key = (s.run_dir, s.samples_rendered)
        if key != self._samples_key and s.run_dir and s.samples_rendered:
            self._samples_key = key
            self._scan_samples(key)

    @work(thread=True, exclusive=True, group="monitor-samples", name="monitor-samples", exit_on_error=False)
    def _scan_samples(self, key: tuple[str, int]) -> None:
        self.post_message(SamplesScanned(key, scan_samples(key[0])))

    @on(SamplesScanned)
    def _show_samples(self, message: SamplesScanned) -> None:
        self.query_one(SamplesPanel).show(message.samples)
        self._dirty = True
        self.redraw(True)

    @on(DataTable.RowSelected, "#samples-table")
    def _sample_selected(self) -> None:
        self.action_listen()

    def action_listen(self) -> None:
        panel = self.query_one(SamplesPanel)
        if not panel.display or (sample := panel.selected) is None:
            return
        problem = play_sample(sample.path)
        if problem is None:
            self.notify(f"Playing {sample.path}", timeout=5)
        else:
            self.notify(problem, severity="warning", timeout=20)

    def _draw_spark(self, s: RunState) -> None:
        widget = self.query_one("#loss-spark", Static)
        width = max(10, (widget.content_region.width or self.size.width) - 2)
        _steps, raw, smoothed = chart_series(s.history, self.window)
        label = f"loss {number(s.loss, 4)} (smoothed {number(smoothed[-1] if smoothed else None, 4)}, window {self.window})"
        text = f"{label}\n[$chart-smooth]{sparkline(smoothed, width)}[/]\n[$chart-raw]{sparkline(raw, width)}[/]"
        if text != self._spark_text:
            self._spark_text = text
            widget.update(text, layout=False)  # three lines, a fixed height (monitor.tcss)

    # ------------------------------------------------------------------ controls
    def _controls_key(self) -> tuple:
        s = self.state
        return (s.active, s.paused, s.failure is not None, self.replay, id(self.app.session.client))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        s = self.state
        session = self.app.session
        if action in ("stop", "save", "pause", "resume"):
            if self.replay or not s.active:
                return False
            command = {"stop": StopRun, "save": SaveCheckpoint, "pause": PauseRun, "resume": ResumeRun}[action]
            if (action == "pause" and s.paused) or (action == "resume" and not s.paused):
                return False
            if command not in session.controls():
                return False  # e.g. an attached run: only stop is possible, so only stop is shown
            return True if session.can_send(command) else None  # a dead engine: shown, disabled
        if action == "show_error":
            return s.failure is not None
        if action == "listen":
            return self.is_mounted and self.query_one(SamplesPanel).display
        if action == "back":
            return self.replay
        return True

    def action_stop(self) -> None:
        from ..dialogs.confirm import ConfirmDialog

        def answer(yes: bool | None) -> None:
            if yes:
                self.post_message(m.StopRequested())

        self.app.push_screen(
            ConfirmDialog(
                "Stop the run?", "It finishes the current step and saves a checkpoint first.", yes="Stop & save", yes_key="s"
            ),
            answer,
        )

    def action_save(self) -> None:
        self.post_message(m.SaveRequested())

    def action_pause(self) -> None:
        self.post_message(m.PauseRequested())

    def action_resume(self) -> None:
        self.post_message(m.ResumeRequested())

    def action_smoothing(self) -> None:
        i = SMOOTHING_WINDOWS.index(self.window) if self.window in SMOOTHING_WINDOWS else 0
        self.window = SMOOTHING_WINDOWS[(i + 1) % len(SMOOTHING_WINDOWS)]
        self.notify(f"Loss smoothing: {'off' if self.window == 1 else f'{self.window} points'}", timeout=2)
        self._dirty = self._chart_dirty = True
        self.redraw(True)

    def action_histogram(self) -> None:
        hist = self.query_one(TimestepHistogram)
        hist.cumulative = not hist.cumulative
        self.redraw(True)

    def action_show_error(self) -> None:
        from ..dialogs.error import ErrorDialog

        if self.state.failure is not None:
            self.app.push_screen(ErrorDialog(self.state.failure))

    def action_back(self) -> None:
        if self.replay:
            self.dismiss(None)
