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
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Static, TabbedContent, TabPane

from engine import discovery, ptinspect, sidecar_edit
from engine.protocol import StopRun

from ..appref import SidestepAppRef
from ..formatting import dataset_problems, dataset_summary
from ..messages import DraftUpdated, SettingsChanged
from ..widgets.audio_prep import DONE, RUNNING, STARTING, AudioPrep
from ..widgets.footer import SidestepFooter
from ..widgets.path_input import PathField
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


class DatasetScreen(QuickScreen):
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
            id="dataset.analyze",
            show=False,
            tooltip="BPM, key and time signature into the sidecars, where missing (sidestep audio-analyze; needs librosa)",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report: ptinspect.DatasetReport | None = None
        self._report_path = ""

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
            with TabPane("Audio → tensors", id=AUDIO):
                yield AudioPrep(audio_dir=self.app.settings.last_audio_dir, id="audio-prep")
        yield SidestepFooter()

    def _initial_path(self) -> str:
        draft = self.app.draft
        return str(draft.get("dataset_dir") or self.app.settings.last_dataset_dir or "")

    def on_mount(self) -> None:
        self.query_one("#dataset-path", PathField).input.focus()
        self._show_model()

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

    @work(thread=True, exclusive=True, group="dataset-scan", name="dataset-scan", exit_on_error=False)
    def _scan(self, path: str) -> None:
        self.post_message(DatasetScanned(path, ptinspect.scan_dataset(path)))

    @on(DatasetScanned)
    def _scanned(self, message: DatasetScanned) -> None:
        if message.path != self.query_one("#dataset-path", PathField).value:
            return  # the user typed on; a newer scan is coming
        self.report, self._report_path = message.report, message.path
        self._render_report()

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
        return self.query_one(AudioPrep)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """One Ctrl+S, three meanings, only one shown at a time: use the tensor folder, start
        preprocessing, or (once it is done) use what it made. Stop exists only while a job runs.
        (Returning False also keeps an unavailable action out of the command palette.)"""
        if action == "use":
            return self.source == TENSORS
        if action in ("tags", "analyze_audio"):
            return self.source == AUDIO and self.prep.report is not None and self.prep.state not in (STARTING, RUNNING)
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
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()

    @on(AudioPrep.StateChanged)
    def _prep_state(self) -> None:
        self.refresh_bindings()

    def action_toggle_source(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = AUDIO if tabs.active == TENSORS else TENSORS
        if tabs.active == TENSORS:
            self.query_one("#dataset-path", PathField).input.focus()
        elif self.prep.state in (STARTING, RUNNING):
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
