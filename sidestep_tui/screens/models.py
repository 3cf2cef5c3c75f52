"""Models: every model folder under the checkpoint root, the shared parts, and the GPUs.

The scan (``engine.discovery.scan_checkpoints``: config.json files only) and the NVML query run in
thread workers, so a slow disk or driver never freezes the screen. Typing in the filter narrows the
table at once; Enter (or Ctrl+S) on a row chooses that model: ``DraftUpdated(checkpoint_dir,
model_variant, base_model)`` goes to the App and the Dataset screen opens.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from engine import acesrc, codehash, discovery

from ..appref import SidestepAppRef
from ..formatting import MODEL_COLUMNS, gpu_lines, model_detail, model_matches, model_row, plural, shared_status
from ..messages import DraftUpdated
from ..widgets.footer import SidestepFooter
from .quick import QuickScreen
from .screen_commands import ScreenActions

NARROW = 130
NARROW_COLUMNS = ("Model", "Variant", "Kind", "Size", "Status")


@dataclass
class ScanDone(Message):
    scan: discovery.ScanResult
    code: dict[str, codehash.CodeReport]  # model path -> its Python files against the first-seen hashes


@dataclass
class GpusDone(Message):
    gpus: list[discovery.GpuInfo]


class ModelsScreen(QuickScreen):
    app = SidestepAppRef()
    CSS_PATH = "models.tcss"
    COMMANDS = {ScreenActions}
    BINDINGS = [
        Binding("ctrl+s", "choose", "Use model", id="models.choose", tooltip="Use the highlighted model (also Enter)"),
        Binding("ctrl+f", "focus_filter", "Filter", id="models.filter", tooltip="Type to filter the models"),
        Binding("ctrl+r", "rescan", "Rescan", id="models.rescan", tooltip="Scan the checkpoint root and GPUs again"),
        Binding("ctrl+o", "change_root", "Root", id="models.root", tooltip="Change the checkpoint root (saved in settings)"),
        Binding("down", "focus_table", "Table", show=False, id="models.table"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.scan: discovery.ScanResult | None = None
        self.shown: list[discovery.ModelInfo] = []
        self._root: str | None = None
        self._acestep: dict[str, str | None] = {}  # model path -> where its code's `acestep` comes from
        self._code: dict[str, codehash.CodeReport] = {}  # model path -> the code that runs when it loads

    def compose(self) -> ComposeResult:
        # Before the widgets exist: set later (on_resize), the class restyles every widget on the screen.
        self.set_class(self.app.size.width < NARROW, "-narrow")
        yield Static("", id="models-root")
        with Horizontal(id="models-body"):
            with Vertical(id="models-left"):
                yield Input(placeholder="type to filter: name, variant, official / custom, problem …", id="models-filter")
                yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
                yield Static("", id="models-count")
            with VerticalScroll(id="models-right"):
                yield Static("", id="model-detail", markup=False)
                yield Static("", id="models-shared", markup=False)
                yield Static("GPUs: checking …", id="models-gpus", markup=False)
        yield SidestepFooter()

    def on_mount(self) -> None:
        self.query_one("#models-filter", Input).focus()
        self._refresh_all()

    def on_screen_resume(self) -> None:
        if self.app.settings.checkpoint_root != self._root:
            self._refresh_all()

    def on_resize(self) -> None:
        narrow = self.size.width < NARROW
        if narrow != self.has_class("-narrow"):
            self.set_class(narrow, "-narrow")
            self._fill_table()

    # ------------------------------------------------------------------ scanning

    def _refresh_all(self) -> None:
        self._root = self.app.settings.checkpoint_root
        self._acestep.clear()
        self.query_one("#models-root", Static).update(f"Checkpoint root: {self._root or '(not set)'}  · scanning …")
        self._scan(self._root or "")
        self._query_gpus()

    @work(thread=True, exclusive=True, group="models-scan", name="models-scan", exit_on_error=False)
    def _scan(self, root: str) -> None:
        scan = discovery.scan_checkpoints(root)
        # Hash each folder's .py files (small) and record the first-seen hashes: trust on first use.
        self.post_message(ScanDone(scan, {m.path: codehash.check(m.path) for m in scan.models}))

    @work(thread=True, exclusive=True, group="models-gpus", name="models-gpus", exit_on_error=False)
    def _query_gpus(self) -> None:
        self.post_message(GpusDone(discovery.gpus()))

    @on(ScanDone)
    def _scan_done(self, message: ScanDone) -> None:
        self.scan = message.scan
        self._code = message.code
        count = plural(len(message.scan.models), "model")
        self.query_one("#models-root", Static).update(f"Checkpoint root: {message.scan.root}  · {count}")
        self.query_one("#models-shared", Static).update(shared_status(message.scan.shared, message.scan.problems))
        self._fill_table()

    @on(GpusDone)
    def _gpus_done(self, message: GpusDone) -> None:
        self.query_one("#models-gpus", Static).update("\n".join(gpu_lines(message.gpus)))

    # ------------------------------------------------------------------ table and filter

    @on(Input.Changed, "#models-filter")
    def _filter_changed(self) -> None:
        self._fill_table()

    def _fill_table(self) -> None:
        table = self.query_one(DataTable)
        query = self.query_one("#models-filter", Input).value
        models = self.scan.models if self.scan else ()
        self.shown = [m for m in models if model_matches(m, query, self._code.get(m.path))]
        # Narrow terminals get the columns that tell models apart; the detail panel has the rest.
        keep = [i for i, c in enumerate(MODEL_COLUMNS) if not self.has_class("-narrow") or c in NARROW_COLUMNS]
        columns = [MODEL_COLUMNS[i] for i in keep]
        rows = [tuple(model_row(m, self._code.get(m.path))[i] for i in keep) for m in self.shown]
        # Explicit widths: DataTable's auto widths can keep a stale, narrower render of rows that
        # were drawn before its idle-time measuring (seen with Textual 8.2.8).
        widths = [max(len(c) for c in cells) for cells in zip(columns, *rows, strict=True)]
        table.clear(columns=True)
        for column, width in zip(columns, widths, strict=True):
            table.add_column(column, key=column, width=width)
        for model, row in zip(self.shown, rows, strict=True):
            table.add_row(*row, key=model.path)
        total = len(models)
        note = f"{len(self.shown)} of {total} shown" if query.strip() else plural(total, "model")
        self.query_one("#models-count", Static).update(note)
        self._show_detail()

    def _highlighted(self) -> discovery.ModelInfo | None:
        table = self.query_one(DataTable)
        if not self.shown or table.cursor_row < 0 or table.cursor_row >= len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def _show_detail(self) -> None:
        model = self._highlighted()
        code = self._code.get(model.path) if model else None
        text = model_detail(model, code) if model else ("No model matches the filter." if self.scan else "")
        if model is not None:
            # Stub model code imports ACE-Step's package: show which source the engine will use (or why none).
            if model.path not in self._acestep:
                self._acestep[model.path] = acesrc.describe(model.path)
            if self._acestep[model.path] is not None:
                text += f"\nacestep src   {self._acestep[model.path]}"
        self.query_one("#model-detail", Static).update(text)

    @on(DataTable.RowHighlighted)
    def _highlight(self) -> None:
        self._show_detail()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_choose()

    @on(Input.Submitted, "#models-filter")
    def _filter_submitted(self) -> None:
        if len(self.shown) == 1:
            self.action_choose()
        else:
            self.action_focus_table()

    # ------------------------------------------------------------------ actions

    def action_focus_filter(self) -> None:
        self.query_one("#models-filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one(DataTable).focus()

    def action_rescan(self) -> None:
        self._refresh_all()

    def action_change_root(self) -> None:
        self.app.change_checkpoint_root()

    def action_choose(self) -> None:
        model = self._highlighted()
        if model is None or self.scan is None:
            self.notify("No model to choose: check the checkpoint root or the filter.", severity="warning")
            return
        if model.problems:
            self.notify("; ".join(model.problems), title=f"{model.name} has problems", severity="warning", timeout=10)
        values = {
            "checkpoint_dir": self.scan.root,
            "model_variant": model.alias,
            # Official models are recognised by name; a fine-tune carries its detected base (or none).
            "base_model": None if model.official else model.base_model,
        }
        # Straight to the App, then switch: the Dataset and Setup screens read app.draft on resume.
        self.app.post_message(DraftUpdated(values))
        self.notify(f"Model: {model.alias}", title="Draft")
        if "dataset" in self.app.MODES:
            self.app.call_later(self.app.switch_mode, "dataset")
