"""At 80×24 every key a screen or dialog offers is in its footer, whole, and nothing stray is drawn in
the bottom-right cell (issue 13's leftovers). No engine process: a fake client for the Monitor."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import test_forms
from fake_engine import FakeEngineClient, scripted_run
from test_forms import app_for, settle, setup_draft
from textual.widgets import Footer
from textual.widgets._footer import FooterKey
from ui_helpers import drain, make_run_dir, screen_text

from sidestep_tui.settings import Settings

ckpt, demo_dataset, env = test_forms.ckpt, test_forms.demo_dataset, test_forms.env
SIZE = (80, 24)


def assert_every_key_shown(app: Any, where: str) -> None:
    """Each key the screen offers (one per action, shown ones) has a footer key that lies wholly on
    screen, overlaps no other, and is readable in the bottom rows; the palette key ends the last row."""
    width, height = app.size
    screen = app.screen
    offered: dict[str, str] = {}
    for binding in (b.binding for b in screen.active_bindings.values() if b.binding.show):
        offered.setdefault(binding.action, binding.description)
    footer = screen.query_one(Footer)
    keys = list(footer.query(FooterKey))
    palette = [k for k in keys if k.has_class("-command-palette")]
    assert sorted(k.description for k in keys if k not in palette) == sorted(offered.values()), where
    regions = sorted((k.region for k in keys), key=lambda r: (r.y, r.x))
    for region in regions:
        assert region.width > 0 and region.x >= 0 and region.right <= width and region.y < height, f"{where}: {region}"
    for left, right in itertools.pairwise(regions):
        assert left.y != right.y or left.right <= right.x, f"{where}: {left} overlaps {right}"
    bottom = "\n".join(screen_text(app).rstrip("\n").splitlines()[-footer.size.height :])
    for description in offered.values():
        assert description in bottom, f"{where}: {description!r} not in {bottom!r}"
    if palette:
        corner, _ = screen.get_widget_at(width - 1, height - 1)
        assert corner is palette[0], f"{where}: the bottom-right cell belongs to {corner!r}"


async def test_every_screen_shows_all_its_keys_at_80x24(ckpt: Path, env: Path, demo_dataset: Path) -> None:
    make_run_dir(env / "runs")  # Runs offers its per-run keys only with a run listed
    app = app_for(env, "setup", draft=setup_draft(env, demo_dataset))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for key, mode in (("f3", "setup"), ("f1", "models"), ("f2", "dataset"), ("f4", "monitor"), ("f5", "runs")):
            await pilot.press(key)
            await settle(pilot)
            assert_every_key_shown(app, mode)
        assert {"Open", "Export", "Refresh"} <= {k.description for k in app.screen.query(FooterKey)}
        await pilot.press("f2", "ctrl+t")  # the audio tab
        await settle(pilot)
        assert_every_key_shown(app, "dataset, audio tab")
        await pilot.press("f3", "ctrl+r")
        await settle(pilot)
        assert_every_key_shown(app, "review dialog")
        await pilot.press("escape", "ctrl+l")
        await settle(pilot)
        assert_every_key_shown(app, "presets dialog")


async def test_welcome_screen_shows_all_its_keys_at_80x24(env: Path) -> None:
    app = app_for(env, "models", settings=Settings(checkpoint_root="", output_root=str(env / "runs")))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert type(app.screen).__name__ == "FirstRunScreen"
        assert_every_key_shown(app, "welcome")


async def test_running_monitor_shows_all_its_keys_at_80x24(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=10, finish=None))
    app = build_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await drain(pilot, fake)
        await pilot.pause()
        assert {"Stop (saves)", "Pause", "Save"} <= {k.description for k in app.screen.query(FooterKey)}
        assert_every_key_shown(app, "monitor, running")
        # Widened, the footer goes back to one row (it follows resizes, not only binding changes).
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        await pilot.pause()
        footer = app.screen.query_one(Footer)
        assert footer.size.height == 1 and not footer.has_class("-two-rows")
        assert_every_key_shown(app, "monitor, running, 160x48")
