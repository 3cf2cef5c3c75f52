"""Where a step's time goes: a data loader that cannot keep up is measured and diagnosed in one line,
in the events (StepMetrics.data_wait_frac), the run log, --plain and the Monitor."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from engine import config as cfgmod
from engine import protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus, StepAggregator
from engine.cli.plain import render
from engine.train import throughput
from engine.train.build import RunParts
from engine.train.trainer import Trainer


def test_a_slow_data_loader_is_measured_and_diagnosed(demo_config_values, monkeypatch) -> None:
    real = RunParts.loader_for_epoch

    def slowed(self: RunParts, epoch: int, *, skip: int) -> Iterator[Any]:
        for batch in real(self, epoch, skip=skip):
            handed = time.perf_counter()
            yield batch
            # the next batch comes twice the trainer's work on this one later: ~2/3 of each step waits,
            # however fast or busy this machine is
            time.sleep(2 * (time.perf_counter() - handed))

    monkeypatch.setattr(RunParts, "loader_for_epoch", slowed)
    events: list[Any] = []
    config = cfgmod.parse(dict(demo_config_values, max_steps=10))
    final = Trainer(config, EventBus([CallbackSink(events.append)]), CommandInbox(None), run_id="slow", metrics_hz=math.inf).fit()
    assert isinstance(final, protocol.RunFinished), getattr(final, "message", final)
    shares = [e.data_wait_frac for e in events if isinstance(e, protocol.StepMetrics)]
    assert len(shares) == 10 and min(shares[1:]) > 0.45, shares
    advice = [e.message for e in events if isinstance(e, protocol.LogRecord) and e.message.startswith("data loader is")]
    assert len(advice) == 1 and "% of each step: raise --num-workers (now 0)" in advice[0], advice
    metrics = next(e for e in reversed(events) if isinstance(e, protocol.StepMetrics))
    assert f"data {metrics.data_wait_frac * 100:.0f}%" in (render(metrics) or "")


def test_the_advice_comes_once_and_again_only_after_the_share_dropped() -> None:
    said: list[str] = []
    watch = throughput.DataWaitWatch(said.append, num_workers=2, persistent_workers=False)
    for _ in range(throughput.MIN_STEPS - 1):
        watch.step(0.9, 1.0)
    assert said == []  # too early to judge (worker start-up)
    for _ in range(20):
        watch.step(0.9, 1.0)
    assert len(said) == 1 and said[0].startswith("data loader is")
    assert "raise --num-workers (now 2) or turn on --persistent-workers" in said[0]
    for _ in range(30):
        watch.step(0.01, 1.0)  # fixed: the share falls below CLEAR_AT
    for _ in range(30):
        watch.step(0.9, 1.0)
    assert len(said) == 2


def test_a_fast_loader_earns_no_advice() -> None:
    said: list[str] = []
    watch = throughput.DataWaitWatch(said.append, num_workers=0, persistent_workers=False)
    for _ in range(100):
        watch.step(0.02, 1.0)
    assert said == [] and watch.share is not None and watch.share < 0.05


def test_the_aggregator_reports_the_share_of_its_window() -> None:
    now = [0.0]
    events: list[Any] = []
    agg = StepAggregator(EventBus([CallbackSink(events.append)]), total_steps=10, max_hz=1.0, clock=lambda: now[0])
    for step in (1, 2):
        now[0] += 1.0
        agg.add(step=step, epoch=1, loss=1.0, lr=1e-3, grad_norm=1.0, samples=1, data_wait_s=0.25)
    agg.flush()
    last = [e for e in events if isinstance(e, protocol.StepMetrics)][-1]
    assert last.data_wait_frac == 0.25 and last.step_time_s == 1.0


def test_timed_batches_add_up_the_wait_inside_next() -> None:
    ticks = iter([0.0, 0.5, 1.0, 1.25])
    timed = throughput.TimedBatches([1, 2], clock=lambda: next(ticks))
    assert next(timed) == 1 and next(timed) == 2
    assert timed.take() == 0.75 and timed.take() == 0.0


def test_the_monitor_shows_the_share_beside_the_other_figures() -> None:
    from sidestep_tui.state import RunState
    from sidestep_tui.widgets.progress_panel import render_progress

    assert "data  62%" in render_progress(RunState(run_id="r", data_wait_frac=0.62), 200)
    assert "data  n/a" in render_progress(RunState(run_id="r"), 200)
