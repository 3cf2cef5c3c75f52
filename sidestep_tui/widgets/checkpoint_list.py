"""The checkpoints a run has written, newest first (step, epoch, kind, loss, path)."""

from __future__ import annotations

import math
from typing import Sequence

from textual.widgets import DataTable

from ..state import CheckpointInfo

COLUMNS = ("step", "epoch", "kind", "loss", "path")


def checkpoint_row(c: CheckpointInfo) -> tuple[str, ...]:
    loss = f"{c.loss:.4g}" if math.isfinite(c.loss) else "n/a"
    return (str(c.step), str(c.epoch), c.kind, loss, c.path)


class CheckpointList(DataTable[str]):
    DEFAULT_CSS = """
    CheckpointList { height: 1fr; min-height: 3; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._shown: tuple[CheckpointInfo, ...] = ()

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def show(self, checkpoints: Sequence[CheckpointInfo]) -> None:
        items = tuple(checkpoints)
        if items == self._shown:
            return
        self._shown = items
        self.clear()
        for c in reversed(items):
            self.add_row(*checkpoint_row(c), key=f"{c.path}@{c.ts}")
