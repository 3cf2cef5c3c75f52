"""Change the checkpoint root (the folder holding the model folders) without editing settings.json:
a path field with completion and the first-run screen's check. Enter accepts a folder that exists;
anything else is refused in place with the check's one line. Dismisses with the absolute path or None."""

from __future__ import annotations

import os

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from ..screens.first_run import check_checkpoint_root
from ..widgets.path_input import PathField


class RootDialog(ModalScreen[str | None]):
    DEFAULT_CSS = """
    RootDialog { align: center middle; }
    RootDialog > Vertical {
        width: 90%; max-width: 100; height: auto; border: thick $primary; background: $surface; padding: 0 1;
    }
    RootDialog #root-title { text-style: bold; }
    RootDialog #root-message { height: auto; color: $error; text-style: bold; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="root.cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Checkpoint root", id="root-title")
            yield PathField(
                "Folder holding acestep-v15-*/ (and vae/, Qwen3-Embedding-0.6B/) · Enter uses it, Esc cancels",
                self.current,
                check=check_checkpoint_root,
                placeholder="/path/to/ACE-Step-1.5/checkpoints",
                id="root-path",
            )
            yield Static("", id="root-message", markup=False)

    def on_mount(self) -> None:
        self.query_one(PathField).input.focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        path = self.query_one(PathField).value
        check = check_checkpoint_root(path)
        if check.ok is False:
            self.query_one("#root-message", Static).update(f"✗ {check.message}")
            return
        self.dismiss(os.path.abspath(os.path.expanduser(path)))

    def action_cancel(self) -> None:
        self.dismiss(None)
