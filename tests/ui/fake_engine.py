"""A stand-in engine client for UI tests and benchmarks: records what is sent, serves scripted or
recorded events (``events.jsonl``), and can simulate a death. Implements ``EngineClientProtocol``."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine import protocol as p
from sidestep_tui.engine_client import ALL_CONTROLS, EngineDeadError, exit_reason

DATA = Path(__file__).resolve().parents[1] / "data" / "events"


class FakeEngineClient:
    owns_engine = True

    def __init__(
        self,
        events: Iterable[Any] = (),
        *,
        batch: int = 500,
        on_send: Callable[[Any], Iterable[Any]] | None = None,
        controls: frozenset[type] = ALL_CONTROLS,
        owns_engine: bool = True,
    ) -> None:
        self._queue: deque[Any] = deque(events)
        self._wake = threading.Event()
        self.batch = batch
        self.on_send = on_send
        self.controls = controls
        self.owns_engine = owns_engine
        self.sent: list[Any] = []
        self.refused: list[Any] = []  # sent after the engine died (the app must not even try)
        self.started = False
        self.shutdown_called = False
        self.detached = False
        self._exit_code: int | None = None
        self._caught_up = False  # polled with nothing left: whatever was handed out before is posted

    # protocol -------------------------------------------------------------------------------
    def start(self) -> None:
        self.started = True

    def send(self, cmd: Any) -> None:
        if self._exit_code is not None:
            self.refused.append(cmd)
            raise EngineDeadError(f"the engine is not running ({self.death_reason()})")
        self.sent.append(cmd)
        if self.on_send is not None:
            self.push(*self.on_send(cmd))

    def poll(self, timeout: float) -> list[Any]:
        if not self._queue:
            self._caught_up = True
            self._wake.wait(timeout)
            self._wake.clear()
        out = []
        while self._queue and len(out) < self.batch:
            out.append(self._queue.popleft())
        if out:
            self._caught_up = False
        return out

    @property
    def is_alive(self) -> bool:
        return self._exit_code is None

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    def death_reason(self) -> str:
        return exit_reason(self._exit_code)

    def shutdown(self, grace_s: float = 10.0) -> None:
        self.shutdown_called = True
        if self._exit_code is None:
            self._exit_code = 0
        self._wake.set()

    def detach(self) -> None:
        self.detached = True

    # test controls ----------------------------------------------------------------------------
    def push(self, *events: Any) -> None:
        self._queue.extend(events)
        self._wake.set()

    def die(self, code: int = -9) -> None:
        self._exit_code = code
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def drained(self) -> bool:
        """Every event handed out, and the pump back for more (so it has posted the last batch)."""
        return not self._queue and self._caught_up


def recorded(name: str = "demo_run.jsonl") -> list[Any]:
    return p.read_events(str(DATA / name))


def scripted_run(
    *,
    run_id: str = "run-1",
    run_dir: str = "/runs/demo",
    steps: int = 40,
    total_steps: int = 100,
    checkpoint_every: int = 20,
    finish: str | None = "stopped",
    gpu: bool = False,
    t0: float = 1_700_000_000.0,
) -> list[Any]:
    """A plausible event stream (no engine needed): ready, start, steps, resources, histograms,
    checkpoints, logs, and a finish. Deterministic."""
    seq = iter(range(1_000_000))

    def env(**kw: Any) -> dict[str, Any]:
        n = next(seq)
        return {"run_id": run_id, "seq": n, "ts": t0 + n * 0.25, **kw}

    ev: list[Any] = [
        p.EngineReady(
            **env(run_id=""),
            pid=4242,
            protocol_version=p.PROTOCOL_VERSION,
            torch_version="2.13.0+cpu",
            python_version="3.11.7",
            cuda_available=gpu,
        ),
        p.PhaseChanged(**env(), phase="loading_model", detail="acestep-demo"),
        p.RunStarted(
            **env(),
            run_dir=run_dir,
            config_json="{}",
            adapter_type="lora",
            model_dir="/ckpt/acestep-demo",
            model_variant="acestep-demo",
            device="cuda:0" if gpu else "cpu",
            precision="bf16" if gpu else "fp32",
            attention_backend="sdpa",
            adapted_modules=48,
            trainable_params=1_234_567,
            total_params=98_765_432,
            num_samples=16,
            steps_per_epoch=4,
            total_steps=total_steps,
            start_step=0,
            start_epoch=1,
            timestep_mu=-0.4,
            timestep_sigma=1.0,
            timestep_mode="continuous",
        ),
        p.PhaseChanged(**env(), phase="training"),
        p.LogRecord(**env(), level="info", message="training started: 16 samples, 4 steps per epoch"),
    ]
    edges = tuple(i / 20 for i in range(21))

    def logit_normal_mass() -> tuple[float, ...]:
        def cdf(t: float) -> float:
            if t <= 0:
                return 0.0
            if t >= 1:
                return 1.0
            z = (math.log(t / (1 - t)) + 0.4) / 1.0
            return 0.5 * (1 + math.erf(z / math.sqrt(2)))

        return tuple(cdf(edges[i + 1]) - cdf(edges[i]) for i in range(20))

    expected = logit_normal_mass()
    cumulative = [0] * 20
    for step in range(1, steps + 1):
        loss = 1.0 / (1 + 0.05 * step) + 0.05 * math.sin(step)
        ev.append(
            p.StepMetrics(
                **env(),
                step=step,
                epoch=(step - 1) // 4 + 1,
                total_steps=total_steps,
                loss=loss,
                loss_min=loss - 0.02,
                loss_max=loss + 0.02,
                steps_covered=1,
                lr=3e-4 * min(1.0, step / 10),
                grad_norm=0.5 + 0.1 * math.cos(step),
                samples_per_s=12.5,
                eta_s=(total_steps - step) * 0.08,
            )
        )
        if step % 4 == 0:
            ev.append(p.EpochCompleted(**env(), epoch=step // 4, step=step, mean_loss=loss, duration_s=0.32))
        if step % 8 == 0:
            ev.append(
                p.ResourceSample(
                    **env(),
                    device="cuda:0" if gpu else "cpu",
                    **(
                        dict(
                            allocated_mb=2000.0 + step,
                            reserved_mb=3000.0,
                            peak_allocated_mb=2500.0 + step,
                            gpu_used_mb=5000.0 + step * 3,
                            gpu_total_mb=24576.0,
                            gpu_util_pct=87.0,
                            gpu_temp_c=66.0,
                            gpu_power_w=250.0,
                        )
                        if gpu
                        else {}
                    ),
                    process_rss_mb=900.0 + step,
                )
            )
            ev.append(p.Heartbeat(**env(), phase="training", last_step=step))
        if step % 10 == 0:
            recent = tuple(round(m * 40 + ((i * step) % 3) - 1) for i, m in enumerate(expected))
            recent = tuple(max(0, r) for r in recent)
            cumulative = [c + r for c, r in zip(cumulative, recent, strict=True)]
            ev.append(
                p.TimestepHistogram(
                    **env(), step=step, bin_edges=edges, recent=recent, cumulative=tuple(cumulative), expected=expected
                )
            )
        if checkpoint_every and step % checkpoint_every == 0:
            ev.append(p.PhaseChanged(**env(), phase="saving"))
            ev.append(
                p.CheckpointSaved(
                    **env(),
                    step=step,
                    epoch=(step - 1) // 4 + 1,
                    path=f"{run_dir}/checkpoints/epoch_{step // 4}",
                    kind="periodic",
                    loss=loss,
                )
            )
            ev.append(p.PhaseChanged(**env(), phase="training"))
    if finish in ("stopped", "completed"):
        ev.append(
            p.CheckpointSaved(
                **env(),
                step=steps,
                epoch=(steps - 1) // 4 + 1,
                path=f"{run_dir}/final",
                kind="stop" if finish == "stopped" else "final",
                loss=0.3,
            )
        )
        ev.append(
            p.RunFinished(
                **env(),
                status=finish,
                steps=steps,
                epochs=steps // 4,
                final_loss=0.3,
                best_loss=0.28,
                adapter_path=f"{run_dir}/final",
                wall_s=12.0,
            )
        )
    elif finish == "failed":
        ev.append(
            p.RunFailed(
                **env(),
                error_type="OutOfMemoryError",
                message="CUDA out of memory. Tried to allocate 2.00 GiB",
                traceback='Traceback (most recent call last):\n  File "trainer.py", line 1, in fit\ntorch.OutOfMemoryError: CUDA out of memory',
                hint="Lower batch size or enable gradient checkpointing.",
                oom=True,
                step=steps,
            )
        )
    return ev


# --------------------------------------------------------------------------- stub engine process
# A stand-in for ``engine.process.entry.run_engine`` with the same signature, for EngineClient tests that need
# a real spawned process but not torch. ``boot`` picks the behaviour.


def stub_engine(cmd_q: Any, evt_q: Any, boot: dict[str, Any]) -> None:
    import os
    import queue
    import signal
    import sys
    import time

    if boot.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if boot.get("silent"):
        time.sleep(60)
        return
    evt_q.put(
        p.EngineReady(
            run_id="",
            seq=0,
            ts=time.time(),
            pid=os.getpid(),
            protocol_version=boot.get("protocol_version", p.PROTOCOL_VERSION),
            torch_version="stub",
            python_version="3",
            cuda_available=False,
        )
    )
    seq = 1
    while True:
        try:
            cmd = cmd_q.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(cmd, p.StartRun):
            evt_q.put(p.PhaseChanged(run_id=cmd.run_id, seq=seq, ts=time.time(), phase="training"))
            seq += 1
        elif isinstance(cmd, p.Shutdown):
            if boot.get("ignore_shutdown"):
                continue
            evt_q.put(p.EngineStopping(run_id="", seq=seq, ts=time.time(), reason="shutdown"))
            evt_q.close()
            evt_q.join_thread()
            sys.exit(0)
        elif isinstance(cmd, p.StopRun) and boot.get("crash_on_stop"):
            raise RuntimeError("stub crash")
