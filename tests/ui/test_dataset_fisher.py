"""The Dataset screen's PP++ panel: a tensor folder's fisher_map.json is shown when the folder is opened
(ranking table and per-layer heat strip), a broken one is named in one line, and the run state follows a
PP++ job to its end. The analysis itself runs in the engine (tests/engine/test_fisher.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from test_forms import app_for, ckpt, demo_dataset, env, set_text, settle  # noqa: F401  (fixtures)
from textual.widgets import DataTable, Static

from engine import fishermap
from engine import protocol as p
from sidestep_tui.state import RunState, apply_all


def _write_map(folder: Path) -> dict:
    names = [f"decoder.layers.{i}.{g}.{proj}" for i in range(3) for g, proj in (("self_attn", "q_proj"), ("mlp", "up_proj"))]
    data = fishermap.build(
        model_variant="base",
        timestep_focus="texture",
        timestep_params={"mu": -0.4, "sigma": 1.0, "data_proportion": 0.5},
        num_runs=2,
        batches_per_run=3,
        total_batches=6,
        base_rank=16,
        rank_min=8,
        rank_max=64,
        dataset_dir=str(folder),
        scores={n: float(2**i) for i, n in enumerate(names)},
        stds={n: 0.5 for n in names},
        effective_ranks={n: 12 for n in names},
        sample_coverage=[],
        num_hidden_layers=3,
    )
    fishermap.write(folder, data)
    return data


async def test_an_existing_map_is_shown_with_its_ranking_and_heat_strip(ckpt, env, demo_dataset):  # noqa: F811
    data_dir = env / "data"
    shutil.copytree(demo_dataset, data_dir)
    data = _write_map(data_dir)
    app = app_for(env, "dataset", draft={"checkpoint_dir": str(ckpt), "model_variant": "base"})
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await set_text(pilot, app.screen.query_one("#dataset-path").input, str(data_dir))
        await settle(pilot)
        table = app.screen.query_one("#fisher-table", DataTable)
        rows = [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        expected = [(m["name"].removeprefix("decoder."), str(m["assigned_rank"])) for m in data["modules"]]
        assert [(r[0], r[3]) for r in rows] == expected and len(rows) == len(data["rank_pattern"])
        assert rows[0][1].startswith("3.200e+01 ± 5.0e-01")  # the best module first, with its spread
        heat = str(app.screen.query_one("#fisher-heat", Static).render())
        assert "layers 0-2" in heat and heat.count("█") == 1  # layer 2 holds the highest scores
        assert "texture" in str(app.screen.query_one("#fisher-status", Static).render())
        assert app.screen.query_one("#fisher-panel").display

        (data_dir / "fisher_map.json").write_text("{")  # broken: one line names it
        await pilot.press("ctrl+r")
        await settle(pilot)
        status = str(app.screen.query_one("#fisher-status", Static).render())
        assert status.startswith("✗ ") and "not valid JSON" in status and table.row_count == 0


def test_run_state_follows_a_pp_job_to_its_end():
    events = [
        p.PhaseChanged(run_id="pp-1", seq=0, ts=0.0, phase="preparing_data", detail="analysing /d"),
        p.AnalysisProgress(
            run_id="pp-1", seq=1, ts=0.0, run=1, runs=1, group="mlp", pass_index=3, passes=3, batch=2, batches=2, done=6, total=6
        ),
    ]
    state = apply_all(RunState(), events)
    assert state.active and state.analysis is not None and (state.analysis.done, state.analysis.total) == (6, 6)
    assert "mlp pass 3/3" in state.phase_detail
    done = apply_all(
        state, [p.AnalysisDone(run_id="pp-1", seq=2, ts=0.0, status="completed", path="/d/fisher_map.json", summary="s")]
    )
    assert not done.active and done.finished_status == "completed" and done.analysis.path == "/d/fisher_map.json"
