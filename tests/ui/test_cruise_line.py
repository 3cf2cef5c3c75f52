"""The Monitor's progress panel shows cruise control's LR factor and loss EMA while it is on."""

from __future__ import annotations

import dataclasses

from fake_engine import scripted_run

from engine import protocol as p
from sidestep_tui.state import RunState, apply_all
from sidestep_tui.widgets.progress_panel import render_progress


def test_cruise_line_appears_only_while_cruise_control_is_on() -> None:
    events = scripted_run(steps=2)
    started = next(e for e in events if isinstance(e, p.RunStarted))
    step = next(e for e in events if isinstance(e, p.StepMetrics))
    off = apply_all(RunState(), [started, step])
    assert off.cruise is None and "cruise" not in render_progress(off, 160)
    on = apply_all(off, [dataclasses.replace(step, step=step.step + 1, cruise_scale=0.4213, cruise_ema=5.123)])
    assert on.cruise == (0.4213, 5.123)
    assert "cruise x0.42 (ema 5.1230)" in render_progress(on, 160)
    # a new run starts without the previous run's reading
    assert apply_all(on, [dataclasses.replace(started, run_dir="/elsewhere")]).cruise is None
