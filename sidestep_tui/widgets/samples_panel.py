"""The Samples panel: a run's audio samples (one row per prompt x step, the base model's pinned first, then
the newest step) and the highlighted one's spectrogram with its length and loudness. The Runs screen shows
it for the selected run, the Monitor (at large sizes) for the live or replayed one. ``play_sample`` starts
the local player, or says plainly why nothing can play and which file to copy instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from textual import on
from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import DataTable

from engine.samples_index import Sample, audio_output_problem, find_player, player_names

from .spectrogram import SpectrogramView

SAMPLE_COLUMNS = ("Step", "Sample", "Seed", "Length", "LUFS", "Prompt")


def sample_row(s: Sample) -> tuple[str, ...]:
    return (
        "base" if s.is_base else str(s.step),
        s.slug,
        "n/a" if s.seed is None else str(s.seed),
        "n/a" if s.duration_s is None else f"{s.duration_s:.1f} s",
        "n/a" if s.lufs is None else f"{s.lufs:.1f}",
        s.prompt or "n/a",
    )


def play_sample(path: str) -> str | None:
    """Start the first player on PATH on ``path``, detached; None when it started, else the one-line reason
    (no player, no audio output on this machine, or the player would not start) with the path to copy."""
    command = find_player()
    if command is None:
        return f"no audio player found ({player_names()}): copy {path}"
    if (problem := audio_output_problem(command)) is not None:
        return f"{problem}: copy {path}"
    try:
        subprocess.Popen(
            [*command, path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return f"cannot start {os.path.basename(command[0])} ({exc}): copy {path}"
    return None


class SamplesPanel(Container):
    """The table and the highlighted sample's spectrogram. ``show(samples)`` keeps the highlighted sample
    when it is still there. With ``follow`` (the Monitor) a new list highlights the newest adapter sample
    while the highlight was on the newest one; without it (Runs) a new list starts on the first row."""

    DEFAULT_CSS = """
    SamplesPanel { height: auto; layout: vertical; }
    SamplesPanel > #samples-table { height: auto; max-height: 8; }
    SamplesPanel > SpectrogramView { height: 6; }
    """

    def __init__(self, *, follow: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.follow = follow
        self.samples: list[Sample] = []

    def compose(self) -> ComposeResult:
        yield DataTable(id="samples-table", cursor_type="row", zebra_stripes=True)
        yield SpectrogramView(id="sample-spectrogram")

    def on_mount(self) -> None:
        self.query_one("#samples-table", DataTable).add_columns(*SAMPLE_COLUMNS)

    @property
    def table(self) -> DataTable:
        return self.query_one("#samples-table", DataTable)

    @property
    def selected(self) -> Sample | None:
        row = self.table.cursor_row
        return self.samples[row] if 0 <= row < len(self.samples) else None

    def newest(self, samples: Sequence[Sample]) -> int:
        """The row of the newest adapter sample (the first after the pinned base rows), else 0."""
        return next((i for i, s in enumerate(samples) if not s.is_base), 0)

    def show(self, samples: Sequence[Sample]) -> None:
        found = list(samples)
        if found == self.samples:
            return
        table = self.table
        before = self.selected
        followed = self.follow and (before is None or self.table.cursor_row == self.newest(self.samples))
        self.samples = found
        table.clear()
        for s in found:
            table.add_row(*sample_row(s))
        paths = [s.path for s in found]
        if before is not None and before.path in paths and not followed:
            row = paths.index(before.path)
        else:
            row = self.newest(found) if self.follow else 0
        if found:
            table.move_cursor(row=row)
        self.query_one(SpectrogramView).sample = self.selected

    @on(DataTable.RowHighlighted, "#samples-table")
    def _highlighted(self) -> None:
        self.query_one(SpectrogramView).sample = self.selected
