"""The real Fabric loop on the CPU with the tiny demo model: run directory, events, resume
equivalence, stop-and-save, and failures that must be reported as failures with one clear line."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from engine import config as cfgmod
from engine import protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.train.trainer import Trainer


def train(values: dict, *, stop_at: int | None = None) -> tuple[list, object]:
    """Run a Trainer in-process with per-step metrics; optionally request a stop after step ``stop_at``."""
    events: list = []
    inbox = CommandInbox(None)

    def collect(event):
        events.append(event)
        if stop_at is not None and isinstance(event, protocol.StepMetrics) and event.step >= stop_at:
            inbox.state.stop_requested = True  # applied at the step boundary right after this step

    bus = EventBus([CallbackSink(collect)])
    config = cfgmod.parse(values)
    final = Trainer(config, bus, inbox, run_id="test", metrics_hz=math.inf).fit()
    return events, final


def step_losses(events: list) -> dict[int, float]:
    return {e.step: e.loss for e in events if isinstance(e, protocol.StepMetrics) and e.steps_covered == 1}


def test_run_writes_a_complete_run_directory(demo_config_values, tmp_path):
    # Tensors as the demo wrote them before formats were recorded (no preprocess_meta.json): the run
    # must warn once that they are in the legacy conditioning format.
    dataset = shutil.copytree(demo_config_values["dataset_dir"], tmp_path / "no-meta")
    os.remove(dataset / "preprocess_meta.json")
    demo_config_values = dict(demo_config_values, dataset_dir=str(dataset))
    _, final = train(demo_config_values)
    assert isinstance(final, protocol.RunFinished), getattr(final, "traceback", final)
    assert final.status == "completed" and final.steps == 6
    run_dir = demo_config_values["output_dir"]
    for name in ("config.json", "events.jsonl", "sidestep.log", "final/adapter_model.safetensors", "final/adapter_config.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert not os.path.exists(os.path.join(run_dir, "engine.json")), "engine.json must go when the run ends"
    with open(os.path.join(run_dir, "config.json")) as fh:
        resolved = json.load(fh)
    assert resolved["timestep_mu"] == pytest.approx(-0.4) and resolved["shift"] == 1.0  # variant defaults applied
    # events.jsonl holds the same run, in order, ending with RunFinished
    on_disk = protocol.read_events(os.path.join(run_dir, "events.jsonl"))
    seqs = [e.seq for e in on_disk]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert isinstance(on_disk[-1], protocol.RunFinished)
    kinds = [type(e).__name__ for e in on_disk]
    assert kinds.index("RunStarted") < kinds.index("StepMetrics") < kinds.index("RunFinished")
    assert "TimestepHistogram" in kinds
    # the tensors record no conditioning format: one warning, naming the fix, in the events and the log
    (warned,) = [e for e in on_disk if isinstance(e, protocol.LogRecord) and "conditioning" in e.message]
    assert warned.level == "warning" and "legacy conditioning" in warned.message and "sidestep preprocess -i" in warned.message
    with open(os.path.join(run_dir, "sidestep.log"), encoding="utf-8") as fh:
        assert fh.read().count(warned.message) == 1
    hist = next(e for e in on_disk if isinstance(e, protocol.TimestepHistogram))
    assert sum(hist.recent) > 0 and abs(sum(hist.expected) - 1) < 1e-6
    # TensorBoard: scalars and the timestep histogram (logged for every loss weighting)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "runs"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm"} <= set(acc.Tags()["scalars"])
    assert "train/timestep_distribution" in acc.Tags()["histograms"]
    assert len(acc.Scalars("train/loss")) == 6


WEIGHT_FILES = {
    "lora": "adapter_model.safetensors",
    "lokr": "lokr_weights.safetensors",
    "loha": "loha_weights.safetensors",
    "oft": "oft_weights.safetensors",
}


@pytest.mark.parametrize("adapter", ["lora", "lokr", "loha", "oft", "lokr-bf16"])
def test_resume_is_equivalent_to_a_straight_run(demo_config_values, tmp_path, adapter):
    """8 straight steps == 4 steps, stop (saves), resume, 4 steps: same losses and weights.
    ``lokr-bf16``: a bf16 base, where LoKR takes the fp32 adapter path."""
    adapter, _, precision = adapter.partition("-")
    values = dict(
        demo_config_values,
        adapter_type=adapter,
        precision=precision or "auto",
        loha_linear_dim=4,
        loha_linear_alpha=4,
        max_steps=8,
        gradient_accumulation=2,
        cfg_ratio=0.5,
        max_latent_length=60,  # exercises the crop planner's state
        dropout=0.1,
    )
    straight_dir, split_dir = str(tmp_path / "straight"), str(tmp_path / "split")
    events_a, final_a = train(dict(values, output_dir=straight_dir))
    assert isinstance(final_a, protocol.RunFinished) and final_a.steps == 8

    events_b1, final_b1 = train(dict(values, output_dir=split_dir), stop_at=4)
    assert isinstance(final_b1, protocol.RunFinished) and final_b1.status == "stopped" and final_b1.steps == 4
    stop_ckpt = [e for e in events_b1 if isinstance(e, protocol.CheckpointSaved) and e.kind == "stop"]
    assert len(stop_ckpt) == 1 and os.path.isfile(os.path.join(stop_ckpt[0].path, "training_state.pt"))

    events_b2, final_b2 = train(dict(values, output_dir=split_dir, resume_from="auto"))
    assert isinstance(final_b2, protocol.RunFinished), getattr(final_b2, "traceback", final_b2)
    assert final_b2.status == "completed" and final_b2.steps == 8
    if precision:  # the adapter path in use is reported at run start
        logged = [e.message for e in events_a if isinstance(e, protocol.LogRecord)]
        assert any("lokr adapter path: fp32 bypass (base bfloat16)" in m for m in logged), logged

    straight, first, second = step_losses(events_a), step_losses(events_b1), step_losses(events_b2)
    assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [5, 6, 7, 8]
    for step in range(1, 9):
        assert (first | second)[step] == pytest.approx(straight[step], rel=1e-5, abs=1e-6), f"step {step}"

    from safetensors.torch import load_file

    name = WEIGHT_FILES[adapter]
    a = load_file(os.path.join(straight_dir, "final", name))
    b = load_file(os.path.join(split_dir, "final", name))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_stop_checkpoint_is_inference_ready(demo_config_values, demo_paths):
    events, final = train(dict(demo_config_values, max_steps=50), stop_at=2)
    assert final.status == "stopped"
    path = next(e.path for e in events if isinstance(e, protocol.CheckpointSaved) and e.kind == "stop")
    from peft import PeftModel

    from engine.models.loader import load_decoder

    loaded = load_decoder(
        os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"]), device=torch.device("cpu"), dtype=torch.float32
    )
    model = PeftModel.from_pretrained(loaded.decoder, path)
    lora_params = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_params, "the stop checkpoint must hold a loadable LoRA"


def _failure(values: dict) -> protocol.RunFailed:
    _, final = train(values)
    assert isinstance(final, protocol.RunFailed), final
    assert "\n" not in final.message, final.message
    return final


def test_finished_run_is_never_overwritten(demo_config_values):
    _, first = train(dict(demo_config_values, max_steps=2))
    assert isinstance(first, protocol.RunFinished)
    failed = _failure(dict(demo_config_values, max_steps=2))
    assert "holds a finished run" in failed.message and "--overwrite" in failed.message
    assert os.path.isdir(os.path.join(demo_config_values["output_dir"], "final"))


def test_missing_checkpoint_folder_is_named(demo_config_values, tmp_path):
    failed = _failure(dict(demo_config_values, resume_from=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in failed.message


def test_corrupt_training_state_is_named(demo_config_values):
    events, _ = train(dict(demo_config_values, max_steps=50), stop_at=1)
    ckpt_dir = next(e.path for e in events if isinstance(e, protocol.CheckpointSaved) and e.kind == "stop")
    with open(os.path.join(ckpt_dir, "training_state.pt"), "wb") as fh:
        fh.write(b"this is not a zip file")
    failed = _failure(dict(demo_config_values, max_steps=50, resume_from=ckpt_dir))
    assert os.path.join(ckpt_dir, "training_state.pt") in failed.message and "corrupt" in failed.message


def test_resume_with_other_adapter_shape_is_refused(demo_config_values):
    events, _ = train(dict(demo_config_values, max_steps=50), stop_at=1)
    ckpt_dir = next(e.path for e in events if isinstance(e, protocol.CheckpointSaved) and e.kind == "stop")
    failed = _failure(dict(demo_config_values, max_steps=50, resume_from=ckpt_dir, rank=8))
    assert "rank" in failed.message
    failed = _failure(dict(demo_config_values, max_steps=50, resume_from=ckpt_dir, rank=8, strict_resume=False))
    assert "training_state.pt" in failed.message  # the adapter tensors do not fit: refused, never a fresh start


def test_corrupt_dataset_file_is_named(demo_config_values, demo_paths, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_paths["dataset_dir"], data)
    victim = sorted(p for p in os.listdir(data) if p.endswith(".pt"))[0]
    (data / victim).write_bytes(b"\x00" * 100)
    failed = _failure(dict(demo_config_values, dataset_dir=str(data)))
    assert victim in failed.message


def test_all_nan_run_is_a_failure(demo_config_values, demo_paths, tmp_path):
    """Finite inputs whose loss overflows: every step is skipped, then the run halts as failed."""
    data = tmp_path / "data"
    shutil.copytree(demo_paths["dataset_dir"], data)
    for name in os.listdir(data):
        if name.endswith(".pt"):
            sample = torch.load(data / name, weights_only=True)
            sample["target_latents"] = torch.full_like(sample["target_latents"], 1e30)
            torch.save(sample, data / name)
    failed = _failure(dict(demo_config_values, dataset_dir=str(data), max_steps=40))
    assert "NaN/Inf" in failed.message


def test_empty_dataset_is_a_failure(demo_config_values, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = _failure(dict(demo_config_values, dataset_dir=str(empty)))
    assert str(empty) in failed.message


def test_skipped_steps_and_the_saving_phase_reach_the_events(demo_config_values, monkeypatch):
    """Gradients that turn NaN while the loss stays finite (a hook on the real adapter weight) skip their
    optimizer step: each skip is counted in the event stream the UI folds. Every save is bracketed by
    PhaseChanged "saving" and the phase before it."""
    from engine.train import trainer as trainer_module
    from sidestep_tui.state import RunState, apply_all

    poisoned = {2, 4}  # backward passes (one per optimizer step here) whose gradient becomes NaN
    backward = {"n": 0}
    real_build_run = trainer_module.build_run

    def build_run_with_a_poisoned_gradient(*args, **kwargs):
        parts = real_build_run(*args, **kwargs)

        def hook(grad):
            backward["n"] += 1
            return grad * math.nan if backward["n"] in poisoned else grad

        parts.adapter.parameters()[0].register_hook(hook)
        return parts

    monkeypatch.setattr(trainer_module, "build_run", build_run_with_a_poisoned_gradient)
    events, final = train(dict(demo_config_values, max_steps=4, save_every_n_steps=2))
    assert isinstance(final, protocol.RunFinished) and final.status == "completed" and final.steps == 4, final
    assert backward["n"] == 6, "4 optimizer steps plus the 2 skipped windows"
    metrics = [e for e in events if isinstance(e, protocol.StepMetrics)]
    assert sum(e.skipped_steps for e in metrics) == 2
    assert sum(e.steps_covered for e in metrics) == 6
    warnings = [e.message for e in events if isinstance(e, protocol.LogRecord) and "gradient norm was NaN/Inf" in e.message]
    assert len(warnings) == 2
    assert apply_all(RunState(), events).skipped_steps == 2

    saves = [i for i, e in enumerate(events) if isinstance(e, protocol.CheckpointSaved)]
    assert [(events[i].kind, events[i].step) for i in saves] == [("periodic", 2), ("periodic", 4), ("final", 4)], (
        "a skipped window saves nothing again"
    )
    phases = [(i, e) for i, e in enumerate(events) if isinstance(e, protocol.PhaseChanged)]
    assert sum(e.phase == "saving" for _, e in phases) == len(saves)
    for i in saves:
        before = [e for j, e in phases if j < i][-1]
        after = next(e for j, e in phases if j > i)
        assert (before.phase, before.detail) == ("saving", events[i].kind)
        assert after.phase == "training"
