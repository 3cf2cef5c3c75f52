"""Pilot tests for the first ten minutes (issue 13): presets that load over edits, readiness that
includes the dataset and model checks, one automatic output folder, Setup that remembers, the
welcome screen's Tab, what quitting prints."""

from __future__ import annotations

from pathlib import Path

import test_forms
from test_forms import app_for, settle, setup_draft, type_into
from textual.widgets import OptionList
from ui_helpers import wait_until

from engine import presets
from sidestep_tui import forms
from sidestep_tui.dialogs.confirm import ConfirmDialog

# The Setup tests' fixtures: a checkpoint root of config.json folders, a tensor dataset, a private env.
ckpt, demo_dataset, env = test_forms.ckpt, test_forms.demo_dataset, test_forms.env


def notes(app) -> str:
    """Every notification the app has shown (recorded by tests/ui/conftest.py)."""
    return "\n".join(app.__dict__.get("_notes_seen", []))


async def _load_preset(pilot, name: str) -> None:
    await pilot.press("ctrl+l")
    await settle(pilot)
    dialog = pilot.app.screen
    dialog.query_one(OptionList).highlighted = [i.name for i in dialog.infos].index(name)
    await pilot.press("enter")
    await settle(pilot)


def _expected_after_load(form_values: dict, name: str) -> dict:
    info = next(i for i in presets.list_presets() if i.name == name)
    kept = {k: v for k, v in form_values.items() if k in presets.FORBIDDEN_KEYS | {"model_variant", "base_model"}}
    return forms.merge_raw(forms.merge_raw(forms.default_raw(), kept), presets.load_preset(info.path))


async def test_preset_over_edited_fields_asks_then_applies_and_says_what_changed(
    ckpt: Path, env: Path, demo_dataset: Path
) -> None:
    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        form = app.screen.form
        await type_into(pilot, form.row("rank").widget, "8")
        await settle(pilot)
        before = form.values
        expected = _expected_after_load(before, "quick_test")
        changed = sorted(k for k in expected if k in forms.SPEC_BY_NAME and expected[k] != before[k])
        assert "rank" in changed and len(changed) > 1

        # Declining keeps the edit.
        await _load_preset(pilot, "quick_test")
        assert isinstance(app.screen, ConfirmDialog), app.screen
        assert "Rank" in app.screen.body
        await pilot.press("n")
        await settle(pilot)
        assert app.screen.form.values == before

        # Accepting applies the preset over the edit and says how much changed, in one line.
        await _load_preset(pilot, "quick_test")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await settle(pilot)
        form = app.screen.form
        assert form.values["rank"] == "16" and form.values["epochs"] == "10"
        assert {k: form.values[k] for k in changed} == {k: expected[k] for k in changed}
        assert f"quick_test: {len(changed)} fields changed" in notes(app)
        assert app.draft["rank"] == "16"  # what a return to Setup restores
        # Leaving and coming back keeps the preset's values.
        await pilot.press("f2")
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        assert app.screen.form.values["rank"] == "16"


async def test_preset_over_untouched_form_applies_without_asking(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await _load_preset(pilot, "quick_test")
        assert not isinstance(app.screen, ConfirmDialog)
        assert app.screen.form.values["epochs"] == "10"
        assert "quick_test:" in notes(app) and "fields changed" in notes(app)


# --------------------------------------------------------------------------- readiness


def _status(app) -> str:
    return str(app.screen.query_one("#setup-status").render())


async def _assert_not_ready(pilot, app, field: str, fragment: str, started: list, env: Path) -> None:
    from sidestep_tui.dialogs.review import ReviewDialog

    await settle(pilot)
    form = app.screen.form
    label = forms.SPEC_BY_NAME[field].label
    assert "Ready" not in _status(app) and label in _status(app), _status(app)
    assert fragment in form.errors.get(field, ""), form.errors
    # Review does not call it valid, and offers no Start.
    await pilot.press("ctrl+r")
    await settle(pilot)
    review = app.screen
    assert isinstance(review, ReviewDialog)
    text = str(review.query_one("#review-status").render())
    assert "valid" not in text and fragment in text, text
    assert review.query_one("#start").disabled
    await pilot.press("escape")
    await settle(pilot)
    # Start refuses with the same line: no engine, no run folder.
    await pilot.press("ctrl+s")
    await settle(pilot)
    assert started == []
    assert f"{label}: " in notes(app) and fragment in notes(app), notes(app)
    assert not (env / "runs").exists() or list((env / "runs").iterdir()) == []


def _recording_factory(started: list):
    def factory(log_path: str):
        started.append(log_path)
        raise AssertionError("no engine may start for a run that is not ready")

    return factory


async def test_missing_dataset_folder_is_not_ready(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    started: list = []
    draft = {**setup_draft(env, demo_dataset), "dataset_dir": str(env / "no-such-folder")}
    app = app_for(env, "setup", draft=draft, client_factory=_recording_factory(started))
    async with app.run_test(size=(120, 40)) as pilot:
        await _assert_not_ready(pilot, app, "dataset_dir", "does not exist", started, env)


async def test_dataset_folder_without_tensors_is_not_ready(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    started: list = []
    (env / "empty-data").mkdir()
    draft = {**setup_draft(env, demo_dataset), "dataset_dir": str(env / "empty-data")}
    app = app_for(env, "setup", draft=draft, client_factory=_recording_factory(started))
    async with app.run_test(size=(120, 40)) as pilot:
        await _assert_not_ready(pilot, app, "dataset_dir", "no sample", started, env)


async def test_model_not_under_the_checkpoint_root_is_not_ready(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    started: list = []
    draft = {**setup_draft(env, demo_dataset), "model_variant": "xl-base"}
    app = app_for(env, "setup", draft=draft, client_factory=_recording_factory(started))
    async with app.run_test(size=(120, 40)) as pilot:
        await _assert_not_ready(pilot, app, "model_variant", "no folder acestep-v15-xl-base", started, env)
        # Choosing a model that is there makes it ready.
        await type_into(pilot, app.screen.form.row("model_variant").widget, "base")
        await settle(pilot)
        assert "✓ Ready" in _status(app), _status(app)


# --------------------------------------------------------------------------- the automatic output folder


class _Clock:
    """Stands in for ``time`` in the Setup module: each ``strftime`` reads one second later
    (``step=0``: the same second forever), so a name decided again shows."""

    def __init__(self, step: int) -> None:
        self.t, self.step = 1_800_000_000, step

    def strftime(self, fmt: str, *_args) -> str:
        import time as _time

        self.t += self.step
        return _time.strftime(fmt, _time.gmtime(self.t))

    def __getattr__(self, name: str):
        import time as _time

        return getattr(_time, name)


def _auto_draft(env: Path, dataset: Path) -> dict:
    draft = setup_draft(env, dataset)
    del draft["output_dir"]
    return draft


async def test_automatic_output_folder_is_decided_once_and_shown_in_review(
    ckpt: Path, env: Path, demo_dataset: Path, monkeypatch
) -> None:
    import json

    from fake_engine import FakeEngineClient
    from test_forms import Recorder

    from sidestep_tui import messages as m
    from sidestep_tui.screens import setup as setup_mod

    monkeypatch.setattr(setup_mod, "time", _Clock(step=61))
    hook = Recorder(m.StartRequested)
    fake = FakeEngineClient()
    app = app_for(env, "setup", draft=_auto_draft(env, demo_dataset), client_factory=lambda _log: fake)
    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        await settle(pilot)
        chosen = app.screen.form.values["output_dir"]
        assert Path(chosen).parent == env / "runs" and Path(chosen).name.startswith("base-lora-"), chosen
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert chosen in str(app.screen.query_one("#review-command").render())
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.form.values["output_dir"] == chosen  # a return to Setup decides nothing again
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert chosen in str(app.screen.query_one("#review-command").render())
        await pilot.press("ctrl+s")  # Start from the review
        await wait_until(pilot, lambda: bool(hook.of(m.StartRequested)), 10, "the start")
        started = hook.of(m.StartRequested)
        assert len(started) == 1 and json.loads(started[0].config_json)["output_dir"] == chosen


async def test_automatic_output_folder_follows_the_model_and_is_never_an_earlier_run_folder(
    ckpt: Path, env: Path, demo_dataset: Path, monkeypatch
) -> None:
    from sidestep_tui.screens import setup as setup_mod

    monkeypatch.setattr(setup_mod, "time", _Clock(step=0))  # every name in the same second
    app = app_for(env, "setup", draft=_auto_draft(env, demo_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        first = app.screen.form.values["output_dir"]
        Path(first).mkdir(parents=True)  # an earlier run (failed or not) used it
        (Path(first) / "events.jsonl").write_text("")
        await pilot.press("f2")
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        second = app.screen.form.values["output_dir"]
        assert second != first and not Path(second).exists(), (first, second)
        # Another model chosen elsewhere: the untouched automatic name follows it.
        await pilot.press("f2")
        await settle(pilot)
        app.draft["model_variant"] = "turbo"
        await pilot.press("f3")
        await settle(pilot)
        third = app.screen.form.values["output_dir"]
        assert Path(third).name.startswith("turbo-lora-"), third
        assert third in str(app.screen.query_one("#setup-command").render())


# --------------------------------------------------------------------------- the welcome screen's Tab


async def test_welcome_tab_without_a_match_stays_and_says_no_match(ckpt: Path, env: Path) -> None:
    from textual.widgets import Input

    from sidestep_tui.settings import Settings

    app = app_for(env, "models", settings=Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert type(app.screen).__name__ == "FirstRunScreen"
        root_input = app.screen.query_one("#checkpoint-root Input", Input)
        output_input = app.screen.query_one("#output-root Input", Input)
        output_before = output_input.value
        root_input.focus()
        root_input.value = str(env / "ckp")  # nothing under env starts with "ckp"... but ckpt/ does
        root_input.cursor_position = len(root_input.value)
        await pilot.press("tab")
        await settle(pilot)
        assert root_input.value == str(env / "ckpt") + "/" and app.focused is root_input  # a match completes
        root_input.value = str(env / "zzz")
        root_input.cursor_position = len(root_input.value)
        await pilot.press("tab")
        await settle(pilot)
        assert app.focused is root_input, app.focused
        assert "no match" in notes(app).lower()
        assert root_input.value == str(env / "zzz") and output_input.value == output_before
        await pilot.press("tab")  # asked twice: move on (a folder to be created is an answer)
        await settle(pilot)
        assert app.focused is output_input
        root_input.focus()
        await settle(pilot)
        # A complete folder: Tab moves on, and the next field's text is not selected for deletion.
        root_input.value = str(env / "ckpt")
        root_input.cursor_position = len(root_input.value)
        await pilot.press("tab")
        await settle(pilot)
        assert app.focused is output_input
        assert output_input.selection.is_empty
        await pilot.press("backspace")
        assert output_input.value == output_before[:-1]


# --------------------------------------------------------------------------- Setup remembers


async def test_setup_prefills_from_settings_after_a_restart(env: Path, demo_dataset: Path) -> None:
    from sidestep_tui.settings import Settings

    root = env / "one-model"
    test_forms.write_model(root, "acestep-v15-turbo", is_turbo=True)
    settings = Settings(checkpoint_root=str(root), output_root=str(env / "runs"), last_dataset_dir=str(demo_dataset))
    app = app_for(env, "setup", settings=settings)  # a restart: no draft, only the saved settings
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        values = app.screen.form.values
        assert values["checkpoint_dir"] == str(root)
        assert values["dataset_dir"] == str(demo_dataset)
        assert values["model_variant"] == "turbo"  # the only model there
        assert "✓ Ready" in _status(app), _status(app)


async def test_checkpoint_root_changes_from_models_screen_and_palette(ckpt: Path, env: Path) -> None:
    import json

    from textual.widgets import DataTable, Input

    from sidestep_tui.settings import Settings

    other = env / "other-root"
    test_forms.write_model(other, "acestep-v15-sft", is_turbo=False)
    settings = Settings(checkpoint_root=str(ckpt), output_root=str(env / "runs"))
    app = app_for(env, "models", settings=settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.screen.query_one(DataTable).row_count == 5
        await pilot.press("ctrl+o")
        await settle(pilot)
        field = app.screen.query_one("#root-path Input", Input)
        field.value = str(env / "missing")
        await pilot.press("enter")
        await settle(pilot)
        assert "no such folder" in str(app.screen.query_one("#root-message").render())  # refused, still open
        field.value = str(other)
        await pilot.press("enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "ModelsScreen"
        assert app.settings.checkpoint_root == str(other)
        assert json.loads((env / "config" / "settings.json").read_text())["checkpoint_root"] == str(other)
        assert app.screen.query_one(DataTable).row_count == 1
        assert app.draft["checkpoint_dir"] == str(other)

        # The palette offers the same, from any screen.
        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"checkpoint root")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        field = app.screen.query_one("#root-path Input", Input)
        field.value = str(ckpt)
        await pilot.press("enter")
        await settle(pilot)
        assert app.settings.checkpoint_root == str(ckpt)


# --------------------------------------------------------------------------- 80×24


async def test_runs_show_steps_and_best_at_80_columns(build_app, ui_settings, tmp_path: Path) -> None:
    from ui_helpers import make_run_dir, screen_text

    from engine.runs import summarize_run
    from engine.summary import loss_text

    run = make_run_dir(Path(ui_settings.output_root), "sidestep-demo-base-lora-20261130-064712-2")
    summary = summarize_run(str(run))
    assert summary.best_loss is not None
    app = build_app(initial_mode="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: bool(app.screen.runs), 10, "the run scan")
        await pilot.pause()
        lines = screen_text(app).splitlines()
        header = next(line for line in lines if "Status" in line and "Run" in line)
        assert "Steps" in header and "Best" in header, header
        row = next(line for line in lines if "sidestep-demo-base-lora" in line)
        assert loss_text(summary.best_loss) in row and str(summary.steps) in row, row
