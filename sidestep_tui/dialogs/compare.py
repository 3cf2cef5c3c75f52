"""Compare module configs side by side: the TUI face of ``sidestep compare-configs A B [C]``.

Two or three files (an estimate's module config, a ``fisher_map.json``, a hand-written list), each
typed with path completion and prefilled with what the screen knows (the last estimate, Setup's module
config, the dataset's fisher map). Enter or Ctrl+S compares: the files and their pairwise overlap
(``engine.moduleconfig.comparison_text``'s head) above a scrollable rank-by-rank table
(``comparison_table``: module, then ``#rank score`` per file, ``-`` where a file lacks it). A file that
cannot be read is one line naming it; the dialog stays.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Static

from engine import moduleconfig

from ..widgets.path_input import PathInput

SLOTS = ("A", "B", "C")
HINT = "Enter two or three module configs (A and B, C optional), then Enter."


def compare_files(paths: list[str]) -> tuple[moduleconfig.Comparison | None, str]:
    """The comparison of the non-empty ``paths``, or the one-line reason there is none."""
    files = [p.strip() for p in paths if p.strip()]
    if len(files) < 2:
        return None, "enter at least two module configs (A and B)"
    try:
        configs = [moduleconfig.load(f) for f in files]
    except moduleconfig.ModuleConfigError as exc:
        return None, str(exc)
    return moduleconfig.compare(configs), ""


def comparison_head(cmp: moduleconfig.Comparison) -> str:
    """``comparison_text`` without its table: the files, the notes and the pairwise overlap."""
    lines = moduleconfig.comparison_text(cmp)
    return "\n".join(line for line in lines[: len(lines) - len(cmp.rows) - 1] if line)


class CompareDialog(ModalScreen[None]):
    DEFAULT_CSS = """
    CompareDialog { align: center middle; }
    CompareDialog > Vertical {
        width: 110; max-width: 100%; height: 100%; max-height: 40; border: thick $primary; background: $surface; padding: 0 1;
    }
    CompareDialog #compare-title { text-style: bold; }
    CompareDialog .compare-row { height: 1; }
    CompareDialog .compare-row > Label { width: 3; }
    CompareDialog .compare-row > PathInput { width: 1fr; }
    CompareDialog #compare-head { height: auto; max-height: 8; border-top: solid $primary 40%; }
    CompareDialog #compare-head.-bad { color: $error; }
    CompareDialog #compare-table { height: 1fr; }
    CompareDialog #compare-keys { color: $text-muted; }
    """
    BINDINGS = [
        Binding("ctrl+s", "compare", "Compare", id="compare.run", tooltip="Compare the files entered"),
        Binding("escape", "close", "Close", id="compare.close"),
    ]

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = [*paths, "", "", ""][: len(SLOTS)]
        self.comparison: moduleconfig.Comparison | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Compare module configs (estimate results, fisher_map.json, lists)", id="compare-title")
            for slot, path in zip(SLOTS, self.paths, strict=True):
                with Horizontal(classes="compare-row"):
                    yield Label(f"{slot}:")
                    yield PathInput(
                        path,
                        dirs_only=False,
                        compact=True,
                        placeholder="optional" if slot == "C" else "",
                        id=f"compare-{slot.lower()}",
                    )
            yield Static("", id="compare-head", markup=False)
            yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
            yield Static("Enter or Ctrl+S: compare · Tab: complete a path · Esc: close", id="compare-keys", markup=False)

    def on_mount(self) -> None:
        empty = [i for i, p in enumerate(self.paths) if not p]
        self.query_one(f"#compare-{SLOTS[empty[0] if empty else 0].lower()}", PathInput).focus()
        if sum(1 for p in self.paths if p) >= 2:
            self.action_compare()
        else:
            self.query_one("#compare-head", Static).update(HINT)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_compare()

    def action_compare(self) -> None:
        paths = [self.query_one(f"#compare-{slot.lower()}", PathInput).value for slot in SLOTS]
        cmp, problem = compare_files(paths)
        self.comparison = cmp
        head = self.query_one("#compare-head", Static)
        head.set_class(cmp is None, "-bad")
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        if cmp is None:
            head.update(f"✗ {problem}")
            return
        head.update(comparison_head(cmp))
        header, rows = moduleconfig.comparison_table(cmp)
        table.add_columns(*header)
        table.add_rows(rows)

    def action_close(self) -> None:
        self.dismiss(None)
