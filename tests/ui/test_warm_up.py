"""Screens built ahead (issue 13, "every screen switch, Setup's first open included, <= 0.25 s"): once the
app is idle, the screens a user opens first are composed, mounted and laid out in the background, and a
first open shows that very screen. What may change meanwhile (settings, the draft) still shows, and
the screen the user is on keeps its focus and keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_forms
from test_forms import app_for, settle
from ui_helpers import wait_until

from sidestep_tui.app import SidestepApp
from sidestep_tui.messages import SettingsChanged
from sidestep_tui.settings import Settings

ckpt, demo_dataset, env = test_forms.ckpt, test_forms.demo_dataset, test_forms.env

AHEAD = {"setup", "dataset", "monitor", "runs", "queue"}  # WARM_UP_ORDER less the mode the app starts in ("models")


@pytest.fixture(autouse=True)
def _warm_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SidestepApp, "WARM_UP_AFTER_S", 0.0)
    monkeypatch.setattr(SidestepApp, "WARM_UP_GAP_S", 0.01)


def _warmed(app: SidestepApp) -> bool:
    """Every screen built ahead and laid out: the warm-up worker has ended (a worker leaves the list then)."""
    return set(app.prebuilt) >= AHEAD and not any(w.name == "warm-up" for w in app.workers)


async def test_first_opens_show_the_screens_built_ahead_laid_out_at_the_app_size(ckpt: Path, env: Path) -> None:
    app = app_for(env, "models")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: _warmed(app), 20, "the screens built ahead")
        built = dict(app.prebuilt)
        assert "models" not in built  # the screen already shown is not built twice
        for mode, screen in built.items():
            assert screen.is_mounted and screen.size == app.size, (mode, screen.size)
            assert not screen._layout_widgets, f"{mode} still waits for a layout"
        for key, mode in (("f3", "setup"), ("f2", "dataset"), ("f4", "monitor"), ("f5", "runs"), ("f6", "queue")):
            await pilot.press(key)
            await settle(pilot)
            assert app.screen is built[mode], (mode, app.screen)
            assert mode not in app.prebuilt
        await pilot.press("f3")
        await settle(pilot)
        assert app.screen is built["setup"]  # one Setup for the whole session


async def test_a_setting_saved_after_the_warm_up_shows_on_the_first_open(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    app = app_for(env, "models")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: _warmed(app), 20, "the warm-up")
        assert not app.prebuilt["setup"].form.values.get("dataset_dir")
        app.post_message(SettingsChanged(app.settings.replace(last_dataset_dir=str(demo_dataset))))  # as F2 would
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        assert type(app.screen).__name__ == "SetupScreen"
        assert app.screen.form.values["dataset_dir"] == str(demo_dataset)


async def test_typing_during_the_warm_up_stays_on_the_welcome_screen(env: Path) -> None:
    from textual.widgets import Input

    app = app_for(env, "models", settings=Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert type(app.screen).__name__ == "FirstRunScreen"
        root_input = app.screen.query_one("#checkpoint-root Input", Input)
        root_input.focus()
        root_input.value = ""
        await pilot.pause()
        await pilot.press(*"/srv/models")  # while Dataset (which focuses its own field) and others are built
        await wait_until(pilot, lambda: _warmed(app), 20, "the warm-up")
        await pilot.press(*"/xl")
        await pilot.pause()
        assert set(app.prebuilt) >= AHEAD
        assert type(app.screen).__name__ == "FirstRunScreen"
        assert app.focused is root_input and root_input.value == "/srv/models/xl"
