"""Run history from config.json + events.jsonl + engine.json."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from engine import config as cfg
from engine import protocol, runs

from .event_factory import run_started, step_metrics

T0 = 1_700_000_000.0


class Log:
    """Builds an events.jsonl the way the engine's JsonlSink does."""

    def __init__(self, run_dir: Path, run_id: str = "run-1") -> None:
        self.run_dir, self.run_id, self.seq = run_dir, run_id, 0
        run_dir.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []

    def add(self, event, ts: float | None = None) -> Log:
        self.seq += 1
        stamped = protocol.stamp(event, run_id=self.run_id, seq=self.seq, ts=T0 + self.seq if ts is None else ts)
        self.lines.append(protocol.dumps(stamped))
        return self

    def write(self, tail: str = "") -> Path:
        path = self.run_dir / "events.jsonl"
        path.write_text("\n".join(self.lines) + "\n" + tail, encoding="utf-8")
        return path


def started(total_steps: int = 100, start_step: int = 0) -> protocol.RunStarted:
    return run_started(
        model_variant="turbo",
        adapted_modules=10,
        num_samples=3,
        steps_per_epoch=10,
        total_steps=total_steps,
        start_step=start_step,
        start_epoch=start_step // 10 + 1,
    )


def metrics(step: int, loss: float, epoch: int = 1, total: int = 100) -> protocol.StepMetrics:
    return step_metrics(step, loss, epoch=epoch, total_steps=total, lr=1e-4, samples_per_s=2.0, eta_s=10.0)


def resource() -> protocol.ResourceSample:
    return protocol.ResourceSample(device="cpu", process_rss_mb=100.0)


def write_config(run_dir: Path, **values) -> None:
    config = cfg.parse({"checkpoint_dir": "/c", "dataset_dir": "/d", "output_dir": str(run_dir), **values})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json(config), encoding="utf-8")


def engine_json(run_dir: Path, pid: int, *, host: str | None = None, started_at: float | None = None) -> None:
    info = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": time.time() if started_at is None else started_at,
        "protocol_version": protocol.PROTOCOL_VERSION,
        "run_id": "run-1",
    }
    (run_dir / "engine.json").write_text(json.dumps(info), encoding="utf-8")


def completed_run(run_dir: Path) -> Path:
    write_config(run_dir, run_name="my first run", adapter_type="lokr", model_variant="base")
    log = Log(run_dir).add(started()).add(metrics(10, 0.5)).add(resource())
    log.add(protocol.EpochCompleted(epoch=1, step=10, mean_loss=0.45, duration_s=5.0))
    log.add(protocol.CheckpointSaved(step=10, epoch=1, path=str(run_dir / "best"), kind="best", loss=0.42))
    log.add(metrics(20, 0.3, epoch=2)).add(protocol.EpochCompleted(epoch=2, step=20, mean_loss=0.35, duration_s=5.0))
    log.add(
        protocol.RunFinished(
            status="completed",
            steps=20,
            epochs=2,
            final_loss=0.31,
            best_loss=0.33,
            adapter_path=str(run_dir / "final"),
            wall_s=9.0,
        )
    )
    log.write()
    (run_dir / "final").mkdir()
    (run_dir / "best").mkdir()
    return run_dir


def test_completed_run(tmp_path: Path) -> None:
    run = runs.summarize_run(str(completed_run(tmp_path / "r1")))
    assert run.status == "completed" and run.finished
    assert (run.run_id, run.name, run.path) == ("run-1", "my first run", str(tmp_path / "r1"))
    assert (run.adapter_type, run.model_variant) == ("lokr", "base")  # config.json wins over the event
    assert (run.steps, run.total_steps, run.epoch) == (20, 100, 2)
    # best = the loss saved with best/ (not RunFinished.best_loss, not the lowest epoch mean); final = the last step's
    assert (run.best_loss, run.final_loss) == (0.42, 0.31) and (run.best_step, run.best_epoch) == (10, 1)
    assert run.segments == 1
    assert run.started == T0 + 1 and run.last_update == T0 + 8 and run.duration_s == 7.0
    assert run.adapter_path == str(tmp_path / "r1" / "final")
    assert run.error is None and run.problem is None and run.pid is None and run.phase == "finished"


def test_best_loss_without_a_final_event(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    log = Log(run_dir).add(started()).add(metrics(5, 0.9))
    log.add(protocol.EpochCompleted(epoch=1, step=5, mean_loss=0.8, duration_s=1.0))
    log.add(protocol.CheckpointSaved(step=5, epoch=1, path="x", kind="best", loss=0.7))
    log.add(protocol.CheckpointSaved(step=6, epoch=1, path="y", kind="periodic"))  # NaN loss is ignored
    log.write()
    run = runs.summarize_run(str(run_dir))
    assert run.status == "died"  # events, no final event, no engine
    assert (run.best_loss, run.final_loss, run.steps) == (0.7, 0.9, 6)


def test_failed_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "f"
    log = Log(run_dir).add(started()).add(metrics(3, 1.0))
    log.add(protocol.LogRecord(level="error", message="something odd"))
    log.add(
        protocol.RunFailed(
            error_type="OutOfMemoryError", message="CUDA out of memory", hint="lower the batch size", oom=True, step=3
        )
    )
    log.add(protocol.LogRecord(level="error", message="later noise"))
    engine_json(run_dir, 999_999_999)  # left behind by the dying engine
    log.write()
    run = runs.summarize_run(str(run_dir))
    assert run.status == "failed"
    assert run.error == "CUDA out of memory (lower the batch size)"
    assert run.name == "f" and run.adapter_type == "lora" and run.model_variant == "turbo"  # from RunStarted


def test_error_log_line_without_failure(tmp_path: Path) -> None:
    run_dir = tmp_path / "e"
    Log(run_dir).add(started()).add(protocol.LogRecord(level="error", message="disk full")).add(
        protocol.RunFinished(
            status="stopped", steps=1, epochs=0, final_loss=float("nan"), best_loss=float("nan"), adapter_path="", wall_s=1.0
        )
    ).write()
    run = runs.summarize_run(str(run_dir))
    assert run.status == "stopped" and run.error == "disk full"
    assert run.best_loss is None and run.final_loss is None


def test_running_run_with_a_live_engine(tmp_path: Path) -> None:
    run_dir = tmp_path / "live"
    Log(run_dir).add(started()).add(metrics(7, 0.6)).add(protocol.Heartbeat(phase="training", last_step=7)).write()
    engine_json(run_dir, os.getpid())
    run = runs.summarize_run(str(run_dir))
    assert run.status == "running" and run.pid == os.getpid() and run.phase == "training"
    assert run.duration_s is not None and run.duration_s > 0


def test_paused_phase(tmp_path: Path) -> None:
    run_dir = tmp_path / "p"
    Log(run_dir).add(started()).add(protocol.RunPaused(step=4)).write()
    engine_json(run_dir, os.getpid())
    assert runs.summarize_run(str(run_dir)).phase == "paused"


def test_dead_engine_is_died(tmp_path: Path) -> None:
    run_dir = tmp_path / "dead"
    Log(run_dir).add(started()).add(metrics(2, 0.5)).write()
    engine_json(run_dir, 2**31 - 1)  # no process can have it (above every kernel's pid_max); this test starts none
    run = runs.summarize_run(str(run_dir))
    assert run.status == "died" and run.pid is None


def test_reused_pid_is_not_mistaken_for_the_engine(tmp_path: Path) -> None:
    run_dir = tmp_path / "reused"
    Log(run_dir).add(started()).write()
    engine_json(run_dir, os.getpid(), started_at=time.time() - 10 * 24 * 3600)  # our pid, but a run started long before us
    assert runs.summarize_run(str(run_dir)).status == "died"


def test_engine_on_another_host_is_unknown(tmp_path: Path) -> None:
    run_dir = tmp_path / "remote"
    Log(run_dir).add(started()).write()
    engine_json(run_dir, os.getpid(), host="some-other-host.invalid")
    assert runs.summarize_run(str(run_dir)).status == "unknown"


def test_engine_json_without_events_and_config_only(tmp_path: Path) -> None:
    loading = tmp_path / "loading"
    write_config(loading)
    engine_json(loading, os.getpid())
    assert runs.summarize_run(str(loading)).status == "running"

    fresh = tmp_path / "fresh"
    write_config(fresh)
    run = runs.summarize_run(str(fresh))
    assert run.status == "not_started" and run.steps == 0 and run.adapter_path is None


def test_resumed_run_uses_the_last_segment(tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    log = Log(run_dir).add(started()).add(metrics(10, 0.5))
    log.add(protocol.RunFailed(error_type="RuntimeError", message="boom"))
    log.add(started(start_step=10)).add(metrics(12, 0.4))
    log.write()
    run = runs.summarize_run(str(run_dir))
    assert run.status == "died" and run.error is None and run.steps == 12
    assert run.started == T0 + 1  # the run's first start
    engine_json(run_dir, os.getpid())
    assert runs.summarize_run(str(run_dir)).status == "running"
    log.add(
        protocol.RunFinished(status="completed", steps=20, epochs=2, final_loss=0.3, best_loss=0.3, adapter_path="", wall_s=1.0)
    )
    log.write()
    assert runs.summarize_run(str(run_dir)).status == "completed"  # the final event wins over a live pid


def test_torn_last_line_and_bad_middle_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "torn"
    log = Log(run_dir).add(started()).add(metrics(5, 0.5))
    log.write(tail=protocol.dumps(metrics(6, 0.4))[:30])
    run = runs.summarize_run(str(run_dir))
    assert run.steps == 5 and run.problem is None

    bad = tmp_path / "bad"
    log = Log(bad).add(started()).add(metrics(5, 0.5))
    log.lines.insert(1, "{garbage")
    log.add(metrics(9, 0.2)).write()
    run = runs.summarize_run(str(bad))
    assert run.steps == 9  # everything readable is still used
    assert run.problem is not None and "events.jsonl:2:" in run.problem


def test_binary_garbage_in_the_log_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    run_dir = tmp_path / "bin"
    log = Log(run_dir).add(started()).add(metrics(3, 0.5))
    path = run_dir / "events.jsonl"
    path.write_bytes(log.lines[0].encode() + b"\n\xff\xfe garbage\n" + log.lines[1].encode() + b"\n")
    run = runs.summarize_run(str(run_dir))
    assert run.steps == 3 and run.problem is not None and ":2:" in run.problem


def _digest_fields(digest) -> dict:
    fields = {name: getattr(digest.summary, name) for name in digest.summary.__slots__}
    fields.pop("events")  # the fast reader decodes only the events a summary needs
    return {**fields, "problem": digest.problem}


def test_fast_reader_agrees_with_read_events(tmp_path: Path) -> None:
    run_dir = tmp_path / "big"
    log = Log(run_dir).add(started(total_steps=5000))
    step = 0
    while len("\n".join(log.lines)) < runs.BIG_EVENTS_BYTES + 100_000:
        step += 1
        log.add(metrics(step, 1.0 / step, epoch=(step - 1) // 100 + 1, total=5000))
        for _ in range(4):
            log.add(resource())
        log.add(protocol.Heartbeat(phase="training", last_step=step))
        if step % 100 == 0:
            log.add(protocol.EpochCompleted(epoch=step // 100, step=step, mean_loss=1.0 / step, duration_s=1.0))
            log.add(protocol.CheckpointSaved(step=step, epoch=step // 100, path="p", kind="periodic"))
            if step in (200, 400):
                log.add(protocol.CheckpointSaved(step=step, epoch=step // 100, path="b", kind="best", loss=2.0 / step))
        if step == 500:
            log.add(protocol.LogRecord(level="error", message="transient"))
            log.add(protocol.PhaseChanged(phase="saving"))
    log.add(
        protocol.RunFinished(
            status="stopped", steps=step, epochs=step // 100, final_loss=0.01, best_loss=0.02, adapter_path="", wall_s=5.0
        )
    )
    log.add(resource())
    path = log.write(tail='{"type":"Heartbeat","run_id":"run-1","se')
    assert path.stat().st_size > runs.BIG_EVENTS_BYTES

    fast, small = runs._digest_fast(str(path)), runs._digest_small(str(path))
    assert _digest_fields(fast) == _digest_fields(small)
    assert fast.summary.status == "stopped" and fast.summary.step == step and fast.summary.error == "transient"
    assert fast.summary.best_loss == 2.0 / 400 and fast.summary.best_step == 400
    summary = runs.summarize_run(str(run_dir))  # goes through the fast path
    assert summary.status == "stopped" and summary.last_update == T0 + log.seq


def test_summaries_are_cached_until_the_file_changes(tmp_path: Path) -> None:
    run_dir = tmp_path / "c"
    log = Log(run_dir).add(started()).add(metrics(1, 0.5))
    log.write()
    assert runs.summarize_run(str(run_dir)).steps == 1
    log.add(metrics(2, 0.4)).write()
    assert runs.summarize_run(str(run_dir)).steps == 2


# --------------------------------------------------------------------------- checkpoints


def make_checkpoint(run_dir: Path, name: str, step: int | None, *, state: bool = True) -> Path:
    folder = run_dir / "checkpoints" / name
    folder.mkdir(parents=True)
    if state:
        (folder / "training_state.pt").write_bytes(b"not really torch")
    if step is not None:
        (folder / "checkpoint.json").write_text(json.dumps({"step": step, "epoch": 1, "kind": "periodic"}))
    return folder


def test_adapter_path_prefers_final_then_best_then_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    Log(run_dir).add(started()).write()
    ckpt = make_checkpoint(run_dir, "epoch_1", 10)
    assert runs.summarize_run(str(run_dir)).adapter_path == str(ckpt)
    (run_dir / "best").mkdir()
    assert runs.summarize_run(str(run_dir)).adapter_path == str(run_dir / "best")
    (run_dir / "final").mkdir()
    assert runs.summarize_run(str(run_dir)).adapter_path == str(run_dir / "final")


# --------------------------------------------------------------------------- scanning


def test_scan_runs_one_level_down_newest_first(tmp_path: Path) -> None:
    completed_run(tmp_path / "older")
    newer = tmp_path / "newer"
    Log(newer, run_id="run-2").add(started(), ts=T0 + 1000).write()
    config_only = tmp_path / "config-only"
    write_config(config_only)
    (tmp_path / "model-like").mkdir()
    (tmp_path / "model-like" / "config.json").write_text(json.dumps({"model_type": "acestep"}))
    (tmp_path / "empty").mkdir()
    (tmp_path / "deep" / "run").mkdir(parents=True)
    Log(tmp_path / "deep" / "run").add(started()).write()  # two levels down: not scanned

    found = runs.scan_runs(str(tmp_path))
    assert [r.path for r in found] == [str(newer), str(tmp_path / "older"), str(config_only)]
    assert [r.status for r in found] == ["died", "completed", "not_started"]
    assert found[0].run_id == "run-2"


def test_scan_runs_at_a_run_dir_returns_only_it(tmp_path: Path) -> None:
    run_dir = completed_run(tmp_path / "r")
    (run_dir / "final" / "config.json").write_text((run_dir / "config.json").read_text())  # adapters carry the config
    make_checkpoint(run_dir, "epoch_1", 10)
    (run_dir / "checkpoints" / "epoch_1" / "config.json").write_text((run_dir / "config.json").read_text())
    found = runs.scan_runs(str(run_dir))
    assert [r.path for r in found] == [str(run_dir)]
    assert runs.scan_runs(str(tmp_path / "missing")) == []
    assert not runs.is_run_dir(str(run_dir / "checkpoints" / "epoch_1"))
