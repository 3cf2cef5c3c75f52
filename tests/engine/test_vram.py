"""The VRAM estimate (engine/vram.py) against what the model really keeps (engine/analysis/memcount.py).

Calibration: the demo decoder at the full 2B width (hidden 2048, MLP 6144, 16/8 heads) but 2 of its 24
layers (one sliding-window, one full-attention; ratio 0.5 checkpoints the first, 1.0 both)
is built on the meta device with the default LoRA (rank 64, q/k/v/o of both attentions + MLP, dropout
0.1); one forward + loss runs under saved-tensor hooks. The estimator, given the same 4-layer shape,
must land within 15 % of that byte count. Every term of the estimate is per layer, so the 24-layer
figure is the same sum over more layers (``python benchmarks/vram.py`` runs the full depth).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import vram
from engine.analysis import memcount
from engine.config import TrainConfig

LAYERS = 2
FRAMES = (750, 1500, 3000)  # 30 s, 60 s, 120 s crops at 25 latent frames per second


@pytest.fixture(scope="module", params=[0.5, 1.0], ids=["ratio0.5", "ratio1.0"])
def meta_model(request: pytest.FixtureRequest) -> tuple[TrainConfig, memcount.MetaDecoder]:
    config = TrainConfig(gradient_checkpointing=True, gradient_checkpointing_ratio=request.param)
    return config, memcount.build(config, layers=LAYERS)


def _shape() -> vram.ModelShape:
    return dataclasses.replace(vram.ModelShape(), layers=LAYERS, sliding_layers=LAYERS // 2)


def test_activation_estimate_is_within_15_percent_of_the_saved_bytes(
    meta_model: tuple[TrainConfig, memcount.MetaDecoder],
) -> None:
    config, model = meta_model
    assert model.checkpointed == (LAYERS if config.gradient_checkpointing_ratio == 1.0 else LAYERS // 2)
    for frames in FRAMES:
        counted = memcount.count_saved_bytes(model, frames=frames)
        estimated = vram.activation_bytes(_shape(), config, frames)
        assert counted > 0
        assert abs(estimated / counted - 1) <= 0.15, (frames, config.gradient_checkpointing_ratio, estimated, counted)


@pytest.mark.parametrize(
    "fields",
    [
        dict(use_dora=True),
        dict(adapter_type="lokr"),  # Side-Step's LoKR defaults: w2 a full matrix
        dict(adapter_type="lokr", lokr_linear_dim=8, lokr_factor=8),  # w2 low-rank
        dict(adapter_type="loha"),
        dict(adapter_type="oft"),
    ],
    ids=["dora", "lokr", "lokr-lowrank", "loha", "oft"],
)
def test_every_adapter_kind_is_within_15_percent_without_checkpointing(fields: dict) -> None:
    """Without checkpointing every layer keeps its adapter's tensors, so each kind's own term shows:
    the LyCORIS fp32 bypass and PEFT's DoRA keep far more than LoRA (DoRA's was 0.22x before it was
    counted, LoKR's 3.9x)."""
    config = TrainConfig(gradient_checkpointing=False, **fields)
    model = memcount.build(config, layers=LAYERS)
    for frames in (750, 3000):
        counted = memcount.count_saved_bytes(model, frames=frames)
        estimated = vram.activation_bytes(_shape(), config, frames)
        assert abs(estimated / counted - 1) <= 0.15, (fields, frames, estimated, counted)


def test_parameter_counts_match_the_built_model(meta_model: tuple[TrainConfig, memcount.MetaDecoder]) -> None:
    config, model = meta_model
    shape = _shape()
    decoder_params = sum(p.numel() for p in model.bare.parameters() if not p.requires_grad)  # PEFT's LoRA lives inside
    assert shape.params()[0] == decoder_params + shape.hidden  # + the CFG null embedding kept beside the decoder
    trainable = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
    assert vram.adapter_params(shape, config) == trainable


def test_adamw_state_matches_torch() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    params = sum(p.numel() for p in module.parameters())
    assert vram.optimizer_bytes("adamw", params) == state
    assert vram.optimizer_bytes("adamw8bit", params) < state / 3


def test_an_oversized_config_gets_the_one_change_that_makes_it_fit() -> None:
    shape = vram.ModelShape()  # the shipped 2B decoder
    big = TrainConfig(gradient_checkpointing=False, batch_size=4, chunk_duration=120)
    free = 24 * vram.GIB
    before = vram.estimate(shape, big).total
    assert before > free
    line = vram.fit_line(shape, big, free)
    assert line is not None and line.startswith("turn gradient checkpointing on: "), line
    after = vram.estimate(shape, dataclasses.replace(big, gradient_checkpointing=True)).total
    assert line == f"turn gradient checkpointing on: {vram.gib(before)} -> {vram.gib(after)}"
    assert after <= free
    assert vram.fit_line(shape, dataclasses.replace(big, gradient_checkpointing=True), free) is None
    # Nothing single fits a tiny card: the line says so and names the largest saving.
    assert vram.fit_line(shape, big, 2 * vram.GIB).startswith("no single change fits")  # type: ignore[union-attr]


def test_the_estimate_follows_the_fields() -> None:
    shape, base = vram.ModelShape(), TrainConfig(chunk_duration=60)
    total = vram.estimate(shape, base).total

    def more(**changes: Any) -> bool:
        return vram.estimate(shape, dataclasses.replace(base, **changes)).total > total

    assert more(batch_size=2) and more(chunk_duration=120) and more(rank=128) and more(gradient_checkpointing=False)
    assert more(gradient_checkpointing_ratio=0.5) and more(attention_backend="eager") and more(precision="fp32")
    assert (
        not more(optimizer_type="adamw8bit")
        and vram.estimate(shape, base, quantization="nf4").weights < vram.estimate(shape, base).weights
    )


def test_train_estimate_only_prints_the_breakdown_and_exits_1_when_it_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine import discovery
    from engine.cli.main import main

    model = tmp_path / "ckpt" / "acestep-v15-base"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "acestep", "hidden_size": 1024, "num_hidden_layers": 8}))
    monkeypatch.setattr(discovery, "gpus", lambda: [discovery.GpuInfo(0, "NVIDIA RTX 3060", 512.0, 12288.0)])
    argv = ["train", "-c", str(tmp_path / "ckpt"), "--estimate-only", "--chunk-duration", "60"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(8 layers, hidden 1024)" in out and "GPU 0 NVIDIA RTX 3060: 11.5 GiB free of 12.0 GiB: fits" in out
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == [tmp_path / "ckpt"]  # nothing written
    assert main([*argv, "--no-gradient-checkpointing", "-b", "16", "--chunk-duration", "240"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "to fit in 11.5 GiB: turn gradient checkpointing on: " in out
