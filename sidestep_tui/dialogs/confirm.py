"""A yes/no question (stop the run?, resume from a checkpoint?)."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class ConfirmDialog(ModalScreen[bool]):
    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical {
        width: 64; max-width: 95%; height: auto; border: thick $primary; background: $surface; padding: 1 2;
    }
    ConfirmDialog #confirm-title { text-style: bold; }
    ConfirmDialog Horizontal { height: auto; margin-top: 1; }
    ConfirmDialog Button { margin-right: 1; }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n", "answer(False)", "No", id="confirm.no"),
        Binding("escape", "answer(False)", "No", id="confirm.cancel", show=False),
    ]

    def __init__(self, title: str, body: str = "", *, yes: str = "Yes", no: str = "No", yes_key: str = "y") -> None:
        super().__init__()
        self.title_text, self.body, self.yes, self.no = title, body, yes, no
        self.yes_key = yes_key  # the key that asked (Stop: s) answers yes too, so one key does it everywhere

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="confirm-title", markup=False)
            if self.body:
                yield Static(self.body, markup=False)
            with Horizontal():
                yield Button(f"{self.yes} ({self.yes_key})", id="yes", variant="warning")
                yield Button(f"{self.no} (n / esc)", id="no")

    def on_key(self, event: events.Key) -> None:
        if event.key == self.yes_key and self.yes_key != "y":
            event.stop()
            self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)
