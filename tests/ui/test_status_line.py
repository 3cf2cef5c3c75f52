"""The Monitor's status lines keep still while numbers change (fixed-width formats), say "paused"/"—"
for throughput and ETA when nothing moves, and the loss plot's step axis has integer ticks (issue 13)."""

from __future__ import annotations

import dataclasses
import re

from fake_engine import scripted_run

from sidestep_tui.state import MetricPoint, RunState, apply_all
from sidestep_tui.widgets.progress_panel import render_progress


def _plain(markup: str) -> list[str]:
    return [re.sub(r"\[/?[^\]]*\]", "", line) for line in markup.split("\n")]


def _running(**changes) -> RunState:
    state = apply_all(RunState(), scripted_run(steps=6, finish=None))
    assert state.active
    return dataclasses.replace(state, **changes)


def test_lr_loss_and_grad_keep_their_width() -> None:
    columns = set()
    for lr, grad in ((8.4e-05, 0.5), (0.000283, 12.25), (1e-3, 1.0)):
        line3 = _plain(render_progress(_running(lr=lr, grad_norm=grad, eta_s=60.0, samples_per_s=3.0), 160))[2]
        columns.add((line3.index("grad"), line3.index("ckpt")))
    assert len(columns) == 1, columns


def test_throughput_and_eta_say_paused_or_dash_when_nothing_moves() -> None:
    running = _plain(render_progress(_running(eta_s=125.0, samples_per_s=3.25), 160))[1]
    assert "ETA 2 m 05 s" in running and "3.25 samples/s" in running
    paused = _plain(render_progress(_running(eta_s=125.0, samples_per_s=3.25, paused=True), 160))[1]
    assert "ETA paused" in paused and "3.25" not in paused and "2 m 05 s" not in paused
    finished = apply_all(RunState(), scripted_run(steps=6, finish="completed"))
    assert finished.finished_status == "completed"
    done = _plain(render_progress(dataclasses.replace(finished, eta_s=125.0, samples_per_s=3.25), 160))[1]
    assert "ETA —" in done and "— samples/s" in done and "3.25" not in done


async def test_loss_chart_step_axis_has_integer_ticks(build_app) -> None:
    from sidestep_tui.widgets.loss_chart import LossChart, step_ticks

    assert step_ticks(3, 3) == [3] and step_ticks(1, 60)[0] == 1 and step_ticks(1, 60)[-1] == 60
    assert all(isinstance(t, int) and 1 <= t <= 11 for t in step_ticks(1, 11))
    app = build_app()
    async with app.run_test(size=(100, 40)) as pilot:
        chart = LossChart()
        await app.screen.mount(chart)
        await pilot.pause()
        chart.set_history(
            [MetricPoint(s, 2.0 - s / 10, 2.0 - s / 10, 2.0 - s / 10, 1, 1e-4, 1.0, 3.0, float(s)) for s in (1, 4, 7, 11)]
        )
        text = re.sub(r"\x1b\[[0-9;]*m", "", chart.plt.build())
        axis = next(line for line in reversed(text.splitlines()) if re.search(r"\d", line) and "step" not in line)
        labels = re.findall(r"\d+(?:\.\d+)?", axis)
        assert labels and all("." not in label for label in labels), axis
