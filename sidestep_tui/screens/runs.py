"""Runs: every run under the output root, from each run's ``config.json`` and ``events.jsonl``.

Open one to replay its curves (its events.jsonl folded through the same reducer as a live run), attach
to a live one (read-only; stop = SIGTERM, which saves), or resume a stopped / failed / died one from its
newest checkpoint in a freshly spawned engine, or export its adapter as one ComfyUI file (``sidestep export``
in a child process: the UI never imports torch). Scanning, replay reading and exporting run in thread workers.
A run that rendered audio samples while training also shows them (one row per prompt x step, the base model's
first, then the newest step) with the highlighted one's spectrogram and loudness; Enter or ``l`` plays it
through a local player found on PATH, ``k`` keeps the checkpoint saved at its step as the run's chosen
adapter (copied to ``chosen/``: pick by ear).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from engine import config as cfgmod
from engine import layout
from engine.runs import RunSummary, scan_runs
from engine.samples_index import ChooseError, Sample, checkpoint_for_sample, choose_checkpoint, scan_samples
from engine.summary import loss_text, segment_text
from engine.tailer import read_run_events

from .. import messages as m
from ..appref import SidestepAppRef
from ..formatting import human_duration
from ..state import RunState, apply_all
from ..widgets.footer import SidestepFooter
from ..widgets.samples_panel import SamplesPanel, play_sample
from .quick import QuickScreen

# The figures that tell runs apart come right after the name: at 80 columns the rest is off to the right.
COLUMNS = ("Run", "Status", "Steps", "Best", "Final", "Adapter", "Model", "Duration", "Adapter path")
RESUMABLE = ("stopped", "failed", "died")


def run_row(r: RunSummary) -> tuple[str, ...]:
    steps = f"{r.steps}/{r.total_steps}" if r.total_steps else str(r.steps)
    return (
        r.name,
        r.status.replace("_", " "),
        steps,
        loss_text(r.best_loss),
        loss_text(r.final_loss),
        r.adapter_type or "n/a",
        r.model_variant or "n/a",
        human_duration(r.duration_s),
        r.adapter_path or "n/a",
    )


def run_detail(r: RunSummary) -> str:
    lines = [f"{r.name}  [{r.status}]  {r.path}"]
    if r.best_loss is not None:
        lines.append(f"best {loss_text(r.best_loss)} (the adapter in best/, saved at epoch {r.best_epoch}, step {r.best_step})")
    if len(r.history) > 1:  # each engine's go at the run: when it started, how it ended, at which step
        redone = f", {r.redone_steps} step(s) trained again (resumed from an earlier checkpoint)" if r.redone_steps else ""
        lines.append(f"resumed {len(r.history) - 1} time(s){redone}:")
        lines += [f"  {segment_text(seg, r.total_steps)}" for seg in r.history]
    if r.adapter_path:
        lines.append(f"adapter: {r.adapter_path}")
    if r.comfyui_path:
        lines.append(f"ComfyUI: {r.comfyui_path}")
    if r.chosen_path:
        lines.append(f"chosen by ear: {r.chosen_path} (step {r.chosen_step}, copied from {r.chosen_source})")
    if r.error:
        lines.append(f"error: {r.error}")
    if r.problem:
        lines.append(f"problem: {r.problem}")
    if r.status == "running":
        lines.append(f"live (engine pid {r.pid}): Attach follows it")
    elif r.status in RESUMABLE:
        lines.append("Resume continues it from its newest checkpoint")
    return "\n".join(lines)


def resume_config_json(run_dir: str) -> str:
    """The run's own config.json with ``resume_from = auto`` (newest checkpoint in that folder)."""
    with open(layout.config_path(run_dir), encoding="utf-8") as fh:
        data = json.load(fh)
    data["resume_from"] = "auto"
    data["output_dir"] = run_dir
    return cfgmod.to_json(cfgmod.parse(data))


def replay_state(run_dir: str) -> RunState:
    """A finished (or running) run's events.jsonl folded through the live reducer: what its replay shows.
    Lines that are not events are skipped, as everywhere (``engine.tailer``)."""
    events, _tailer = read_run_events(layout.events_path(run_dir))
    return apply_all(RunState(), events)


@dataclass
class RunsScanned(Message):
    runs: list[RunSummary]
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # run path -> its samples (runs with any)


@dataclass
class ReplayReady(Message):
    run: RunSummary
    state: RunState


@dataclass
class KeepDone(Message):
    run: RunSummary
    ok: bool
    text: str  # what was kept, or the one-line error


@dataclass
class ExportDone(Message):
    run: RunSummary
    ok: bool
    text: str  # the file written, or the one-line error


def export_run(run_dir: str, timeout: float = 600.0) -> tuple[bool, str]:
    """``sidestep export RUN_DIR`` in a child interpreter: (ok, the file written or the error line)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "export", run_dir], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"export did not finish: {exc}"
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return False, (lines[-1].removeprefix("error: ") if lines else f"export exited with {done.returncode}")
    wrote = [line.removeprefix("wrote ") for line in done.stdout.splitlines() if line.startswith("wrote ")]
    return True, wrote[-1] if wrote else done.stdout.strip()


class RunsScreen(QuickScreen):
    app = SidestepAppRef()
    CSS_PATH = "runs.tcss"
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]  # 80x24: a smaller Samples section, the run list stays
    BINDINGS = [
        # Enter on a row opens it too (DataTable's own binding -> RowSelected).
        Binding("o", "open", "Open", id="runs.open", tooltip="Replay the run's curves (read-only); Enter too"),
        Binding("a", "attach", "Attach", id="runs.attach", tooltip="Follow a live run (stop = save and stop)"),
        Binding("r", "resume", "Resume", id="runs.resume", tooltip="Resume from the newest checkpoint in a new engine"),
        Binding("x", "export", "Export", id="runs.export", tooltip="Write the adapter as one ComfyUI file"),
        Binding("g", "rescan", "Refresh", id="runs.refresh", tooltip="Scan the output root again"),
        Binding(
            "l", "listen", "Listen", id="runs.listen", tooltip="Play the highlighted sample (Enter in the Samples table too)"
        ),
        Binding("k", "keep", "Keep", id="runs.keep", tooltip="Keep the highlighted sample's checkpoint: copy it to chosen/"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunSummary] = []
        self.samples: dict[str, list[Sample]] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="runs-title", markup=False)
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail", markup=False)
        yield SamplesPanel(id="samples")
        yield SidestepFooter()

    def on_mount(self) -> None:
        self.query_one("#runs-table", DataTable).add_columns(*COLUMNS)
        self.query_one(SamplesPanel).display = False
        self.action_rescan()

    def on_screen_resume(self) -> None:
        self.action_rescan()

    @property
    def output_root(self) -> str:
        return self.app.settings.output_root

    def action_rescan(self) -> None:
        root = self.output_root
        self.query_one("#runs-title", Static).update(f"Runs under {root}" if root else "No output root set (Setup or settings)")
        if root:
            self._scan(root)

    @work(thread=True, exclusive=True, group="run-scan", name="run-scan", exit_on_error=False)
    def _scan(self, root: str) -> None:
        runs = scan_runs(root)
        self.post_message(RunsScanned(runs, {r.path: found for r in runs if (found := scan_samples(r.path))}))

    @on(RunsScanned)
    def _show_runs(self, message: RunsScanned) -> None:
        table = self.query_one("#runs-table", DataTable)
        selected = self.selected
        self.runs = message.runs
        self.samples = message.samples
        table.clear()
        for r in self.runs:
            table.add_row(*run_row(r), key=r.path)
        if selected is not None:
            for i, r in enumerate(self.runs):
                if r.path == selected.path:
                    table.move_cursor(row=i)
        root = self.output_root
        self.query_one("#runs-title", Static).update(f"{len(self.runs)} run(s) under {root}")
        self._show_detail()
        self.refresh_bindings()

    @property
    def selected(self) -> RunSummary | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.runs or table.cursor_row < 0 or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    @property
    def selected_samples(self) -> list[Sample]:
        r = self.selected
        return self.samples.get(r.path, []) if r is not None else []

    @property
    def selected_sample(self) -> Sample | None:
        return self.query_one(SamplesPanel).selected

    @on(DataTable.RowHighlighted, "#runs-table")
    def _show_detail(self) -> None:
        r = self.selected
        self.query_one("#run-detail", Static).update(run_detail(r) if r else "")
        panel = self.query_one(SamplesPanel)
        found = self.selected_samples
        panel.show(found)  # rebuilt only when they change: a rescan keeps the highlighted sample
        panel.display = bool(found)
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#runs-table")
    def _row_selected(self) -> None:
        self.action_open()

    @on(DataTable.RowSelected, "#samples-table")
    def _sample_selected(self) -> None:
        self.action_listen()

    def action_listen(self) -> None:
        if (s := self.selected_sample) is None:
            return
        problem = play_sample(s.path)
        if problem is None:
            self.notify(f"Playing {s.path}", timeout=5)
        else:
            self.notify(problem, severity="warning", timeout=20)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        r = self.selected if self.is_mounted else None
        if action == "open":
            return r is not None
        if action == "attach":
            return r is not None and r.status == "running"
        if action == "resume":
            return r is not None and r.status in RESUMABLE
        if action == "export":
            return r is not None and bool(r.adapter_path)
        if action in ("listen", "keep"):
            return r is not None and bool(self.samples.get(r.path))
        return True

    def action_keep(self) -> None:
        """Pick by ear: the highlighted sample's checkpoint becomes ``chosen/`` (an earlier choice is
        replaced only after a yes)."""
        r, s = self.selected, self.selected_sample
        if r is None or s is None:
            return
        try:
            source = checkpoint_for_sample(r.path, s)
        except ChooseError as exc:
            self.notify(f"Cannot keep {s.slug}: {exc}", severity="warning", timeout=15)
            return
        chosen = layout.chosen_dir(r.path)
        if not os.path.lexists(chosen):
            self._keep(r, s)
            return
        from ..dialogs.confirm import ConfirmDialog

        def answer(yes: bool | None) -> None:
            if yes:
                self._keep(r, s)

        before = f"step {r.chosen_step}, from {r.chosen_source}" if r.chosen_path else "an earlier choice"
        self.app.push_screen(
            ConfirmDialog(
                "Replace the chosen checkpoint?",
                f"{chosen} holds {before}. Replace it with step {s.step} (from {os.path.relpath(source, r.path)})?",
                yes="Replace",
            ),
            answer,
        )

    @work(thread=True, exclusive=True, group="run-keep", name="run-keep", exit_on_error=False)
    def _keep(self, run: RunSummary, sample: Sample) -> None:
        try:
            info = choose_checkpoint(run.path, sample)
        except (OSError, ValueError) as exc:  # ChooseError is a ValueError
            self.post_message(KeepDone(run, False, str(exc)))
            return
        comfy = (
            f", with its ComfyUI file {info['comfyui']}" if info["comfyui"] else ", no ComfyUI file (that checkpoint has none)"
        )
        self.post_message(
            KeepDone(run, True, f"step {info['step']} (from {info['source']}) -> {layout.chosen_dir(run.path)}{comfy}")
        )

    @on(KeepDone)
    def _kept(self, message: KeepDone) -> None:
        if message.ok:
            self.notify(f"Kept {message.text}", title=f"Chosen for {message.run.name}", timeout=15)
        else:
            self.notify(f"Cannot keep a checkpoint of {message.run.name}: {message.text}", severity="error", timeout=15)
        self.action_rescan()

    def action_open(self) -> None:
        if (r := self.selected) is not None:
            self._read_replay(r)

    @work(thread=True, exclusive=True, group="run-replay", name="run-replay", exit_on_error=False)
    def _read_replay(self, run: RunSummary) -> None:
        self.post_message(ReplayReady(run, replay_state(run.path)))

    @on(ReplayReady)
    def _open_replay(self, message: ReplayReady) -> None:
        from .monitor import MonitorScreen

        self.app.push_screen(MonitorScreen(message.state, title=f"{message.run.name} ({message.run.status})"))

    def action_attach(self) -> None:
        if (r := self.selected) is not None and r.status == "running":
            self.app.attach_run(r.path)

    def action_export(self) -> None:
        if (r := self.selected) is not None and r.adapter_path:
            self.notify(f"Exporting {r.name} for ComfyUI ...", timeout=5)
            self._export(r)

    @work(thread=True, exclusive=True, group="run-export", name="run-export", exit_on_error=False)
    def _export(self, run: RunSummary) -> None:
        ok, text = export_run(run.path)
        self.post_message(ExportDone(run, ok, text))

    @on(ExportDone)
    def _exported(self, message: ExportDone) -> None:
        if message.ok:
            self.notify(f"ComfyUI file: {message.text}", title=f"Exported {message.run.name}", timeout=15)
        else:
            self.notify(f"Cannot export {message.run.name}: {message.text}", severity="error", timeout=15)
        self.action_rescan()

    def action_resume(self) -> None:
        r = self.selected
        if r is None or r.status not in RESUMABLE:
            return
        from ..dialogs.confirm import ConfirmDialog

        try:
            config_json = resume_config_json(r.path)
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError
            self.notify(f"Cannot resume {r.name}: {exc}", severity="error", timeout=10)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.post_message(m.StartRequested(config_json))

        self.app.push_screen(
            ConfirmDialog(f"Resume {r.name}?", f"From the newest checkpoint in {r.path}, in a new engine.", yes="Resume"), answer
        )
