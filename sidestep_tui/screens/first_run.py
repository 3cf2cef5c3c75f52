"""First run: where the checkpoints are and where runs go. Remembered in the settings file.

Both fields complete paths from the filesystem (Tab) and check them as you type: the checkpoint root
must exist and is scanned for model folders (``engine.discovery``, config.json files only); the output
root may not exist yet (it is created on the first run) but its nearest existing parent must be
writable. Saving posts ``SettingsChanged`` (the App saves and applies it), then closes the screen.
"""

from __future__ import annotations

import os

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Static

from engine import discovery

from ..appref import SidestepAppRef
from ..formatting import plural
from ..messages import SettingsChanged
from ..widgets.footer import SidestepFooter
from ..widgets.path_input import PathCheck, PathField, creatable
from .screen_commands import ScreenActions

DEFAULT_OUTPUT_ROOT = "~/sidestep-runs"


def check_checkpoint_root(path: str) -> PathCheck:
    """Exists, and looks like an ACE-Step checkpoint root (model folders; vae/ and text encoder)."""
    if not path.strip():
        return PathCheck(False, "enter the folder holding acestep-v15-*/ (and vae/, Qwen3-Embedding-0.6B/)")
    full = os.path.expanduser(path)
    if not os.path.isdir(full):
        return PathCheck(False, "not a folder" if os.path.exists(full) else "no such folder")
    scan = discovery.scan_checkpoints(full)
    if not scan.models:
        return PathCheck(None, "no model folders here (expected acestep-v15-turbo/, acestep-v15-base/, ...)")
    names = ", ".join(m.alias for m in scan.models[:6]) + (" …" if len(scan.models) > 6 else "")
    missing = [label for key, label in (("vae", "vae/"), ("text_encoder", "text encoder")) if not scan.shared.get(key)]
    found = f"{plural(len(scan.models), 'model')}: {names}"
    if missing:
        return PathCheck(None, f"{found}; missing {', '.join(missing)} (needed only to preprocess audio)")
    return PathCheck(True, found)


def check_output_root(path: str) -> PathCheck:
    if not path.strip():
        return PathCheck(False, "enter a folder for new runs")
    full = os.path.expanduser(path)
    if os.path.isdir(full):
        ok = os.access(full, os.W_OK)
        return PathCheck(True, "folder exists") if ok else PathCheck(False, "folder is not writable")
    return creatable(full) or PathCheck(None, "will be created on the first run")


class FirstRunScreen(Screen[None]):
    app = SidestepAppRef()
    CSS_PATH = "first_run.tcss"
    COMMANDS = {ScreenActions}
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="first_run.save", tooltip="Save both folders and continue"),
    ]

    def compose(self) -> ComposeResult:
        settings = self.app.settings
        with VerticalScroll(id="first-run"), Vertical(id="first-run-box"):
            yield Static("Welcome to Side-Step", id="first-run-title")
            yield Static(
                "Two folders and you are set. Tab or → accepts the grey completion;"
                " the check under each field updates as you type.",
                id="first-run-intro",
            )
            yield PathField(
                "Checkpoint root (holds acestep-v15-*/, vae/, Qwen3-Embedding-0.6B/)",
                settings.checkpoint_root,
                check=check_checkpoint_root,
                placeholder="/path/to/ACE-Step-1.5/checkpoints",
                id="checkpoint-root",
            )
            yield PathField(
                "Output root (each run gets its own folder here)",
                settings.output_root or DEFAULT_OUTPUT_ROOT,
                check=check_output_root,
                id="output-root",
            )
            yield Static("", id="first-run-message")
            with Horizontal(id="first-run-buttons"):
                yield Button("Save and continue", id="save", variant="primary", compact=True)
        yield SidestepFooter()

    def on_mount(self) -> None:
        self.query_one("#checkpoint-root", PathField).input.focus()

    @on(PathField.Checked)
    def _edited(self) -> None:
        self.query_one("#first-run-message", Static).display = False  # an old refusal must not linger

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        fields = {
            "checkpoint root": self.query_one("#checkpoint-root", PathField),
            "output root": self.query_one("#output-root", PathField),
        }
        checks = {name: f.check_fn(f.value) for name, f in fields.items()}  # fresh, not a stale async one
        bad = [f"{name}: {check.message}" for name, check in checks.items() if check.ok is False]
        message = self.query_one("#first-run-message", Static)
        if bad:
            message.update("✗ " + "; ".join(bad))
            message.add_class("-bad")
            message.display = True
            return
        settings = self.app.settings.replace(
            checkpoint_root=os.path.abspath(os.path.expanduser(fields["checkpoint root"].value)),
            output_root=os.path.abspath(os.path.expanduser(fields["output root"].value)),
        )
        # Straight to the App (not bubbled through this screen) and close after it: the App applies the
        # settings before the screen underneath resumes and reads them.
        self.app.post_message(SettingsChanged(settings))
        self.app.call_later(self.dismiss)
