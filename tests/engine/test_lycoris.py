"""LyCORIS adapters (LoKR, LoHA, OFT) on the demo decoder: the fp32 adapter path on a bf16 base, its
automatic choice, and files that load back."""

from __future__ import annotations

import pytest
import torch
from test_adapters import inputs  # the demo decoder's forward arguments

from engine import config as cfgmod
from engine.adapters import attach_adapter
from engine.adapters.lyco import resolve_bypass
from engine.models.loader import load_decoder

LR = 3e-4  # the default learning rate (engine.config.DEFAULT_LEARNING_RATE)


def make_config(**overrides) -> cfgmod.TrainConfig:
    return cfgmod.parse({"checkpoint_dir": "ckpt", "dataset_dir": "data", "output_dir": "out", **overrides})


def fresh_decoder(demo_paths, dtype=torch.float32):
    return load_decoder(demo_paths["model_dir"], device=torch.device("cpu"), dtype=dtype).decoder


def big_inputs(dtype):
    """A batch with many output elements, so per-element rounding averages out in the gain below."""
    g = torch.Generator().manual_seed(7)
    b, frames = 8, 256
    t = torch.rand(b, generator=g)
    return dict(
        hidden_states=torch.randn(b, frames, 64, generator=g).to(dtype),
        timestep=t.to(dtype),
        timestep_r=t.to(dtype),
        attention_mask=torch.ones(b, frames, dtype=dtype),
        encoder_hidden_states=torch.randn(b, 12, 128, generator=g).to(dtype),
        encoder_attention_mask=torch.ones(b, 12, dtype=dtype),
        context_latents=torch.randn(b, frames, 128, generator=g).to(dtype),
    )


def one_step_state(demo_paths, config) -> tuple[dict, object]:
    """One real AdamW step of the adapter on the fp32 demo decoder: (adapter state after it, the fp32 adapter)."""
    torch.manual_seed(0)
    ref = attach_adapter(fresh_decoder(demo_paths, torch.float32), config)
    ref.module.train()
    optimizer = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.0)
    ref.module(**big_inputs(torch.float32))[0].float().square().mean().backward()
    optimizer.step()
    return ref.state_dict(), ref


def layer_delta_gain(demo_paths, bypass: str) -> tuple[float, str]:
    """Load one fp32 LoKR step into a bf16 copy of the demo decoder, run it, and compare every adapted
    layer's forward delta (its bf16 output minus the frozen layer's bf16 output, same input) with the
    fp32 reference ``x @ dW^T``. Returns (least-squares gain over all elements, the logged mode line)."""
    config = make_config(adapter_type="lokr", lycoris_bypass=bypass)
    state, ref = one_step_state(demo_paths, config)
    torch.manual_seed(0)
    half = attach_adapter(fresh_decoder(demo_paths, torch.bfloat16), config)
    half.load_state_dict(state)
    half.module.eval()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        lora.org_module[0].register_forward_hook(lambda m, a, out, n=lora.lora_name: seen.__setitem__(n, (a[0], out)))
        for lora in half.net.loras
    ]
    with torch.no_grad():
        half.module(**big_inputs(torch.bfloat16))
    for hook in hooks:
        hook.remove()
    num = den = 0.0
    with torch.no_grad():
        for lora32, lora16 in zip(ref.net.loras, half.net.loras, strict=True):
            x, adapted = seen[lora16.lora_name]
            assert x.dtype == adapted.dtype == torch.bfloat16
            frozen = torch.nn.functional.linear(x, lora16.org_module[0].weight, lora16.org_module[0].bias)
            delta = adapted.float() - frozen.float()
            reference = torch.nn.functional.linear(x.float(), lora32.get_diff_weight(1.0)[0].float())
            num += float((delta * reference).sum())
            den += float(reference.square().sum())
    assert den > 0, "the step left the adapter at zero"
    return num / den, half.precision_note


def test_lokr_step_on_a_bf16_base_keeps_its_forward_delta(demo_paths):
    """The fp32 path (auto on a bf16 base) keeps one step's forward delta within 2 % of fp32; LyCORIS's
    rebuild path (forced off) loses a large part of it (the bug this path fixes)."""
    gain_on, note_on = layer_delta_gain(demo_paths, "auto")
    gain_off, note_off = layer_delta_gain(demo_paths, "off")
    print(f"one LoKR step at lr {LR}, bf16 demo: forward-delta gain fp32 path {gain_on:.4f}, rebuild {gain_off:.4f}")
    assert "fp32 bypass" in note_on and "bfloat16" in note_on
    assert "rebuild" in note_off and "round away" in note_off
    assert abs(gain_on - 1.0) < 0.02
    assert gain_off < 0.9, "the rebuild path was expected to lose small updates on bf16"


def test_bypass_choice_is_automatic_and_reported():
    assert resolve_bypass("auto", torch.bfloat16, False)[0] is True
    assert resolve_bypass("auto", torch.float16, False)[0] is True
    assert resolve_bypass("auto", torch.float32, False)[0] is False
    use, note = resolve_bypass("auto", torch.bfloat16, True)  # weight decomposition needs the rebuild path
    assert use is False and "weight decomposition" in note
    assert resolve_bypass("on", torch.float32, False)[0] is True
    assert resolve_bypass("off", torch.bfloat16, False)[0] is False


@pytest.mark.parametrize("kind", ["lokr", "loha", "oft"])
def test_fp32_path_equals_the_plain_forward_in_fp32(demo_paths, kind):
    """On an fp32 base the forced fp32 path and LyCORIS's own forward give the same output and grads:
    the path changes the precision, not the function."""
    outs, grads = [], []
    for bypass in ("on", "off"):
        config = make_config(adapter_type=kind, lycoris_bypass=bypass, target_mlp=kind != "oft")
        torch.manual_seed(0)
        adapter = attach_adapter(fresh_decoder(demo_paths), config)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in adapter.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        assert adapter.bypass is (bypass == "on")
        out = adapter.module(**inputs())[0]
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in adapter.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def randomise(adapter, seed=3) -> None:
    """Stand-in for training: every adapter tensor non-trivial (LoKR w2, LoHA w2_a, OFT blocks start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kind", ["lokr", "loha", "oft"])
def test_saved_file_loads_with_lycoris_own_loader(demo_paths, tmp_path, kind):
    """Trained on a bf16 base (fp32 path), saved, then rebuilt by LyCORIS's ``create_lycoris_from_weights``
    on a fresh fp32 decoder from the file alone: same adapter output as our fp32 adapter with that state."""
    import json

    from lycoris import create_lycoris_from_weights
    from safetensors import safe_open

    config = make_config(adapter_type=kind, attention_type="cross", target_mlp=True, loha_linear_dim=4, lokr_linear_dim=4)
    trained = attach_adapter(fresh_decoder(demo_paths, torch.bfloat16), config)
    assert trained.bypass
    randomise(trained)
    trained.save(tmp_path / "final", {"run_name": kind})
    path = tmp_path / "final" / f"{kind}_weights.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta, keys = handle.metadata(), set(handle.keys())
    assert meta["format"] == "lycoris" and meta["algo"] == trained.settings["algo"]
    assert json.loads(meta[f"{kind}_config"])["algo"] == trained.settings["algo"]

    ours = attach_adapter(fresh_decoder(demo_paths), config)
    assert ours.load(tmp_path / "final") == len(keys)
    ours.module.eval()
    decoder = fresh_decoder(demo_paths)
    theirs, _ = create_lycoris_from_weights(1.0, str(path), decoder)
    theirs.apply_to()
    assert len(theirs.loras) == trained.adapted_modules
    with torch.no_grad():
        plain = fresh_decoder(demo_paths)(**inputs())[0]
        want = ours.module(**inputs())[0]
        got = decoder(**inputs())[0]
    assert (want - plain).abs().max() > 1e-3, "the adapter must change the output for this check to mean anything"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["loha", "oft"])
def test_loha_and_oft_train_a_step_on_bf16(demo_paths, kind):
    adapter = attach_adapter(fresh_decoder(demo_paths, torch.bfloat16), make_config(adapter_type=kind))
    params = adapter.parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    adapter.module.train()
    out = adapter.module(**inputs(torch.bfloat16))[0]
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    assert any(float(p.grad.abs().sum()) > 0 for p in params)


def test_lokr_all_linear_adapts_every_linear_and_conv1d(demo_paths):
    """Side-Step's LoKR targets (ACE_STEP.md §7.2): every nn.Linear and nn.Conv1d of the decoder, i.e. the
    attention and MLP projections plus condition_embedder, time_embed(_r).* and proj_in.1 (not proj_out,
    a ConvTranspose1d)."""
    decoder = fresh_decoder(demo_paths)
    want = {n for n, m in decoder.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv1d)}
    assert {"condition_embedder", "proj_in.1", "time_embed.time_proj", "time_embed_r.linear_1"} <= want
    adapter = attach_adapter(decoder, make_config(adapter_type="lokr", lokr_targets="all-linear", attention_type="self"))
    got = {lora.lora_name.removeprefix("lycoris_") for lora in adapter.net.loras}
    assert got == {n.replace(".", "_") for n in want}
    assert adapter.targets == ("all-linear",)
    adapter.module.train()
    randomise(adapter)
    adapter.module(**inputs())[0].square().mean().backward()  # the Conv1d (proj_in.1) path runs too
    assert all(p.grad is not None for p in adapter.parameters())


def test_lokr_targets_is_a_lokr_option():
    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="lokr_targets"):
        make_config(adapter_type="loha", lokr_targets="all-linear")
    with pytest.raises(ConfigError, match="lycoris_bypass"):
        make_config(adapter_type="lokr", lokr_weight_decompose=True, lycoris_bypass="on")


def test_fp32_path_keeps_no_fp32_copy_of_the_base_weights_for_backward(demo_paths):
    """The fp32 path upcasts each frozen bf16 weight for its matmul; what backward keeps must be the bf16
    parameter itself, not a 4-byte copy (that would add twice the adapted base's size to the peak)."""
    config = make_config(adapter_type="lokr", lycoris_bypass="on")
    torch.manual_seed(0)
    adapter = attach_adapter(fresh_decoder(demo_paths, torch.bfloat16), config)
    randomise(adapter)
    base_shapes = {tuple(lora.org_module[0].weight.shape) for lora in adapter.net.loras}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = adapter.module(**inputs(torch.bfloat16))[0]
    fp32_weights = [t for t in saved if t.dtype == torch.float32 and tuple(t.shape) in base_shapes]
    assert not fp32_weights, f"{len(fp32_weights)} fp32 copies of base weights kept for backward"
    assert any(t.dtype == torch.bfloat16 and tuple(t.shape) in base_shapes for t in saved)  # the bf16 weights instead
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter.parameters())
