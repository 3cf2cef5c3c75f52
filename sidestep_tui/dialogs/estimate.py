"""Where the estimate writes its module config: the TUI face of ``sidestep estimate --output``.

Shows what the estimate will do (the Setup draft's top-k, granularity and batches) and takes the file
name, completed from the filesystem; ``module_config.json`` in the dataset folder unless changed.
Dismisses with the absolute path, or None. A folder, or a file in a folder that does not exist, is one
line in the dialog and the dialog stays.
"""

from __future__ import annotations

import os

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from ..widgets.path_input import PathInput


def check_output(path: str) -> str:
    """The problem with writing a module config to ``path`` (one line), or ""."""
    if not path.strip():
        return "enter a file name, e.g. module_config.json"
    full = os.path.abspath(os.path.expanduser(path.strip()))
    if os.path.isdir(full):
        return f"{full} is a folder: add a file name, e.g. {os.path.join(full, 'module_config.json')}"
    if not os.path.isdir(os.path.dirname(full)):
        return f"{os.path.dirname(full)} does not exist: choose a file in an existing folder"
    return ""


class EstimateDialog(ModalScreen[str | None]):
    DEFAULT_CSS = """
    EstimateDialog { align: center middle; }
    EstimateDialog > Vertical {
        width: 100; max-width: 95%; height: auto; max-height: 90%; border: thick $primary; background: $surface; padding: 1 2;
    }
    EstimateDialog #estimate-title { text-style: bold; }
    EstimateDialog #estimate-about { color: $text-muted; height: auto; margin-bottom: 1; }
    EstimateDialog #estimate-problem { color: $error; height: auto; }
    """
    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="estimate.start", tooltip="Run the estimate and write the module config"),
        Binding("escape", "cancel", "Cancel", id="estimate.cancel"),
    ]

    def __init__(self, output: str, about: str) -> None:
        super().__init__()
        self.output = output
        self.about = about

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Estimate: which modules matter for these tensors", id="estimate-title")
            yield Static(self.about, id="estimate-about", markup=False)
            yield Label("Write the module config (the top-k) to:")
            yield PathInput(self.output, dirs_only=False, id="estimate-output")
            yield Static("", id="estimate-problem", markup=False)
            yield Static("Enter or Ctrl+S: start · Esc: cancel", markup=False)

    def on_mount(self) -> None:
        self.query_one("#estimate-output", PathInput).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_start()

    def action_start(self) -> None:
        path = self.query_one("#estimate-output", PathInput).value
        problem = check_output(path)
        if problem:
            self.query_one("#estimate-problem", Static).update(f"✗ {problem}")
            return
        self.dismiss(os.path.abspath(os.path.expanduser(path.strip())))

    def action_cancel(self) -> None:
        self.dismiss(None)
