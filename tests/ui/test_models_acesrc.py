"""Models screen: a model folder whose code is a stub importing ``acestep.models.common.*`` shows which
ACE-Step source the engine will use (engine/acesrc.py), or the one-line reason none qualifies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_forms import ckpt, env, models_view  # noqa: F401  (fixtures)

STUB = "from acestep.models.common.modeling_acestep_v15 import AceStepConditionGenerationModel  # noqa: F401\n"


def _checkout(root: Path, *, modeling: bool = True) -> Path:
    common = root / "acestep" / "models" / "common"
    common.mkdir(parents=True)
    for package in (root / "acestep", root / "acestep" / "models", common):
        (package / "__init__.py").write_text("")
    if modeling:
        (common / "modeling_acestep_v15.py").write_text("raise SystemExit('the UI must not run this')\n")
    return root


@pytest.mark.parametrize("modeling", [True, False])
async def test_models_detail_names_the_acestep_source(ckpt: Path, env: Path, monkeypatch, modeling: bool) -> None:  # noqa: F811
    monkeypatch.delenv("ACESTEP_SRC", raising=False)
    (ckpt / "acestep-v15-turbo" / "modeling_acestep_v15_turbo.py").write_text(STUB)
    checkout = _checkout(env / "ACE-Step-1.5", modeling=modeling)
    _, detail = await models_view(env, "acestep-v15-turbo")
    if modeling:
        assert f"acestep src   ACE-Step-1.5 checkout: {checkout}" in detail
    else:
        assert (
            "acestep src   missing: acestep-v15-turbo's model code imports acestep.models.common.modeling_acestep_v15" in detail
        )
        assert "$ACESTEP_SRC" in detail and "pip install" in detail
    assert "acestep" not in sys.modules  # checked on disk, never imported
    _, other = await models_view(env, "acestep-v15-base")  # code without acestep imports: no line
    assert "acestep src" not in other
