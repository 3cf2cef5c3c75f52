"""UI benchmarks (issue 3 and 13 targets): start-up, screen switches, the demo cold, memory and CPU
while monitoring, and event throughput.

    .venv/bin/python benchmarks/ui.py [--paint-runs 5] [--rss-seconds 60] [--rates 500,1000,2000,4000]
                                      [--skip-rss] [--skip-demo] [--demo-root DIR]

Printed as figures, not pass/fail. On a shared machine read them with the load average printed first.

1. first paint: ``sidestep`` (the installed console script) started in a pseudo-terminal, timed from
   fork to the first complete frame on the terminal (the footer, its last row, shows "Quit"), then
   quit with Ctrl+Q. Target <= 1.0 s. Median of --paint-runs.
2. UI memory: ``sidestep demo`` in a pseudo-terminal (real engine, demo model); the UI process's RSS
   (the engine is a separate process and is not counted) sampled every second for --rss-seconds once
   training steps are on screen. Then Ctrl+Q -> "stop and save". Target <= 150 MB.
1b. screen switches: the real app headless at 80x24 on an empty checkpoint root, each F-key pressed
   in turn: the first open of every screen (Setup's included), then switching between open ones.
   Timed from the key to the app being idle again (composed, mounted, laid out, drawn); wall and
   this process's CPU. Target <= 0.25 s each. Twice: once the app has built the usual screens ahead
   (``SidestepApp.WARM_UP_*``: what a user who reads the first screen for ~3 s gets), and with keys
   pressed at once, before any warm-up (the worst case: each first open builds its screen).
1c. the demo cold: ``sidestep demo --plain`` in a fresh demo root (audio -> dataset.json -> tensors
   -> adapter, the demo's own step count), wall time to exit 0. Target <= 30 s.
2b. UI CPU while monitoring: during 2., the UI process's CPU (user + system, /proc) as % of one core.
   Target <= 2 %.
3. absorption: the real app (headless, 160x48, the monitor with its plotext chart) fed by a client
   that releases a realistic event mix at a fixed rate for 8 s per rate, measured once the app has
   built its other screens ahead (a one-off in its first seconds). Reported: the UI process's
   CPU (all threads) as % of one core, and the backlog left (events released but not folded into the
   state). Target: >= 1,000 events/s under 25 % of a core with no growing backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pty
import select
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "ui"))
SIDESTEP = str(Path(sys.executable).parent / "sidestep")


# --------------------------------------------------------------------------- a program in a pty


class PtyProgram:
    def __init__(self, argv: list[str], env: dict[str, str], size: tuple[int, int] = (80, 24)) -> None:
        import fcntl
        import struct
        import termios

        self.t0 = time.perf_counter()
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            fcntl.ioctl(sys.stdout.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
            os.execve(argv[0], argv, env)
        self.output = b""

    def read_until(self, marker: bytes, timeout: float) -> float | None:
        """Seconds since start when ``marker`` first appeared in the output, or None on timeout."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    return None
                self.output += chunk
                if marker in self.output[-(len(chunk) + len(marker)) :] or marker in chunk:
                    return time.perf_counter() - self.t0
        return None

    def drain(self, seconds: float) -> None:
        self.read_until(b"\x00never\x00", seconds)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float) -> int | None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.drain(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        return None


def _env(config_dir: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color", SIDESTEP_CONFIG_DIR=config_dir, COLUMNS="80", LINES="24", **extra)
    env.pop("TEXTUAL", None)
    return env


def bench_first_paint(runs: int) -> list[float]:
    from sidestep_tui.settings import Settings, save_settings

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        save_settings(Settings(checkpoint_root=tmp, output_root=tmp), Path(tmp) / "settings.json")
        for _ in range(runs):
            program = PtyProgram([SIDESTEP], _env(tmp))
            painted = program.read_until(b"Quit", 30)  # the footer, the last row of the first frame
            program.drain(0.3)
            program.send(b"\x11")  # ctrl+q
            program.wait(15)
            if painted is not None:
                times.append(painted)
    return times


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def bench_rss(seconds: float, demo_root: str | None) -> tuple[list[float], str]:
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"SIDESTEP_DEMO_ROOT": demo_root} if demo_root else {}
        program = PtyProgram([SIDESTEP, "demo"], _env(tmp, **extra))
        # The header shows "TRAINING" once steps flow (the demo setup and engine start come first).
        started = program.read_until(b"TRAINING", 900)
        if started is None:
            program.send(b"\x11")
            program.wait(30)
            return [], "training never started (see the demo output)"
        samples = _sample_rss(program, seconds)
        demo_cpu = list(LAST_CPU)  # the demo's own UI (the attach below samples again)
        # The same live run through `sidestep attach` (events from events.jsonl, no queue): the UI
        # cost without anything the engine's pickled events may drag in.
        from engine.demo import default_demo_root

        runs = sorted(Path(demo_root or default_demo_root(), "runs").glob("demo-*"), key=lambda p: p.stat().st_mtime)
        attach_samples: list[float] = []
        if runs:
            attached = PtyProgram([SIDESTEP, "attach", str(runs[-1])], _env(tmp))
            if attached.read_until(b"TRAINING", 60) is not None:
                attach_samples = _sample_rss(attached, min(seconds, 30))
            attached.send(b"\x11")
            attached.drain(1.0)
            attached.send(b"l")  # leave it running (the demo UI stops it below)
            attached.wait(30)
        program.send(b"\x11")  # ctrl+q -> the quit dialog
        program.drain(1.0)
        program.send(b"s")  # stop and save, then quit
        code = program.wait(180)
        LAST_CPU[:] = demo_cpu
        note = f"training on screen after {started:.1f} s; UI exit code after stop-and-save: {code}"
        if attach_samples:
            note += f"; `sidestep attach` on the same live run: median {statistics.median(attach_samples):.0f} MB"
        return samples, note


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LAST_CPU: list[float] = []  # % of a core over the last _sample_rss window


def _sample_rss(program: PtyProgram, seconds: float) -> list[float]:
    samples = []
    cpu0, t0 = _cpu_s(program.pid), time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        program.drain(1.0)
        samples.append(_rss_mb(program.pid))
    LAST_CPU[:] = [100 * (_cpu_s(program.pid) - cpu0) / (time.perf_counter() - t0)]
    return samples


# --------------------------------------------------------------------------- screen switches


async def _switches(warm: bool) -> list[tuple[str, str, float, float]]:
    from sidestep_tui.app import SidestepApp, make_app
    from sidestep_tui.settings import Settings

    rows = []
    saved = SidestepApp.WARM_UP_AFTER_S
    SidestepApp.WARM_UP_AFTER_S = saved if warm else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = make_app(settings=Settings(checkpoint_root=tmp, output_root=tmp), log_dir=tmp, initial_mode="models")
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause(0.5)
                deadline = time.perf_counter() + 30
                while warm and any(w.name == "warm-up" for w in app.workers) and time.perf_counter() < deadline:
                    await pilot.pause(0.1)  # the user reads the first screen while the others are built
                seen = {type(app.screen).__name__}
                for key in ("f2", "f3", "f4", "f5", "f6", "f1", "f3", "f2", "f4", "f3", "f5", "f1"):
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    await pilot.press(key)
                    await pilot.pause()
                    name = type(app.screen).__name__
                    rows.append((key, ("switch to " if name in seen else "first open ") + name,
                                 time.perf_counter() - wall0, time.process_time() - cpu0))  # fmt: skip
                    seen.add(name)
    finally:
        SidestepApp.WARM_UP_AFTER_S = saved
    return rows


def bench_switches(warm: bool) -> list[tuple[str, str, float, float]]:
    return asyncio.run(_switches(warm))


def bench_demo_cold() -> tuple[float | None, str]:
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SIDESTEP_CONFIG_DIR=tmp)
        t0 = time.perf_counter()
        done = subprocess.run([SIDESTEP, "demo", "--plain", "--root", str(Path(tmp) / "demo")], env=env,
                              capture_output=True, text=True, timeout=1800)  # fmt: skip
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            return None, f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        return wall, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


# --------------------------------------------------------------------------- absorption


class RateClient:
    """Releases pre-built events at ``rate`` per second (the generator costs nothing at poll time)."""

    def __init__(self, events: list, rate: float) -> None:
        from sidestep_tui.engine_client import ALL_CONTROLS

        self.controls = ALL_CONTROLS
        self.owns_engine = True
        self.events, self.rate = events, rate
        self.t0: float | None = None
        self.released = 0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def send(self, cmd) -> None:
        pass

    def poll(self, timeout: float) -> list:
        assert self.t0 is not None
        time.sleep(min(timeout, 0.05))
        due = min(len(self.events), int((time.perf_counter() - self.t0) * self.rate))
        out = self.events[self.released : due][:2000]
        self.released += len(out)
        return out

    is_alive = True
    exit_code = None

    def death_reason(self) -> str:
        return "running"

    def shutdown(self, grace_s: float = 10.0) -> None:
        pass

    def detach(self) -> None:
        pass


def event_mix(n: int) -> list:
    """A stress mix: mostly StepMetrics, plus resources, logs, heartbeats and a histogram every 500."""
    from fake_engine import scripted_run

    from engine import protocol as p

    head = scripted_run(steps=0, total_steps=10**9, finish=None, gpu=True)
    hist = next(e for e in scripted_run(steps=10, finish=None) if isinstance(e, p.TimestepHistogram))
    out = list(head)
    for i in range(n):
        seq = len(out)
        step = i + 1
        if i % 500 == 0:
            out.append(
                p.TimestepHistogram(
                    run_id="run-1",
                    seq=seq,
                    ts=float(seq),
                    step=step,
                    bin_edges=hist.bin_edges,
                    recent=hist.recent,
                    cumulative=hist.cumulative,
                    expected=hist.expected,
                )
            )
        elif i % 50 == 0:
            out.append(
                p.ResourceSample(
                    run_id="run-1",
                    seq=seq,
                    ts=float(seq),
                    device="cuda:0",
                    allocated_mb=2000.0 + i % 100,
                    reserved_mb=3000.0,
                    peak_allocated_mb=2500.0,
                    gpu_used_mb=5000.0,
                    gpu_total_mb=24576.0,
                    gpu_util_pct=90.0,
                    gpu_temp_c=60.0,
                    gpu_power_w=200.0,
                    process_rss_mb=900.0,
                )
            )
        elif i % 20 == 0:
            out.append(p.LogRecord(run_id="run-1", seq=seq, ts=float(seq), level="info", message=f"line {i}"))
        elif i % 97 == 0:
            out.append(p.Heartbeat(run_id="run-1", seq=seq, ts=float(seq), phase="training", last_step=step))
        else:
            loss = 1.0 / (1 + 0.001 * i) + 0.05 * math.sin(i)
            out.append(
                p.StepMetrics(
                    run_id="run-1",
                    seq=seq,
                    ts=float(seq),
                    step=step,
                    epoch=i // 100,
                    total_steps=10**9,
                    loss=loss,
                    loss_min=loss,
                    loss_max=loss,
                    steps_covered=1,
                    lr=1e-4,
                    grad_norm=0.5,
                    samples_per_s=10.0,
                    eta_s=100.0,
                )
            )
    return out


async def _absorb(rate: float, seconds: float) -> tuple[float, int, int]:
    from sidestep_tui.app import make_app
    from sidestep_tui.settings import Settings

    client = RateClient(event_mix(int(rate * (seconds + 35))), rate)  # more than the warm-up and the window need
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(
            client=client, settings=Settings(checkpoint_root=tmp, output_root=tmp), initial_mode="monitor", log_dir=tmp
        )
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause(0.5)  # mounted, pump started
            deadline = time.perf_counter() + 30
            while any(w.name == "warm-up" for w in app.workers) and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)  # the other screens built ahead: a one-off in the first seconds
            cpu0, wall0 = time.process_time(), time.perf_counter()
            seen0 = app.run_state.events_seen
            await asyncio.sleep(seconds)
            wall = time.perf_counter() - wall0
            cpu = (time.process_time() - cpu0) / wall
            absorbed_rate = (app.run_state.events_seen - seen0) / wall
            backlog = client.released - app.run_state.events_seen
    return cpu * 100, absorbed_rate, backlog


def bench_absorption(rates: list[float], seconds: float) -> list[tuple[float, float, float, int]]:
    rows = []
    for rate in rates:
        cpu, absorbed_rate, backlog = asyncio.run(_absorb(rate, seconds))
        rows.append((rate, absorbed_rate, cpu, backlog))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paint-runs", type=int, default=5)
    parser.add_argument("--rss-seconds", type=float, default=60)
    parser.add_argument("--skip-rss", action="store_true", help="skip the demo run (it needs the engine and minutes)")
    parser.add_argument("--skip-demo", action="store_true", help="skip timing `sidestep demo` cold")
    parser.add_argument("--only-switches", action="store_true", help="only the screen switches")
    parser.add_argument("--rates", default="500,1000,2000,4000")
    parser.add_argument("--seconds", type=float, default=8.0, help="per absorption rate")
    parser.add_argument("--demo-root", default=None)
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for warm, how in ((True, "after the warm-up (the app idle ~3 s from start)"), (False, "keys pressed at once (no warm-up)")):
        rows = bench_switches(warm)
        print(f"screen switches, {how} (headless app at 80x24; key to idle; target <= 0.25 s):")
        for key, what, wall, cpu in rows:
            print(f"  {key:<3} {what:<28} {wall:6.3f} s wall  {cpu:6.3f} s CPU")
        print(f"  slowest: {max(r[2] for r in rows):.3f} s wall, {max(r[3] for r in rows):.3f} s CPU; load average now "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.only_switches:
        return 0
    paints = bench_first_paint(args.paint_runs)
    if paints:
        print(
            f"first paint: median {statistics.median(paints):.2f} s, min {min(paints):.2f} s, max {max(paints):.2f} s "
            f"over {len(paints)} runs  (target <= 1.0 s)"
        )
    else:
        print("first paint: no frame seen")

    rows = bench_absorption([float(r) for r in args.rates.split(",")], args.seconds)
    print("absorption (headless app, monitor at 160x48):")
    for rate, absorbed, cpu, backlog in rows:
        print(f"  offered {rate:7.0f} ev/s  absorbed {absorbed:7.0f} ev/s  UI CPU {cpu:5.1f} % of a core  backlog {backlog}")
    ok = [absorbed for rate, absorbed, cpu, backlog in rows if cpu < 25.0 and backlog < rate]
    print(
        f"  best rate under 25 % of a core with no backlog: {max(ok):.0f} ev/s  (target >= 1000)" if ok else "  no rate met 25 %"
    )

    if not args.skip_demo:
        wall, note = bench_demo_cold()
        print(f"`sidestep demo --plain` cold: {wall:.1f} s (target <= 30 s); {note}" if wall else f"demo cold: failed, {note}")

    if not args.skip_rss:
        samples, note = bench_rss(args.rss_seconds, args.demo_root)
        if samples:
            print(
                f"UI RSS while monitoring the demo: median {statistics.median(samples):.0f} MB, max {max(samples):.0f} MB "
                f"over {len(samples)} s  (target <= 150 MB); {note}"
            )
            print(f"UI CPU while monitoring the demo: {LAST_CPU[0]:.1f} % of a core (target <= 2 %)")
        else:
            print(f"UI RSS: not measured: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
