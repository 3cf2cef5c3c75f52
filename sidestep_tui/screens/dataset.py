"""Dataset: the tensors to train on, either an existing folder or one made here from audio.

Two tabs (Ctrl+T switches):

- **Tensor folder**: the folder is checked as you type (``PathField``); an existing folder is scanned
  in a thread worker by ``engine.ptinspect.scan_dataset`` (reads each file's pickle header, never the
  tensors, never torch): sample count, total and longest duration, shapes, and every problem naming
  its file, plus mismatches with the chosen model (stale variant, encoder width). Ctrl+S uses the
  folder: ``DraftUpdated(dataset_dir)`` and the Setup screen opens.
- **Audio → tensors** (``widgets.audio_prep.AudioPrep``): an audio folder, what the dataset builder
  found in it, tag and normalisation, then preprocessing in the engine with per-file progress. Ctrl+S
  starts it, Ctrl+X stops it (finished files are kept; starting again resumes), and once it is done
  Ctrl+S takes the new tensor folder straight to Setup. Ctrl+G (or the palette's "Dataset: Tags") adds or
  removes a trigger tag in the songs' captions (``dialogs.tags``), Ctrl+B ("Dataset: Analyze audio") runs
  ``sidestep audio-analyze`` on the folder in a child process and rescans; the file detail shows each song's
  BPM, key and time signature from its sidecar (what ``sidestep audio-analyze`` writes there).

A tensor folder's ``fisher_map.json`` (PP++ per-module LoRA ranks) is shown under its report: the ranking
as a table (module, score ± spread, effective rank, assigned rank) and a per-layer heat strip. Ctrl+N
runs the analysis (``sidestep analyze``) in the engine process for the chosen model, Ctrl+X stops it
(nothing is written), and the new map is shown when it is done. Ctrl+L runs the gradient-sensitivity
estimate the same way (``screens.dataset_estimate``: the top-k into a module config, Ctrl+Y hands it to
Setup), and Ctrl+O compares module configs side by side.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widget import AwaitMount
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from engine import discovery, fishermap, ptinspect, sidecar_edit
from engine.protocol import StopRun

from ..appref import SidestepAppRef
from ..formatting import dataset_problems, dataset_summary
from ..messages import DraftUpdated, SettingsChanged
from ..widgets.audio_prep import DONE, RUNNING, STARTING, AudioPrep
from ..widgets.estimate_panel import EstimatePanel
from ..widgets.footer import SidestepFooter
from ..widgets.path_input import PathField
from .dataset_estimate import EstimateActions
from .quick import QuickScreen
from .screen_commands import ScreenActions

NARROW = 110
NO_REPORT = (
    "Enter the tensor folder above: every file is checked here, before training.\n"
    "No tensors yet? Ctrl+T: make them from a folder of songs."
)
TENSORS, AUDIO = "tab-tensors", "tab-audio"


@dataclass
class DatasetScanned(Message):
    path: str
    report: ptinspect.DatasetReport
    fisher: fishermap.FisherMap | None = None
    fisher_problem: str = ""


FISHER_COLUMNS = ("module", "score ± spread", "eff. rank", "rank")


def read_fisher(path: str) -> tuple[fishermap.FisherMap | None, str]:
    """The folder's PP++ map and the one-line problem when it cannot be used."""
    try:
        return fishermap.find(path), ""
    except fishermap.FisherMapError as exc:
        return None, str(exc)


class DatasetScreen(EstimateActions, QuickScreen):
    app = SidestepAppRef()
    CSS_PATH = "dataset.tcss"
    COMMANDS = {ScreenActions}
    BINDINGS = [
        Binding("ctrl+s", "use", "Use dataset", id="dataset.use", tooltip="Use this tensor folder for the run"),
        Binding("ctrl+s", "preprocess", "Preprocess", id="dataset.preprocess", tooltip="Make tensors from the audio folder"),
        Binding(
            "ctrl+s",
            "use_tensors",
            "Use tensors",
            id="dataset.use-tensors",
            tooltip="Train on the tensors just made (opens Setup)",
        ),
        Binding(
            "ctrl+x", "stop_preprocess", "Stop", id="dataset.stop", tooltip="Stop after the current file (starting again resumes)"
        ),
        Binding(
            "ctrl+t",
            "toggle_source",
            "Tensors/Audio",
            id="dataset.source",
            tooltip="Switch between a tensor folder and an audio folder",
        ),
        Binding("ctrl+r", "rescan", "Rescan", id="dataset.rescan", tooltip="Check every file again"),
        Binding(
            "ctrl+g",
            "tags",
            "Tags",
            id="dataset.tags",
            show=False,  # in the command palette and the audio tab's status line
            tooltip="Add or remove a trigger tag in the songs' captions (sidestep tags)",
        ),
        Binding(
            "ctrl+b",
            "analyze_audio",
            "Analyze audio",
            id="dataset.analyze-audio",
            show=False,
            tooltip="BPM, key and time signature into the sidecars, where missing (sidestep audio-analyze)",
        ),
        Binding(
            "ctrl+n",
            "analyze",
            "Analyze (PP++)",
            id="dataset.analyze",
            tooltip="Measure which modules matter for these tensors: per-module LoRA ranks in fisher_map.json",
        ),
        Binding("ctrl+x", "stop_analysis", "Stop", id="dataset.stop-analysis", tooltip="Stop the analysis (nothing is written)"),
        Binding(
            "ctrl+l", "estimate", "Estimate", id="dataset.estimate", tooltip="Rank the modules: the top-k to a module config"
        ),
        # Once there is an estimate, "Use estimate" takes this key's place in the footer (80 columns hold one of them).
        Binding("ctrl+l", "estimate_again", "Estimate", id="dataset.estimate-again", show=False, tooltip="Estimate again"),
        Binding("ctrl+x", "stop_estimate", "Stop", id="dataset.stop-estimate", tooltip="Stop the estimate (nothing is written)"),
        Binding("ctrl+y", "use_estimate", "Use estimate", id="dataset.use-estimate", tooltip="Train only its top-k (Setup)"),
        # In the palette and the estimate's status line: 80 columns hold no more keys.
        Binding("ctrl+o", "compare", "Compare", id="dataset.compare", show=False, tooltip="Compare module configs side by side"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report: ptinspect.DatasetReport | None = None
        self._report_path = ""
        self.fisher: fishermap.FisherMap | None = None
        self.analysis_job = ""  # the run id of our PP++ job while it runs
        self._analysis_dir = ""
        self._prep: AudioPrep | None = None

    def compose(self) -> ComposeResult:
        # Before the widgets exist: set later (on_resize), the class restyles every widget on the screen.
        self.set_class(self.app.size.width < NARROW, "-narrow")
        yield Static("", id="dataset-model", markup=False)
        with TabbedContent(initial=TENSORS, id="dataset-source"):
            with TabPane("Tensor folder", id=TENSORS):
                yield PathField(
                    "Tensor folder: preprocessed .pt files (and manifest.json)",
                    self._initial_path(),
                    placeholder="/path/to/tensors",
                    id="dataset-path",
                )
                with Horizontal(id="dataset-body"):
                    yield Static(NO_REPORT, id="dataset-summary", markup=False)
                    with VerticalScroll(id="dataset-problems"):
                        yield Static("", id="dataset-problem-list", markup=False)
                with VerticalScroll(id="fisher-panel"):
                    yield Static("", id="fisher-status", markup=False)
                    yield Static("", id="fisher-heat", markup=False)
                    yield DataTable(id="fisher-table", cursor_type="row", zebra_stripes=True)
                yield EstimatePanel(id="estimate-panel")
            yield TabPane("Audio → tensors", id=AUDIO)  # its AudioPrep is built on the tab's first show
        yield SidestepFooter()

    def _initial_path(self) -> str:
        draft = self.app.draft
        return str(draft.get("dataset_dir") or self.app.settings.last_dataset_dir or "")

    def on_mount(self) -> None:
        self.query_one("#dataset-path", PathField).input.focus()
        self.query_one("#fisher-table", DataTable).add_columns(*FISHER_COLUMNS)
        self._show_model()
        self.set_interval(0.25, self._follow_analysis)

    def on_screen_resume(self) -> None:
        self._show_model()
        if self.report is not None:
            self._render_report()

    def on_resize(self) -> None:
        self.set_class(self.size.width < NARROW, "-narrow")

    # ------------------------------------------------------------------ the chosen model

    def _model(self) -> tuple[str | None, int | None]:
        """(model_variant, hidden size to compare with) from the draft; hidden only for non-XL
        models, whose encoder width equals their hidden size."""
        draft = self.app.draft
        variant, root = draft.get("model_variant"), draft.get("checkpoint_dir")
        if not variant or not root:
            return None, None
        info = discovery.find_model(str(root), str(variant))
        hidden = info.hidden_size if info is not None and not info.xl else None
        return str(variant), hidden

    def _show_model(self) -> None:
        variant, _ = self._model()
        text = f"For model: {variant}" if variant else "No model chosen yet (Models screen, F1): the variant check waits for one."
        self.query_one("#dataset-model", Static).update(text)

    # ------------------------------------------------------------------ scanning

    @on(PathField.Checked, "#dataset-path")
    def _path_checked(self, event: PathField.Checked) -> None:
        if event.check.ok:
            self._scan(event.path)
        else:
            self.report = None
            self.query_one("#dataset-summary", Static).update(NO_REPORT)
            self.query_one("#dataset-problem-list", Static).update("")
            if not self.analysis_job:
                self._show_fisher(None, "")

    @work(thread=True, exclusive=True, group="dataset-scan", name="dataset-scan", exit_on_error=False)
    def _scan(self, path: str) -> None:
        report = ptinspect.scan_dataset(path)
        fisher, problem = read_fisher(path)
        self.post_message(DatasetScanned(path, report, fisher, problem))

    @on(DatasetScanned)
    def _scanned(self, message: DatasetScanned) -> None:
        if message.path != self.query_one("#dataset-path", PathField).value:
            return  # the user typed on; a newer scan is coming
        self.report, self._report_path = message.report, message.path
        self._render_report()
        if not self.analysis_job:
            self._show_fisher(message.fisher, message.fisher_problem)

    def _render_report(self) -> None:
        report = self.report
        if report is None:
            return
        variant, hidden = self._model()
        self.query_one("#dataset-summary", Static).update(dataset_summary(report, variant, hidden))
        problems = dataset_problems(report, variant, hidden)
        text = "\n".join(problems) if problems else "✓ no problems found"
        self.query_one("#dataset-problem-list", Static).update(f"Problems ({len(problems)})\n{text}" if problems else text)
        self.set_class(bool(problems), "-problems")

    # ------------------------------------------------------------------ tabs and keys

    @property
    def source(self) -> str:
        return self.query_one(TabbedContent).active

    @property
    def prep(self) -> AudioPrep:
        self._build_prep()
        assert self._prep is not None
        return self._prep

    def _build_prep(self) -> AwaitMount | None:
        """The Audio → tensors tab's content, mounted when the tab is first shown (most visits never
        open it: its ~40 widgets would be composed, styled and laid out on every first open)."""
        if self._prep is not None:
            return None
        self._prep = AudioPrep(audio_dir=self.app.settings.last_audio_dir, id="audio-prep")
        return self.query_one(f"#{AUDIO}", TabPane).mount(self._prep)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """One Ctrl+S, three meanings, only one shown at a time: use the tensor folder, start
        preprocessing, or (once it is done) use what it made. Stop exists only while a job runs.
        (Returning False also keeps an unavailable action out of the command palette.)"""
        if action == "use":
            return self.source == TENSORS
        if action in ("tags", "analyze_audio"):
            return self.source == AUDIO and self.prep.report is not None and self.prep.state not in (STARTING, RUNNING)
        if action == "analyze":
            return self.source == TENSORS and not self.analysis_job and not self.estimates.job
        if action in ("estimate", "estimate_again"):
            idle = self.source == TENSORS and not self.analysis_job and not self.estimates.job
            return idle and (action == "estimate") != bool(self.estimates.path)
        if action == "stop_estimate":
            return self.source == TENSORS and bool(self.estimates.job)
        if action == "compare":
            return self.source == TENSORS
        if action == "use_estimate":
            return self.source == TENSORS and bool(self.estimates.path) and not self.estimates.job
        if action == "stop_analysis":
            return self.source == TENSORS and bool(self.analysis_job)
        if action in ("preprocess", "use_tensors", "stop_preprocess"):
            if self.source != AUDIO:
                return False
            state = self.prep.state
            if action == "stop_preprocess":
                return state == RUNNING  # once the engine has the job (while it boots, Ctrl+Q still quits)
            if action == "use_tensors":
                return state == DONE
            return state not in (STARTING, RUNNING, DONE)
        return True

    @on(TabbedContent.TabActivated)
    async def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == AUDIO and (mounting := self._build_prep()) is not None:
            await mounting
        self.refresh_bindings()

    @on(AudioPrep.StateChanged)
    @on(EstimatePanel.StateChanged)
    def _job_state(self) -> None:
        self.refresh_bindings()

    async def action_toggle_source(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = AUDIO if tabs.active == TENSORS else TENSORS
        if tabs.active == TENSORS:
            self.query_one("#dataset-path", PathField).input.focus()
            self.refresh_bindings()
            return
        if (mounting := self._build_prep()) is not None:
            await mounting
        if self.prep.state in (STARTING, RUNNING):
            self.prep.query_one("#prep-files").focus()
        else:
            self.prep.audio_field.input.focus()
        self.refresh_bindings()

    # ------------------------------------------------------------------ actions

    def action_rescan(self) -> None:
        if self.source == AUDIO:
            self.prep.rescan()
        else:
            self.query_one("#dataset-path", PathField).recheck()

    def action_tags(self) -> None:
        from ..dialogs.tags import TagsDialog

        report = self.prep.report
        if report is None:
            return

        def done(result: str | None) -> None:
            if result:
                self.notify(result, title="Tags")
                self.prep.rescan()

        self.app.push_screen(TagsDialog(report.audio_dir), done)

    def action_analyze_audio(self) -> None:
        report = self.prep.report
        if report is None:
            return
        self.notify(f"Analysing the songs in {report.audio_dir} …", title="Audio analysis")
        self._analyze(report.audio_dir)

    @work(thread=True, exclusive=True, group="audio-analyze", name="audio-analyze", exit_on_error=False)
    def _analyze(self, audio_dir: str) -> None:
        try:
            line = sidecar_edit.analyze_in_subprocess(audio_dir)
        except (sidecar_edit.EditError, OSError, subprocess.SubprocessError) as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", title="Audio analysis")
            return
        self.app.call_from_thread(self.notify, line, title="Audio analysis")
        self.app.call_from_thread(self.prep.rescan)

    def action_preprocess(self) -> None:
        prep = self.prep
        config_json, problem = prep.check_ready(self.app.draft)
        if config_json is None:
            self.notify(problem, severity="error", title="Preprocess")
            return
        settings = self.app.settings
        if prep.start(config_json):
            audio_dir = os.path.abspath(os.path.expanduser(prep.audio_field.value))
            if settings.last_audio_dir != audio_dir:
                self.app.post_message(SettingsChanged(settings.replace(last_audio_dir=audio_dir)))

    def action_stop_preprocess(self) -> None:
        if self.app.session.send(StopRun()):
            self.notify("Stopping after the current file; finished files are kept and a new start resumes.", title="Preprocess")

    def action_use_tensors(self) -> None:
        path = self.prep.output_dir
        field = self.query_one("#dataset-path", PathField)
        field.value = path  # the Tensor folder tab shows (and checks) it from now on
        self._use_path(path)

    def action_use(self) -> None:
        field = self.query_one("#dataset-path", PathField)
        path = os.path.abspath(os.path.expanduser(field.value)) if field.value else ""
        report = self.report
        if report is None or self._report_path != field.value:
            self.notify("The folder has not been checked yet (or does not exist).", severity="warning")
            return
        if report.samples == 0:
            self.notify("No usable samples in this folder: see the problems listed.", severity="error")
            return
        if report.problems:
            self.notify(
                f"{len(report.problems)} problem(s) listed: only the {report.samples} good samples are counted.",
                severity="warning",
                title="Dataset",
            )
        self._use_path(path)

    def _use_path(self, path: str) -> None:
        # Straight to the App, then switch: the Setup screen reads app.draft on resume.
        self.app.post_message(DraftUpdated({"dataset_dir": path}))
        settings = self.app.settings
        if settings.last_dataset_dir != path:
            self.app.post_message(SettingsChanged(settings.replace(last_dataset_dir=path)))
        self.notify(f"Dataset: {path}", title="Draft")
        if "setup" in self.app.MODES:
            self.app.call_later(self.app.switch_mode, "setup")

    # ------------------------------------------------------------------ PP++ (fisher_map.json)

    def _show_fisher(self, fmap: fishermap.FisherMap | None, problem: str) -> None:
        self.fisher = fmap
        table = self.query_one("#fisher-table", DataTable)
        table.clear()
        heat = self.query_one("#fisher-heat", Static)
        status = self.query_one("#fisher-status", Static)
        self.set_class(fmap is not None or bool(problem), "-fisher")
        if fmap is None:
            heat.update("")
            status.update(f"✗ {problem}" if problem else "")
            return
        status.update(f"PP++ ranks ({fishermap.FILE_NAME}): {fmap.summary()}")
        layers = fishermap.layer_heat(fmap)
        heat.update(
            f"layers 0-{len(layers) - 1}  [{fishermap.heat_strip(layers)}]  (mean Fisher score per layer)" if layers else ""
        )
        for row in fishermap.table_rows(fmap):
            table.add_row(*row, key=row[0])

    def _analysis_options(self) -> tuple[str | None, str]:
        """The job's options JSON from the draft's model and rank, or the reason it cannot start."""
        draft = self.app.draft
        root, variant = draft.get("checkpoint_dir"), draft.get("model_variant")
        if not root or not variant:
            return None, "Choose a model first (Models screen, F1): the analysis runs it."
        report = self.report
        field = self.query_one("#dataset-path", PathField)
        if report is None or self._report_path != field.value or report.samples == 0:
            return None, "No usable tensors in this folder to analyse."
        try:
            rank = int(str(draft.get("rank") or fishermap.ANALYZE_DEFAULTS["rank"]))
        except ValueError:
            rank = fishermap.ANALYZE_DEFAULTS["rank"]
        path = os.path.abspath(os.path.expanduser(field.value))
        options = {
            "rank": rank,
            "rank_min": min(fishermap.ANALYZE_DEFAULTS["rank_min"], rank),
            "rank_max": max(fishermap.ANALYZE_DEFAULTS["rank_max"], rank),
        }
        for name in ("device", "precision", "attention_backend"):
            if draft.get(name):
                options[name] = str(draft[name])
        return fishermap.analyze_options_json(str(root), str(variant), path, **options), ""

    def action_analyze(self) -> None:
        options_json, problem = self._analysis_options()
        if options_json is None:
            self.notify(problem, severity="error", title="Analyze (PP++)")
            return
        job = f"pp-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if not self.app.session.start_analysis(options_json, run_id=job):
            return
        self.analysis_job = job
        self._analysis_dir = self._report_path
        self.set_class(True, "-fisher")
        self.query_one("#fisher-status", Static).update("PP++: starting the engine…")
        self.refresh_bindings()

    def action_stop_analysis(self) -> None:
        if self.app.session.send(StopRun()):
            self.notify("Stopping the analysis after the current batch; nothing is written.", title="Analyze (PP++)")

    def _follow_analysis(self) -> None:
        if not self.analysis_job:
            return
        job = self.app.session.follow_job(self.analysis_job, "analysis")
        status = self.query_one("#fisher-status", Static)
        if job.status == "waiting":
            return
        if job.status == "failed":
            self._end_analysis(job.line)
        elif job.status == "completed":
            self._end_analysis("")
            self._show_fisher(*read_fisher(self._analysis_dir))
        elif job.status == "stopped":
            self._end_analysis("■ analysis stopped: nothing written")
            fmap, problem = read_fisher(self._analysis_dir)
            if fmap is not None:
                self._show_fisher(fmap, problem)
                status.update("■ analysis stopped: nothing written; the earlier map stays")
        else:
            status.update(f"PP++: {job.line}…")

    def _end_analysis(self, text: str) -> None:
        self.analysis_job = ""
        if text:
            self.query_one("#fisher-status", Static).update(text)
        self.refresh_bindings()
