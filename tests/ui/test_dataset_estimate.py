"""The Dataset screen's estimate and compare views. One walk against the real engine process on the demo
model: Ctrl+L -> where to write -> the estimate runs in the engine -> the ranking table marks the top-k
-> the module config on disk holds exactly those -> Ctrl+Y fills Setup's module config. The compare
dialog reads real files (no engine). The stop and the job's events are tested in-process
(tests/engine/test_select.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_forms import app_for, ckpt, demo_dataset, env, set_text, settle  # noqa: F401  (fixtures)
from textual.widgets import DataTable, Static
from ui_helpers import wait_until

from engine import moduleconfig
from sidestep_tui.app import make_app
from sidestep_tui.dialogs.compare import CompareDialog
from sidestep_tui.dialogs.estimate import EstimateDialog
from sidestep_tui.settings import Settings
from sidestep_tui.widgets.estimate_panel import EstimatePanel


def _rows(table: DataTable) -> list[tuple[str, ...]]:
    return [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_estimate_in_the_engine_then_use_it_in_setup(demo_paths: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "tensors"
    shutil.copytree(demo_paths["dataset_dir"], data)
    draft: dict[str, Any] = {
        "checkpoint_dir": demo_paths["checkpoint_dir"],
        "model_variant": demo_paths["model_variant"],
        "device": "cpu",
        "num_workers": 0,
        "estimate_batches": 2,
        "top_k": 3,
        "selected_modules": ("layers.0.mlp.up_proj",),  # left by an earlier run: Use estimate must clear it
    }
    app = make_app(
        settings=Settings(checkpoint_root=demo_paths["checkpoint_dir"], output_root=str(tmp_path / "runs")),
        settings_path=str(tmp_path / "config" / "settings.json"),
        initial_mode="dataset",
        log_dir=str(tmp_path / "logs"),
        draft=draft,
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await set_text(pilot, app.screen.query_one("#dataset-path").input, str(data))
        dataset = app.screen
        await wait_until(pilot, lambda: dataset.report is not None, 10, "the dataset scan")
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: isinstance(app.screen, EstimateDialog), 5, "the estimate dialog")
        output = app.screen.query_one("#estimate-output").value
        assert output == str(data / "module_config.json")  # the dataset folder's, unless the user picks another
        await pilot.press("enter")
        panel = dataset.query_one(EstimatePanel)
        await wait_until(pilot, lambda: bool(panel.job), 5, "the estimate to start")
        await wait_until(pilot, lambda: not panel.job, 240, "the estimate to finish")
        status = str(panel.query_one("#estimate-status", Static).render())
        assert status.startswith(f"Wrote {output}: the top 3 of 44"), status

        written = json.loads(Path(output).read_text())  # Side-Step's module-config list, the top 3
        rows = _rows(panel.query_one(DataTable))
        assert len(rows) == 44 and [r[0] for r in rows] == [str(i) for i in range(1, 45)]
        selected = [r[1] for r in rows if r[3] == "✓ selected"]
        assert selected == [e["module"] for e in written] == [r[1] for r in rows[:3]]
        scores = [float(r[2]) for r in rows]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0

        await pilot.press("ctrl+y")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "SetupScreen", 10, "Setup")
        form = app.screen.form
        assert form.values["module_config"] == output and form.values["auto_estimate"] is False
        assert form.values["selected_modules"] == ""
        assert app.draft["dataset_dir"] == str(data)


def _write(path: Path, names: list[str]) -> str:
    path.write_text(json.dumps([{"module": f"decoder.{n}", "sensitivity": 1.0 / (i + 1)} for i, n in enumerate(names)]))
    return str(path)


async def test_compare_shows_overlap_and_ranks_side_by_side(ckpt, env, demo_dataset):  # noqa: F811
    a = _write(env / "a.json", ["layers.0.self_attn.q_proj", "layers.1.mlp.up_proj", "layers.2.cross_attn.v_proj"])
    b = _write(env / "b.json", ["layers.1.mlp.up_proj", "layers.3.self_attn.o_proj"])
    app = app_for(env, "dataset", draft={"checkpoint_dir": str(ckpt), "model_variant": "base", "module_config": a})
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareDialog), 5, "the compare dialog")
        dialog = app.screen
        head = str(dialog.query_one("#compare-head", Static).render())
        assert head.startswith("Enter two or three module configs")  # only Setup's module config was known
        assert dialog.query_one("#compare-a").value == a and dialog.query_one("#compare-b").has_focus
        await set_text(pilot, dialog.query_one("#compare-b"), b)
        await pilot.press("enter")
        head = str(dialog.query_one("#compare-head", Static).render())
        assert f"A: {a} (estimate, 3 modules)" in head and "overlap A-B: 1 of 3/2 (Jaccard 0.25)" in head
        rows = _rows(dialog.query_one("#compare-table", DataTable))
        expected = moduleconfig.comparison_text(moduleconfig.compare([moduleconfig.load(a), moduleconfig.load(b)]))[-len(rows) :]
        assert [r[0] for r in rows] == [line.split()[0] for line in expected]  # the CLI's rows, in its order
        assert rows[0] == ("decoder.layers.1.mlp.up_proj", "#2 5.000e-01", "#1 1.000e+00")
        assert ("decoder.layers.3.self_attn.o_proj", "-", "#2 5.000e-01") in rows

        await set_text(pilot, dialog.query_one("#compare-c"), str(env / "missing.json"))
        await pilot.press("enter")
        head = str(dialog.query_one("#compare-head", Static).render())
        assert head.startswith("✗ module config") and "missing.json does not exist" in head and "\n" not in head
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "DatasetScreen"


def test_bad_estimate_input_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    from sidestep_tui.dialogs.estimate import check_output
    from sidestep_tui.widgets.estimate_panel import estimate_config_json

    assert check_output(str(tmp_path / "m.json")) == ""
    assert check_output(str(tmp_path)).endswith(f"is a folder: add a file name, e.g. {tmp_path / 'module_config.json'}")
    assert (
        check_output(str(tmp_path / "no" / "m.json")) == f"{tmp_path / 'no'} does not exist: choose a file in an existing folder"
    )
    out = str(tmp_path / "m.json")
    assert estimate_config_json({}, str(tmp_path), out) == (
        None,
        "Choose a model first (Models screen, F1): the estimate runs it.",
    )
    model = {"checkpoint_dir": "/ckpt", "model_variant": "base"}
    config_json, problem = estimate_config_json({**model, "top_k": "0"}, str(tmp_path), out)
    assert config_json is None and problem.startswith("top_k: ") and problem.endswith("(Setup screen, F3)")
    config_json, problem = estimate_config_json({**model, "top_k": 5, "rank": "not used here"}, str(tmp_path), out)
    assert problem == "" and json.loads(config_json or "{}")["top_k"] == 5  # only the estimate's own fields are read
