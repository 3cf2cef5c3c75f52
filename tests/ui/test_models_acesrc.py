"""Models screen: a model folder whose code is a stub importing ``acestep.models.common.*`` shows which
ACE-Step source the engine will use (engine/acesrc.py), or the one-line reason none qualifies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_forms import app_for, ckpt, env, settle  # noqa: F401  (fixtures)
from textual.widgets import DataTable, Static

STUB = "from acestep.models.common.modeling_acestep_v15 import AceStepConditionGenerationModel  # noqa: F401\n"


def _checkout(root: Path, *, modeling: bool = True) -> Path:
    common = root / "acestep" / "models" / "common"
    common.mkdir(parents=True)
    for package in (root / "acestep", root / "acestep" / "models", common):
        (package / "__init__.py").write_text("")
    if modeling:
        (common / "modeling_acestep_v15.py").write_text("raise SystemExit('the UI must not run this')\n")
    return root


async def _detail_of(env: Path, name: str) -> str:  # noqa: F811
    app = app_for(env, "models")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        table.move_cursor(row=names.index(name))
        await pilot.pause()
        return str(app.screen.query_one("#model-detail", Static).render())


@pytest.mark.parametrize("modeling", [True, False])
async def test_models_detail_names_the_acestep_source(ckpt: Path, env: Path, monkeypatch, modeling: bool) -> None:  # noqa: F811
    monkeypatch.delenv("ACESTEP_SRC", raising=False)
    (ckpt / "acestep-v15-turbo" / "modeling_acestep_v15_turbo.py").write_text(STUB)
    checkout = _checkout(env / "ACE-Step-1.5", modeling=modeling)
    detail = await _detail_of(env, "acestep-v15-turbo")
    if modeling:
        assert f"acestep src   ACE-Step-1.5 checkout: {checkout}" in detail
    else:
        assert (
            "acestep src   missing: acestep-v15-turbo's model code imports acestep.models.common.modeling_acestep_v15" in detail
        )
        assert "$ACESTEP_SRC" in detail and "pip install" in detail
    assert "acestep" not in sys.modules  # checked on disk, never imported
    other = await _detail_of(env, "acestep-v15-base")  # code without acestep imports: no line
    assert "acestep src" not in other
