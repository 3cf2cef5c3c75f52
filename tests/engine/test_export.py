"""ComfyUI export through the real libraries on the tiny demo decoder: the weight delta ComfyUI builds from
the exported file equals, module by module, the delta PEFT / LyCORIS themselves apply, and every key of
the file lands on a decoder weight under ComfyUI's ACE-Step 1.5 key patterns.

``comfy_merge`` re-implements ComfyUI's loader from its source (comfy/lora.py ``model_lora_keys_unet``
ACEStep15 branch and ``load_lora``; comfy/weight_adapter/lora.py, lokr.py, loha.py ``calculate_weight``;
base.py ``weight_decompose``), strength 1.0, fp32 as ComfyUI patches."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from engine import config as cfgmod
from engine.adapters import attach_adapter
from engine.adapters import export as ex
from engine.models.loader import load_decoder

CPU = torch.device("cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_config(**overrides) -> cfgmod.TrainConfig:
    return cfgmod.parse({"checkpoint_dir": "ckpt", "dataset_dir": "data", "output_dir": "out", **overrides})


def fresh_decoder(demo_paths):
    return load_decoder(demo_paths["model_dir"], device=CPU, dtype=torch.float32).decoder


def base_weights(decoder) -> dict[str, torch.Tensor]:
    """``diffusion_model.decoder.<path>.weight`` -> fp32 copy, as ComfyUI names the model's weights."""
    return {f"diffusion_model.decoder.{k}": v.detach().clone().float() for k, v in decoder.state_dict().items()}


# --------------------------------------------------------------------------- ComfyUI, re-implemented


def comfy_key_map(model_keys) -> dict[str, str]:
    key_map = {}
    for k in model_keys:
        if k.startswith("diffusion_model.decoder.") and k.endswith(".weight"):
            path = k[len("diffusion_model.decoder.") : -len(".weight")]
            key_map[f"base_model.model.{path}"] = k
            key_map[f"lycoris_{path.replace('.', '_')}"] = k
            key_map[k[: -len(".weight")]] = k  # the generic form every model gets
    return key_map


def comfy_weight_decompose(dora_scale, weight, lora_diff, alpha):
    weight_calc = weight + alpha * lora_diff
    if dora_scale.shape[0] == weight_calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (
            weight_calc.transpose(0, 1)
            .reshape(weight_calc.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1))
            .transpose(0, 1)
        )
    norm = norm + torch.finfo(weight.dtype).eps
    return weight_calc * (dora_scale.float() / norm)


def comfy_merge(lora: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The patched weights ComfyUI computes (only those it touches) and the file keys it loaded."""
    loaded: set[str] = set()
    patched: dict[str, torch.Tensor] = {}
    for x, target in comfy_key_map(model).items():
        alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
        dora = lora.get(f"{x}.dora_scale")
        weight = model[target].clone()
        names = {n for n in lora if n.startswith(x + ".")}
        if f"{x}.lora_up.weight" in lora or f"{x}.lora_B.weight" in lora:
            up = lora.get(f"{x}.lora_up.weight", lora.get(f"{x}.lora_B.weight")).float()
            down = lora.get(f"{x}.lora_down.weight", lora.get(f"{x}.lora_A.weight")).float()
            scale = alpha / down.shape[0] if alpha is not None else 1.0
            diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        elif any(f"{x}.lokr_{n}" in lora for n in ("w1", "w2", "w1_a", "w2_a")):
            g = {
                n: lora[f"{x}.lokr_{n}"].float() for n in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b") if f"{x}.lokr_{n}" in lora
            }
            dim = None
            if "w1" in g:
                w1 = g["w1"]
            else:
                dim, w1 = g["w1_b"].shape[0], g["w1_a"] @ g["w1_b"]
            if "w2" in g:
                w2 = g["w2"]
            else:
                dim, w2 = g["w2_b"].shape[0], g["w2_a"] @ g["w2_b"]
            if w2.dim() == 4:
                w1 = w1.unsqueeze(2).unsqueeze(2)
            scale = alpha / dim if alpha is not None and dim is not None else 1.0
            diff = torch.kron(w1, w2).reshape(weight.shape)
        elif f"{x}.hada_w1_a" in lora:
            g = {n: lora[f"{x}.hada_{n}"].float() for n in ("w1_a", "w1_b", "w2_a", "w2_b")}
            scale = alpha / g["w1_b"].shape[0] if alpha is not None else 1.0
            diff = ((g["w1_a"] @ g["w1_b"]) * (g["w2_a"] @ g["w2_b"])).reshape(weight.shape)
        elif f"{x}.oft_blocks" in lora:  # ComfyUI's OFT at strength 1: .alpha is the norm constraint itself
            blocks = lora[f"{x}.oft_blocks"].float()
            n_blocks, size, _ = blocks.shape
            eye = torch.eye(size)
            q = blocks - blocks.transpose(1, 2)
            if alpha and alpha > 0 and torch.norm(q) + 1e-8 > alpha:
                q = q * alpha / (torch.norm(q) + 1e-8)
            r = (eye + q) @ (eye - q).inverse()
            scale = 1.0
            diff = torch.einsum("k n m, k n ... -> k m ...", r - eye, weight.view(n_blocks, size, -1)).reshape(weight.shape)
        else:
            continue
        loaded |= names
        patched[target] = comfy_weight_decompose(dora, weight, diff, scale) if dora is not None else weight + scale * diff
    return patched, loaded


def assert_matches(exported: dict, model: dict, expected_delta: dict[str, torch.Tensor], tol=1e-5) -> float:
    """Every file key loaded, every adapted module patched, and the deltas equal; returns the max abs diff."""
    patched, loaded = comfy_merge(exported, model)
    assert loaded == set(exported), f"keys ComfyUI would not load: {sorted(set(exported) - loaded)[:5]}"
    assert set(patched) == set(expected_delta), (sorted(set(patched) ^ set(expected_delta)))[:5]
    worst = 0.0
    for key, delta in expected_delta.items():
        got = patched[key] - model[key]
        assert got.shape == delta.shape, key
        worst = max(worst, (got - delta).abs().max().item())
        assert delta.abs().max() > 1e-4, f"{key}: the reference delta is trivial; the test would prove nothing"
    assert worst < tol, worst
    return worst


def peft_reference(peft_model, model: dict) -> dict[str, torch.Tensor]:
    """PEFT's own merge (merge_and_unload on a copy) minus the base weights."""
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    out = {}
    for k, v in merged.items():
        key = f"diffusion_model.decoder.{k}"
        if key in model and not torch.equal(v.float(), model[key]):
            out[key] = v.float() - model[key]
    return out


def lycoris_reference(adapter, model: dict) -> dict[str, torch.Tensor]:
    """Each LyCORIS module's forward on the identity minus its base forward: the delta it trains with."""
    out = {}
    with torch.no_grad():
        for module in adapter.net.loras:
            base = module.org_module[0]
            eye = torch.eye(base.in_features)
            delta = (module(eye) - module.org_forward(eye)).T
            out[f"diffusion_model.decoder.{module.lora_name.removeprefix('lycoris_').replace('_', '.')}"] = delta
    # lycoris names back to paths via the model's keys (underscores in names like q_proj)
    names = {f"lycoris_{k[len('diffusion_model.decoder.') : -len('.weight')].replace('.', '_')}": k for k in model}
    return {names[f"lycoris_{k[len('diffusion_model.decoder.') :].replace('.', '_')}"]: v for k, v in out.items()}


def perturb(module, seed=3) -> None:
    """Stand-in for training: every adapter tensor non-trivial, DoRA magnitudes moved off their init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.dim() == 0:  # LyCORIS use_scalar
                p.fill_(1.5)
            elif "magnitude" in name or name.endswith("dora_scale"):
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def exported(folder, tmp_path, **kwargs) -> dict[str, torch.Tensor]:
    out = tmp_path / "out_comfyui.safetensors"
    ex.export_comfyui(folder, out, **kwargs)
    return load_file(str(out))


# --------------------------------------------------------------------------- PEFT LoRA / DoRA


PEFT_CASES = {
    "r64-a128": dict(r=64, lora_alpha=128),
    "patterns": dict(r=8, lora_alpha=16, rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 12}, alpha_pattern={"k_proj": 3}),
    "rslora": dict(r=16, lora_alpha=8, use_rslora=True, rank_pattern={"v_proj": 2}),
}


@pytest.mark.parametrize("normalize", [False, True], ids=["alpha", "normalized"])
@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_lora_plays_at_trained_strength(demo_paths, tmp_path, case, normalize):
    from peft import LoraConfig, PeftModel

    decoder = fresh_decoder(demo_paths)
    model = base_weights(decoder)
    config = LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], **PEFT_CASES[case])
    peft_model = PeftModel(decoder, config)
    perturb(peft_model)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    file = exported(tmp_path / "adapter", tmp_path, normalize_alpha=normalize)
    assert_matches(file, model, peft_reference(peft_model, model))
    alphas = {k: v.item() for k, v in file.items() if k.endswith(".alpha")}
    ranks = {k[: -len(".lora_down.weight")]: v.shape[0] for k, v in file.items() if k.endswith(".lora_down.weight")}
    if normalize:
        assert all(alphas[m + ".alpha"] == r for m, r in ranks.items())
    if case == "r64-a128" and not normalize:
        assert set(alphas.values()) == {128.0}  # full strength: ComfyUI's 1.0 would otherwise play at 0.5


def test_engine_dora_plays_as_trained(demo_paths, tmp_path):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type="lora", rank=4, alpha=8, use_dora=True))
    model = base_weights(adapter.module.base_model.model)
    model = {k.replace(".base_layer", ""): v for k, v in model.items() if ".lora_" not in k}
    perturb(adapter.module)
    adapter.save(tmp_path / "adapter")
    file = exported(tmp_path / "adapter", tmp_path, base=ex.BaseWeights.from_module(adapter.module))
    scales = [v for k, v in file.items() if k.endswith(".dora_scale")]
    assert scales and all(s.dim() == 2 and s.shape[1] == 1 for s in scales)  # [out, 1]: ComfyUI's output-axis form
    assert_matches(file, model, peft_reference(adapter.module, model))


def test_dora_without_the_base_model_is_refused(demo_paths, tmp_path):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type="lora", rank=4, alpha=8, use_dora=True))
    adapter.save(tmp_path / "adapter")
    with pytest.raises(ex.ExportError, match=r"^layers\.\d+\.\w+\.\w+: DoRA; .*--checkpoint-dir"):
        ex.export_comfyui(tmp_path / "adapter", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- LyCORIS


LOKR_CASES = {
    "defaults": dict(),  # both factors full on the tiny demo: ComfyUI scale 1
    "factorised": dict(lokr_linear_dim=2, lokr_linear_alpha=3),
    "factorised-rs": dict(lokr_linear_dim=2, lokr_linear_alpha=3, lokr_rs_lora=True),
    "full-rs": dict(lokr_linear_dim=4, lokr_linear_alpha=4, lokr_rs_lora=True, lokr_full_matrix=True),
    "decompose-both": dict(lokr_linear_dim=2, lokr_linear_alpha=5, lokr_decompose_both=True, lokr_factor=4),
    "dora": dict(lokr_linear_dim=2, lokr_linear_alpha=3, lokr_weight_decompose=True),
    "scalar": dict(lokr_linear_dim=2, lokr_linear_alpha=2, lokr_use_scalar=True),
}


@pytest.mark.parametrize("normalize", [False, True], ids=["alpha", "normalized"])
@pytest.mark.parametrize("case", list(LOKR_CASES))
def test_lokr_plays_as_trained(demo_paths, tmp_path, case, normalize):
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type="lokr", **LOKR_CASES[case]))
    model = base_weights(adapter.module)
    model = {k: v for k, v in model.items() if ".lycoris_net." not in k}
    perturb(adapter.net)
    adapter.save(tmp_path / "adapter")
    file = exported(tmp_path / "adapter", tmp_path, normalize_alpha=normalize, base=ex.BaseWeights.from_module(adapter.module))
    assert any(k.endswith((".lokr_w2_a", ".lokr_w1_a")) for k in file) == (case not in ("defaults", "full-rs"))
    assert_matches(file, model, lycoris_reference(adapter, model))


def test_loha_plays_as_trained(demo_paths, tmp_path):
    from lycoris import LycorisNetwork

    from engine.adapters.base import target_regex
    from engine.adapters.lokr import LokrAdapter
    from engine.adapters.lyco import _PRESET_LOCK, apply_target_preset

    decoder = fresh_decoder(demo_paths)
    model = base_weights(decoder)
    with _PRESET_LOCK:
        apply_target_preset(target_regex(("self_attn.q_proj", "mlp.down_proj")) + "$")
        net = LycorisNetwork(decoder, multiplier=1.0, lora_dim=3, alpha=5, network_module="loha", warn_on_unmatched=False)
    assert len(net.loras) == 8
    net.apply_to()
    decoder.lycoris_net = net
    perturb(net)
    folder = tmp_path / "adapter"
    folder.mkdir()
    net.save_weights(str(folder / "loha_weights.safetensors"), None, {"algo": "loha", "format": "lycoris"})
    adapter = LokrAdapter(decoder, net, {}, (), kind="loha")
    file = exported(folder, tmp_path, base=ex.BaseWeights.from_module(decoder))
    assert any(k.endswith(".hada_w1_a") for k in file)
    assert_matches(file, model, lycoris_reference(adapter, model))


@pytest.mark.parametrize("constraint", [0.0, 1e-4])
def test_oft_plays_as_trained(demo_paths, tmp_path, constraint):
    """Diag-OFT rotates the base weight's output rows; 1e-4 per output dim is tight enough that the
    norm constraint is active (LyCORIS multiplies it by out_dim, ComfyUI does not: the file carries it)."""
    from lycoris import LycorisNetwork

    from engine.adapters.base import target_regex
    from engine.adapters.lokr import LokrAdapter
    from engine.adapters.lyco import _PRESET_LOCK, apply_target_preset

    decoder = fresh_decoder(demo_paths)
    model = base_weights(decoder)
    with _PRESET_LOCK:
        apply_target_preset(target_regex(("self_attn.q_proj", "mlp.down_proj")) + "$")
        net = LycorisNetwork(
            decoder,
            multiplier=1.0,
            lora_dim=4,
            alpha=1,
            network_module="diag-oft",
            constraint=constraint,
            warn_on_unmatched=False,
        )
    assert len(net.loras) == 8
    net.apply_to()
    decoder.lycoris_net = net
    perturb(net)
    if constraint:
        q = net.loras[0].oft_blocks - net.loras[0].oft_blocks.transpose(1, 2)
        assert torch.norm(q) > net.loras[0].constraint, "the constraint must bind, or this case proves nothing"
    folder = tmp_path / "adapter"
    folder.mkdir()
    net.save_weights(str(folder / "oft_weights.safetensors"), None, {"algo": "diag-oft", "format": "lycoris"})
    adapter = LokrAdapter(decoder, net, {}, (), kind="oft")
    file = exported(folder, tmp_path)
    assert any(k.endswith(".oft_blocks") for k in file)
    assert_matches(file, model, lycoris_reference(adapter, model))


# --------------------------------------------------------------------------- refusals and the PEFT target


def test_what_comfyui_cannot_express_is_refused_in_one_line(demo_paths, tmp_path):
    from peft import LoraConfig, PeftModel

    peft_model = PeftModel(fresh_decoder(demo_paths), LoraConfig(r=4, target_modules=["q_proj"], bias="all"))
    peft_model.save_pretrained(str(tmp_path / "bias"))
    with pytest.raises(ex.ExportError) as err:
        ex.export_comfyui(tmp_path / "bias", tmp_path / "x.safetensors")
    assert "\n" not in str(err.value) and ".bias: not a LoRA/DoRA tensor" in str(err.value)
    oft = tmp_path / "oft"
    oft.mkdir()
    (oft / "adapter_config.json").write_text(json.dumps({"peft_type": "OFT"}))
    (oft / "adapter_model.safetensors").write_bytes((tmp_path / "bias" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ex.ExportError, match="PEFT OFT adapters have no ComfyUI LoRA form"):
        ex.export_comfyui(oft, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_comfyui_file_back_to_peft_keeps_the_delta(demo_paths, tmp_path):
    from peft import LoraConfig, PeftModel

    decoder = fresh_decoder(demo_paths)
    model = base_weights(decoder)
    peft_model = PeftModel(decoder, LoraConfig(**PEFT_CASES["patterns"], target_modules=["q_proj", "k_proj", "down_proj"]))
    perturb(peft_model)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    ex.export_comfyui(tmp_path / "adapter", tmp_path / "c.safetensors")
    ex.comfyui_to_peft(tmp_path / "c.safetensors", tmp_path / "back")
    reloaded = PeftModel.from_pretrained(fresh_decoder(demo_paths), str(tmp_path / "back"))
    want = peft_reference(peft_model, model)
    got = peft_reference(reloaded, model)
    assert set(got) == set(want)
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-5

    # kohya / LyCORIS underscore names resolve only against the base model's module names
    from safetensors.torch import save_file

    comfy = load_file(str(tmp_path / "c.safetensors"))
    renamed = {}
    for key, value in comfy.items():
        module, _, role = key.rpartition(".lora_") if ".lora_" in key else key.rpartition(".alpha")
        role = ("lora_" + role) if ".lora_" in key else "alpha"
        renamed["lora_unet_decoder_" + module.removeprefix("base_model.model.").replace(".", "_") + "." + role] = value
    save_file(renamed, str(tmp_path / "kohya.safetensors"))
    with pytest.raises(ex.NeedsBaseModel, match="needs the base model"):
        ex.comfyui_to_peft(tmp_path / "kohya.safetensors", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    ex.comfyui_to_peft(
        tmp_path / "kohya.safetensors", tmp_path / "back2", base=ex.BaseWeights.from_module(fresh_decoder(demo_paths))
    )
    got2 = peft_reference(PeftModel.from_pretrained(fresh_decoder(demo_paths), str(tmp_path / "back2")), model)
    assert max((got2[k] - want[k]).abs().max().item() for k in want) < 1e-5


# --------------------------------------------------------------------------- runs and the command line


def train_demo(values: dict) -> list:
    import math

    from engine import protocol
    from engine.channel.control import CommandInbox
    from engine.channel.events import CallbackSink, EventBus
    from engine.train.trainer import Trainer

    events: list = []
    final = Trainer(
        cfgmod.parse(values), EventBus([CallbackSink(events.append)]), CommandInbox(None), run_id="t", metrics_hz=math.inf
    ).fit()
    assert isinstance(final, protocol.RunFinished), getattr(final, "traceback", final)
    return events


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "export", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("adapter_type", ["lora", "lokr"])
def test_every_checkpoint_gets_a_comfyui_file_that_plays_as_trained(demo_config_values, demo_paths, adapter_type):
    from engine import protocol

    values = {**demo_config_values, "adapter_type": adapter_type, "save_every_n_steps": 3}
    events = train_demo(values)
    run_dir = values["output_dir"]
    saved = [e for e in events if isinstance(e, protocol.CheckpointSaved)]
    assert {e.kind for e in saved} >= {"periodic", "final"}
    name = f"{os.path.basename(run_dir)}_comfyui.safetensors"
    for event in saved:
        assert event.comfyui_path == os.path.join(event.path, name) and os.path.isfile(event.comfyui_path), event
    final = os.path.join(run_dir, "final")
    file = load_file(os.path.join(final, name))
    decoder = fresh_decoder(demo_paths)
    model = base_weights(decoder)
    if adapter_type == "lora":
        from peft import PeftModel

        assert_matches(file, model, peft_reference(PeftModel.from_pretrained(decoder, final), model))
    else:
        adapter = attach_adapter(decoder, cfgmod.parse(values))
        adapter.load(final)
        assert_matches(file, model, lycoris_reference(adapter, model))


@pytest.mark.integration
def test_sidestep_export_on_a_demo_run_and_a_side_step_folder(demo_config_values, demo_paths, tmp_path):
    from peft import LoraConfig, PeftModel, TaskType

    train_demo(demo_config_values)
    run_dir = demo_config_values["output_dir"]
    done = cli(run_dir, "-o", str(tmp_path / "run.safetensors"))
    assert done.returncode == 0, done.stderr
    assert f"exporting {os.path.join(run_dir, 'final')} (the run's final adapter)" in done.stdout
    auto = load_file(os.path.join(run_dir, "final", f"{os.path.basename(run_dir)}_comfyui.safetensors"))
    again = load_file(str(tmp_path / "run.safetensors"))
    assert set(auto) == set(again) and all(torch.equal(auto[k], again[k]) for k in auto)

    # A PEFT folder as Side-Step writes it: bare target names, FEATURE_EXTRACTION, base path blanked.
    decoder = fresh_decoder(demo_paths)
    model = base_weights(decoder)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = PeftModel(
        decoder, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=targets, task_type=TaskType.FEATURE_EXTRACTION)
    )
    perturb(peft_model)
    folder = tmp_path / "sidestep_adapter"
    peft_model.save_pretrained(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = ""
    (folder / "adapter_config.json").write_text(json.dumps(config))
    done = cli(str(folder))
    assert done.returncode == 0, done.stderr
    assert_matches(load_file(str(folder / "sidestep_adapter_comfyui.safetensors")), model, peft_reference(peft_model, model))

    # DoRA without a base model: one line, no traceback, nothing written.
    dora = tmp_path / "dora"
    PeftModel(fresh_decoder(demo_paths), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)).save_pretrained(str(dora))
    done = cli(str(dora))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and re.match(r"error: layers\.0\.\w+\.q_proj: DoRA; ", done.stderr), done.stderr
    assert not list(dora.glob("*_comfyui.safetensors"))
    # ... and with the base model named, it exports.
    done = cli(str(dora), "--checkpoint-dir", demo_paths["checkpoint_dir"], "--model-variant", demo_paths["model_variant"])
    assert done.returncode == 0, done.stderr
    assert any(k.endswith(".dora_scale") for k in load_file(str(dora / "dora_comfyui.safetensors")))
