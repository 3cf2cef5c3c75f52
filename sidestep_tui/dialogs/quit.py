"""Asked when quitting while a run trains (or audio is preprocessed): stop / leave it running / cancel."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from ..session import QuitChoice

_CHOICES: dict[str, QuitChoice] = {"stop": "stop", "leave": "leave", "cancel": "cancel"}


class QuitDialog(ModalScreen[QuitChoice]):
    """Dismisses with "stop", "leave" or "cancel"."""

    DEFAULT_CSS = """
    QuitDialog { align: center middle; }
    QuitDialog > Vertical {
        width: 76; max-width: 95%; height: auto; border: thick $warning; background: $surface; padding: 1 2;
    }
    QuitDialog #quit-title { text-style: bold; }
    QuitDialog Static { margin-top: 1; }
    QuitDialog Horizontal { height: auto; margin-top: 1; }
    QuitDialog Button { margin-right: 1; }
    """
    BINDINGS = [
        Binding("s", "choose('stop')", "Stop & save", id="quit.stop"),
        Binding("l", "choose('leave')", "Leave running", id="quit.leave"),
        Binding("escape", "choose('cancel')", "Cancel", id="quit.cancel"),
        Binding("c", "choose('cancel')", "Cancel", id="quit.cancel-alt", show=False),
    ]

    def __init__(self, *, owns_engine: bool = True, preprocessing: bool = False) -> None:
        super().__init__()
        self.owns_engine = owns_engine
        self.preprocessing = preprocessing

    def compose(self) -> ComposeResult:
        if self.preprocessing:
            title = "Audio is being preprocessed. Quit how?"
            stop = "Stop: finish the current file, then quit. Finished files are kept; starting again resumes."
            leave = "Leave it running: the engine finishes the folder after the app exits (see its tensor folder)."
        else:
            title = "A run is training. Quit how?"
            stop = "Stop and save: finish the current step, save a checkpoint, then quit."
            leave = (
                "Leave it running: the engine keeps training after the app exits; re-attach later with"
                " `sidestep attach RUN_DIR` or the Runs screen."
                if self.owns_engine
                else "Leave it running: stop following it; the engine carries on."
            )
        with Vertical():
            yield Label(title, id="quit-title")
            yield Static(stop, markup=False)
            yield Static(leave, markup=False)
            with Horizontal():
                yield Button("Stop (s)" if self.preprocessing else "Stop & save (s)", id="stop", variant="warning")
                yield Button("Leave running (l)", id="leave", variant="primary")
                yield Button("Cancel (c / esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(_CHOICES.get(event.button.id or "", "cancel"))

    def action_choose(self, choice: str) -> None:
        self.dismiss(_CHOICES.get(choice, "cancel"))
