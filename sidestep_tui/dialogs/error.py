"""The run-failed dialog: message, hint and the engine's traceback text."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Collapsible, Label, Static

from ..state import Failure


class ErrorDialog(ModalScreen[None]):
    DEFAULT_CSS = """
    ErrorDialog { align: center middle; }
    ErrorDialog > Vertical {
        width: 90%; max-width: 120; height: auto; max-height: 90%;
        border: thick $error; background: $surface; padding: 1 2;
    }
    ErrorDialog #error-title { text-style: bold; color: $error; }
    ErrorDialog #error-hint { color: $warning; margin-top: 1; }
    ErrorDialog VerticalScroll { height: auto; max-height: 20; }
    ErrorDialog #error-traceback { color: $text-muted; }
    ErrorDialog Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    """
    BINDINGS = [
        Binding("escape", "close", "Close", id="error.close"),
        Binding("q", "close", "Close", id="error.close-alt", show=False),
    ]

    def __init__(self, failure: Failure) -> None:
        super().__init__()
        self.failure = failure

    def compose(self) -> ComposeResult:
        f = self.failure
        kind = "Out of memory" if f.oom else f.error_type or "Error"
        with Vertical():
            yield Label(f"[FAILED] Run failed at step {f.step}: {kind}", id="error-title", markup=False)
            yield Static(f.message or "(no message)", id="error-message", markup=False)
            if f.hint:
                yield Static(f"Hint: {f.hint}", id="error-hint", markup=False)
            if f.traceback:
                with Collapsible(title="Traceback (also in the run's sidestep.log)", collapsed=True), VerticalScroll():
                    yield Static(f.traceback, id="error-traceback", markup=False)
            with Horizontal():
                yield Button("Close (esc / q)", id="close", variant="error")

    def on_button_pressed(self) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
