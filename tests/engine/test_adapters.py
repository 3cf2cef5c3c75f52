"""Both adapter kinds through the real libraries (PEFT, LyCORIS) on the tiny demo decoder: targets,
dtypes, state round trips, inference-ready files that the consumers' own loaders accept, and
one-line errors for files that do not fit."""

from __future__ import annotations

import json
import os

import pytest
import torch

from engine import config as cfgmod
from engine.adapters import AdapterLoadError, AdapterMismatchError, attach_adapter
from engine.models.loader import load_decoder

CPU = torch.device("cpu")
LAYERS = 4  # the tiny demo


def make_config(**overrides) -> cfgmod.TrainConfig:
    return cfgmod.parse({"checkpoint_dir": "ckpt", "dataset_dir": "data", "output_dir": "out", **overrides})


def fresh_decoder(demo_paths, dtype=torch.float32):
    return load_decoder(demo_paths["model_dir"], device=CPU, dtype=dtype).decoder


def inputs(dtype=torch.float32, frames=30):
    g = torch.Generator().manual_seed(7)
    t = torch.rand(2, generator=g).to(dtype)
    return dict(
        hidden_states=torch.randn(2, frames, 64, generator=g).to(dtype),
        timestep=t,
        timestep_r=t,
        attention_mask=torch.ones(2, frames, dtype=dtype),
        encoder_hidden_states=torch.randn(2, 12, 128, generator=g).to(dtype),
        encoder_attention_mask=torch.ones(2, 12, dtype=dtype),
        context_latents=torch.randn(2, frames, 128, generator=g).to(dtype),
    )


def randomise(adapter) -> None:
    """Stand-in for training: make every adapter tensor non-trivial (LoRA B / LoKR w2 start at zero)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))


def expected_names(attention_type="both", target_mlp=True, projections=("q_proj", "k_proj", "v_proj", "o_proj")):
    kinds = ("self_attn", "cross_attn") if attention_type == "both" else (f"{attention_type}_attn",)
    names = {f"layers.{i}.{k}.{p}" for i in range(LAYERS) for k in kinds for p in projections}
    if target_mlp:
        names |= {f"layers.{i}.mlp.{p}" for i in range(LAYERS) for p in ("gate_proj", "up_proj", "down_proj")}
    return names


def adapted_names(adapter) -> set[str]:
    if adapter.kind == "lora":
        from peft.tuners.lora import LoraLayer

        return {n.removeprefix("base_model.model.") for n, m in adapter.module.named_modules() if isinstance(m, LoraLayer)}
    return {lora.lora_name.removeprefix("lycoris_") for lora in adapter.net.loras}


TARGET_CASES = [
    dict(attention_type="both", target_mlp=True),
    dict(attention_type="both", target_mlp=False),
    dict(attention_type="self", target_mlp=False),
    dict(attention_type="cross", target_mlp=True),
    dict(attention_type="self", target_mlp=True, target_modules=("q_proj", "v_proj")),
]


@pytest.mark.parametrize("kind", ["lora", "lokr", "loha", "oft"])
@pytest.mark.parametrize("case", TARGET_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_targets_are_honoured(demo_paths, kind, case):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type=kind, **case))
    want = expected_names(
        case["attention_type"], case["target_mlp"], case.get("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj"))
    )
    names = adapted_names(adapter)
    if kind != "lora":  # LyCORIS names
        want = {n.replace(".", "_") for n in want}
    assert names == want
    assert adapter.adapted_modules == len(want)
    assert adapter.kind == kind


def test_counts_match_the_documented_table(demo_paths):
    """ACE_STEP.md §3.5 at 24 layers: self 96, cross 96, both 192, MLP 72, both+MLP 264 (here 4 layers)."""
    counts = {}
    for attention_type, mlp in (("self", False), ("cross", False), ("both", False), ("both", True)):
        adapter = attach_adapter(fresh_decoder(demo_paths), make_config(attention_type=attention_type, target_mlp=mlp))
        counts[(attention_type, mlp)] = adapter.adapted_modules
    assert counts == {
        ("self", False): 4 * LAYERS,
        ("cross", False): 4 * LAYERS,
        ("both", False): 8 * LAYERS,
        ("both", True): 11 * LAYERS,
    }


def test_per_attention_lists(demo_paths):
    config = make_config(self_target_modules=("q_proj",), cross_target_modules=("k_proj", "v_proj"), target_mlp=False)
    for kind in ("lora", "lokr"):
        adapter = attach_adapter(fresh_decoder(demo_paths), make_config(**{**cfgmod.to_dict(config), "adapter_type": kind}))
        names = {n.replace("_", ".") for n in adapted_names(adapter)} if kind == "lokr" else adapted_names(adapter)
        names = {n.replace("self.attn", "self_attn").replace("cross.attn", "cross_attn").replace(".proj", "_proj") for n in names}
        want = {f"layers.{i}.self_attn.q_proj" for i in range(LAYERS)} | {
            f"layers.{i}.cross_attn.{p}" for i in range(LAYERS) for p in ("k_proj", "v_proj")
        }
        assert names == want, kind


@pytest.mark.parametrize("kind", ["lora", "lokr"])
def test_adapter_weights_are_fp32_on_a_bf16_base(demo_paths, kind):
    decoder = fresh_decoder(demo_paths, torch.bfloat16)
    adapter = attach_adapter(decoder, make_config(adapter_type=kind, use_dora=kind == "lora"))
    params = adapter.parameters()
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert all(
        p.dtype == torch.bfloat16 and not p.requires_grad
        for n, p in decoder.named_parameters()
        if "lora" not in n and "lycoris" not in n
    )
    assert adapter.trainable_params == sum(p.numel() for p in params)
    adapter.module.train()
    randomise(adapter)
    out = adapter.module(**inputs(torch.bfloat16))[0]
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_lora_fields_reach_peft(demo_paths):
    adapter = attach_adapter(
        fresh_decoder(demo_paths), make_config(rank=4, alpha=7, dropout=0.25, bias="lora_only", use_dora=True)
    )
    peft_config = adapter.module.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout, peft_config.bias, peft_config.use_dora) == (
        4,
        7,
        0.25,
        "lora_only",
        True,
    )
    assert str(peft_config.task_type).endswith("FEATURE_EXTRACTION")
    names = adapter.state_dict().keys()
    assert any("lora_magnitude_vector" in k for k in names)


def test_lokr_fields_reach_lycoris(demo_paths, tmp_path):
    config = make_config(
        adapter_type="lokr",
        lokr_linear_dim=2,
        lokr_linear_alpha=1,
        lokr_factor=8,
        lokr_decompose_both=True,
        lokr_weight_decompose=True,
        lokr_use_scalar=True,
        lokr_rs_lora=True,
        target_mlp=False,
    )
    adapter = attach_adapter(fresh_decoder(demo_paths), config)
    lora = adapter.net.loras[0]
    assert lora.lora_dim == 2 and lora.wd and lora.rs_lora
    assert isinstance(lora.scalar, torch.nn.Parameter), "use_scalar trains a scalar"
    assert float(lora.scale) == pytest.approx(1 / 2**0.5), "rs_lora: alpha / sqrt(dim)"
    keys = adapter.state_dict().keys()
    assert any(k.endswith(".lokr_w1_a") for k in keys), "decompose_both with a small dim factorises w1"
    assert any(k.endswith(".lokr_w2_a") for k in keys)
    assert any(k.endswith(".dora_scale") for k in keys), "weight_decompose is LyCORIS dora_wd"
    # every option survives a save / load into a fresh network
    randomise(adapter)
    adapter.module.eval()
    with torch.no_grad():
        reference = adapter.module(**inputs())[0]
    adapter.save(tmp_path / "a", {})
    fresh = attach_adapter(fresh_decoder(demo_paths), config)
    fresh.load(tmp_path / "a")
    fresh.module.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.module(**inputs())[0], reference)

    full = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type="lokr", lokr_full_matrix=True, target_mlp=False))
    assert all(k.endswith((".lokr_w1", ".lokr_w2", ".alpha")) for k in full.state_dict())
    unbalanced = attach_adapter(
        fresh_decoder(demo_paths),
        make_config(adapter_type="lokr", lokr_factor=4, lokr_unbalanced_factorization=True, target_mlp=False),
    )
    assert tuple(unbalanced.net.loras[0].lokr_w1.shape) == (32, 4), "unbalanced puts the larger factor first"


def test_lokr_preset_state_does_not_leak(demo_paths):
    """apply_preset is class-level state: a narrow run must not narrow (or widen) the next one."""
    from lycoris import LycorisNetwork

    narrow = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type="lokr", attention_type="cross", target_mlp=False))
    LycorisNetwork.apply_preset({"use_fnmatch": True, "target_module": ["Linear"]})  # someone else's leftovers
    wide = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type="lokr"))
    assert (narrow.adapted_modules, wide.adapted_modules) == (4 * LAYERS, 11 * LAYERS)


# --------------------------------------------------------------------------- state round trips


@pytest.mark.parametrize("kind", ["lora", "lokr"])
def test_state_dict_round_trip_and_mismatch(demo_paths, kind):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type=kind))
    randomise(adapter)
    state = adapter.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    other = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type=kind))
    assert other.load_state_dict(state) == len(state)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())

    dropped = dict(state)
    dropped.pop(next(iter(dropped)))
    dropped["bogus.weight"] = torch.zeros(1)
    with pytest.raises(AdapterMismatchError, match=r"1 missing: .*1 unexpected: bogus\.weight"):
        other.load_state_dict(dropped)
    smaller = attach_adapter(
        fresh_decoder(demo_paths),
        make_config(adapter_type=kind, rank=4, lokr_linear_dim=4, lokr_factor=4, lokr_decompose_both=True),
    )
    with pytest.raises(AdapterMismatchError):
        smaller.load_state_dict(state)


# --------------------------------------------------------------------------- files


def test_lora_files_load_in_peft_from_pretrained(demo_paths, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(rank=4, alpha=8, dropout=0.0))
    randomise(adapter)
    adapter.module.eval()
    with torch.no_grad():
        reference = adapter.module(**inputs())[0]
    adapter.save(tmp_path / "final", {"run_name": "test", "shift": "1.0"})

    files = sorted(os.listdir(tmp_path / "final"))
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    written = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == "" and written["peft_type"] == "LORA"
    assert written["task_type"] == "FEATURE_EXTRACTION" and written["r"] == 4 and written["lora_alpha"] == 8
    with safe_open(str(tmp_path / "final" / "adapter_model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata()["run_name"] == "test"
    assert all(k.startswith("base_model.model.layers.") and ".default." not in k for k in keys)
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys

    # ACE-Step's Gradio path: PeftModel.from_pretrained on a fresh decoder
    loaded = PeftModel.from_pretrained(fresh_decoder(demo_paths), str(tmp_path / "final"), is_trainable=False)
    live = get_peft_model_state_dict(loaded)
    assert set(live) == keys, "every saved key must load, none may be missing"
    saved = adapter.state_dict()
    assert all(torch.equal(live[k].cpu(), saved[k]) for k in keys)
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs())[0], reference)

    again = attach_adapter(fresh_decoder(demo_paths), make_config(rank=4, alpha=8, dropout=0.0))
    assert again.load(tmp_path / "final") == len(keys)


def test_lokr_file_loads_in_a_fresh_lycoris_net(demo_paths, tmp_path):
    from lycoris import LycorisNetwork
    from safetensors import safe_open

    config = make_config(adapter_type="lokr", lokr_linear_dim=4, lokr_linear_alpha=4, attention_type="self")
    adapter = attach_adapter(fresh_decoder(demo_paths), config)
    randomise(adapter)
    adapter.module.eval()
    with torch.no_grad():
        reference = adapter.module(**inputs())[0]
    adapter.save(tmp_path / "final", {"run_name": "lk"})
    path = tmp_path / "final" / "lokr_weights.safetensors"
    assert os.listdir(tmp_path / "final") == ["lokr_weights.safetensors"]
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        keys = set(handle.keys())
    assert meta["algo"] == "lokr" and meta["format"] == "lycoris" and meta["run_name"] == "lk"
    assert json.loads(meta["lokr_config"])["linear_dim"] == 4
    assert "lycoris_layers_0_self_attn_q_proj.lokr_w1" in keys

    # The LyCORIS way: build a net on a fresh decoder, load_weights, compare
    fresh = attach_adapter(fresh_decoder(demo_paths), config)
    state = fresh.net.load_weights(str(path))
    assert state == {}, state  # no missing, no unexpected keys
    fresh.module.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.module(**inputs())[0], reference)
    assert isinstance(fresh.net, LycorisNetwork)

    again = attach_adapter(fresh_decoder(demo_paths), config)
    assert again.load(tmp_path / "final") == len(keys)


@pytest.mark.parametrize("kind,file", [("lora", "adapter_model.safetensors"), ("lokr", "lokr_weights.safetensors")])
def test_bad_adapter_files_fail_in_one_line(demo_paths, tmp_path, kind, file):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type=kind))
    adapter.save(tmp_path / "ok", {})
    path = tmp_path / "ok" / file

    data = path.read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / file).write_bytes(data[: len(data) // 3])
    with pytest.raises(AdapterLoadError) as exc:
        adapter.load(tmp_path / "cut")
    assert str(tmp_path / "cut" / file) in str(exc.value) and "\n" not in str(exc.value)

    with pytest.raises(AdapterLoadError, match="is missing"):
        adapter.load(tmp_path / "empty")

    other = attach_adapter(
        fresh_decoder(demo_paths),
        make_config(adapter_type=kind, rank=8, lokr_linear_dim=2, lokr_factor=4, lokr_decompose_both=True),
    )
    with pytest.raises(AdapterMismatchError) as exc:
        other.load(tmp_path / "ok")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_save_into_an_existing_checkpoint_folder_keeps_other_files(demo_paths, tmp_path):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config())
    target = tmp_path / "checkpoints" / "epoch_1"
    target.mkdir(parents=True)
    (target / "training_state.pt").write_bytes(b"state")
    adapter.save(target, {})
    adapter.save(target, {})  # overwrite in place
    assert sorted(os.listdir(target)) == ["adapter_config.json", "adapter_model.safetensors", "training_state.pt"]
    assert not [p for p in os.listdir(target.parent) if "__writing__" in p]


def test_gradient_checkpointing_reaches_through_the_adapter(demo_paths):
    from engine.models.loader import enable_gradient_checkpointing, unwrap_decoder

    for kind, ratio in (("lora", 1.0), ("lokr", 0.5)):
        decoder = fresh_decoder(demo_paths)
        adapter = attach_adapter(decoder, make_config(adapter_type=kind))
        assert unwrap_decoder(adapter.module) is decoder
        assert enable_gradient_checkpointing(adapter.module, ratio) == (4 if ratio == 1.0 else 2)
        adapter.module.train()
        randomise(adapter)
        adapter.module(**inputs())[0].square().mean().backward()
        assert all(p.grad is not None for p in adapter.parameters()), kind


def test_lora_bias_all_trains_biases(demo_paths):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(bias="all"))
    names = {n for n, p in adapter.module.named_parameters() if p.requires_grad}
    assert "base_model.model.condition_embedder.bias" in names
    assert "base_model.model.condition_embedder.bias" in adapter.state_dict()


def test_lora_config_refuses_a_bias_peft_does_not_know():
    import dataclasses

    from engine.adapters.lora import lora_config

    assert lora_config(make_config(bias="lora_only")).bias == "lora_only"
    config = dataclasses.replace(make_config(), bias="some")  # parse() refuses it; lora_config checks again
    with pytest.raises(ValueError, match=r"^bias 'some' is not one of none, all, lora_only; set bias to one of them$"):
        lora_config(config)
