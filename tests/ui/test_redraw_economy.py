"""What keeps screen switches and monitoring cheap (issue 13's UI speed targets, figures in
``benchmarks/ui.py``): each test fails when the economy it names is undone."""

from __future__ import annotations

from fake_engine import FakeEngineClient, scripted_run
from textual.widgets import Static
from textual.widgets._footer import FooterKey
from ui_helpers import drain

from sidestep_tui.widgets.gpu_panel import GpuPanel
from sidestep_tui.widgets.progress_panel import ProgressPanel
from sidestep_tui.widgets.timestep_histogram import TimestepHistogram


async def test_a_monitor_tick_with_nothing_new_redraws_no_panel(build_app) -> None:
    fake = FakeEngineClient(scripted_run(steps=30, finish=None, gpu=True))
    app = build_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await drain(pilot, fake)
        screen = app.screen
        screen.redraw(True)
        await pilot.pause()
        panels: list[Static] = [
            screen.query_one(ProgressPanel),
            screen.query_one(TimestepHistogram),
            screen.query_one(GpuPanel),
            screen.query_one("#loss-spark", Static),
        ]
        shown = [panel.visual for panel in panels]
        screen.redraw(True)  # the 2 Hz tick, no event since the last one
        await pilot.pause()
        assert all(panel.visual is before for panel, before in zip(panels, shown, strict=True))


async def test_the_footer_keeps_its_keys_when_the_focus_moves(build_app) -> None:
    app = build_app(initial_mode="models")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        keys = list(app.screen.query(FooterKey))
        focused = app.focused
        await pilot.press("tab")
        await pilot.pause()
        assert app.focused is not focused  # the focus moved: Textual asked the footer to recompose
        assert keys and list(app.screen.query(FooterKey)) == keys  # the same widgets: nothing rebuilt


async def test_tab_walks_every_shown_setup_field_in_order_past_the_placeholders(build_app) -> None:
    from sidestep_tui.widgets.config_field import FieldRow

    app = build_app(initial_mode="setup")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        form = app.screen.form
        order = [row.spec.name for row in form.rows() if row.display]
        assert any(not row.built for row in form.rows() if row.display)  # placeholders below the view
        walked: list[str] = []
        for _ in range(24):
            row = next(a for a in app.focused.ancestors_with_self if isinstance(a, FieldRow))
            if not walked or walked[-1] != row.spec.name:
                walked.append(row.spec.name)
            await pilot.press("tab")
        assert len(walked) > 18 and walked == order[: len(walked)]
