"""The pure RunState reducer, driven by scripted event sequences (no Textual, no engine)."""

from __future__ import annotations

import math

import pytest
from fake_engine import scripted_run

from engine import protocol as p
from sidestep_tui.state import MAX_LOG_LINES, MAX_METRIC_POINTS, MAX_RESOURCE_POINTS, RunState, apply, apply_all, compact, smooth


def _step(step: int, loss: float = 1.0, *, seq: int = 0, covered: int = 1) -> p.StepMetrics:
    return p.StepMetrics(
        run_id="r",
        seq=seq,
        ts=float(seq),
        step=step,
        epoch=1,
        total_steps=100,
        loss=loss,
        loss_min=loss - 0.1,
        loss_max=loss + 0.1,
        steps_covered=covered,
        lr=1e-4,
        grad_norm=0.5,
        samples_per_s=3.0,
        eta_s=10.0,
    )


def test_start_steps_checkpoint_finish() -> None:
    s = apply_all(RunState(), scripted_run(steps=40, total_steps=100, finish="stopped"))
    assert s.engine_pid == 4242 and s.protocol_version == p.PROTOCOL_VERSION
    assert s.run_id == "run-1" and s.run_dir == "/runs/demo" and s.adapter_type == "lora"
    assert s.step == 40 and s.total_steps == 100 and s.progress == pytest.approx(0.4)
    assert len(s.history) == 40 and s.history[-1].step == 40
    assert s.best_loss is None  # no best/ was written (not the lowest loss seen: engine.summary)
    assert s.final_loss == 0.3 and s.epoch == 10  # RunFinished's final loss; 1-based: step 40 of 4 steps/epoch ends epoch 10
    assert [c.kind for c in s.checkpoints] == ["periodic", "periodic", "stop"]
    assert s.finished_status == "stopped" and s.phase == "finished" and not s.active
    assert s.adapter_path == "/runs/demo/final" and s.eta_s is None
    assert s.histogram is not None and s.histogram.step == 40 and len(s.histogram.bin_edges) == 21
    assert sum(s.histogram.cumulative) >= sum(s.histogram.recent)
    assert s.seq_gaps == 0 and s.log and s.log[0].level == "info"


def test_phase_before_run_started_counts_as_active() -> None:
    s = apply(RunState(), p.PhaseChanged(run_id="r9", seq=1, ts=1.0, phase="loading_model", detail="/ckpt/x"))
    assert s.active and s.phase == "loading_model" and s.phase_detail == "/ckpt/x"


def test_failure_keeps_message_hint_traceback() -> None:
    s = apply_all(RunState(), scripted_run(steps=5, finish="failed"))
    assert s.failure is not None and s.failure.oom and "out of memory" in s.failure.message
    assert s.failure.hint and s.failure.traceback.startswith("Traceback")
    assert s.phase == "failed" and not s.active and s.step == 5


def test_pause_resume() -> None:
    s = apply_all(RunState(), scripted_run(steps=3, finish=None))
    s = apply(s, p.RunPaused(run_id="run-1", seq=100, ts=1.0, step=3))
    assert s.paused and s.phase == "paused" and s.active
    s = apply(s, p.Heartbeat(run_id="run-1", seq=101, ts=2.0, phase="paused", last_step=3))
    assert s.last_heartbeat_ts == 2.0 and s.paused
    s = apply(s, p.RunResumed(run_id="run-1", seq=102, ts=3.0, step=3))
    assert not s.paused and s.phase == "training"


def test_not_available_readings_stay_none() -> None:
    s = apply(RunState(), p.ResourceSample(run_id="r", seq=0, ts=1.0, device="cpu", process_rss_mb=512.0))
    r = s.resource
    assert r is not None and r.process_rss_mb == 512.0
    assert r.allocated_mb is None and r.gpu_used_mb is None and r.gpu_util_pct is None and r.gpu_power_w is None


def test_seq_gaps_counted_and_new_engine_is_not_a_gap() -> None:
    s = apply_all(RunState(), [_step(1, seq=1), _step(2, seq=2), _step(3, seq=6)])
    assert s.seq_gaps == 3
    s = apply(s, _step(4, seq=0))  # a new engine process (resume) restarts seq
    assert s.seq_gaps == 3 and s.last_seq == 0


def test_history_is_bounded_and_keeps_extremes() -> None:
    events = [_step(i, loss=1.0 + (5.0 if i == 7 else 0.0), seq=i) for i in range(1, MAX_METRIC_POINTS * 3)]
    s = apply_all(RunState(), events)
    assert len(s.history) <= MAX_METRIC_POINTS
    assert s.history[-1].step == MAX_METRIC_POINTS * 3 - 1
    assert max(pt.loss_max for pt in s.history) == pytest.approx(6.1)  # the spike survives merging
    assert sum(pt.steps for pt in s.history) == MAX_METRIC_POINTS * 3 - 1  # every step still counted


def test_compact_merges_weighted_by_steps() -> None:
    a = _step(1, loss=1.0, covered=1)
    b = _step(4, loss=2.0, covered=3)
    s = apply_all(RunState(), [a, b])
    merged = compact(s.history)
    assert len(merged) == 1 and merged[0].step == 4 and merged[0].steps == 4
    assert merged[0].loss == pytest.approx((1.0 * 1 + 2.0 * 3) / 4)


def test_resources_and_log_bounded() -> None:
    s = RunState()
    for i in range(MAX_RESOURCE_POINTS + 10):
        s = apply(s, p.ResourceSample(run_id="r", seq=i, ts=float(i), device="cpu"))
    for i in range(MAX_LOG_LINES + 10):
        s = apply(s, p.LogRecord(run_id="r", seq=1000 + i, ts=0.0, level="info", message=str(i)))
    assert len(s.resources) == MAX_RESOURCE_POINTS and s.resources[-1].ts == MAX_RESOURCE_POINTS + 9
    assert len(s.log) == MAX_LOG_LINES and s.log[-1].message == str(MAX_LOG_LINES + 9)


def test_resume_of_the_same_run_keeps_the_curve_up_to_its_start() -> None:
    first = scripted_run(steps=30, finish="stopped")
    s = apply_all(RunState(), first)
    started = next(e for e in first if isinstance(e, p.RunStarted))
    import dataclasses

    resumed = dataclasses.replace(started, seq=0, start_step=20, start_epoch=6)  # step 21 is in epoch 6
    s = apply(s, resumed)
    assert s.active and s.finished_status is None and s.step == 20 and s.epoch == 6
    assert s.history and s.history[-1].step == 20
    assert s.checkpoints  # the earlier checkpoints are still listed
    assert s.summary.segments == 2 and s.summary.final_loss is not None  # the run goes on: one summary


def test_nan_loss_is_kept_in_history_but_not_best() -> None:
    s = apply_all(RunState(), [_step(1, loss=2.0, seq=1), _step(2, loss=math.nan, seq=2)])
    assert s.final_loss == 2.0 and s.best_loss is None and math.isnan(s.loss or 0.0) and len(s.history) == 2


def test_every_event_type_is_handled() -> None:
    """apply() ends in assert_never: feeding one of every event type must not raise."""
    samples = {
        p.EngineReady: dict(pid=1, protocol_version=1, torch_version="t", python_version="3", cuda_available=False),
        p.Heartbeat: dict(phase="idle", last_step=0),
        p.RunStarted: dict(
            run_dir="/r",
            config_json="{}",
            adapter_type="lora",
            model_dir="/m",
            model_variant="v",
            device="cpu",
            precision="fp32",
            attention_backend="sdpa",
            adapted_modules=1,
            trainable_params=1,
            total_params=2,
            num_samples=1,
            steps_per_epoch=1,
            total_steps=1,
            start_step=0,
            start_epoch=0,
            timestep_mu=0.0,
            timestep_sigma=1.0,
            timestep_mode="continuous",
        ),
        p.PhaseChanged: dict(phase="training"),
        p.StepMetrics: dict(
            step=1,
            epoch=0,
            total_steps=1,
            loss=1.0,
            loss_min=1.0,
            loss_max=1.0,
            steps_covered=1,
            lr=0.1,
            grad_norm=1.0,
            samples_per_s=1.0,
            eta_s=0.0,
        ),
        p.EpochCompleted: dict(epoch=0, step=1, mean_loss=1.0, duration_s=1.0),
        p.ResourceSample: dict(device="cpu"),
        p.TimestepHistogram: dict(step=1, bin_edges=(0.0, 1.0), recent=(1,), cumulative=(1,), expected=(1.0,)),
        p.CheckpointSaved: dict(step=1, epoch=0, path="/c", kind="stop"),
        p.SampleRendered: dict(step=1, path="/s.flac", prompt="x", seed=1, duration_s=1.0, adapter_scale=1.0, wall_s=1.0),
        p.LogRecord: dict(level="info", message="m"),
        p.RunPaused: dict(step=1),
        p.RunResumed: dict(step=1),
        p.PreprocessProgress: dict(stage="pass1", index=1, total=2, file="a.wav", status="ok"),
        p.AnalysisProgress: dict(run=1, runs=1, group="mlp", pass_index=3, passes=3, batch=1, batches=1, done=3, total=3),
        p.AnalysisDone: dict(status="completed", path="/d/fisher_map.json"),
        p.EstimateProgress: dict(done=1, total=2),
        p.EstimateDone: dict(status="completed", path="/d/module_config.json", modules=("layers.0.mlp.up_proj",), scores=(1.0,)),
        p.RunFinished: dict(status="completed", steps=1, epochs=1, final_loss=1.0, best_loss=1.0, adapter_path="/a", wall_s=1.0),
        p.RunFailed: dict(error_type="E", message="m"),
        p.EngineStopping: dict(),
    }
    assert set(samples) == set(p.EVENT_TYPES)
    s = RunState()
    for i, (cls, kwargs) in enumerate(samples.items()):
        s = apply(s, cls(run_id="r", seq=i, ts=float(i), **kwargs))
    assert s.events_seen == len(p.EVENT_TYPES) and s.engine_stopping
    assert any(line.message == "sample written: /s.flac" for line in s.log)  # the Monitor log shows samples


def test_preprocess_progress_counts() -> None:
    s = RunState()
    for i, status in enumerate(("ok", "ok", "skipped", "failed")):
        s = apply(
            s,
            p.PreprocessProgress(
                run_id="pre", seq=i, ts=0.0, stage="pass1", index=i + 1, total=4, file=f"{i}.wav", status=status
            ),
        )
    assert s.preprocess is not None and (s.preprocess.ok, s.preprocess.skipped, s.preprocess.failed) == (2, 1, 1)
    assert s.phase == "preprocessing"


def test_preprocess_files_speed_and_eta() -> None:
    def ev(
        seq: int, stage: str, index: int, file: str, status: str, elapsed: float, audio: float = 0.0, message: str = ""
    ) -> p.PreprocessProgress:
        return p.PreprocessProgress(
            run_id="pre",
            seq=seq,
            ts=0.0,
            stage=stage,
            index=index,
            total=4,
            file=file,
            status=status,
            message=message,
            audio_seconds=audio,
            elapsed_s=elapsed,
        )

    s = apply_all(RunState(), [
        ev(0, "scan", 0, "", "ok", 1.0, 40.0, "4 files"),  # 40 s of audio to encode; pass 1 starts at 1.0 s
        ev(1, "scan", 0, "bad.wav", "failed", 1.0, message="empty file"),
        ev(2, "pass1", 1, "a.wav", "ok", 11.0, 10.0),  # model loading + 10 s of audio in 10 s
        ev(3, "pass1", 2, "b.wav", "skipped", 11.0, message="already done"),
        ev(4, "pass1", 3, "c.wav", "ok", 21.0, 10.0),
    ])  # fmt: skip
    prep = s.preprocess
    assert prep is not None
    assert (prep.audio_total, prep.audio_done, prep.stage_started_s) == (40.0, 20.0, 1.0)
    assert prep.audio_per_s == pytest.approx(1.0)
    assert prep.eta_s == pytest.approx(20.0)  # 20 s of audio left at 1 s of audio per second (b.wav carried no audio figure)
    assert prep.files["bad.wav"].status == "failed" and prep.files["b.wav"].message == "already done"
    assert (prep.ok, prep.skipped, prep.failed, prep.failures) == (2, 1, 0, 1)  # counters per stage; failures overall

    s = apply_all(s, [ev(5, "pass2", 1, "a.wav", "ok", 25.0), ev(6, "pass2", 2, "c.wav", "failed", 27.0, message="NaN")])
    prep = s.preprocess
    assert prep is not None and prep.stage_started_s == 21.0 and prep.audio_per_s is None  # speed is a pass-1 figure
    assert prep.eta_s == pytest.approx(6.0)  # 2 files in 6 s, 2 to go
    assert prep.files["a.wav"].stage == "pass2" and prep.failures == 2
    s = apply(s, ev(7, "done", 4, "", "ok", 30.0, 20.0, "done: 1 written"))
    assert s.phase == "finished" and s.preprocess is not None and s.preprocess.eta_s is None


def test_smooth() -> None:
    assert smooth([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    out = smooth([1.0, math.nan, 3.0], 3)
    assert out == [1.0, 1.0, 2.0]


def test_replay_of_the_recorded_demo_run() -> None:
    from fake_engine import recorded

    events = recorded()
    s = apply_all(RunState(), events)
    assert s.run_id and s.step > 0 and s.history and s.checkpoints
    assert s.finished_status == "stopped" and s.seq_gaps == 0
    assert s.histogram is not None and s.resources


def test_engine_lost_ends_an_active_run_only() -> None:
    from sidestep_tui.state import engine_lost

    running = apply_all(RunState(), scripted_run(steps=5, finish=None))
    lost = engine_lost(running, "killed (likely the OOM killer)")
    assert not lost.active and lost.phase == "engine_died" and lost.engine_lost.startswith("killed")
    assert lost.step == 5 and lost.history == running.history
    finished = apply_all(RunState(), scripted_run(steps=5, finish="stopped"))
    assert engine_lost(finished, "exited normally") is finished
