"""Event sinks: the engine emits typed events once and they fan out to the UI queue, the run's
``events.jsonl``, stdout (headless) and anything else that implements ``EventSink``.

``EventBus`` stamps the envelope (run id, monotonic seq, wall time) under a lock, because the training
loop and the heartbeat thread both emit. Sinks never raise into the training loop: a sink that fails
is logged once and switched off (a dead UI must not stop a run; a full disk is reported as a log line
and then the run carries on writing what it can).

``StepAggregator`` bounds the ``StepMetrics`` rate at the source: the loop feeds it every optimizer
step and it emits at most ``max_hz`` summaries a second, each carrying mean/min/max loss and the number
of steps covered, so a curve rebuilt from events loses nothing but resolution.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from engine import protocol

log = logging.getLogger("sidestep.engine")


class EventSink(Protocol):
    def emit(self, event: Any) -> None: ...

    def close(self) -> None: ...


class QueueSink:
    """Puts events on the multiprocessing queue the UI drains. ``put`` only hands the object to the
    queue's feeder thread, so it never blocks the loop. Disabled once the UI is known to be gone."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.enabled = True

    def emit(self, event: Any) -> None:
        if self.enabled:
            self.queue.put(event)

    def close(self) -> None:
        if self.enabled:
            # Flush what is buffered in the feeder thread before the process exits (vLLM style).
            self.queue.close()
            self.queue.join_thread()
            self.enabled = False


class JsonlSink:
    """Appends one JSON line per event, so another process can follow the file live and a crash loses
    at most the line being written (``protocol.read_events`` drops a torn last line).

    On a full disk the lines not yet written (a torn one included) wait in memory, up to
    ``MAX_PENDING`` bytes, and go out in order with the first write that fits: the run's history
    has no holes once space is freed."""

    MAX_PENDING = 64 * 1024 * 1024
    _FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pending = bytearray()

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def emit(self, event: Any) -> None:
        if self._fd is not None:
            self._pending += (protocol.dumps(event) + "\n").encode("utf-8")
            self._write_pending(self._fd)

    def _write_pending(self, fd: int) -> None:
        while self._pending:
            try:
                written = os.write(fd, self._pending)
            except OSError as exc:
                if exc.errno in self._FULL and len(self._pending) <= self.MAX_PENDING:
                    return  # kept; the next event (or close) tries again
                raise
            del self._pending[:written]

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                self._write_pending(fd)
                if self._pending:
                    log.error("%s: %d bytes of events could not be written (disk full)", self.path, len(self._pending))
                with contextlib.suppress(OSError):  # EINVAL: a device that cannot sync; ENOSPC: reported above
                    os.fsync(fd)
            finally:
                os.close(fd)


class StreamJsonSink:
    """Headless ``--json``: events as JSONL on a stream (a dup of the real stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def emit(self, event: Any) -> None:
        self.stream.write(protocol.dumps(event) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class CallbackSink:
    """Calls a function per event (the plain-text printer, tests)."""

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.fn = fn

    def emit(self, event: Any) -> None:
        self.fn(event)

    def close(self) -> None:
        pass


class EventBus:
    """Stamps events and fans them out. Thread-safe; sinks can be added for the length of a run."""

    def __init__(self, sinks: list[EventSink] | None = None) -> None:
        self._sinks: list[EventSink] = list(sinks or [])
        self._lock = threading.Lock()
        self._seq = 0
        self.run_id = ""

    def add(self, sink: EventSink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def remove(self, sink: EventSink) -> None:
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)
        sink.close()

    def emit(self, event: Any) -> Any:
        with self._lock:
            self._seq += 1
            stamped = protocol.stamp(event, run_id=self.run_id, seq=self._seq)
            for sink in list(self._sinks):
                try:
                    sink.emit(stamped)
                except (OSError, ValueError) as exc:
                    # A broken pipe to a vanished UI, a full disk: drop that sink, keep training.
                    self._sinks.remove(sink)
                    log.error("event sink %s failed and was switched off: %s", type(sink).__name__, exc)
        return stamped

    def log(self, level: protocol.LogLevel, message: str) -> None:
        getattr(log, level)(message)
        self.emit(protocol.LogRecord(level=level, message=message))

    def close(self) -> None:
        with self._lock:
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close()
            except (OSError, ValueError) as exc:
                log.error("closing %s failed: %s", type(sink).__name__, exc)


class StepAggregator:
    """Collects per-step numbers and emits a ``StepMetrics`` summary at most ``max_hz`` times a second."""

    def __init__(self, bus: EventBus, *, total_steps: int, max_hz: float = 4.0, clock: Callable[[], float] = time.monotonic):
        self.bus = bus
        self.total_steps = total_steps
        self.min_interval = 1.0 / max_hz
        self.clock = clock
        self._losses: list[float] = []
        self._skipped = 0
        self._last_emit = -math.inf
        self._last: dict[str, float] = {}
        self._rate_t0 = clock()
        self._rate_samples = 0
        self.samples_per_s = 0.0
        self._steps_rate = 0.0
        self._data_wait = 0.0  # seconds spent waiting for batches since the last emit
        self.ranks: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # latest per-rank (step time, memory)

    def add(
        self,
        *,
        step: int,
        epoch: int,
        loss: float,
        lr: float,
        grad_norm: float,
        samples: int,
        skipped: bool = False,
        cruise_scale: float = -1.0,
        cruise_ema: float = -1.0,
        data_wait_s: float = 0.0,
    ) -> None:
        self._data_wait += data_wait_s
        if skipped:
            self._skipped += 1
            # a skipped step keeps the last cruise-control reading (it did not move the EMA)
            cruise_scale = self._last.get("cruise_scale", cruise_scale)
            cruise_ema = self._last.get("cruise_ema", cruise_ema)
        else:
            self._losses.append(loss)
        self._rate_samples += samples
        self._last = {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            "grad_norm": grad_norm,
            "cruise_scale": cruise_scale,
            "cruise_ema": cruise_ema,
        }
        now = self.clock()
        if now - self._last_emit >= self.min_interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if not self._last or (not self._losses and not self._skipped):
            return
        now = self.clock() if now is None else now
        elapsed = max(now - self._rate_t0, 1e-9)
        rate = self._rate_samples / elapsed
        self.samples_per_s = _blend(self.samples_per_s, rate)
        self._rate_t0, self._rate_samples = now, 0
        data_wait_frac, self._data_wait = min(self._data_wait / elapsed, 1.0), 0.0
        step = int(self._last["step"])
        losses = self._losses or [math.nan]
        steps_left = max(self.total_steps - step, 0)
        self._steps_rate = _blend(self._steps_rate, (len(self._losses) + self._skipped) / elapsed)
        steps_per_s = self._steps_rate
        self.bus.emit(
            protocol.StepMetrics(
                step=step,
                epoch=int(self._last["epoch"]),
                total_steps=self.total_steps,
                loss=sum(losses) / len(losses),
                loss_min=min(losses),
                loss_max=max(losses),
                steps_covered=len(self._losses) + self._skipped,
                lr=self._last["lr"],
                grad_norm=self._last["grad_norm"],
                samples_per_s=self.samples_per_s,
                eta_s=steps_left / steps_per_s if steps_per_s > 0 else -1.0,
                skipped_steps=self._skipped,
                cruise_scale=self._last["cruise_scale"],
                cruise_ema=self._last["cruise_ema"],
                data_wait_frac=data_wait_frac,
                step_time_s=elapsed / max(len(self._losses) + self._skipped, 1),
                rank_step_time_s=self.ranks[0],
                rank_memory_mb=self.ranks[1],
            )
        )
        self._losses, self._skipped = [], 0
        self._last_emit = now


def _blend(previous: float, current: float) -> float:
    """An exponential blend that keeps displayed rates steady across bursty flushes."""
    return current if previous == 0 else 0.7 * previous + 0.3 * current
