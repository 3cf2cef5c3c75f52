"""The Dataset screen's gradient-sensitivity estimate (``sidestep estimate``, Side-Step's selective).

The estimate runs in the engine process (``StartEstimate``; the UI never imports torch) with the
Setup draft's model, device, batch, seed and the Adapter section's ``estimate_batches`` / ``top_k`` /
``granularity``. This panel holds no engine logic: it asks the session to start the job, then reads
the session's state on a timer, matching its own run id (as ``AudioPrep`` does): progress while it
runs, the whole ranking as a table when it is done (module, sensitivity, ✓ for the top-k the module
config holds), one line when it was stopped (nothing written) or failed.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from engine import config as cfgmod
from engine import moduleconfig

from .. import forms
from ..appref import SidestepAppRef


def estimate_config_json(draft: dict[str, Any], dataset_dir: str, output: str) -> tuple[str | None, str]:
    """The job's ``TrainConfig`` JSON from the Setup draft (only the estimate's own fields), or the
    one-line reason it cannot start."""
    if not draft.get("checkpoint_dir") or not draft.get("model_variant"):
        return None, "Choose a model first (Models screen, F1): the estimate runs it."
    raw = forms.merge_raw(forms.default_raw(), draft)
    values = {name: raw[name] for name in moduleconfig.ESTIMATE_FIELDS if name in raw}
    values.update(dataset_dir=dataset_dir, output_dir=os.path.dirname(output))  # the schema wants one; nothing goes there
    config, errors = forms.parse_raw(values)
    if config is None:
        field, message = next(iter(errors.items()))
        return None, f"{field}: {message} (Setup screen, F3)"
    return cfgmod.to_json(config), ""


class EstimatePanel(Vertical):
    app = SidestepAppRef()
    DEFAULT_CSS = """
    EstimatePanel { display: none; height: 1fr; border-top: solid $primary 40%; padding: 0 1; }
    EstimatePanel.-shown { display: block; }
    EstimatePanel > #estimate-status { height: auto; }
    EstimatePanel > #estimate-table { height: 1fr; }
    """

    class StateChanged(Message):
        """The estimate started or ended: the screen's keys change (Stop, Use estimate)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.job = ""  # our engine run id while the estimate runs
        self.path = ""  # the module config the last completed estimate wrote
        self.dataset_dir = ""  # the folder it measured

    def compose(self) -> ComposeResult:
        yield Static("", id="estimate-status", markup=False)
        yield DataTable(id="estimate-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*moduleconfig.RANKING_COLUMNS)
        self.set_interval(0.25, self._follow)

    def _status(self, text: str) -> None:
        self.query_one("#estimate-status", Static).update(text)

    def start(self, config_json: str, output: str, dataset_dir: str) -> bool:
        """Ask the engine session to run the estimate; False when it cannot start now (the session says why)."""
        job = f"est-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if not self.app.session.start_estimate(config_json, output, run_id=job):
            return False
        self.job, self.dataset_dir = job, dataset_dir
        self.query_one(DataTable).clear()
        self.set_class(True, "-shown")
        self._status("Estimate: starting the engine…")
        self.post_message(self.StateChanged())
        return True

    def _follow(self) -> None:
        if not self.job:
            return
        job = self.app.session.follow_job(self.job, "estimate")
        result = job.result
        if job.status == "failed":
            self._end(job.line)
        elif job.status == "completed" and result is not None:
            self.path = result.path
            self.show_ranking(result.ranking, result.top_k)
            self._end(
                f"Wrote {result.path}: the top {result.top_k} of {len(result.ranking)} by gradient sensitivity "
                f"({result.elapsed_s:.0f} s). Ctrl+Y: train only these (Setup's module config); Ctrl+O: compare."
            )
        elif job.status == "stopped":
            self._end("■ estimate stopped: nothing written")
        elif job.status == "running":
            self._status(f"Estimate: {job.line}…")

    def show_ranking(self, ranking: tuple[tuple[str, float], ...], top_k: int) -> None:
        table = self.query_one(DataTable)
        table.clear()
        for row in moduleconfig.ranking_rows(ranking, top_k):
            table.add_row(*row, key=row[1])

    def _end(self, text: str) -> None:
        self.job = ""
        self._status(text)
        self.post_message(self.StateChanged())
