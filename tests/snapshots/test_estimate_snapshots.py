"""Snapshots of the Dataset screen's estimate views at 80x24: the ranking an estimate left (its events go
through the session and the reducer, as the engine's would) and the compare dialog. Same determinism as
test_forms_snapshots.py (its fixtures: relative paths under a fresh cwd)."""

from __future__ import annotations

import json
from pathlib import Path

from test_forms_snapshots import _app, _settle, snap_env, snapshot_dataset  # noqa: F401  (fixtures)
from textual.widgets import Input

from engine import protocol as p
from sidestep_tui.widgets.estimate_panel import EstimatePanel

MODULES = tuple(f"layers.{i}.{kind}" for i in range(4) for kind in ("self_attn.q_proj", "cross_attn.v_proj", "mlp.up_proj"))


def _ranking() -> tuple[tuple[str, ...], tuple[float, ...]]:
    return MODULES, tuple(round(1e-4 / (k + 1), 12) for k in range(len(MODULES)))


def _write(path: Path, names: tuple[str, ...], scores: tuple[float, ...]) -> None:
    path.write_text(json.dumps([{"module": f"decoder.{n}", "sensitivity": s} for n, s in zip(names, scores, strict=True)]))


def test_dataset_estimate_ranking(snap_compare, snap_env: Path) -> None:  # noqa: F811
    modules, scores = _ranking()

    async def run_before(pilot) -> None:
        await _settle(pilot)
        pilot.app.screen.query_one("#dataset-path Input", Input).value = "data"
        await _settle(pilot)
        panel = pilot.app.screen.query_one(EstimatePanel)
        panel.job, panel.dataset_dir = "est-1", "data"
        panel.set_class(True, "-shown")
        pilot.app.session.on_events(
            [
                p.EstimateProgress(run_id="est-1", seq=1, ts=1.0, done=2, total=2, elapsed_s=3.0),
                p.EstimateDone(
                    run_id="est-1", seq=2, ts=2.0, status="completed", path="data/module_config.json",
                    modules=modules, scores=scores, top_k=4, wall_s=3.2,
                ),
            ]
        )  # fmt: skip
        await pilot.pause(0.3)  # the panel follows the session on its timer
        await _settle(pilot)

    assert snap_compare(
        _app("dataset", draft={"checkpoint_dir": "ckpt", "model_variant": "base"}), terminal_size=(80, 24), run_before=run_before
    )


def test_compare_dialog(snap_compare, snap_env: Path) -> None:  # noqa: F811
    modules, scores = _ranking()
    _write(snap_env / "estimate.json", modules[:4], scores[:4])
    _write(snap_env / "other.json", tuple(reversed(modules[2:7])), scores[:5])

    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("ctrl+o")
        await _settle(pilot)
        pilot.app.screen.query_one("#compare-b", Input).value = "other.json"
        await pilot.press("enter")
        await _settle(pilot)

    draft = {"checkpoint_dir": "ckpt", "model_variant": "base", "module_config": "estimate.json"}
    assert snap_compare(_app("dataset", draft=draft), terminal_size=(80, 24), run_before=run_before)
