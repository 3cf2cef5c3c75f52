"""Pilot tests of the first-run, Models, Dataset and Setup screens, driven through the real app factory.

The checkpoint root is a set of config.json folders (discovery reads nothing else); the dataset is a
set of samples in the ACE-Step tensor format written without torch (pt_files.py), which this UI test
process never loads. The one walk through every screen with the real demo model is an integration test
(the demo is written by a child interpreter).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from pt_files import write_dataset
from textual.message import Message
from textual.widgets import DataTable, Input, OptionList, Static
from textual.worker import WorkerState
from ui_helpers import wait_until

from engine import config as cfg
from engine import discovery, ptinspect, vram
from sidestep_tui import messages as m
from sidestep_tui.app import make_app
from sidestep_tui.settings import Settings
from sidestep_tui.widgets.config_field import FieldRow

REPO = Path(__file__).resolve().parents[2]

MODEL_CONFIG = {"model_type": "acestep", "num_hidden_layers": 24, "hidden_size": 2048, "timestep_mu": -0.4, "timestep_sigma": 1.0}


def write_model(root: Path, name: str, *, weights: bool = True, **config: Any) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**MODEL_CONFIG, **config}))
    if weights:
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)


def make_checkpoint_root(root: Path) -> Path:
    write_model(root, "acestep-v15-turbo", is_turbo=True)
    write_model(root, "acestep-v15-base", is_turbo=False)
    write_model(root, "acestep-v15-xl-sft", is_turbo=False, hidden_size=2560, num_hidden_layers=32, timestep_mu=-0.3)
    write_model(root, "my-sft-finetune", is_turbo=False)
    write_model(root, "broken-model", weights=False)
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    (root / "Qwen3-Embedding-0.6B").mkdir()
    (root / "silence_latent.pt").write_bytes(b"\0")
    return root


@pytest.fixture(scope="session")
def demo(demo_paths: dict[str, str]) -> dict[str, str]:
    """The session's demo model and samples (tests/conftest.py: built once, shared read-only)."""
    return demo_paths


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six samples of 2 to 12 s (the tests read the count from ``demo_report``, never hard-code it)."""
    return write_dataset(tmp_path_factory.mktemp("tensors") / "dataset", (50, 100, 150, 200, 250, 300))


@pytest.fixture(scope="session")
def demo_report(demo_dataset: Path) -> ptinspect.DatasetReport:
    """What the dataset holds, as the Dataset screen's scan reads it."""
    report = ptinspect.scan_dataset(str(demo_dataset))
    assert report.ok and report.samples >= 2, report
    return report


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private config dir, XDG dir (user presets), cwd, and no real GPUs."""
    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(discovery, "gpus", lambda: [])
    return tmp_path


@pytest.fixture
def ckpt(env: Path) -> Path:
    return make_checkpoint_root(env / "ckpt")


def _no_engine(_log_path: str) -> Any:
    raise AssertionError("this test starts no engine (pass client_factory)")


def app_for(
    env: Path,
    mode: str,
    *,
    settings: Settings | None = None,
    draft: dict[str, Any] | None = None,
    client_factory: Any = _no_engine,
):
    """The app as the CLI builds it, except the engine: a Start reaches ``client_factory`` (by default an
    error), never a real engine process."""
    settings = settings if settings is not None else Settings(checkpoint_root=str(env / "ckpt"), output_root=str(env / "runs"))
    return make_app(
        settings=settings,
        settings_path=str(env / "config" / "settings.json"),
        initial_mode=mode,
        draft=draft,
        client_factory=client_factory,
        log_dir=str(env / "logs"),
    )


class Recorder:
    """``message_hook`` that keeps the messages of the given types."""

    def __init__(self, *types: type[Message]) -> None:
        self.types, self.messages = types, []

    def __call__(self, message: Message) -> None:
        # A bubbling message passes through several pumps: record each message once.
        if isinstance(message, self.types) and not any(message is seen for seen in self.messages):
            self.messages.append(message)

    def of(self, kind: type[Message]) -> list[Any]:
        return [x for x in self.messages if isinstance(x, kind)]


async def settle(pilot, rounds: int = 50) -> None:
    """Wait until the screens' work is done: a check worker can start a scan worker, which posts a
    message, so one ``wait_for_complete`` is not enough. The engine pump (which runs for good once a
    run starts) is not waited for."""
    for _ in range(rounds):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete([w for w in pilot.app.workers if w.group != "engine-pump"])
        await pilot.pause()
        if not any(w.group != "engine-pump" and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in pilot.app.workers):
            return
    raise AssertionError("the app did not settle")


async def models_view(env: Path, name: str) -> tuple[str, str]:
    """(the model's Status cell, the detail panel) as the Models screen shows them after its scan."""
    app = app_for(env, "models")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        table.move_cursor(row=names.index(name))
        await pilot.pause()
        return str(table.get_row_at(names.index(name))[-1]), str(app.screen.query_one("#model-detail", Static).render())


async def type_into(pilot, widget: Input, text: str) -> None:
    """Clear ``widget`` and type ``text`` key by key, as a user does."""
    widget.focus()
    await pilot.pause()
    await pilot.press("end", "ctrl+u")
    for char in text:
        await pilot.press(char if char.isalnum() else _KEY_NAMES.get(char, char))
    await pilot.pause()


async def set_text(pilot, widget: Input, text: str) -> None:
    """Put a long path into ``widget`` at once (typing key by key is tested elsewhere and slow)."""
    widget.focus()
    widget.value = text
    await pilot.pause()


_KEY_NAMES = {
    ".": "full_stop",
    "-": "minus",
    "/": "slash",
    "_": "underscore",
    " ": "space",
    "~": "tilde",
    "+": "plus",
    ",": "comma",
    ":": "colon",
    "=": "equals_sign",
    "!": "exclamation_mark",
    "?": "question_mark",
}


def setup_draft(env: Path, dataset: Path) -> dict[str, Any]:
    return {
        "checkpoint_dir": str(env / "ckpt"),
        "model_variant": "base",
        "dataset_dir": str(dataset),
        "output_dir": str(env / "runs" / "test-run"),
    }


# --------------------------------------------------------------------------- Setup form


async def test_form_has_a_field_for_every_schema_field(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        form = app.screen.form
        # Rows hidden at the start stay out of the widget tree (Setup's first open composes and restyles
        # ~40 rows, not 107).
        hidden = [r for r in form.rows() if not r.display]
        assert hidden and not any(r.built or r.children or r.parent for r in hidden)
        assert list(form.query(FieldRow)) == [r for r in form.rows() if r.display]
        # Shown rows get their widgets down to the bottom of the form's view; the ones below are
        # one-line placeholders (the scrollbar stays true) until scrolled or tabbed to.
        shown = [r for r in form.rows() if r.display]
        in_view = [r for r in shown if r.region.y < form.region.bottom]
        assert in_view and all(r.built for r in in_view)
        pending = [r for r in shown if not r.built]
        assert pending and all(r.has_class("-pending") and r.outer_size.height == 1 for r in pending)
        form.scroll_end(animate=False)
        await settle(pilot)
        in_view = [r for r in shown if form.region.y <= r.region.y < form.region.bottom]
        assert in_view and all(r.built for r in in_view)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert form.depth == "advanced"
        assert form.row("num_workers").built and form.row("num_workers").children  # shown: given its widgets
        # Rows first shown join the tree in schema order (Tab follows the tree).
        assert list(form.query(FieldRow)) == [r for r in form.rows() if r.parent is not None]
        assert all(r.parent for r in form.rows() if r.display)
        for f in dataclasses.fields(cfg.TrainConfig):
            row = form.row(f.name)
            assert row.widget.id == f"field-{f.name}"  # a hidden row gets its widget when asked (lazy)
            assert row.spec.label == f.metadata["label"]
            assert row.spec.help == f.metadata["help"]
            hidden_for_lora = f.metadata["group"] in ("LoKR", "LoHA", "OFT", "LyCORIS")  # the LyCORIS adapters' sections
            assert row.display == (not hidden_for_lora), f.name
        # Basic depth hides the fields marked advanced, and only those.
        await pilot.press("ctrl+t")
        await pilot.pause()
        for f in dataclasses.fields(cfg.TrainConfig):
            if f.metadata["group"] not in ("LoKR", "LoHA", "OFT", "LyCORIS"):
                assert form.row(f.name).display == (not f.metadata.get("advanced", False)), f.name


async def test_bad_values_show_inline_errors_refuse_start_then_fixed_in_place_start(
    ckpt: Path, env: Path, demo_dataset: Path
) -> None:
    from fake_engine import FakeEngineClient

    from engine.protocol import StartRun

    hook = Recorder(m.StartRequested, m.DraftUpdated)
    fake = FakeEngineClient()
    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset), client_factory=lambda _log: fake)
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await settle(pilot)
        screen = app.screen
        form = screen.form
        assert not form.errors, form.errors
        await type_into(pilot, form.row("rank").widget, "0")
        await type_into(pilot, form.row("learning_rate").widget, "abc")
        assert form.row("rank").has_class("-invalid")
        assert "must be >= 1" in str(form.row("rank").query_one(".field-error", Static).render())
        assert "expected a number" in str(form.row("learning_rate").query_one(".field-error", Static).render())
        assert "2 problems" in str(screen.query_one("#setup-status", Static).render())

        await pilot.press("ctrl+s")
        await pilot.pause()
        assert hook.of(m.StartRequested) == []
        assert screen.focused is form.row("rank").widget  # Start jumped to the first problem

        # Fix both in place; Start now posts the config.
        await type_into(pilot, form.row("rank").widget, "32")
        await type_into(pilot, form.row("learning_rate").widget, "1e-4")
        assert form.errors == {}
        assert not form.row("rank").has_class("-invalid")
        await pilot.press("ctrl+s")
        await pilot.pause()
        started = hook.of(m.StartRequested)
        assert len(started) == 1
        expected = cfg.parse({**setup_draft(env, demo_dataset), "rank": 32, "learning_rate": 1e-4})
        assert json.loads(started[0].config_json) == json.loads(cfg.to_json(expected))
        await wait_until(pilot, lambda: bool(fake.sent), 10, "StartRun to reach the engine")
        assert [type(c) for c in fake.sent] == [StartRun] and fake.sent[0].config_json == started[0].config_json
        # The draft follows the form, so leaving the screen loses nothing.
        assert app.draft["rank"] == "32"


async def test_adapter_switch_shows_only_the_matching_section(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        form = app.screen.form
        assert app.screen.query_one("#section-lora").display
        assert not app.screen.query_one("#section-lokr").display
        select = form.row("adapter_type").widget
        select.focus()
        await pilot.press("enter", "down", "enter")  # open the menu, pick the next entry (lokr)
        await settle(pilot)
        assert form.values["adapter_type"] == "lokr"
        assert not app.screen.query_one("#section-lora").display
        assert app.screen.query_one("#section-lokr").display
        assert form.row("lokr_linear_dim").display and not form.row("rank").display


async def test_error_in_a_hidden_field_is_shown_anyway(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    draft = {**setup_draft(env, demo_dataset), "lokr_linear_dim": "0", "num_workers": "-1"}
    app = app_for(env, "setup", draft=draft)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        form = app.screen.form
        assert form.depth == "basic"
        assert form.row("lokr_linear_dim").display  # LoKR field under LoRA: shown because it is wrong
        assert form.row("num_workers").display  # advanced field at Basic depth: same
        assert set(form.errors) == {"lokr_linear_dim", "num_workers"}


async def test_next_problem_focuses_a_multi_choice_field(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    """A row of ticks (target modules) has no focus of its own: the jump lands on its first tick."""
    draft = {**setup_draft(env, demo_dataset), "target_modules": ("q_proj", "bogus_proj")}
    app = app_for(env, "setup", draft=draft)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "target_modules" in app.screen.form.errors
        app.screen.query_one("#field-dataset_dir").focus()
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.focused is not None and app.focused.id == "field-target_modules-0"


async def test_preset_load_changes_field_values(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        form = app.screen.form
        assert form.values["epochs"] == "1000"
        await pilot.press("ctrl+l")
        await settle(pilot)
        dialog = app.screen
        options = dialog.query_one(OptionList)
        options.highlighted = [i.name for i in dialog.infos].index("quick_test")
        await pilot.press("ctrl+l")
        await settle(pilot)
        form = app.screen.form
        assert form.values["epochs"] == "10"
        assert form.values["rank"] == "16"
        assert form.values["dataset_dir"] == str(demo_dataset)  # a preset never replaces paths
        assert form.errors == {}


async def test_preset_save_export_import_round_trip(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    app = app_for(env, "setup", draft={**setup_draft(env, demo_dataset), "rank": "8", "alpha": "16"})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+l")
        await settle(pilot)
        dialog = app.screen
        await type_into(pilot, dialog.query_one("#preset-name", Input), "mine")
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = env / "xdg" / "sidestep" / "presets" / "mine.json"
        assert json.loads(saved.read_text())["config"]["rank"] == 8
        assert "dataset_dir" not in json.loads(saved.read_text())["config"]
        # Export the highlighted (just saved) preset, then import it back under a new name.
        await set_text(pilot, dialog.query_one("#preset-file", Input), str(env / "shared.json"))
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert json.loads((env / "shared.json").read_text())["config"]["alpha"] == 16
        shutil.copy(env / "shared.json", env / "imported.json")
        await set_text(pilot, dialog.query_one("#preset-file", Input), str(env / "imported.json"))
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert (env / "xdg" / "sidestep" / "presets" / "imported.json").is_file()
        assert "imported" in [i.name for i in dialog.infos]
        # Saving under an existing name needs a second press.
        await type_into(pilot, dialog.query_one("#preset-name", Input), "mine")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "again" in str(dialog.query_one("#preset-message", Static).render())
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "SetupScreen"


async def test_placeholders_are_variant_aware(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    app = app_for(env, "setup", draft={**setup_draft(env, demo_dataset), "model_variant": "turbo"})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        form = app.screen.form
        assert form.row("shift").widget.placeholder == "auto: 3.0 for turbo"
        assert form.row("num_inference_steps").widget.placeholder == "auto: 8 for turbo"
        assert form.row("timestep_mu").widget.placeholder == "auto: -0.4 (model config)"
        form.row("model_variant").set_raw("xl-sft")
        await settle(pilot)
        assert form.row("shift").widget.placeholder == "auto: 1.0 for sft"
        assert form.row("timestep_mu").widget.placeholder == "auto: -0.3 (model config)"


async def test_steps_preview_uses_the_dataset_sample_count(
    ckpt: Path, env: Path, demo_dataset: Path, demo_report: ptinspect.DatasetReport
) -> None:
    draft = {**setup_draft(env, demo_dataset), "batch_size": "2", "gradient_accumulation": "3", "epochs": "5"}
    app = app_for(env, "setup", draft=draft)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        preview = str(app.screen.query_one("#setup-preview", Static).render())
        n = demo_report.samples
        micro = math.ceil(n / 2)  # batches per epoch
        per_epoch = math.ceil(micro / 3)  # optimizer steps per epoch (the last partial group is flushed)
        assert f"{n} samples" in preview
        assert "effective batch  6" in preview
        assert f"batches / epoch  {micro}" in preview
        assert f"steps / epoch    {per_epoch}" in preview
        assert f"total steps      {per_epoch * 5}" in preview
        command = str(app.screen.query_one("#setup-command", Static).render())
        assert "sidestep train" in command and "--batch-size 2" in command


async def test_setup_shows_a_live_vram_estimate_and_what_would_make_it_fit(
    ckpt: Path, env: Path, demo_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discovery, "gpus", lambda: [discovery.GpuInfo(0, "NVIDIA RTX 4090", 1024.0, 24564.0)])
    app = app_for(env, "setup", draft={**setup_draft(env, demo_dataset), "chunk_duration": "60"})
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        form = app.screen.form

        def shown() -> str:
            return str(app.screen.query_one("#setup-vram", Static).render())

        def expected(**changes: Any) -> str:
            config = dataclasses.replace(app.screen.config, **changes)
            return vram.gib(vram.estimate(vram.shape_for(str(ckpt / "acestep-v15-base"))[0], config).total)

        assert app.screen.config is not None, app.screen.errors
        assert f"{expected()} peak" in shown() and "GPU 0 NVIDIA RTX 4090: 23.0 GiB free\n  ✓ fits" in shown()
        form.row("batch_size").set_raw("8")
        form.row("chunk_duration").set_raw("240")
        form.row("gradient_checkpointing").set_raw(False)
        await settle(pilot)
        assert app.screen.config.batch_size == 8 and not app.screen.config.gradient_checkpointing
        assert f"{expected()} peak" in shown() and "✗ does not fit" in shown()
        fix = expected(gradient_checkpointing=True)
        assert f"to fit: turn gradient checkpointing on: {expected()} -> {fix}" in " ".join(shown().split())
        before = expected()
        form.row("rank").set_raw("0")  # a problem: the figure stays, counting the rank at its default (64, as before)
        await settle(pilot)
        assert app.screen.config is None and f"{before} peak" in shown()


# --------------------------------------------------------------------------- Models


async def test_models_screen_lists_filters_and_chooses(ckpt: Path, env: Path) -> None:
    hook = Recorder(m.DraftUpdated)
    app = app_for(env, "models")
    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 5
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert names[:3] == ["acestep-v15-base", "acestep-v15-turbo", "acestep-v15-xl-sft"]  # officials first
        assert "no GPU found" in str(app.screen.query_one("#models-gpus", Static).render())
        for ch in "turbo":
            await pilot.press(ch)  # the filter has focus: typing filters
        await pilot.pause()
        assert table.row_count == 1 and str(table.get_row_at(0)[1]) == "turbo"
        assert "1 of 5 shown" in str(app.screen.query_one("#models-count", Static).render())
        await type_into(pilot, app.screen.query_one("#models-filter", Input), "problem")
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["broken-model"]
        assert "no weights" in str(app.screen.query_one("#model-detail", Static).render())
        await type_into(pilot, app.screen.query_one("#models-filter", Input), "sft fine")
        assert table.row_count == 1 and str(table.get_row_at(0)[1]) == "fine-tune of sft"
        await pilot.press("enter")  # one match: Enter in the filter chooses it
        await settle(pilot)
        draft = hook.of(m.DraftUpdated)[-1].values
        assert draft == {"checkpoint_dir": str(ckpt), "model_variant": "my-sft-finetune", "base_model": "sft"}
        assert app.draft["model_variant"] == "my-sft-finetune"
        assert app.screen.__class__.__name__ == "DatasetScreen"


async def test_models_screen_shows_real_gpus_from_nvml(ckpt: Path, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "gpus", lambda: [discovery.GpuInfo(0, "NVIDIA H100", 1024.0, 81559.0)])
    app = app_for(env, "models")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        text = str(app.screen.query_one("#models-gpus", Static).render())
        assert "GPU 0  NVIDIA H100  78.6 GB free of 79.6 GB" in text


# --------------------------------------------------------------------------- Dataset


async def test_dataset_screen_reports_counts_and_a_corrupt_file(
    ckpt: Path, env: Path, demo_dataset: Path, demo_report: ptinspect.DatasetReport
) -> None:
    data = env / "data"
    shutil.copytree(demo_dataset, data)
    victim = demo_report.files[1]
    (data / victim).write_bytes(b"this is not a torch file")
    (data / "preprocess_meta.json").write_text(json.dumps({"model_variant": "turbo"}))
    hook = Recorder(m.DraftUpdated)
    app = app_for(env, "dataset", draft={"checkpoint_dir": str(ckpt), "model_variant": "base"})
    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        await settle(pilot)
        await set_text(pilot, app.screen.query_one(Input), str(data))
        await settle(pilot)
        summary = str(app.screen.query_one("#dataset-summary", Static).render())
        problems = str(app.screen.query_one("#dataset-problem-list", Static).render())
        n = demo_report.samples
        assert f"{n - 1} usable of {n} files (1 with problems)" in summary
        assert f"✗ {victim}: not a torch.save zip archive" in problems
        assert "stale: preprocessed for turbo, but the chosen model is base" in problems
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert hook.of(m.DraftUpdated)[-1].values == {"dataset_dir": str(data)}
        assert app.settings.last_dataset_dir == str(data)
        assert app.screen.__class__.__name__ == "SetupScreen"


async def test_dataset_path_completes_with_tab(
    ckpt: Path, env: Path, demo_dataset: Path, demo_report: ptinspect.DatasetReport
) -> None:
    shutil.copytree(demo_dataset, env / "tensors-v1")
    app = app_for(env, "dataset")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        field = app.screen.query_one(Input)
        await set_text(pilot, field, str(env / "ten"))
        await pilot.press("s")  # the last key typed, then Tab completes the unique folder
        await pilot.press("tab")
        await settle(pilot)
        assert field.value == str(env / "tensors-v1") + os.sep
        assert f"{demo_report.samples} usable" in str(app.screen.query_one("#dataset-summary", Static).render())
        await pilot.press("tab")  # nothing left to complete: Tab moves on as usual
        assert app.screen.focused is not field and field.value == str(env / "tensors-v1") + os.sep


# --------------------------------------------------------------------------- First run


async def test_first_run_asks_for_the_roots_checks_them_and_saves(ckpt: Path, env: Path) -> None:
    hook = Recorder(m.SettingsChanged)
    app = app_for(env, "models", settings=Settings())
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await settle(pilot)
        assert app.screen.__class__.__name__ == "FirstRunScreen"
        root_input = app.screen.query_one("#checkpoint-root Input", Input)
        await set_text(pilot, root_input, str(env / "nope"))
        await settle(pilot)
        assert "no such folder" in str(app.screen.query_one("#checkpoint-root .path-status", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert hook.of(m.SettingsChanged) == []  # refused: the root does not exist
        await set_text(pilot, root_input, str(ckpt))
        await settle(pilot)
        status = str(app.screen.query_one("#checkpoint-root .path-status", Static).render())
        assert status.startswith("✓ 5 models")
        await set_text(pilot, app.screen.query_one("#output-root Input", Input), str(env / "new-runs"))
        await settle(pilot)
        assert "will be created" in str(app.screen.query_one("#output-root .path-status", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)
        saved = json.loads((env / "config" / "settings.json").read_text())
        assert saved["checkpoint_root"] == str(ckpt) and saved["output_root"] == str(env / "new-runs")
        assert app.screen.__class__.__name__ == "ModelsScreen"
        assert app.screen.query_one(DataTable).row_count == 5  # scanned with the new root


# --------------------------------------------------------------------------- the whole path


@pytest.mark.integration
async def test_first_run_to_start_through_every_form_screen(env: Path, demo: dict[str, str]) -> None:
    """First run -> the demo model -> its dataset -> Setup (an error fixed in place) -> Start: the
    engine client built by the App's factory receives StartRun with the config the forms produced."""
    from fake_engine import FakeEngineClient

    from engine.protocol import StartRun

    fake = FakeEngineClient()
    app = make_app(
        settings=Settings(),
        settings_path=str(env / "config" / "settings.json"),
        initial_mode="models",
        client_factory=lambda log_path: fake,
        log_dir=str(env / "logs"),
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.screen.__class__.__name__ == "FirstRunScreen"
        await set_text(pilot, app.screen.query_one("#checkpoint-root Input", Input), demo["checkpoint_dir"])
        await set_text(pilot, app.screen.query_one("#output-root Input", Input), str(env / "runs"))
        await pilot.press("ctrl+s")
        await settle(pilot)

        assert app.screen.__class__.__name__ == "ModelsScreen"
        table = app.screen.query_one(DataTable)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["sidestep-demo-base"]
        table.focus()
        await pilot.press("enter")
        await settle(pilot)

        assert app.screen.__class__.__name__ == "DatasetScreen"
        assert "For model: sidestep-demo-base" in str(app.screen.query_one("#dataset-model", Static).render())
        await set_text(pilot, app.screen.query_one("#dataset-path Input", Input), demo["dataset_dir"])
        await settle(pilot)
        n = ptinspect.scan_dataset(demo["dataset_dir"]).samples
        assert f"{n} usable of {n} files" in str(app.screen.query_one("#dataset-summary", Static).render())
        assert "no problems" in str(app.screen.query_one("#dataset-problem-list", Static).render())
        await pilot.press("ctrl+s")
        await settle(pilot)

        assert app.screen.__class__.__name__ == "SetupScreen"
        form = app.screen.form
        assert form.values["model_variant"] == "sidestep-demo-base"
        assert form.values["dataset_dir"] == demo["dataset_dir"]
        assert form.values["output_dir"].startswith(str(env / "runs" / "sidestep-demo-base-lora-"))
        await type_into(pilot, form.row("rank").widget, "0")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert fake.sent == []  # refused
        await type_into(pilot, form.row("rank").widget, "4")
        await type_into(pilot, form.row("max_steps").widget, "2")
        await pilot.press("ctrl+s")
        # the engine pump worker now runs for good: wait on the fake, not on workers
        await wait_until(pilot, lambda: bool(fake.sent), 10, "StartRun to reach the engine")
        assert len(fake.sent) == 1 and isinstance(fake.sent[0], StartRun)
        config = cfg.from_json(fake.sent[0].config_json)
        assert (config.checkpoint_dir, config.model_variant, config.dataset_dir) == (
            demo["checkpoint_dir"],
            "sidestep-demo-base",
            demo["dataset_dir"],
        )
        assert config.rank == 4 and config.max_steps == 2 and config.base_model == "base"
        assert app.current_mode == "monitor"


# --------------------------------------------------------------------------- keys


PRINTABLE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_/ "


@pytest.mark.parametrize(
    "mode,selector", [("models", "#models-filter"), ("dataset", "#dataset-path Input"), ("setup", "#field-run_name")]
)
async def test_inputs_never_lose_keystrokes_to_bindings(
    ckpt: Path, env: Path, demo_dataset: Path, mode: str, selector: str
) -> None:
    app = app_for(env, mode, draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        if mode == "setup":  # a row below the form's view gets its widgets when asked for them
            field = screen.form.row(selector.removeprefix("#field-")).widget
            await pilot.pause()
        else:
            field = screen.query_one(selector, Input)
        await type_into(pilot, field, PRINTABLE)
        assert field.value == PRINTABLE
        assert app.screen is screen  # no key switched screens or opened a dialog


@pytest.mark.parametrize("mode", ["models", "dataset", "setup"])
async def test_every_binding_has_an_id_and_no_printable_keys(ckpt: Path, env: Path, demo_dataset: Path, mode: str) -> None:
    app = app_for(env, mode, draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for binding in type(app.screen).BINDINGS:
            assert binding.id, binding
            assert not (len(binding.key) == 1 and binding.key.isprintable()), binding
            assert not binding.priority, binding


async def test_screen_actions_are_in_the_command_palette(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    from sidestep_tui.screens.screen_commands import ScreenActions

    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        provider = ScreenActions(app.screen)
        titles = [str(hit.text) async for hit in provider.discover()]
        assert titles == [
            "Setup: Start",
            "Setup: Basic/Advanced",
            "Setup: Presets",
            "Setup: Review",
            "Setup: Next problem",
            "Setup: Copy command",
        ]
        hits = [hit async for hit in provider.search("basic")]
        assert len(hits) == 1
        await hits[0].command()
        await settle(pilot)  # the advanced rows it mounts finish mounting before the app is torn down
        assert app.screen.form.depth == "advanced"
