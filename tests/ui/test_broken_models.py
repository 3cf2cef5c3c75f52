"""A broken official model folder (an interrupted download) is listed on the Models screen with what is
wrong, and Setup is not "Ready" with it (issue 13). Synthetic folders: no torch in the UI process."""

from __future__ import annotations

from pathlib import Path

import test_forms
from test_first_minutes import _assert_not_ready, _recording_factory
from test_forms import app_for, settle, setup_draft, write_model
from textual.widgets import DataTable, Static

ckpt, demo_dataset, env = test_forms.ckpt, test_forms.demo_dataset, test_forms.env


def break_officials(ckpt: Path) -> None:
    (ckpt / "acestep-v15-turbo" / "config.json").write_text("")  # an empty config.json
    write_model(ckpt, "acestep-v15-sft")
    (ckpt / "acestep-v15-sft" / "config.json").write_text("{}")
    write_model(ckpt, "acestep-v15-xl-base")
    (ckpt / "acestep-v15-xl-base" / "config.json").unlink()  # the weights came, the config did not


async def test_broken_official_folders_are_listed_with_their_problem(ckpt: Path, env: Path) -> None:
    break_officials(ckpt)
    app = app_for(env, "models")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(DataTable)
        rows = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[-1]) for i in range(table.row_count)}
        for name in ("acestep-v15-turbo", "acestep-v15-sft", "acestep-v15-xl-base"):
            assert rows.get(name, "").startswith("✗"), rows
        table.move_cursor(row=[str(table.get_row_at(i)[0]) for i in range(table.row_count)].index("acestep-v15-xl-base"))
        await pilot.pause()
        assert "no config.json" in str(app.screen.query_one("#model-detail", Static).render())


async def test_broken_official_model_is_not_ready(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    break_officials(ckpt)
    started: list = []
    draft = {**setup_draft(env, demo_dataset), "model_variant": "turbo"}
    app = app_for(env, "setup", draft=draft, client_factory=_recording_factory(started))
    async with app.run_test(size=(120, 40)) as pilot:
        await _assert_not_ready(pilot, app, "model_variant", "config.json is empty", started, env)
