"""The demo model matches the ACE-Step 1.5 decoder's tree, names, shapes and forward contract
(ACE_STEP.md §3, §13), loads through AutoModel + trust_remote_code, and the demo dataset has the
exact §4.1 format."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from engine.models.demo import acestep_demo_modeling as mod
from engine.models.demo import build as demo


def _inputs(config, batch: int, frames: int, length: int = 12, dtype=torch.float32):
    g = torch.Generator().manual_seed(frames)
    t = torch.rand(batch, generator=g).to(dtype)
    return dict(
        hidden_states=torch.randn(batch, frames, 64, generator=g).to(dtype),
        timestep=t,
        timestep_r=t,
        attention_mask=torch.ones(batch, frames, dtype=dtype),
        encoder_hidden_states=torch.randn(batch, length, config.hidden_size, generator=g).to(dtype),
        encoder_attention_mask=torch.ones(batch, length, dtype=dtype),
        context_latents=torch.randn(batch, frames, 128, generator=g).to(dtype),
    )


@pytest.fixture(scope="module")
def decoder(tiny_config):
    torch.manual_seed(0)
    return mod.AceStepDiTModel(tiny_config).eval()


# --------------------------------------------------------------------------- structure


def test_remote_code_is_standalone():
    """Copied into checkpoint folders: only torch, transformers, the stdlib and each other."""
    from engine.models.demo import configuration_acestep_demo as config_mod

    for module in (mod, config_mod):
        tree = ast.parse(Path(module.__file__).read_text())
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level:
                assert node.module == "configuration_acestep_demo", "the only relative import"
            elif isinstance(node, ast.ImportFrom):
                roots.add(node.module.split(".")[0])
        assert roots - {"torch", "transformers"} <= sys.stdlib_module_names, roots


def test_decoder_names_and_counts_match_ace_step(decoder, tiny_config):
    H, n = tiny_config.hidden_size, tiny_config.num_hidden_layers
    q_out = tiny_config.num_attention_heads * tiny_config.head_dim
    kv_out = tiny_config.num_key_value_heads * tiny_config.head_dim
    inter, hd = tiny_config.intermediate_size, tiny_config.head_dim
    expected = {
        "proj_in.1.weight": (H, 192, 2),
        "proj_in.1.bias": (H,),
        "condition_embedder.weight": (H, H),
        "condition_embedder.bias": (H,),
        "norm_out.weight": (H,),
        "scale_shift_table": (1, 2, H),
        "proj_out.1.weight": (H, 64, 2),
        "proj_out.1.bias": (64,),
    }
    for te in ("time_embed", "time_embed_r"):
        expected |= {
            f"{te}.linear_1.weight": (H, 256),
            f"{te}.linear_1.bias": (H,),
            f"{te}.linear_2.weight": (H, H),
            f"{te}.linear_2.bias": (H,),
            f"{te}.time_proj.weight": (6 * H, H),
            f"{te}.time_proj.bias": (6 * H,),
        }
    for i in range(n):
        p = f"layers.{i}"
        expected |= {
            f"{p}.scale_shift_table": (1, 6, H),
            f"{p}.self_attn_norm.weight": (H,),
            f"{p}.cross_attn_norm.weight": (H,),
            f"{p}.mlp_norm.weight": (H,),
            f"{p}.mlp.gate_proj.weight": (inter, H),
            f"{p}.mlp.up_proj.weight": (inter, H),
            f"{p}.mlp.down_proj.weight": (H, inter),
        }
        for a in ("self_attn", "cross_attn"):
            expected |= {
                f"{p}.{a}.q_proj.weight": (q_out, H),
                f"{p}.{a}.k_proj.weight": (kv_out, H),
                f"{p}.{a}.v_proj.weight": (kv_out, H),
                f"{p}.{a}.o_proj.weight": (H, q_out),
                f"{p}.{a}.q_norm.weight": (hd,),
                f"{p}.{a}.k_norm.weight": (hd,),
            }
    state = decoder.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert "rotary_emb.inv_freq" not in state and "rotary_emb.inv_freq" in dict(decoder.named_buffers())

    linear = [name for name, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)]

    def count(pattern: str) -> int:
        return sum(1 for name in linear if re.fullmatch(pattern, name))

    assert count(r"layers\.\d+\.self_attn\.[qkvo]_proj") == 4 * n
    assert count(r"layers\.\d+\.cross_attn\.[qkvo]_proj") == 4 * n
    assert count(r"layers\.\d+\.mlp\.(gate|up|down)_proj") == 3 * n
    assert isinstance(decoder.proj_in[1], torch.nn.Conv1d) and isinstance(decoder.proj_out[1], torch.nn.ConvTranspose1d)
    assert all(isinstance(layer, mod.GradientCheckpointingLayer) for layer in decoder.layers)
    assert [layer.self_attn.sliding_window for layer in decoder.layers] == [16, None, 16, None]
    assert all(layer.cross_attn.sliding_window is None for layer in decoder.layers)


def test_full_size_decoder_is_the_real_2b_shape():
    """The default config is the shipped 2B model; built on the meta device (no memory)."""
    config = demo.demo_config("full")
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        decoder = mod.AceStepDiTModel(config)
        encoder = mod.AceStepConditionEncoder(config)
    total = sum(p.numel() for p in decoder.parameters())
    assert abs(total - 1.58e9) / 1.58e9 < 0.01, total
    assert abs(sum(p.numel() for p in encoder.parameters()) - 0.61e9) / 0.61e9 < 0.02
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert shapes["layers.23.self_attn.q_proj.weight"] == (2048, 2048)
    assert shapes["layers.23.cross_attn.k_proj.weight"] == (1024, 2048)
    assert shapes["layers.0.mlp.gate_proj.weight"] == (6144, 2048)
    assert shapes["time_embed.time_proj.weight"] == (12288, 2048)
    assert shapes["proj_in.1.weight"] == (2048, 192, 2)
    assert shapes["proj_out.1.weight"] == (2048, 64, 2)
    assert len(decoder.layers) == 24 and config.sliding_window == 128


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("frames", [1, 2, 75, 101])
def test_forward_shapes_any_length(decoder, tiny_config, frames):
    with torch.no_grad():
        out = decoder(**_inputs(tiny_config, 2, frames))
    assert isinstance(out, tuple) and len(out) == 2 and out[1] is None
    assert out[0].shape == (2, frames, 64) and torch.isfinite(out[0]).all()


def test_masks_are_ignored_like_the_real_model(decoder, tiny_config):
    inputs = _inputs(tiny_config, 2, 40)
    with torch.no_grad():
        base = decoder(**inputs)[0]
        inputs["attention_mask"] = torch.zeros_like(inputs["attention_mask"])
        inputs["encoder_attention_mask"] = torch.zeros_like(inputs["encoder_attention_mask"])
        masked = decoder(**inputs)[0]
    assert torch.equal(base, masked)


def test_sdpa_and_eager_agree(decoder, tiny_config):
    inputs = _inputs(tiny_config, 2, 90)  # 45 tokens > window 16: the sliding mask matters
    with torch.no_grad():
        sdpa = decoder(**inputs)[0]
        decoder.config._attn_implementation = "eager"
        try:
            eager = decoder(**inputs)[0]
        finally:
            decoder.config._attn_implementation = "sdpa"
    torch.testing.assert_close(sdpa, eager, rtol=1e-4, atol=1e-5)


def test_sliding_window_limits_self_attention(tiny_config):
    """A layer-0 (sliding) output token cannot see a token farther than the window; a full layer can."""
    mask = mod.additive_window_mask(40, 16, torch.float32, torch.device("cpu"))
    assert mask.shape == (1, 1, 40, 40)
    assert mask[0, 0, 0, 16] == 0 and mask[0, 0, 0, 17] < -1e30 and mask[0, 0, 39, 23] == 0
    assert mod.additive_window_mask(40, None, torch.float32, torch.device("cpu")) is None


def test_bf16_forward_needs_inputs_in_model_dtype(tiny_config):
    torch.manual_seed(0)
    decoder = mod.AceStepDiTModel(tiny_config).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = decoder(**_inputs(tiny_config, 1, 33, dtype=torch.bfloat16))[0]
    assert out.dtype == torch.bfloat16 and out.shape == (1, 33, 64)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    from engine.models.loader import enable_gradient_checkpointing

    inputs = _inputs(tiny_config, 2, 30)
    grads = []
    for ratio in (0.0, 1.0, 0.5):
        torch.manual_seed(0)
        decoder = mod.AceStepDiTModel(tiny_config).train()
        assert enable_gradient_checkpointing(decoder, ratio) == {0.0: 0, 1.0: 4, 0.5: 2}[ratio]
        decoder(**inputs)[0].square().mean().backward()
        grads.append(decoder.layers[1].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_condition_encoder_packs_valid_tokens_first(tiny_config):
    torch.manual_seed(0)
    encoder = mod.AceStepConditionEncoder(tiny_config).eval()
    text, lyrics, refer = torch.randn(1, 8, 1024), torch.randn(1, 10, 1024), torch.randn(1, 6, 64)
    text_mask = torch.tensor([[1] * 5 + [0] * 3])
    lyric_mask = torch.tensor([[1] * 4 + [0] * 6])
    with torch.no_grad():
        states, mask = encoder(text, text_mask, lyrics, lyric_mask, refer, torch.tensor([0]))
        lyric_out = encoder.lyric_encoder(lyrics, lyric_mask)
        timbre_out, _ = encoder.timbre_encoder(refer, torch.tensor([0]))
        text_out = encoder.text_projector(text)
    assert states.shape == (1, 10 + 1 + 8, tiny_config.hidden_size)
    assert mask.dtype == torch.bool and mask.tolist() == [[True] * 10 + [False] * 9]
    # the valid block is lyrics, then timbre, then text (§5.5), each in its own order
    torch.testing.assert_close(states[0, :4], lyric_out[0, :4])
    torch.testing.assert_close(states[0, 4], timbre_out[0, 0])
    torch.testing.assert_close(states[0, 5:10], text_out[0, :5])


def test_pack_sequences_is_stable():
    a = torch.arange(3.0).view(1, 3, 1)
    b = torch.arange(10.0, 12.0).view(1, 2, 1)
    packed, mask = mod.pack_sequences(a, b, torch.tensor([[1, 0, 1]]), torch.tensor([[0, 1]]))
    assert packed.flatten().tolist() == [0.0, 2.0, 11.0, 1.0, 10.0]
    assert mask.tolist() == [[True, True, True, False, False]]


# --------------------------------------------------------------------------- checkpoint folder


def test_checkpoint_folder_loads_through_automodel(demo_paths):
    from safetensors.torch import load_file
    from transformers import AutoModel

    model_dir = demo_paths["model_dir"]
    config = json.loads(Path(model_dir, "config.json").read_text())
    assert config["model_type"] == "acestep_demo" and config["is_turbo"] is False
    assert config["auto_map"]["AutoModel"] == "acestep_demo_modeling.AceStepConditionGenerationModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_acestep_demo.AceStepDemoConfig"
    assert {"acestep_demo_modeling.py", "configuration_acestep_demo.py"} <= set(os.listdir(model_dir))
    assert os.path.basename(model_dir) == "sidestep-demo-base"

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, attn_implementation="eager")
    assert type(model).__name__ == "AceStepConditionGenerationModel"
    assert type(model.decoder).__name__ == "AceStepDiTModel"
    assert model.null_condition_emb.shape == (1, 1, config["hidden_size"])
    on_disk = load_file(os.path.join(model_dir, "model.safetensors"))
    assert {k.split(".")[0] for k in on_disk} == {"decoder", "encoder", "null_condition_emb"}
    live = model.state_dict()
    assert set(on_disk) == set(live)
    assert all(torch.equal(on_disk[k], live[k]) for k in on_disk), "weights must load, not re-initialise"

    silence = torch.load(os.path.join(demo_paths["checkpoint_dir"], "silence_latent.pt"), weights_only=True)
    assert silence.shape == (1, 64, demo.SILENCE_FRAMES)


def test_setup_demo_is_idempotent_and_repairs(tmp_path):
    first = demo.setup_demo(tmp_path, n_samples=3)
    weights = os.path.join(first["checkpoint_dir"], first["model_variant"], "model.safetensors")
    manifest = os.path.join(first["dataset_dir"], "manifest.json")
    stamps = os.stat(weights).st_mtime_ns, os.stat(manifest).st_mtime_ns
    assert demo.setup_demo(tmp_path, n_samples=3) == first
    assert (os.stat(weights).st_mtime_ns, os.stat(manifest).st_mtime_ns) == stamps
    os.remove(os.path.join(first["dataset_dir"], "demo_001.pt"))
    demo.setup_demo(tmp_path, n_samples=3)
    assert os.path.isfile(os.path.join(first["dataset_dir"], "demo_001.pt"))
    assert not [p for p in os.listdir(first["checkpoint_dir"]) if "__writing__" in p]


# --------------------------------------------------------------------------- dataset


def test_dataset_files_have_the_exact_training_format(demo_paths):
    manifest = json.loads(Path(demo_paths["dataset_dir"], "manifest.json").read_text())
    assert manifest["num_samples"] == len(manifest["samples"]) == 16
    assert set(manifest["metadata"]) >= {
        "name",
        "custom_tag",
        "tag_position",
        "created_at",
        "num_samples",
        "all_instrumental",
        "genre_ratio",
    }
    frames_seen = set()
    for name, info in zip(manifest["samples"], manifest["sample_info"], strict=True):
        sample = torch.load(os.path.join(demo_paths["dataset_dir"], name), weights_only=True)
        assert set(sample) == {
            "target_latents",
            "attention_mask",
            "encoder_hidden_states",
            "encoder_attention_mask",
            "context_latents",
            "metadata",
        }
        T = sample["target_latents"].shape[0]
        L = sample["encoder_hidden_states"].shape[0]
        assert sample["target_latents"].shape == (T, 64) and sample["target_latents"].dtype == torch.bfloat16
        assert sample["attention_mask"].shape == (T,) and sample["attention_mask"].dtype == torch.bfloat16
        assert sample["encoder_hidden_states"].shape == (L, 128) and sample["encoder_hidden_states"].dtype == torch.bfloat16
        assert sample["encoder_attention_mask"].shape == (L,) and sample["encoder_attention_mask"].dtype == torch.bool
        assert sample["context_latents"].shape == (T, 128) and sample["context_latents"].dtype == torch.bfloat16
        assert torch.all(sample["context_latents"][:, 64:] == 1)
        valid = int(sample["encoder_attention_mask"].sum())
        assert sample["encoder_attention_mask"][:valid].all(), "packed: valid tokens first"
        meta = sample["metadata"]
        assert T == meta["duration"] * 25 == info["frames"] and info["shapes"]["target_latents"] == [T, 64]
        assert {
            "audio_path",
            "filename",
            "caption",
            "lyrics",
            "duration",
            "bpm",
            "keyscale",
            "timesignature",
            "genre",
            "is_instrumental",
            "custom_tag",
            "prompt_override",
            "repeat",
        } <= set(meta)
        frames_seen.add(T)
    assert len(frames_seen) >= 3, "lengths must vary to exercise bucketing"


DATASET_SAMPLE_KEYS = {  # ACE_STEP.md §5.8
    "id", "audio_path", "filename", "caption", "genre", "lyrics", "raw_lyrics", "formatted_lyrics", "bpm", "keyscale",
    "timesignature", "duration", "language", "is_instrumental", "custom_tag", "labeled", "prompt_override", "repeat",
}  # fmt: skip


def test_dataset_folder_has_dataset_json_and_preprocess_meta_like_a_real_one(demo_paths):
    """Beside the tensors: the dataset.json they would have come from (one entry per tensor, with its
    metadata) and preprocess_meta.json naming the model, so the Dataset screen reads the model."""
    from engine import ptinspect

    folder = Path(demo_paths["dataset_dir"])
    doc = json.loads((folder / "dataset.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(doc["metadata"]) == {
        "name",
        "custom_tag",
        "tag_position",
        "created_at",
        "num_samples",
        "all_instrumental",
        "genre_ratio",
    }
    assert doc["metadata"]["num_samples"] == len(doc["samples"]) == manifest["num_samples"]
    for entry, name in zip(doc["samples"], manifest["samples"], strict=True):
        assert set(entry) == DATASET_SAMPLE_KEYS
        meta = torch.load(folder / name, weights_only=True)["metadata"]
        assert Path(entry["filename"]).stem == Path(name).stem and entry["filename"] == meta["filename"]
        for key in ("caption", "genre", "lyrics", "bpm", "keyscale", "timesignature", "duration", "is_instrumental"):
            assert entry[key] == meta[key], key
    report = ptinspect.scan_dataset(str(folder))
    assert report.ok and report.variant == demo_paths["model_variant"]


def test_setup_demo_from_two_writers_at_once(tmp_path, demo_paths):
    """The UI and an engine may set the demo up together: one writes, the other reuses."""
    import threading

    results, errors = [], []

    def run():
        try:
            results.append(demo.setup_demo(tmp_path, n_samples=4))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results[0] == results[1]
    assert sorted(os.listdir(results[0]["dataset_dir"])) == [
        "dataset.json",
        "demo_000.pt",
        "demo_001.pt",
        "demo_002.pt",
        "demo_003.pt",
        "manifest.json",
        "preprocess_meta.json",
    ]
    assert sorted(os.listdir(results[0]["checkpoint_dir"])) == ["sidestep-demo-base", "silence_latent.pt"]


def test_the_song_demo_goes_audio_to_dataset_json_to_tensors(demo_paths, tmp_path):
    """What `sidestep demo` (the README's main job) does before training: songs -> dataset.json beside
    them (the file a user edits next) -> tensors in the current conditioning format. The session's demo
    model is copied in first, so only the audio half runs here."""
    from engine import ptinspect
    from engine.cli.main import setup_demo

    shutil.copytree(demo_paths["checkpoint_dir"], tmp_path / "checkpoints")
    paths = setup_demo(str(tmp_path), audio=True)
    meta = json.loads((Path(paths["dataset_dir"]) / "preprocess_meta.json").read_text())
    assert meta["dataset_json"] == str(Path(paths["audio_dir"], "dataset.json")) and Path(meta["dataset_json"]).is_file()
    report = ptinspect.scan_dataset(paths["dataset_dir"])
    assert report.samples > 0 and not report.problems, report.problems
    assert ptinspect.format_warnings(paths["dataset_dir"], paths["model_variant"]) == []  # inference format, this model


@pytest.mark.integration  # forks the model writer
def test_the_demo_model_written_in_a_forked_child_is_the_same_bytes(demo_paths, tmp_path, monkeypatch):
    """`sidestep demo` builds the model in a child while it encodes the songs: the same file as a build
    in this process, and a child that fails is one RuntimeError line with its reason."""
    monkeypatch.setattr(demo, "_STATE_CACHE", {})  # the session's cached weights would skip the build (and the fork)
    job = demo.start_demo_checkpoint(tmp_path / "demo")
    model_dir = Path(job.wait())
    reference = Path(demo_paths["checkpoint_dir"], demo.DEMO_FOLDER)
    assert (model_dir / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert sorted(os.listdir(model_dir.parent)) == ["sidestep-demo-base", "silence_latent.pt"]

    (tmp_path / "a-file").write_text("not a folder")
    job = demo.start_demo_checkpoint(tmp_path / "a-file")
    with pytest.raises(RuntimeError, match=r"writing the demo model .* failed: FileExistsError: .*a-file") as error:
        job.wait()
    assert "\n" not in str(error.value)
