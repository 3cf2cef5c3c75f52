"""Setup: the run configuration, generated from the schema, checked as you type, then Start.

The form (``widgets/config_form.py``) holds raw values; every edit goes through
``engine.config.parse`` and its per-field errors are shown next to the fields. Start (Ctrl+S) posts
``StartRequested(config_json)`` only when the config parses; otherwise it lists the problems and jumps
to the first one. The side panel shows the run length (steps per epoch, total steps, effective batch)
from the dataset's sample count, the chosen model, and the equivalent ``sidestep train ...`` command.
Values travel to ``app.draft`` (``DraftUpdated``) so leaving the screen loses nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from engine import config as cfg
from engine import discovery, ptinspect, vram

from .. import forms
from ..appref import SidestepAppRef
from ..formatting import number, plural
from ..messages import DraftUpdated, StartRequested
from ..widgets.config_form import ConfigForm
from ..widgets.footer import SidestepFooter
from .quick import QuickScreen
from .screen_commands import ScreenActions

if TYPE_CHECKING:
    from ..dialogs.presets import PresetLoaded  # imported when the dialog opens (Ctrl+L), not with the screen

NARROW = 120


@dataclass
class DatasetCounted(Message):
    path: str
    samples: int | None
    problems: int
    folder_problem: str  # why the folder holds no usable sample ("" when it holds some)


@dataclass
class GpusListed(Message):
    gpus: list[discovery.GpuInfo]


class SetupScreen(QuickScreen):
    app = SidestepAppRef()
    CSS_PATH = "setup.tcss"
    COMMANDS = {ScreenActions}
    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="setup.start", tooltip="Start training (only when the config is valid)"),
        Binding("ctrl+t", "toggle_depth", "Basic/Advanced", id="setup.depth", tooltip="Show or hide advanced settings"),
        Binding("ctrl+l", "presets", "Presets", id="setup.presets", tooltip="Load, save, import or export a preset"),
        Binding("ctrl+r", "review", "Review", id="setup.review", tooltip="The equivalent command line, to copy"),
        Binding("ctrl+n", "next_problem", "Next problem", id="setup.next-problem", tooltip="Jump to the next invalid field"),
        Binding("ctrl+y", "copy_command", "Copy command", id="setup.copy", show=False, tooltip="Copy the sidestep train command"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.config: cfg.TrainConfig | None = None
        self.errors: dict[str, str] = {}
        self.samples: int | None = None
        self.dataset_problems = 0
        self._dataset_blocker = ""  # why the dataset cannot train ("" when it can, or while counting)
        self._model_blocker: tuple[tuple[str, str], str] | None = None  # (root, variant) -> why it is not found
        self._model_key: tuple[str, str] | None = None
        self._model: discovery.ModelInfo | None = None
        self._dataset_key: str | None = None
        self._texts: dict[str, str] = {}
        self._auto_output = ""  # the output folder this screen decided (empty: the user's own, or none yet)
        self._auto_for: tuple[str, str, str] | None = None
        self._only_model_for: tuple[str, str] | None = (
            None  # the root whose model count was looked at  # (output root, model, adapter) it was decided for
        )
        self._loaded: dict[str, Any] = forms.default_raw()  # what the last load (defaults, a preset) set
        self._gpus: list[discovery.GpuInfo] = []  # NVML's list, asked once per visit (off the UI thread)
        self._vram_shape: tuple[str, vram.ModelShape] | None = None  # model folder -> its config.json's shapes
        self._just_mounted = False

    def compose(self) -> ComposeResult:
        # Before the widgets exist: set later (on_resize), the class restyles every widget on the screen.
        self.set_class(self.app.size.width < NARROW, "-narrow")
        raw = self._draft_raw()
        yield Static("", id="setup-status", markup=False)
        with Horizontal(id="setup-body"):
            yield ConfigForm(raw, forms.placeholders(raw, self._model_config(raw)), id="config-form")
            with VerticalScroll(id="setup-side"):
                yield Static("", id="setup-help", markup=False)
                yield Static("", id="setup-preview", markup=False)
                yield Static("", id="setup-vram", markup=False)
                yield Static("", id="setup-model", markup=False)
                yield Static("", id="setup-command", markup=False)
        yield Static("", id="setup-help-line", markup=False)
        yield SidestepFooter()

    @property
    def form(self) -> ConfigForm:
        return self.query_one(ConfigForm)

    def on_mount(self) -> None:
        self._validate(self.form.values)
        self.form.focus_field(forms.SPECS[0].name)
        self._query_gpus()
        # Textual resumes a mode's screen twice on its first open, right after this: nothing can have
        # changed in between, so those resumes redo nothing (each validated, rescanned and redrew).
        self._just_mounted = True
        self.call_after_refresh(setattr, self, "_just_mounted", False)

    def on_screen_resume(self) -> None:
        if self._just_mounted:
            return
        draft, current = self.app.draft, self.form.values
        changed = {
            k: v for k, v in draft.items() if k in forms.SPEC_BY_NAME and forms.to_raw(forms.SPEC_BY_NAME[k], v) != current.get(k)
        }
        changed.update(self._remembered({**current, **changed}))  # settings saved meanwhile (first run)
        if changed:
            self.form.set_values(changed)
        self._keep_output_dir_current(self.form.values)
        # Look again: the folder may have been preprocessed, the model copied, while away.
        self._dataset_key = self._model_key = self._model_blocker = self._vram_shape = None
        self._validate(self.form.values)
        self._query_gpus()

    def on_resize(self) -> None:
        self.set_class(self.size.width < NARROW, "-narrow")

    # ------------------------------------------------------------------ draft and context

    def _draft_raw(self) -> dict[str, Any]:
        raw = forms.merge_raw(forms.default_raw(), self.app.draft)
        raw.update(self._remembered(raw))
        if not raw.get("output_dir"):
            raw["output_dir"] = self._decide_output_dir(raw)
        return raw

    def _remembered(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Empty fields filled from the settings: the checkpoint root, the dataset picked last, and the
        model when the root holds exactly one (and none was chosen)."""
        settings, out = self.app.settings, {}
        if not raw.get("checkpoint_dir") and settings.checkpoint_root:
            out["checkpoint_dir"] = settings.checkpoint_root
        if not raw.get("dataset_dir") and settings.last_dataset_dir:
            out["dataset_dir"] = settings.last_dataset_dir
        root = str(out.get("checkpoint_dir") or raw.get("checkpoint_dir") or "")
        if "model_variant" not in self.app.draft and root and (root, "only") != self._only_model_for:
            self._only_model_for = (root, "only")
            models = discovery.scan_checkpoints(os.path.expanduser(root)).models
            if len(models) == 1:
                out["model_variant"] = models[0].alias
                if not models[0].official and models[0].base_model:
                    out["base_model"] = models[0].base_model
        return out

    def _auto_key(self, raw: dict[str, Any]) -> tuple[str, str, str]:
        return (self.app.settings.output_root, str(raw.get("model_variant") or ""), str(raw.get("adapter_type") or ""))

    def _decide_output_dir(self, raw: dict[str, Any]) -> str:
        """A new run folder under the output root, named after the model and adapter, that no earlier
        run uses. Decided here, once, and shown in the field (so Review's command and the run use the
        same one); decided again only when the model or adapter changes or a run took it."""
        root, model, adapter = self._auto_for = self._auto_key(raw)
        if not root:
            self._auto_output = ""
            return ""
        model = os.path.basename(model.rstrip("/\\")) or "model"
        stem = os.path.join(root, f"{model}-{adapter}-{time.strftime('%Y%m%d-%H%M%S')}")
        path, n = stem, 2
        while os.path.lexists(os.path.expanduser(path)):
            path, n = f"{stem}-{n}", n + 1
        self._auto_output = path
        return path

    def _keep_output_dir_current(self, raw: dict[str, Any]) -> None:
        """The automatic output folder (untouched by the user) follows the model and adapter, and is
        replaced once a run has used it."""
        current = str(raw.get("output_dir") or "")
        if current and current != self._auto_output:
            return  # the user's own folder
        if current and self._auto_for == self._auto_key(raw) and not os.path.lexists(os.path.expanduser(current)):
            return
        fresh = self._decide_output_dir(raw)
        if fresh and fresh != current:
            self.form.set_values({"output_dir": fresh})
            self.app.draft["output_dir"] = fresh  # now: a resume before the change message must not undo it

    def _model_info(self, raw: dict[str, Any]) -> discovery.ModelInfo | None:
        key = (str(raw.get("checkpoint_dir") or ""), str(raw.get("model_variant") or ""))
        if key != self._model_key:
            self._model_key = key
            self._model = discovery.find_model(*key)
        return self._model

    def _model_config(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        info = self._model_info(raw)
        if info is None:
            return None
        values = {"timestep_mu": info.timestep_mu, "timestep_sigma": info.timestep_sigma, "is_turbo": info.is_turbo}
        return {k: v for k, v in values.items() if v is not None}

    def _count_dataset(self, raw: dict[str, Any]) -> None:
        path = str(raw.get("dataset_dir") or "")
        if path == self._dataset_key:
            return
        self._dataset_key, self.samples, self.dataset_problems, self._dataset_blocker = path, None, 0, ""
        if path and os.path.isdir(os.path.expanduser(path)):
            self._scan_dataset(path)
        elif path:
            self._dataset_blocker = "dataset folder does not exist (pick one on the Dataset screen, F2)"

    @staticmethod
    def _dataset_counted_message(path: str) -> DatasetCounted:
        report = ptinspect.scan_dataset(path)
        folder = next((m for f, m in report.problems if f == "."), "no usable samples")
        return DatasetCounted(path, report.samples, len(report.problems), "" if report.samples else folder)

    @work(thread=True, exclusive=True, group="setup-dataset", name="setup-dataset", exit_on_error=False)
    def _scan_dataset(self, path: str) -> None:
        self.post_message(self._dataset_counted_message(path))

    @on(DatasetCounted)
    def _dataset_counted(self, message: DatasetCounted) -> None:
        if message.path == self._dataset_key:
            self.samples, self.dataset_problems = message.samples, message.problems
            self._dataset_blocker = message.folder_problem
            self._validate(self.form.values)

    @work(thread=True, exclusive=True, group="setup-gpus", name="setup-gpus", exit_on_error=False)
    def _query_gpus(self) -> None:
        self.post_message(GpusListed(discovery.gpus()))

    @on(GpusListed)
    def _gpus_listed(self, message: GpusListed) -> None:
        self._gpus = message.gpus
        self._update("#setup-vram", self._vram_text(self.form.values))

    def _vram_text(self, raw: dict[str, Any]) -> str:
        """The live VRAM figure (engine/vram.py: arithmetic on the model's cached shapes). Fields with
        problems count at their defaults, so the figure stays while one is being fixed."""
        config = self.config
        if config is None:
            values = {k: v for k, v in raw.items() if k not in self.errors}
            values.update({k: "-" for k in ("checkpoint_dir", "dataset_dir", "output_dir") if not values.get(k)})
            config, _ = forms.parse_raw(values)
        if config is None:
            return "VRAM estimate\n  (fix the problems to see it)"
        folder = (
            discovery.model_folder(str(raw.get("checkpoint_dir") or ""), config.model_variant)
            if raw.get("checkpoint_dir")
            else ""
        )
        if self._vram_shape is None or self._vram_shape[0] != folder:
            self._vram_shape = (folder, vram.shape_for(folder)[0])
        return vram.panel(config, self._vram_shape[1], self._gpus)

    def _readiness(self, raw: dict[str, Any]) -> dict[str, str]:
        """What stops a config that parses from running: the checks the Dataset and Models screens
        make (the folder holds samples; the model is found under the checkpoint root, without problems)."""
        out: dict[str, str] = {}
        if "dataset_dir" not in self.errors and self._dataset_blocker:
            out["dataset_dir"] = self._dataset_blocker
        info = None if {"checkpoint_dir", "model_variant"} & set(self.errors) else self._model_info(raw)
        if info is not None and info.problems:  # listed, but broken (no weights, an empty config.json, ...)
            more = len(info.problems) - 1
            out["model_variant"] = f"{info.name}: {info.problems[0]}" + (f" (and {more} more: Models screen, F1)" if more else "")
        if "checkpoint_dir" not in self.errors and "model_variant" not in self.errors and info is None:
            key = (str(raw.get("checkpoint_dir") or ""), str(raw.get("model_variant") or ""))
            if self._model_blocker is None or self._model_blocker[0] != key:
                try:
                    discovery.resolve_model_dir(*key)
                    reason = ""
                except discovery.DiscoveryError as exc:
                    reason = str(exc)
                self._model_blocker = (key, reason)
            if self._model_blocker[1]:
                out["model_variant"] = self._model_blocker[1]
        return out

    # ------------------------------------------------------------------ validation

    @on(ConfigForm.Focused)
    def _focused(self, event: ConfigForm.Focused) -> None:
        spec = event.row.spec
        self._update("#setup-help", f"{spec.label}\n{event.row.help_text}")
        self._update("#setup-help-line", f"{spec.label}: {event.row.help_text}")

    def _update(self, selector: str, text: str) -> None:
        """Update a Static only when its text changes (an update re-lays out the screen)."""
        widget = self.query_one(selector, Static)
        if self._texts.get(selector) != text:
            self._texts[selector] = text
            widget.update(text)

    @on(ConfigForm.Changed)
    def _changed(self, event: ConfigForm.Changed) -> None:
        values = dict(event.values)
        if event.name in ("model_variant", "adapter_type"):
            self._keep_output_dir_current(values)
            values = self.form.values
        self._validate(values)
        self.post_message(DraftUpdated(values))

    def _validate(self, raw: dict[str, Any]) -> None:
        self.config, self.errors = forms.parse_raw(raw)
        self._count_dataset(raw)
        self.errors.update(self._readiness(raw))
        self.form.show_errors(self.errors)
        self.form.set_placeholders(forms.placeholders(raw, self._model_config(raw)))
        self._render_side(raw)

    @property
    def ready(self) -> bool:
        """The config parses and the dataset and model checks pass (counted, not still counting)."""
        return self.config is not None and not self.errors and self.samples is not None

    def _labels(self, names: list[str]) -> str:
        return ", ".join(forms.SPEC_BY_NAME[n].label if n in forms.SPEC_BY_NAME else n for n in names)

    def _render_side(self, raw: dict[str, Any]) -> None:
        depth = "Advanced" if self.form.depth == forms.ADVANCED else "Basic"
        if self.errors:
            status = f"✗ {plural(len(self.errors), 'problem')}: {self._labels(self._error_names())} (Ctrl+N)"
        elif self.samples is None:
            status = "… checking the dataset folder"
        else:
            status = "✓ Ready (Ctrl+S starts)"
        self._update("#setup-status", f"{status} · {depth} · {raw.get('adapter_type')}")
        # On the status line, not the screen: a class on the screen restyles every widget in it.
        self.query_one("#setup-status").set_class(bool(self.errors), "-invalid")
        self._update("#setup-preview", self._preview_text(raw))
        self._update("#setup-vram", self._vram_text(raw))
        self._update("#setup-model", self._model_text(raw))
        command = forms.command_line(self.config) if self.config else "(fix the problems to see the command)"
        self._update("#setup-command", f"Command (Ctrl+R to review, Ctrl+Y to copy)\n{command}")

    def _preview_text(self, raw: dict[str, Any]) -> str:
        p = forms.steps_preview(raw, self.samples)
        if not raw.get("dataset_dir"):
            samples = "no dataset chosen"
        elif self.samples is None:
            samples = "counting …"
        else:
            samples = plural(self.samples, "sample") + (
                f" ({plural(self.dataset_problems, 'problem')})" if self.dataset_problems else ""
            )
        total = number(p.total_steps) + (" (capped by max steps)" if p.capped_by_max_steps else "")
        return "\n".join(
            [
                "Run length",
                f"  dataset          {samples}",
                f"  effective batch  {number(p.effective_batch)} (batch × accumulation)",
                f"  batches / epoch  {number(p.micro_batches_per_epoch)}",
                f"  steps / epoch    {number(p.steps_per_epoch)}",
                f"  total steps      {total}",
            ]
        )

    def _model_text(self, raw: dict[str, Any]) -> str:
        info = self._model_info(raw)
        if info is None:
            return f"Model\n  {raw.get('model_variant')}: not found under the checkpoint root"
        problems = "".join(f"\n  ✗ {p}" for p in info.problems)
        return (
            f"Model\n  {info.name} · {number(info.num_hidden_layers)} layers · hidden {number(info.hidden_size)}"
            f"\n  timestep μ {number(info.timestep_mu)} σ {number(info.timestep_sigma)}{problems}"
        )

    # ------------------------------------------------------------------ actions

    def action_start(self) -> None:
        raw = self.form.values
        self._validate(raw)
        path = str(raw.get("dataset_dir") or "")
        if self.config is not None and not self.errors and self.samples is None and path == self._dataset_key:
            self._dataset_counted(self._dataset_counted_message(path))  # Start waits for the count
        if self.config is None or self.errors:
            details = "; ".join(f"{self._labels([n])}: {self.errors[n]}" for n in self._error_names())
            self.notify(details, title=f"Not started: {plural(len(self.errors), 'problem')}", severity="error", timeout=8)
            self.action_next_problem()
            return
        self.post_message(StartRequested(cfg.to_json(self.config)))

    def action_toggle_depth(self) -> None:
        self.form.toggle_depth()
        self._render_side(self.form.values)

    def _error_names(self) -> list[str]:
        """Fields with errors in form order (keys outside the schema last)."""
        names = [s.name for s in forms.SPECS if s.name in self.errors]
        return names + [n for n in self.errors if n not in forms.SPEC_BY_NAME]

    def action_next_problem(self) -> None:
        names = [n for n in self._error_names() if n in forms.SPEC_BY_NAME]
        if not names:
            return
        focused = self.focused
        current = next((n for n in names if focused is not None and focused.id and focused.id.startswith(f"field-{n}")), None)
        following = names[(names.index(current) + 1) % len(names)] if current else names[0]
        self.form.focus_field(following)

    def action_copy_command(self) -> None:
        if self.config is None:
            self.notify("Fix the problems first: there is no valid command yet.", severity="warning")
            return
        self.app.copy_to_clipboard(forms.command_line(self.config))
        self.notify("Copied (through the terminal, OSC 52; in tmux: set -g set-clipboard on).", title="Command")

    def action_review(self) -> None:
        from ..dialogs.review import ReviewDialog

        raw = self.form.values
        self.app.push_screen(
            ReviewDialog(self.config, self.errors, self._preview_text(raw), self._model_text(raw), self._vram_report()),
            self._review_done,
        )

    def _vram_report(self) -> str:
        """The whole breakdown for the review dialog (per GPU, and the change that would make it fit)."""
        if self.config is None:
            return ""
        shape = self._vram_shape[1] if self._vram_shape else None
        return "\n".join(vram.report(self.config, self._gpus, shape=shape)[0])

    def _review_done(self, result: str | None) -> None:
        if result == "start":
            self.action_start()
        elif result == "copy":
            self.action_copy_command()

    def action_presets(self) -> None:
        from ..dialogs.presets import PresetsDialog

        self.app.push_screen(PresetsDialog(self.form.values), self._preset_chosen)

    def _preset_chosen(self, chosen: PresetLoaded | None) -> None:
        if chosen is None:
            return
        from ..dialogs.presets import KEEP_ON_LOAD

        current = self.form.values
        changes = {k: v for k, v in chosen.values.items() if k in forms.SPEC_BY_NAME and v != current.get(k)}
        edited = [k for k in changes if k not in KEEP_ON_LOAD and current.get(k) != self._loaded.get(k)]
        if not edited:
            self._apply_preset(chosen, changes)
            return
        from ..dialogs.confirm import ConfirmDialog

        body = f"Loading {chosen.name} replaces what you set in: {self._labels(edited)}."
        self.app.push_screen(
            ConfirmDialog(f"Overwrite {plural(len(edited), 'edited field')}?", body, yes="Load", no="Keep mine"),
            lambda yes: self._apply_preset(chosen, changes) if yes else None,
        )

    def _apply_preset(self, chosen: PresetLoaded, changes: dict[str, Any]) -> None:
        self.form.set_values(changes)
        self._loaded = dict(chosen.values)
        # The draft now, not when the fields' change messages arrive: a resume in between would
        # lay the old draft back over the preset.
        self.app.draft.update(self.form.values)
        self._validate(self.form.values)
        what = f"{plural(len(changes), 'field')} changed" if changes else "no field changed (the form already matched)"
        self.notify(f"{chosen.name}: {what}", title="Preset loaded")
