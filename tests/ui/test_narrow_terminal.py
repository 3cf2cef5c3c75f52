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
        # Wide, but not enough for one row of uncompact keys: still two rows, every key whole.
        await pilot.resize_terminal(125, 40)
        await pilot.pause()
        await pilot.pause()
        assert app.screen.query_one(Footer).has_class("-two-rows")
        assert_every_key_shown(app, "monitor, running, 125x40")
        # Widened, the footer goes back to one row (it follows resizes, not only binding changes).
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        await pilot.pause()
        footer = app.screen.query_one(Footer)
        assert footer.size.height == 1 and not footer.has_class("-two-rows")
        assert_every_key_shown(app, "monitor, running, 160x48")


async def test_long_log_lines_wrap_in_the_monitor(build_app) -> None:
    """A line longer than the log is wide continues on the next rows, its end included; a resize wraps
    it again to the new width."""
    from engine import protocol as p
    from sidestep_tui.widgets.event_log import EventLog

    tail = "final-segment-END"
    path = "/very/long/" + "/".join(f"folder-{i:02d}" for i in range(14)) + f"/{tail}"
    message = f"saved the adapter to {path} after step 10 of 100"
    fake = FakeEngineClient(
        [*scripted_run(steps=10, finish=None), p.LogRecord(run_id="run-1", seq=900, level="warning", message=message)]
    )
    app = build_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await drain(pilot, fake)
        app.screen.redraw(True)
        await pilot.pause()
        log = app.screen.query_one(EventLog)
        rows = [str(row) for row in log.lines]
        assert max(len(r) for r in rows) <= log.scrollable_content_region.width < len(message)
        assert "".join(rows).replace(" ", "").endswith(message.replace(" ", "")), rows
        assert tail in screen_text(app)  # its end is on screen, not cut at the right edge
        narrow_width = log.scrollable_content_region.width

        await pilot.resize_terminal(160, 48)  # the log becomes the third column, narrower still
        await pilot.pause()
        await pilot.pause()
        width = log.scrollable_content_region.width
        rows = [str(row) for row in log.lines]
        assert width != narrow_width and max(len(r) for r in rows) <= width
        assert "".join(rows).replace(" ", "").endswith(message.replace(" ", "")), rows
        assert tail in screen_text(app)  # the path breaks after a separator, never inside a name


def test_wrap_line_indents_continuations_and_breaks_paths_at_separators() -> None:
    from sidestep_tui.widgets.event_log import PREFIX_CELLS, wrap_line

    line = "15:18:23 INF TensorBoard logs: /tmp/sidestep/demo-audio/runs/demo-lora-20261130-151752/runs"
    assert wrap_line(line, 60) == [
        "15:18:23 INF TensorBoard logs: /tmp/sidestep/demo-audio/",
        " " * PREFIX_CELLS + "runs/demo-lora-20261130-151752/runs",
    ]
    assert wrap_line(line, 200) == [line]
    assert all(len(r) <= 20 for r in wrap_line(line, 20))  # too narrow for the indent: none, and still cut
    assert wrap_line("00:00:00 ERR first\nsecond", 60) == ["00:00:00 ERR first", " " * PREFIX_CELLS + "second"]
