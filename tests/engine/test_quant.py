"""A quantised frozen base (``--base-quantization int8|nf4``, engine/models/quant.py): trained on the
CPU where this bitsandbytes has the kernels (>= 0.46 has a CPU backend for both), the saved adapter
loaded into the unquantised demo model; a one-line refusal where it cannot run."""

from __future__ import annotations

import math
import os
import re
import sys

import pytest
import torch

from engine import config as cfgmod
from engine import protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.train.trainer import Trainer


def train(values: dict) -> tuple[list, object]:
    events: list = []
    bus = EventBus([CallbackSink(events.append)])
    final = Trainer(cfgmod.parse(values), bus, CommandInbox(None), run_id="quant", metrics_hz=math.inf).fit()
    return events, final


def _cpu_kernels(kind: str) -> bool:
    from engine.models.quant import QuantizationError, check_available

    try:
        check_available(kind, torch.device("cpu"))
    except QuantizationError:
        return False
    return True


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantised_lora_trains_and_loads_into_the_unquantised_model(kind, demo_config_values, demo_paths):
    if not _cpu_kernels(kind):
        pytest.skip(f"this bitsandbytes has no CPU {kind} kernels (the gpu-marked test below covers it)")
    values = dict(demo_config_values, max_steps=2, max_latent_length=32, gradient_checkpointing=False, use_dora=kind == "nf4")
    _quantised_run_loads_unquantised(kind, values, demo_paths)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantised_lora_on_cuda_loads_into_the_unquantised_model(kind, demo_config_values, demo_paths):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _quantised_run_loads_unquantised(kind, dict(demo_config_values, max_steps=2, device="cuda", precision="bf16"), demo_paths)


def _quantised_run_loads_unquantised(kind: str, values: dict, demo_paths: dict) -> None:
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    from engine.models.loader import load_decoder

    events, final = train(dict(values, base_quantization=kind))
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "traceback", final)
    logs = [e.message for e in events if isinstance(e, protocol.LogRecord)]
    line = next((m for m in logs if f"base quantised to {kind}" in m), None)
    assert line is not None, logs
    found = re.search(r"(\d+) Linear layers, decoder weights ([\d.]+) MiB instead of ([\d.]+) MiB", line)
    assert found, line
    layers, held, plain = int(found[1]), float(found[2]), float(found[3])
    assert layers == 44 and held < 0.6 * plain, line  # every Linear of the 4 layers, really smaller on the device
    started = next(e for e in events if isinstance(e, protocol.RunStarted))
    final_dir = os.path.join(values["output_dir"], "final")
    saved = load_file(os.path.join(final_dir, "adapter_model.safetensors"))

    # Into the unquantised (fp32) demo model: every saved key lands on a LoRA tensor, every LoRA tensor is loaded.
    model_dir = os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"])
    loaded = load_decoder(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    assert started.total_params == sum(p.numel() for p in loaded.decoder.parameters())  # counted as unquantised
    model = PeftModel.from_pretrained(loaded.decoder, final_dir)
    live = get_peft_model_state_dict(model)  # the loaded adapter, named as in the file
    assert set(live) == set(saved), sorted(set(live) ^ set(saved))[:4]
    assert len(live) == sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    for name, tensor in saved.items():
        assert torch.equal(live[name].detach().cpu(), tensor.float()), name
    assert not [m for m in logs if "no ComfyUI file" in m]  # the export read the quantised base's real values
    trained_b = [t for n, t in saved.items() if "lora_B" in n]
    assert trained_b and any(t.abs().max() > 0 for t in trained_b), "lora_B is still zero: the adapter never trained"


def test_quantisation_is_refused_in_one_line_before_the_model_loads(demo_config_values, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # bitsandbytes not installed: `import` raises ImportError
    events, final = train(dict(demo_config_values, max_steps=2, base_quantization="nf4"))
    assert isinstance(final, protocol.RunFailed), final
    assert "\n" not in final.message and "bitsandbytes" in final.message and "--base-quantization none" in final.message
    phases = [e.phase for e in events if isinstance(e, protocol.PhaseChanged)]
    assert "loading_model" not in phases, phases  # before anything loads, and no fallback to an unquantised run
    assert not any(isinstance(e, protocol.StepMetrics) for e in events)


def test_quantised_lokr_runs_beside_the_base():
    """LoKR on an int8 base: the adapter term (fp32, beside the quantised kernel) equals the same
    adapter's term on the unquantised base, up to the base's own quantisation error."""
    from engine.adapters import attach_adapter
    from engine.models.demo.acestep_demo_modeling import AceStepConditionGenerationModel
    from engine.models.demo.build import demo_config
    from engine.models.quant import quantize_decoder

    if not _cpu_kernels("int8"):
        pytest.skip("this bitsandbytes has no CPU int8 kernels")
    config = demo_config("tiny")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    state = AceStepConditionGenerationModel(config).decoder.state_dict()
    values = {"checkpoint_dir": "x", "dataset_dir": "x", "output_dir": "x", "adapter_type": "lokr", "lokr_linear_dim": 4}
    hidden, acoustic = config.hidden_size, config.audio_acoustic_hidden_dim
    torch.manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 16, acoustic),
        timestep=torch.rand(1),
        timestep_r=torch.rand(1),
        attention_mask=torch.ones(1, 16),
        encoder_hidden_states=torch.randn(1, 8, hidden),
        encoder_attention_mask=torch.ones(1, 8),
        context_latents=torch.randn(1, 16, config.in_channels - acoustic),
    )
    deltas, notes = [], []
    for kind in ("none", "int8"):
        decoder = AceStepConditionGenerationModel(config).decoder.eval()
        decoder.load_state_dict(state)
        if kind != "none":
            quantize_decoder(decoder, kind, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            plain = decoder(**inputs)[0]
        adapter = attach_adapter(decoder, cfgmod.parse(dict(values, base_quantization=kind)))
        torch.manual_seed(2)
        with torch.no_grad():
            for p in adapter.parameters():
                p.copy_(torch.randn_like(p) * 0.05)
            deltas.append(adapter.module(**inputs)[0] - plain)
        notes.append(adapter.precision_note)
    assert "beside the int8 base" in notes[1], notes
    scale = deltas[0].abs().max()
    assert scale > 1e-3, "the adapter changes nothing: the comparison would be empty"
    assert (deltas[1] - deltas[0]).abs().max() < 0.1 * scale


def test_config_refuses_what_a_quantised_base_cannot_do():
    base = {"checkpoint_dir": "x", "dataset_dir": "x", "output_dir": "x", "base_quantization": "int8"}
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.parse(dict(base, adapter_type="lokr", lokr_weight_decompose=True))
    assert "base_quantization" in err.value.by_field()
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.parse(dict(base, adapter_type="loha", lycoris_bypass="off"))
    assert "loha" in err.value.by_field()["base_quantization"]
    with pytest.raises(cfgmod.ConfigError):
        cfgmod.parse(dict(base, base_quantization="int4"))
    assert cfgmod.parse(dict(base, adapter_type="oft")).base_quantization == "int8"
    assert cfgmod.base_weight_bytes("none", "bf16") == 2.0 and cfgmod.base_weight_bytes("none", "fp32") == 4.0
    assert cfgmod.base_weight_bytes("int8") == 1.0
    assert 0.5 < cfgmod.base_weight_bytes("nf4") < 0.52


def test_models_screen_reports_what_each_quantisation_saves(demo_paths):
    from torch import nn

    from engine import discovery
    from engine.models.demo.acestep_demo_modeling import AceStepConditionGenerationModel
    from engine.models.demo.build import demo_config
    from sidestep_tui.formatting import human_size, model_detail

    info = discovery.inspect_model_dir(os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"]))
    assert info is not None
    decoder = AceStepConditionGenerationModel(demo_config("tiny")).decoder
    linear = sum(m.weight.numel() for m in decoder.layers.modules() if isinstance(m, nn.Linear))
    assert info.quantizable_params == linear  # what quantize_decoder replaces, counted from config.json alone
    full = cfgmod.quantizable_params(demo_config("full").to_dict())
    assert full is not None and 1.4e9 < full < 1.6e9  # most of the 2B decoder
    detail = model_detail(info)
    assert f"int8 saves {human_size(linear * 1.0)}" in detail  # bf16 (2 bytes) -> int8 (1 byte)
    assert f"nf4 {human_size(linear * (2 - cfgmod.base_weight_bytes('nf4')))}" in detail
