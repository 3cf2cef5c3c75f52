"""The checkpoints a run has written, newest first (step, epoch, kind, loss, path inside the run)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from textual.widgets import DataTable

from ..state import CheckpointInfo

COLUMNS = ("step", "epoch", "kind", "loss", "path")


def checkpoint_row(c: CheckpointInfo, run_dir: str = "") -> tuple[str, ...]:
    """Cells of one row; the path relative to the run folder when it lies inside it."""
    loss = f"{c.loss:.4g}" if math.isfinite(c.loss) else "n/a"
    path = c.path
    if run_dir and os.path.commonpath([os.path.abspath(path), os.path.abspath(run_dir)]) == os.path.abspath(run_dir):
        path = os.path.relpath(path, run_dir)
    return (str(c.step), str(c.epoch), c.kind, loss, path)


class CheckpointList(DataTable[str]):
    DEFAULT_CSS = """
    CheckpointList { height: 1fr; min-height: 3; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._shown: tuple[CheckpointInfo, ...] = ()

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def show(self, checkpoints: Sequence[CheckpointInfo], run_dir: str = "") -> None:
        items = tuple(checkpoints)
        if items == self._shown:
            return
        self._shown = items
        rows = [checkpoint_row(c, run_dir) for c in reversed(items)]
        # Explicit widths: with auto widths, rows added after the first paint kept their header-wide
        # columns (Textual 8.2.8 keeps the old lines cached when the widths grow on idle).
        self.clear(columns=True)
        for i, label in enumerate(COLUMNS):
            self.add_column(label, width=max([len(label), *(len(r[i]) for r in rows)]), key=label)
        for c, row in zip(reversed(items), rows, strict=True):
            self.add_row(*row, key=f"{c.path}@{c.ts}")
