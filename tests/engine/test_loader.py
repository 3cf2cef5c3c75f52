"""load_decoder: keeps decoder + null embedding only, frozen, in the asked dtype; every broken folder
fails with one line naming the file and the fix."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from engine.models.loader import (
    ModelLoadError,
    attention_candidates,
    load_decoder,
    resolve_device,
    resolve_dtype,
)

CPU = torch.device("cpu")


@pytest.fixture
def model_copy(demo_paths, tmp_path):
    target = tmp_path / "sidestep-demo-base"
    shutil.copytree(demo_paths["model_dir"], target)
    return target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loads_decoder_and_null_embedding_only(demo_paths, dtype):
    messages = []
    loaded = load_decoder(demo_paths["model_dir"], device=CPU, dtype=dtype, log=messages.append)
    assert type(loaded.decoder).__name__ == "AceStepDiTModel"
    assert not loaded.decoder.training
    assert all(not p.requires_grad and p.dtype == dtype for p in loaded.decoder.parameters())
    assert loaded.null_condition_emb.shape == (1, 1, 128)
    assert loaded.null_condition_emb.dtype == dtype and not loaded.null_condition_emb.requires_grad
    assert loaded.attention_backend == "sdpa" and loaded.dtype == dtype
    assert loaded.model_config["model_type"] == "acestep_demo"
    assert not hasattr(loaded.decoder, "encoder")
    assert any("loaded sidestep-demo-base" in m for m in messages)


def test_eager_backend_is_honoured(demo_paths):
    loaded = load_decoder(demo_paths["model_dir"], device=CPU, dtype=torch.float32, attention_backend="eager")
    assert loaded.attention_backend == "eager" == loaded.decoder.config._attn_implementation


def test_attention_candidates_follow_the_documented_order():
    assert attention_candidates("auto", CPU, torch.float32) == ["sdpa", "eager"]
    assert attention_candidates("auto", CPU, torch.bfloat16) == ["sdpa", "eager"]  # flash only on CUDA
    assert attention_candidates("eager", CPU, torch.float32) == ["eager"]
    with pytest.raises(ModelLoadError, match="bf16 or fp16"):
        attention_candidates("flash_attention_2", CPU, torch.float32)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(tmp_path / "acestep-v15-base", device=CPU, dtype=torch.float32)
    assert "acestep-v15-base does not exist" in _one_line(exc)


def test_missing_config(model_copy):
    os.remove(model_copy / "config.json")
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    assert "config.json is missing" in _one_line(exc)


def test_broken_config(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    assert "config.json is not valid JSON" in _one_line(exc)


def test_missing_weights(model_copy):
    os.remove(model_copy / "model.safetensors")
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    assert "model.safetensors is missing" in _one_line(exc)


def test_truncated_weights(model_copy):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    assert str(path) in _one_line(exc) and "corrupt or truncated" in str(exc.value)


def test_garbage_weights(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    assert "corrupt or truncated" in _one_line(exc)


def test_wrong_shape_tensor(model_copy):
    from safetensors.torch import load_file, save_file

    path = model_copy / "model.safetensors"
    state = load_file(str(path))
    state["decoder.layers.1.self_attn.k_proj.weight"] = torch.zeros(3, 128)
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    line = _one_line(exc)
    assert "model.safetensors" in line and "layers.1.self_attn.k_proj" in line


def test_missing_decoder_tensor(model_copy):
    from safetensors.torch import load_file, save_file

    path = model_copy / "model.safetensors"
    state = load_file(str(path))
    del state["decoder.layers.0.mlp.up_proj.weight"]
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    assert "decoder.layers.0.mlp.up_proj.weight" in _one_line(exc)


def test_missing_remote_code_package(demo_paths, tmp_path):
    # Its own folder name: transformers caches remote code per folder name, shared across processes.
    model_copy = tmp_path / "broken-code-base"
    shutil.copytree(demo_paths["model_dir"], model_copy)
    code = model_copy / "configuration_acestep_demo.py"
    code.write_text("import acestep_not_installed_pkg\n" + code.read_text())
    with pytest.raises(ModelLoadError) as exc:
        load_decoder(model_copy, device=CPU, dtype=torch.float32)
    assert "acestep_not_installed_pkg" in _one_line(exc)


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="not auto, cpu"):
        resolve_device("tpu")
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float16
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("fp8", CPU)


def test_flash_attention_failure_falls_back_to_sdpa(demo_paths, monkeypatch):
    """Where flash-attn looks usable but transformers refuses it, the next backend loads."""
    import engine.models.loader as loader

    monkeypatch.setattr(loader, "_flash_attn_usable", lambda device, dtype: True)
    assert loader.attention_candidates("auto", CPU, torch.bfloat16) == ["flash_attention_2", "sdpa", "eager"]
    messages = []
    loaded = load_decoder(demo_paths["model_dir"], device=CPU, dtype=torch.bfloat16, log=messages.append)
    assert loaded.attention_backend == "sdpa"
    assert any("flash_attention_2 failed" in m for m in messages)


def test_explicit_flash_attention_without_the_package():
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ModelLoadError, match="flash-attn is not installed"):
        attention_candidates("flash_attention_2", CPU, torch.bfloat16)


def test_xl_folder_loads_on_the_same_path_with_every_tensor_placed(demo_paths, tmp_path):
    """An ``acestep-v15-xl-*`` folder goes through discovery and the one loader like any other: the
    alias resolves to it, and every decoder tensor lands on the asked device in the asked dtype with
    the shapes its config.json describes (Side-Step's XL loader left weights on the meta device)."""
    from engine import discovery

    root = tmp_path / "ckpt"
    folder = root / "acestep-v15-xl-turbo"
    shutil.copytree(demo_paths["model_dir"], folder)
    info = discovery.inspect_model_dir(str(folder))
    assert info is not None and info.xl and info.alias == "xl-turbo" and not info.problems
    resolved = discovery.resolve_model_dir(str(root), "xl-turbo")
    assert os.path.samefile(resolved, folder)

    loaded = load_decoder(resolved, device=CPU, dtype=torch.bfloat16)
    tensors = [*loaded.decoder.named_parameters(), *loaded.decoder.named_buffers()]
    assert tensors and all(t.device == CPU and not t.is_meta for _, t in tensors)
    config = loaded.model_config
    layers = loaded.decoder.layers
    assert len(layers) == config["num_hidden_layers"]
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    for layer in layers:
        assert layer.self_attn.q_proj.weight.shape == (heads * head_dim, config["hidden_size"])
        assert layer.self_attn.k_proj.weight.shape == (kv_heads * head_dim, config["hidden_size"])
        assert layer.mlp.down_proj.weight.shape == (config["hidden_size"], config["intermediate_size"])
