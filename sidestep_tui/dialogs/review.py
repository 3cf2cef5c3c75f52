"""Review before starting: validity, run length, model, the settings that differ from the defaults,
and the equivalent ``sidestep train ...`` command to copy. Dismisses with "start", "copy" or None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from engine import config as cfg
from engine import fishermap

from ..forms import SPEC_BY_NAME, command_line
from ..widgets.footer import SidestepFooter


def _differences(config: cfg.TrainConfig) -> str:
    lines = []
    for name, value in cfg.diff_from_defaults(config).items():
        shown = " ".join(value) if isinstance(value, tuple) else value
        lines.append(f"  {SPEC_BY_NAME[name].label:<24} {shown}")
    return "\n".join(lines) or "  (all defaults)"


class ReviewDialog(ModalScreen[str | None]):
    DEFAULT_CSS = """
    ReviewDialog { align: center middle; }
    ReviewDialog > Vertical {
        width: 90%; max-width: 120; height: 90%; border: thick $primary; background: $surface; padding: 0 1;
    }
    ReviewDialog #review-title { text-style: bold; }
    ReviewDialog #review-status.-bad { color: $error; text-style: bold; }
    ReviewDialog #review-status.-ok { color: $success; }
    ReviewDialog VerticalScroll { height: 1fr; }
    ReviewDialog #review-command { border: round $primary 50%; padding: 0 1; }
    ReviewDialog Horizontal { height: auto; align-horizontal: right; }
    ReviewDialog Button { margin-left: 1; }
    """
    BINDINGS = [
        Binding("ctrl+s", "choose('start')", "Start", id="review.start"),
        Binding("ctrl+y", "choose('copy')", "Copy command", id="review.copy"),
        Binding("escape", "close", "Close", id="review.close"),
        Binding("ctrl+g", "close", "Close", id="review.close-alt", show=False),
    ]

    def __init__(self, config: cfg.TrainConfig | None, errors: dict[str, str], preview: str, model: str, vram: str = "") -> None:
        super().__init__()
        self.config, self.errors, self.preview, self.model, self.vram = config, errors, preview, model, vram

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Review", id="review-title")
            if self.errors or self.config is None:
                problems = "\n".join(
                    f"  ✗ {SPEC_BY_NAME[n].label if n in SPEC_BY_NAME else n}: {m}" for n, m in self.errors.items()
                )
                yield Static(f"Not ready to start:\n{problems}", id="review-status", classes="-bad", markup=False)
            else:
                yield Static("✓ Ready to start.", id="review-status", classes="-ok")
            with VerticalScroll():
                yield Static(self.preview, markup=False)
                yield Static(self.model, markup=False)
                if self.vram:
                    yield Static(self.vram, id="review-vram", markup=False)
                fisher = self.fisher_note
                if fisher:
                    yield Static(fisher, id="review-fisher", markup=False)
                if self.config is not None:
                    yield Static("Settings that differ from the defaults\n" + _differences(self.config), markup=False)
                    yield Static(command_line(self.config), id="review-command", markup=False)
            with Horizontal():
                yield Button("Copy command", id="copy", compact=True, disabled=self.config is None)
                yield Button("Start", id="start", variant="primary", compact=True, disabled=not self.startable)
                yield Button("Close", id="close", compact=True)
        yield SidestepFooter()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "close":
            self.dismiss(None)
        else:
            self.action_choose(str(event.button.id))

    @property
    def fisher_note(self) -> str | None:
        """What the run will do with the dataset's fisher_map.json (PP++ ranks), when it has one."""
        c = self.config
        if c is None:
            return None
        return fishermap.run_note(c.dataset_dir, adapter_type=c.adapter_type, ignore=c.ignore_fisher_map, rank=c.rank)

    @property
    def startable(self) -> bool:
        return self.config is not None and not self.errors

    def action_choose(self, choice: str) -> None:
        ok = self.startable if choice == "start" else self.config is not None
        self.dismiss(choice if ok else None)

    def action_close(self) -> None:
        self.dismiss(None)
