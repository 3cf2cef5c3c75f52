"""Samples during training on the tiny demo, in-process: the base (step 0) and adapter rounds on disk, in
TensorBoard and as events; sampling leaves the trained adapter bit-identical; and ``sidestep generate``
renders the very same audio from the run's adapter."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file

from engine import config as cfgmod
from engine import protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.train.trainer import Trainer

STEPS = 2


@pytest.fixture(scope="module")
def root(demo_audio_root) -> str:
    return demo_audio_root


def train(values: dict) -> tuple[list, object]:
    events: list = []
    final = Trainer(
        cfgmod.parse(values), EventBus([CallbackSink(events.append)]), CommandInbox(None), run_id="s", metrics_hz=math.inf
    ).fit()
    assert isinstance(final, protocol.RunFinished), getattr(final, "traceback", final)
    return events, final


@pytest.fixture(scope="module")
def runs(demo_paths, root, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("sample-runs")
    values = {
        "checkpoint_dir": root,
        "model_variant": demo_paths["model_variant"],
        "dataset_dir": demo_paths["dataset_dir"],
        "rank": 4,
        "alpha": 8,
        "learning_rate": 1e-2,
        "max_steps": STEPS,
        "warmup_steps": 0,
        "num_workers": 0,
        "device": "cpu",
        "save_best": False,
        "num_inference_steps": 2,
        "sample_duration": 1.0,
    }
    train({**values, "output_dir": str(base / "plain")})
    events, final = train({**values, "output_dir": str(base / "sampled"), "sample_every": STEPS})
    return {"plain": str(base / "plain"), "sampled": str(base / "sampled"), "events": events, "final": final}


def test_sampling_leaves_the_trained_adapter_bit_identical(runs):
    plain = load_file(os.path.join(runs["plain"], "final", "adapter_model.safetensors"))
    sampled = load_file(os.path.join(runs["sampled"], "final", "adapter_model.safetensors"))
    assert plain.keys() == sampled.keys() and all((plain[k] == sampled[k]).all() for k in plain)
    assert any(v.abs().sum() > 0 for k, v in sampled.items() if "lora_B" in k)  # it trained


def test_base_and_adapter_rounds_on_disk_as_events_and_in_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, events = runs["sampled"], runs["events"]
    rendered = [e for e in events if isinstance(e, protocol.SampleRendered)]
    assert [(e.step, e.index, e.total, e.adapter_scale) for e in rendered] == [
        (s, i, 3, 0.0 if s == 0 else 1.0) for s in (0, STEPS) for i in (1, 2, 3)
    ]
    phases = [e.detail for e in events if isinstance(e, protocol.PhaseChanged) and e.phase == "sampling"]
    assert phases == ["1/3", "2/3", "3/3"] * 2
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("RunStarted") < kinds.index("SampleRendered") < kinds.index("StepMetrics")
    for step in (0, STEPS):
        folder = os.path.join(run_dir, "samples", f"step_{step}")
        assert sorted(os.listdir(folder)) == sorted(
            f"{os.path.splitext(os.path.basename(e.path))[0]}{x}" for e in rendered[:3] for x in (".flac", ".json")
        )
    for event in rendered:
        info = sf.info(event.path)
        assert (info.samplerate, info.channels) == (48_000, 2) and abs(info.frames - 48_000) <= 1920
        sidecar = json.loads(Path(os.path.splitext(event.path)[0] + ".json").read_text(encoding="utf-8"))
        assert sidecar["prompt"] == event.prompt and sidecar["seed"] == 42 and sidecar["steps"] == 2
        assert sidecar["guidance"] == 7.0 and sidecar["adapter_scale"] == event.adapter_scale and sidecar["wall_s"] > 0
        spec = sidecar["spectrogram"]  # what the UI draws without reading audio (engine.audio.spectrum)
        assert len(spec["db"]) == len(spec["band_hz"]) == 48 and len(spec["db"][0]) == info.frames // 1024
        assert sidecar["lufs"] is None or -70 < sidecar["lufs"] < 10  # 1 s holds 400 ms gating blocks
        assert event.prompt.startswith("demo pattern")  # the dataset's own captions
    base, adapter = rendered[0], rendered[3]
    assert base.prompt == adapter.prompt
    assert not np.array_equal(sf.read(base.path)[0], sf.read(adapter.path)[0])
    acc = EventAccumulator(os.path.join(run_dir, "runs"), size_guidance={"audio": 0})
    acc.Reload()
    tag = "samples/" + os.path.splitext(os.path.basename(base.path))[0]
    assert tag in acc.Tags()["audio"]
    clips = acc.Audio(tag)
    assert [c.step for c in clips] == [0, STEPS]
    assert clips[0].sample_rate == 48_000 and clips[0].length_frames == info.frames
    assert clips[0].encoded_audio_string[:4] == b"RIFF"


def test_sidestep_generate_renders_the_runs_samples_exactly(runs, root, demo_paths, tmp_path, capsys):
    """The CLI with --adapter final/ --compare: OUT_1_base.flac is the step-0 sample, OUT_1.flac the step-2 one."""
    from engine.cli.main import main

    first = next(e for e in runs["events"] if isinstance(e, protocol.SampleRendered))
    sidecar = json.loads(Path(os.path.splitext(first.path)[0] + ".json").read_text(encoding="utf-8"))
    keys = ("prompt", "lyrics", "seed", "bpm", "keyscale", "timesignature")
    (tmp_path / "prompts.txt").write_text(json.dumps({k: sidecar[k] for k in keys}) + "\n", encoding="utf-8")
    out = tmp_path / "out.flac"
    argv = ["generate", "-c", root, "--model", demo_paths["model_variant"], "--adapter", os.path.join(runs["sampled"], "final")]
    argv += ["--prompts-file", str(tmp_path / "prompts.txt"), "--duration", "1", "--steps", "2", "--compare", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out_1_base.flac'}" in printed and f"wrote {tmp_path / 'out_1.flac'}" in printed
    adapter_sample = first.path.replace(f"step_0{os.sep}", f"step_{STEPS}{os.sep}")
    assert (tmp_path / "out_1_base.flac").read_bytes() == Path(first.path).read_bytes()
    assert (tmp_path / "out_1.flac").read_bytes() == Path(adapter_sample).read_bytes()
    # bad input: one line, exit code 2, nothing written
    assert main([*argv[:-1], str(tmp_path / "bad.wav")]) == 2
    assert main(["generate", "-c", root, "--model", "nope", "--prompt", "x", "-o", str(tmp_path / "n.flac")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: --output") and "available: " + demo_paths["model_variant"] in err[1]
    assert not (tmp_path / "bad.wav").exists() and not (tmp_path / "n.flac").exists()
