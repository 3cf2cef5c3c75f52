"""The one generation path on the tiny demo model, in-process: determinism, the FLAC it writes, the
turbo schedule, adapter scales (0 = the base model bit for bit), and the prompt-file format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import config as cfgmod
from engine.audio import generate as gen
from engine.models import sampling
from engine.models.loader import load_decoder

STEPS = 2
SECONDS = 1.0


@pytest.fixture(scope="module")
def gen_root(demo_audio_root, demo_paths) -> dict[str, str]:
    variant = demo_paths["model_variant"]
    return {"checkpoint_dir": demo_audio_root, "model_variant": variant, "model_dir": os.path.join(demo_audio_root, variant)}


def fresh_decoder(gen_root):
    return load_decoder(gen_root["model_dir"], device=torch.device("cpu"), dtype=torch.float32)


def renderer_for(gen_root, decoder, null_emb) -> gen.Renderer:
    return gen.Renderer.load(
        gen_root["checkpoint_dir"],
        gen_root["model_dir"],
        decoder=decoder,
        null_condition_emb=null_emb,
        settings=sampling.settings_for("base", steps=STEPS, shift=None),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def sharing(renderer: gen.Renderer, decoder) -> gen.Renderer:
    """A renderer for another decoder that reuses ``renderer``'s VAE and encoders (loading them is the slow part)."""
    return gen.Renderer(
        pass1=renderer.pass1,
        pass2=renderer.pass2,
        decoder=decoder,
        null_condition_emb=renderer.null_condition_emb,
        settings=renderer.settings,
        device=renderer.device,
        dtype=renderer.dtype,
    )


@pytest.fixture(scope="module")
def base(gen_root):
    loaded = fresh_decoder(gen_root)
    return renderer_for(gen_root, loaded.decoder, loaded.null_condition_emb)


PROMPT = gen.Prompt("a warm major chord, gentle pad", lyrics="[Verse]\nla la la", duration=SECONDS, seed=7)


def test_same_seed_renders_identical_48k_stereo_flac_of_the_requested_length(base, tmp_path):
    import soundfile as sf

    first = base.render(PROMPT)
    state = torch.get_rng_state()
    again = base.render(PROMPT)
    assert torch.equal(state, torch.get_rng_state())  # no global RNG draw
    other = base.render(gen.Prompt(PROMPT.caption, lyrics=PROMPT.lyrics, duration=SECONDS, seed=8))
    assert np.array_equal(first.audio, again.audio)
    assert not np.array_equal(first.audio, other.audio)
    assert first.audio.dtype == np.float32 and np.isfinite(first.audio).all() and np.abs(first.audio).max() > 0
    path = gen.write_rendered(first, str(tmp_path / "one.flac"))
    gen.write_rendered(again, str(tmp_path / "two.flac"))
    assert Path(path).read_bytes() == (tmp_path / "two.flac").read_bytes()
    info = sf.info(path)
    assert (info.format, info.samplerate, info.channels) == ("FLAC", 48_000, 2)
    assert abs(info.frames - SECONDS * 48_000) <= 1920  # +-1 latent frame
    data, _ = sf.read(path, dtype="float32")
    assert np.abs(data - np.clip(first.audio, -1, 1)).max() < 2**-22  # 24-bit
    sidecar = json.loads((tmp_path / "one.json").read_text())
    assert sidecar["prompt"] == PROMPT.caption and sidecar["lyrics"] == PROMPT.lyrics and sidecar["seed"] == 7
    assert (sidecar["steps"], sidecar["guidance"], sidecar["adapter_scale"]) == (STEPS, 7.0, 1.0)
    assert sidecar["wall_s"] > 0


def test_turbo_schedule_is_the_shift3_eight_step_one():
    from engine.train.recipe import DISCRETE_TIMESTEPS

    turbo = sampling.settings_for("turbo", steps=None, shift=None)
    assert (turbo.steps, turbo.shift, turbo.guided) == (8, 3.0, False)
    t = sampling.schedule(turbo.steps, turbo.shift)
    assert t[:-1].tolist() == pytest.approx(DISCRETE_TIMESTEPS, abs=1e-6) and t[-1] == 0
    assert sampling.settings_for("sft", steps=None, shift=None) == sampling.SamplerSettings(50, 1.0, 7.0)


def test_euler_sampler_follows_the_training_velocity_convention():
    """A decoder that returns the exact velocity noise - x0 of a known x0 must land on x0."""
    x0 = torch.linspace(-1, 1, 10 * 64).reshape(1, 10, 64)
    gen_ = torch.Generator().manual_seed(3)
    noise = torch.randn((1, 10, 64), generator=torch.Generator().manual_seed(3))

    def decoder(**kw):
        return (noise.expand_as(kw["hidden_states"]) - x0, None)

    out = sampling.sample_latents(
        decoder,
        encoder_hidden_states=torch.zeros(1, 3, 8),
        encoder_attention_mask=torch.ones(1, 3, dtype=torch.bool),
        context_latents=torch.zeros(1, 10, 128),
        null_condition_emb=torch.zeros(1, 1, 8),
        settings=sampling.SamplerSettings(steps=4, shift=3.0),
        generator=gen_,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert torch.allclose(out, x0, atol=1e-5)


def _perturbed_lora(decoder):
    """A LoRA whose B factors are not zero (a fresh LoRA is a no-op), seeded without touching the global RNG."""
    from engine.adapters import attach_adapter

    adapter = attach_adapter(
        decoder, cfgmod.parse({"checkpoint_dir": "x", "dataset_dir": "x", "output_dir": "x", "rank": 4, "alpha": 8})
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in adapter.module.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    adapter.module.eval()
    return adapter


def test_adapter_scale_zero_is_the_base_model_exactly_and_scales_change_the_sound(gen_root, base, tmp_path):
    reference = base.render(PROMPT).audio
    loaded = fresh_decoder(gen_root)
    adapter = _perturbed_lora(loaded.decoder)
    with_adapter = sharing(base, adapter.module)
    off = with_adapter.render(PROMPT, scale=0.0).audio
    full = with_adapter.render(PROMPT, scale=1.0).audio
    half = with_adapter.render(PROMPT, scale=0.5).audio
    assert np.abs(off - reference).max() == 0
    assert np.abs(full - reference).max() > 1e-4
    assert np.abs(half - full).max() > 1e-5 and np.abs(half - reference).max() > 1e-5
    assert np.array_equal(with_adapter.render(PROMPT).audio, full)  # the scale was restored
    # saved and loaded again through the generate path: the same sound
    adapter.save(tmp_path / "adapter")
    (tmp_path / "adapter" / "config.json").write_text(
        cfgmod.to_json(cfgmod.parse({"checkpoint_dir": "x", "dataset_dir": "x", "output_dir": "x", "rank": 4, "alpha": 8}))
    )
    reloaded = gen.load_adapter(fresh_decoder(gen_root).decoder, str(tmp_path / "adapter"))
    assert np.array_equal(sharing(base, reloaded).render(PROMPT).audio, full)


def test_prompts_file_plain_and_json_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('# a comment\nwarm pad\n\n{"prompt": "drums", "lyrics": "oh", "duration": 2, "seed": 5}\n', encoding="utf-8")
    prompts = gen.read_prompts_file(str(path), duration=3.0, seed=1)
    assert [(p.caption, p.lyrics, p.duration, p.seed) for p in prompts] == [
        ("warm pad", "[Instrumental]", 3.0, 1),
        ("drums", "oh", 2.0, 5),
    ]
    path.write_text('{"prompt": "x", "tempo": 3}\n', encoding="utf-8")
    with pytest.raises(gen.GenerateError, match=r"line 1.*tempo"):
        gen.read_prompts_file(str(path), duration=3.0, seed=1)
    path.write_text('{"prompt": "x", "duration": -1}\n', encoding="utf-8")
    with pytest.raises(gen.GenerateError, match="line 1: duration -1"):
        gen.read_prompts_file(str(path), duration=3.0, seed=1)
