"""Trigger tags for an audio folder's captions: the TUI face of ``sidestep tags add|remove``.

Type a tag, choose where it goes, press Add or Remove: the dialog shows the diff of every sidecar the
change would touch (``engine.sidecar_edit``, the same plan the CLI prints), and Apply writes it, each
file atomically, changing nothing but the captions. Dismisses with a one-line summary of what was
written, or None.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from engine import sidecar_edit as edit
from engine.sidecars import TAG_POSITIONS


class TagsDialog(ModalScreen[str | None]):
    DEFAULT_CSS = """
    TagsDialog { align: center middle; }
    TagsDialog > Vertical {
        width: 100; max-width: 95%; height: auto; max-height: 90%; border: thick $primary; background: $surface; padding: 1 2;
    }
    TagsDialog #tags-title { text-style: bold; }
    TagsDialog #tags-row { height: auto; }
    TagsDialog #tags-input { width: 1fr; }
    TagsDialog #tags-position { width: 20; }
    TagsDialog #tags-current { color: $text-muted; height: auto; }
    TagsDialog #tags-preview-box { height: auto; max-height: 20; border: round $primary 40%; }
    TagsDialog #tags-preview { height: auto; }
    TagsDialog Horizontal.-buttons { height: auto; margin-top: 1; }
    TagsDialog Button { margin-right: 1; }
    """
    BINDINGS = [
        Binding("ctrl+s", "apply", "Apply", id="tags.apply", tooltip="Write the changes shown"),
        Binding("escape", "cancel", "Cancel", id="tags.cancel"),
    ]

    def __init__(self, audio_dir: str) -> None:
        super().__init__()
        self.audio_dir = audio_dir
        self.plan: edit.Plan | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Trigger tags in the captions of {self.audio_dir}", id="tags-title", markup=False)
            yield Static(self._current(), id="tags-current", markup=False)
            with Horizontal(id="tags-row"):
                yield Input(placeholder="tag, e.g. mystyle", id="tags-input")
                yield Select([(p, p) for p in TAG_POSITIONS], value="prepend", allow_blank=False, id="tags-position")
            with Horizontal(classes="-buttons"):
                yield Button("Add", id="tags-add", variant="primary")
                yield Button("Remove", id="tags-remove")
                yield Button("Apply (ctrl+s)", id="tags-apply", variant="warning", disabled=True)
                yield Button("Cancel (esc)", id="tags-cancel")
            with VerticalScroll(id="tags-preview-box"):
                yield Static(
                    "Add or Remove shows what would change; nothing is written before Apply.", id="tags-preview", markup=False
                )

    def _current(self) -> str:
        try:
            found = edit.list_tags(self.audio_dir)
        except edit.EditError as exc:
            return str(exc)
        if not found:
            return "No caption part is shared by more than one song yet."
        return "Shared now: " + ", ".join(f"{t.tag} ({t.songs} of {t.total})" for t in found[:6])

    def on_mount(self) -> None:
        self.query_one("#tags-input", Input).focus()

    def _preview(self, action: str) -> None:
        tag = self.query_one("#tags-input", Input).value
        position = str(self.query_one("#tags-position", Select).value)
        try:
            plan = edit.plan_add(self.audio_dir, tag, position) if action == "add" else edit.plan_remove(self.audio_dir, tag)
        except edit.EditError as exc:
            self.plan = None
            self._show(f"✗ {exc}", ready=False)
            return
        self.plan = plan
        notes = "".join(f"\nnote: {n}" for n in plan.notes)
        self._show((plan.diff() or "Nothing to change.") + notes + f"\n{plan.summary()}", ready=bool(plan.edits))

    def _show(self, text: str, *, ready: bool) -> None:
        self.query_one("#tags-preview", Static).update(text)
        self.query_one("#tags-apply", Button).disabled = not ready

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._preview("add")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "tags-add":
            self._preview("add")
        elif event.button.id == "tags-remove":
            self._preview("remove")
        elif event.button.id == "tags-apply":
            self.action_apply()
        else:
            self.dismiss(None)

    def action_apply(self) -> None:
        plan = self.plan
        if plan is None or not plan.edits:
            self.notify("Nothing to write: press Add or Remove first.", severity="warning", title="Tags")
            return
        try:
            done = plan.apply()
        except (edit.EditError, OSError) as exc:
            self._show(f"✗ {exc}", ready=False)
            return
        self.dismiss(f"wrote {len(done)} sidecar file{'s' * (len(done) != 1)}")

    def action_cancel(self) -> None:
        self.dismiss(None)
