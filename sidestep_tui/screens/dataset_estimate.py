"""The Dataset screen's module-config actions, beside PP++: estimate (Ctrl+L), stop it (Ctrl+X), hand
its module config to Setup (Ctrl+Y), compare module configs (Ctrl+O).

Ctrl+L asks where to write (``dialogs.estimate``: ``module_config.json`` in the tensor folder unless
changed), then ``widgets.estimate_panel`` runs ``sidestep estimate`` in the engine process and shows
the ranking. Ctrl+Y sets Setup's ``module_config`` to the file (and clears what would override it:
``auto_estimate`` and a resolved ``selected_modules``), so the next run adapts only those modules.
"""

from __future__ import annotations

import os

from engine import fishermap, moduleconfig, ptinspect
from engine.protocol import StopRun

from .. import forms
from ..appref import SidestepAppRef
from ..messages import DraftUpdated
from ..widgets.estimate_panel import EstimatePanel, estimate_config_json
from ..widgets.path_input import PathField
from .quick import QuickScreen


class EstimateActions(QuickScreen):
    app = SidestepAppRef()
    report: ptinspect.DatasetReport | None
    _report_path: str

    @property
    def estimates(self) -> EstimatePanel:
        return self.query_one(EstimatePanel)

    def _checked_folder(self) -> str:
        """The tensor folder as checked (absolute), or "" when it has not been or holds no samples."""
        field = self.query_one("#dataset-path", PathField)
        report = self.report
        if report is None or self._report_path != field.value or report.samples == 0:
            return ""
        return os.path.abspath(os.path.expanduser(field.value))

    def action_estimate(self) -> None:
        from ..dialogs.estimate import EstimateDialog

        folder = self._checked_folder()
        if not folder:
            self.notify("No usable tensors in this folder to estimate on.", severity="error", title="Estimate")
            return
        draft = self.app.draft
        probe, problem = estimate_config_json(draft, folder, os.path.join(folder, moduleconfig.TUI_OUTPUT))
        if probe is None:
            self.notify(problem, severity="error", title="Estimate")
            return
        raw = forms.merge_raw(forms.default_raw(), draft)
        about = (
            f"Ranks the decoder's modules by gradient sensitivity over {folder} ({raw['estimate_batches']} batches), "
            f"then writes the top {raw['top_k']} {raw['granularity']}s. "
            "Top-k, granularity and batches: Setup (F3), Adapter section, advanced."
        )

        def start(output: str | None) -> None:
            if not output:
                return
            config_json, problem = estimate_config_json(self.app.draft, folder, output)
            if config_json is None:
                self.notify(problem, severity="error", title="Estimate")
                return
            self.estimates.start(config_json, output, folder)

        self.app.push_screen(EstimateDialog(os.path.join(folder, moduleconfig.TUI_OUTPUT), about), start)

    def action_estimate_again(self) -> None:
        self.action_estimate()

    def action_stop_estimate(self) -> None:
        if self.app.session.send(StopRun()):
            self.notify("Stopping the estimate after the current batch; nothing is written.", title="Estimate")

    def action_use_estimate(self) -> None:
        panel = self.estimates
        if not panel.path:
            return
        # module_config must not be overridden: a resolved selection wins over it, auto_estimate conflicts with it.
        self.app.post_message(
            DraftUpdated(
                {"module_config": panel.path, "auto_estimate": False, "selected_modules": (), "dataset_dir": panel.dataset_dir}
            )
        )
        self.notify(f"Module config: {panel.path} (the next run adapts only its modules)", title="Draft")
        if "setup" in self.app.MODES:
            self.app.call_later(self.app.switch_mode, "setup")

    def action_compare(self) -> None:
        from ..dialogs.compare import CompareDialog

        folder = self._checked_folder()
        known = [self.estimates.path, str(self.app.draft.get("module_config") or "")]
        if folder and os.path.isfile(fishermap.path_in(folder)):
            known.append(fishermap.path_in(folder))
        paths = [p for p in dict.fromkeys(known) if p and os.path.isfile(os.path.expanduser(p))]
        self.app.push_screen(CompareDialog(paths))
