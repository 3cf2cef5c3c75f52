"""Presets: load one into the form, save the form as one, import a file, export one to a file.

Everything goes through ``engine.presets`` (which validates through the schema); its one-line
``PresetError`` is shown here as is. Loading lays the preset over the defaults and keeps the form's
paths, device, run-specific settings and model choice, so the result is exactly "that preset, for
this run". Replacing an existing preset needs the same button twice. Dismisses with a
``PresetLoaded`` (the preset's name and the new raw form values) or None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from engine import presets

from ..forms import default_raw, merge_raw
from ..widgets.footer import SidestepFooter
from ..widgets.path_input import PathInput

KEEP_ON_LOAD = frozenset(presets.FORBIDDEN_KEYS | {"model_variant", "base_model"})
"""Form values a preset never replaces (they describe this run, not a recipe)."""


@dataclass(frozen=True)
class PresetLoaded:
    """A preset chosen for loading: its name and the whole form as it would be after loading it."""

    name: str
    values: dict[str, Any]


class PresetsDialog(ModalScreen[PresetLoaded | None]):
    DEFAULT_CSS = """
    PresetsDialog { align: center middle; }
    PresetsDialog > Vertical {
        width: 90%; max-width: 110; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    PresetsDialog #presets-title { text-style: bold; }
    PresetsDialog OptionList { height: auto; max-height: 8; text-wrap: nowrap; text-overflow: ellipsis; }
    PresetsDialog #preset-info { height: auto; max-height: 3; color: $text-muted; margin-bottom: 1; }
    PresetsDialog .preset-label { color: $text-muted; }
    PresetsDialog #preset-message { height: auto; }
    PresetsDialog #preset-message.-bad { color: $error; text-style: bold; }
    PresetsDialog #preset-message.-ok { color: $success; }
    PresetsDialog Horizontal { height: auto; }
    PresetsDialog Horizontal > Input { width: 1fr; }
    PresetsDialog #preset-buttons { align-horizontal: right; }
    PresetsDialog Button { margin-left: 1; min-width: 8; }
    """
    BINDINGS = [
        Binding("ctrl+l", "load", "Load", id="presets.load", tooltip="Load the highlighted preset (also Enter on the list)"),
        Binding("ctrl+s", "save", "Save", id="presets.save", tooltip="Save the current settings under the name given"),
        Binding("ctrl+o", "import_file", "Import", id="presets.import", tooltip="Import the preset file given"),
        Binding(
            "ctrl+t", "export_file", "Export", id="presets.export", tooltip="Export the highlighted preset to the file given"
        ),
        Binding("escape", "close", "Close", id="presets.close"),
        Binding("ctrl+g", "close", "Close", id="presets.close-alt", show=False),
    ]

    def __init__(self, current: dict[str, Any]) -> None:
        super().__init__()
        self.current = dict(current)
        self.infos: list[presets.PresetInfo] = []
        self._confirm: tuple[str, str] | None = None  # (action, name) waiting for a second press

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Presets", id="presets-title")
            yield OptionList(id="preset-list")
            yield Static("", id="preset-info", markup=False)
            yield Label("Save the current settings as", classes="preset-label")
            with Horizontal():
                yield Input(placeholder="name (letters, digits, _ - .)", id="preset-name", compact=True)
                yield Input(placeholder="description (optional)", id="preset-description", compact=True)
            yield Label("Preset file to import, or where to export the highlighted preset", classes="preset-label")
            yield PathInput(placeholder="/path/to/preset.json or a folder", dirs_only=False, id="preset-file", compact=True)
            yield Static("", id="preset-message", markup=False)
            with Horizontal(id="preset-buttons"):
                for label, bid in (
                    ("Load", "load"),
                    ("Save", "save"),
                    ("Import", "import_file"),
                    ("Export", "export_file"),
                    ("Close", "close"),
                ):
                    yield Button(label, id=bid, compact=True, variant="primary" if bid == "load" else "default")
        yield SidestepFooter()

    def on_mount(self) -> None:
        self._refresh()
        self.query_one(OptionList).focus()

    def _refresh(self, highlight: str | None = None) -> None:
        self.infos = presets.list_presets()
        options = self.query_one(OptionList)
        options.clear_options()
        for info in self.infos:
            text = f"{info.name:<16} {info.source:<8} " + (f"✗ invalid: {info.error}" if info.error else info.description)
            options.add_option(Option(text, id=info.name, disabled=info.error is not None))  # one line each (CSS)
        names = [i.name for i in self.infos]
        if highlight in names:
            options.highlighted = names.index(highlight)
        elif self.infos:
            options.highlighted = next((i for i, info in enumerate(self.infos) if info.error is None), 0)

    def _selected(self) -> presets.PresetInfo | None:
        index = self.query_one(OptionList).highlighted
        return self.infos[index] if index is not None and 0 <= index < len(self.infos) else None

    def _say(self, text: str, ok: bool) -> None:
        message = self.query_one("#preset-message", Static)
        message.update(("✓ " if ok else "✗ ") + text)
        message.set_class(ok, "-ok")
        message.set_class(not ok, "-bad")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        info = self._selected()
        if info is not None:
            where = "built-in" if info.source == "builtin" else info.path.replace(os.path.expanduser("~"), "~", 1)
            self.query_one("#preset-info", Static).update(info.error or f"{info.description}\n{where}")

    def on_option_list_option_selected(self) -> None:
        self.action_load()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {
            "load": self.action_load,
            "save": self.action_save,
            "import_file": self.action_import_file,
            "export_file": self.action_export_file,
            "close": self.action_close,
        }
        actions[str(event.button.id)]()

    def _confirmed(self, action: str, name: str, exists: bool, what: str) -> bool:
        """True when ``exists`` is false, or when this is the second press for the same name."""
        if not exists or self._confirm == (action, name):
            self._confirm = None
            return True
        self._confirm = (action, name)
        self._say(f"{what} Press {action.split('_')[0].capitalize()} again to replace it.", ok=False)
        return False

    # ------------------------------------------------------------------ actions

    def action_load(self) -> None:
        info = self._selected()
        if info is None or info.error:
            self._say("No usable preset highlighted.", ok=False)
            return
        try:
            values = presets.load_preset(info.path)
        except presets.PresetError as exc:
            self._say(str(exc), ok=False)
            return
        kept = {k: v for k, v in self.current.items() if k in KEEP_ON_LOAD}
        self.dismiss(PresetLoaded(info.name, merge_raw(merge_raw(default_raw(), kept), values)))

    def action_save(self) -> None:
        name = self.query_one("#preset-name", Input).value.strip()
        description = self.query_one("#preset-description", Input).value.strip()
        exists = name in {i.name for i in self.infos}
        if not self._confirmed("save", name, exists, f"A preset named {name!r} exists."):
            return
        values = {k: v for k, v in self.current.items() if k not in KEEP_ON_LOAD}
        try:
            path = presets.save_preset(name, values, description, overwrite=exists)
        except presets.PresetError as exc:
            self._say(str(exc), ok=False)
            return
        self._say(f"Saved {path}", ok=True)
        self._refresh(highlight=name)

    def action_import_file(self) -> None:
        path = os.path.expanduser(self.query_one("#preset-file", PathInput).value.strip())
        if not path:
            self._say("Enter the preset file to import.", ok=False)
            return
        name = os.path.splitext(os.path.basename(path))[0]
        exists = name in {i.name for i in self.infos}
        if not self._confirmed("import_file", name, exists, f"A preset named {name!r} exists."):
            return
        try:
            info = presets.import_preset(path, overwrite=exists)
        except presets.PresetError as exc:
            self._say(str(exc), ok=False)
            return
        self._say(f"Imported {info.name} into {info.path}", ok=True)
        self._refresh(highlight=info.name)

    def action_export_file(self) -> None:
        info = self._selected()
        target = os.path.expanduser(self.query_one("#preset-file", PathInput).value.strip())
        if info is None or info.error or not target:
            self._say("Highlight a valid preset and enter a file or folder to export to.", ok=False)
            return
        final = os.path.join(target, f"{info.name}.json") if os.path.isdir(target) else target
        if not self._confirmed("export_file", final, os.path.exists(final), f"{final} exists."):
            return
        try:
            written = presets.export_preset(info.name, target)
        except (presets.PresetError, OSError) as exc:
            self._say(str(exc), ok=False)
            return
        self._say(f"Exported {info.name} to {written}", ok=True)

    def action_close(self) -> None:
        self.dismiss(None)
