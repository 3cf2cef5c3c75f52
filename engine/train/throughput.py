"""Where a step's time goes: waiting for the data loader, or everything else (forward, backward,
optimizer, host syncs).

Users of ACE-Step trainers see 1-2 % GPU use and long pauses between epochs without knowing why;
the usual cause is a loader that cannot keep up (``num_workers`` 0, or workers restarted every
epoch). The wait is measured where the loop asks for a batch, so worker start-up at an epoch's first
batch counts too. ``StepMetrics.data_wait_frac`` carries the share to the Monitor and ``--plain``;
``DataWaitWatch`` turns a sustained high share into one line of advice (again only after the share
has dropped and risen back).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

WARN_AT = 0.30  # the smoothed share of each step spent waiting for data that earns the advice
CLEAR_AT = 0.15  # below this the advice may be given again later
MIN_STEPS = 8  # steps seen before judging (the first batches include worker start-up)
SMOOTHING = 0.2


class TimedBatches:
    """Iterates ``loader``; the seconds spent inside each ``next()`` add up until ``take()``."""

    def __init__(self, loader: Iterable[Any], clock: Callable[[], float] = time.perf_counter) -> None:
        self._it: Iterator[Any] = iter(loader)
        self._clock = clock
        self._wait = 0.0

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> Any:
        start = self._clock()
        try:
            return next(self._it)
        finally:
            self._wait += self._clock() - start

    def take(self) -> float:
        wait, self._wait = self._wait, 0.0
        return wait


class DataWaitWatch:
    """A smoothed data-wait share per optimizer step, and the advice when it stays high."""

    def __init__(self, warn: Callable[[str], None], *, num_workers: int, persistent_workers: bool) -> None:
        self.warn = warn
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.share: float | None = None
        self.steps = 0
        self._armed = True

    def step(self, wait_s: float, wall_s: float) -> None:
        if wall_s <= 0:
            return
        share = min(max(wait_s / wall_s, 0.0), 1.0)
        self.share = share if self.share is None else self.share + SMOOTHING * (share - self.share)
        self.steps += 1
        if self.steps < MIN_STEPS:
            return
        if self._armed and self.share >= WARN_AT:
            self._armed = False
            self.warn(self.advice(self.share))
        elif self.share < CLEAR_AT:
            self._armed = True

    def advice(self, share: float) -> str:
        fixes = [f"raise --num-workers (now {self.num_workers})"]
        if self.num_workers > 0 and not self.persistent_workers:
            fixes.append("turn on --persistent-workers (workers restart every epoch)")
        return f"data loader is {share * 100:.0f} % of each step: " + " or ".join(fixes)
