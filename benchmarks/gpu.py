"""GPU figures for the full-size demo model (the shipped 2B decoder shapes, ACE_STEP.md §3): 60 s chunks,
batch 1, LoRA r64 on self- and cross-attention and the MLP, bf16, with gradient checkpointing on and off,
SDPA and flash-attention (where installed), a bf16 / int8 / nf4 base, and DDP over every visible GPU.

    .venv/bin/python benchmarks/gpu.py [--root DIR] [--steps 20] [--warmup 5] [--only none,int8,nf4]
                                       [--peak-tflops N] [--no-ddp]
    .venv/bin/python benchmarks/gpu.py --dry-run [--full-flops]  # the CPU-independent parts on the tiny demo

Per row it prints: peak allocated GPU memory (the whole engine run: model, adapter, optimizer,
activations), the engine's mean optimizer-step time, the engine/bare-loop step-time ratio (the bare loop
does the same forward / backward / clip / step on a fixed batch, in the same process) and model FLOPs
utilisation: the decoder's FLOPs per sample-step, counted by ``torch.utils.flop_counter.FlopCounterMode``
on fake tensors (no memory, any size) at two short lengths and scaled to the chunk as ``a*T + b*T^2``
(linear layers and cross-attention grow with T, self-attention with T^2), divided by the step time and the
GPU's peak dense bf16 FLOP/s (a table by device name, or ``--peak-tflops``). Model FLOPs count the step
without checkpointing's recomputation and with no weight gradients for the frozen base.
Targets (issue "scale out ..."): peak <= 4.5 GiB with checkpointing and a bf16 base, ratio <= 1.03, MFU >= 40 %.

Without CUDA it refuses in one line (exit 2). ``--dry-run`` runs the same code on the CPU with the tiny
demo (fp32, short crops, no memory or MFU figures) so every path but the CUDA-only ones is executed.
Not part of CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from engine import config as cfgmod
from engine import protocol

CHUNK_SECONDS = 60
LATENT_FPS = 25
# Peak dense bf16 tensor FLOP/s (no sparsity), from the vendors' data sheets; matched by substring of
# torch.cuda.get_device_name(), most specific first.
PEAK_BF16_TFLOPS = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX A6000", 155.0),
    ("RTX 5090", 209.0),
    ("RTX 4090", 165.0),
    ("RTX 4080", 97.0),
    ("RTX 3090", 71.0),
)


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


@dataclass
class Row:
    base: str
    checkpointing: bool
    attention: str
    peak_gib: float | None = None
    engine_s: float | None = None
    bare_s: float | None = None
    mfu: float | None = None
    note: str = ""


# --------------------------------------------------------------------------- FLOPs


def count_flops(model_config: Any, lengths: list[int], encoder_length: int, rank: int) -> list[int]:
    """FLOPs of one sample's forward + backward through the decoder with a LoRA (rank ``rank``, the run's
    targets) at each of ``lengths`` latent frames, counted on fake tensors: nothing is allocated."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from engine.adapters import attach_adapter
    from engine.models.demo.acestep_demo_modeling import AceStepConditionGenerationModel

    config = cfgmod.parse({"checkpoint_dir": "-", "dataset_dir": "-", "output_dir": "-", "rank": rank, "alpha": 2 * rank})
    # eager attention: its matmuls are what FlopCounterMode counts (it has no formula for every fused SDPA
    # kernel, and the CPU one it would meet here is uncounted); the model FLOPs are the same.
    model_config._attn_implementation = "eager"
    # Built on the meta device, then given fake CPU tensors: shapes and dtypes only, so the 2B decoder costs
    # no memory (meta alone cannot run it: autocast, which its rotary embedding enters, refuses meta).
    with torch.device("meta"):
        decoder = AceStepConditionGenerationModel(model_config).decoder
        adapter = attach_adapter(decoder, config)
    counts = []
    with FakeTensorMode(allow_non_fake_inputs=True):
        adapter.module.to_empty(device="cpu")
        adapter.module.train()
        hidden, acoustic = model_config.hidden_size, model_config.audio_acoustic_hidden_dim
        for frames in lengths:
            inputs = dict(
                hidden_states=torch.randn(1, frames, acoustic),
                timestep=torch.rand(1),
                timestep_r=torch.rand(1),
                attention_mask=torch.ones(1, frames),
                encoder_hidden_states=torch.randn(1, encoder_length, hidden),
                encoder_attention_mask=torch.ones(1, encoder_length),
                context_latents=torch.randn(1, frames, model_config.in_channels - acoustic),
            )
            counter = FlopCounterMode(display=False)
            with counter:
                out = adapter.module(**inputs)[0]
                out.float().pow(2).mean().backward()
            counts.append(int(counter.get_total_flops()))
    return counts


def flops_per_sample_step(model_config: Any, frames: int, encoder_length: int, rank: int, short: int = 64) -> float:
    """``c + a*T + b*T^2`` through counts at ``short``, ``2*short`` and ``3*short`` frames, evaluated at
    ``frames``: the condition side (cross-attention keys and values over the encoder tokens) is constant,
    the linear layers grow with T and self-attention with T^2."""
    f1, f2, f3 = count_flops(model_config, [short, 2 * short, 3 * short], encoder_length, rank)
    b = (f3 - 2 * f2 + f1) / (2 * short * short)  # second difference
    a = (f2 - f1) / short - b * 3 * short
    c = f1 - a * short - b * short * short
    return c + a * frames + b * frames * frames


# --------------------------------------------------------------------------- runs


def run_values(paths: dict, out: str, *, base: str, checkpointing: bool, attention: str, steps: int, dry: bool) -> dict:
    values = {
        "checkpoint_dir": paths["checkpoint_dir"],
        "model_variant": paths["model_variant"],
        "dataset_dir": paths["dataset_dir"],
        "output_dir": out,
        "rank": 64,
        "alpha": 128,
        "attention_type": "both",
        "target_mlp": True,
        "batch_size": 1,
        "gradient_accumulation": 1,
        "max_steps": steps,
        "epochs": 100000,
        "warmup_steps": 2,
        "num_workers": 2,
        "device": "cpu" if dry else "cuda",
        "precision": "fp32" if dry else "bf16",
        "attention_backend": attention,
        "gradient_checkpointing": checkpointing,
        "base_quantization": base,
        "log_every": 1000,
        "log_heavy_every": 100000,
        "save_every": 100000,
        "save_best": False,
        "sample_every": 0,
    }
    if dry:
        values.update(num_workers=0, max_latent_length=64, rank=8, alpha=16)
    else:
        values["chunk_duration"] = CHUNK_SECONDS
    return {k: v for k, v in values.items() if k in cfgmod.FIELD_BY_NAME}


def engine_step_time(values: dict, warmup: int) -> float:
    from engine.channel.control import CommandInbox
    from engine.channel.events import CallbackSink, EventBus
    from engine.train.trainer import Trainer

    marks: list[tuple[int, float]] = []

    def on_event(event: Any) -> None:
        if isinstance(event, protocol.StepMetrics):
            marks.append((event.step, time.perf_counter()))

    final = Trainer(cfgmod.parse(values), EventBus([CallbackSink(on_event)]), CommandInbox(None), run_id="gpu-bench").fit()
    if not isinstance(final, protocol.RunFinished):
        raise RuntimeError(getattr(final, "message", str(final)))
    first = next((s, t) for s, t in marks if s >= warmup)
    last = marks[-1]
    return (last[1] - first[1]) / max(1, last[0] - first[0])


def bare_step_time(values: dict, steps: int, warmup: int) -> float:
    """The same step as the engine's, on one fixed batch: forward under autocast, loss, backward, clip, AdamW."""
    from engine.adapters import attach_adapter
    from engine.data.dataset import TensorDataset
    from engine.data.loader import build_loader, build_planner
    from engine.models.loader import enable_gradient_checkpointing, load_decoder, resolve_device, resolve_dtype
    from engine.train import recipe

    config = cfgmod.resolve_variant_defaults(cfgmod.parse(values), {})
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    dataset = TensorDataset(config.dataset_dir)
    batch = next(iter(build_loader(dataset, config, planner=build_planner(dataset, config))))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    torch.manual_seed(config.seed)
    loaded = load_decoder(
        config.model_dir(),
        device=device,
        dtype=dtype,
        attention_backend=config.attention_backend,
        base_quantization=config.base_quantization,
    )
    adapter = attach_adapter(loaded.decoder, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(adapter.module, config.gradient_checkpointing_ratio)
    adapter.module.train()
    opt = torch.optim.AdamW(adapter.parameters(), lr=config.resolved_learning_rate(), weight_decay=config.weight_decay)
    x0, mask = batch["target_latents"].to(dtype), batch["frame_mask"]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    times = []
    for i in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        t = recipe.sample_timesteps(x0.shape[0], mode="continuous", mu=-0.4, sigma=1.0).to(device)
        noise = torch.randn_like(x0)
        x_t = recipe.noisy_input(x0, noise, t)
        with autocast:
            pred = adapter.module(
                hidden_states=x_t,
                timestep=t,
                timestep_r=t,
                attention_mask=mask,
                encoder_hidden_states=batch["encoder_hidden_states"].to(dtype),
                encoder_attention_mask=batch["encoder_attention_mask"],
                context_latents=batch["context_latents"].to(dtype),
            )[0]
        loss, _ = recipe.flow_matching_loss(pred.float(), noise.float(), x0.float(), mask, t=t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), config.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the engine reads the loss every step too
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    del adapter, loaded, opt
    return statistics.mean(times)


def measure(row: Row, values: dict, steps: int, warmup: int, flops: float, peak: float | None) -> None:
    cuda = values["device"] == "cuda"
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        row.engine_s = engine_step_time(values, warmup)
        if cuda:
            row.peak_gib = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.empty_cache()
        row.bare_s = bare_step_time(values, steps, warmup)
        if peak and row.engine_s:
            row.mfu = flops / row.engine_s / (peak * 1e12)
    except Exception as exc:  # one row failing (no flash kernel for this GPU, OOM) must not lose the table
        row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:90]
    finally:
        if cuda:
            torch.cuda.empty_cache()


def ddp_line(paths: dict, work: str, steps: int, warmup: int, single: Row | None) -> str:
    """Scaling over every visible GPU, through the engine's own multi-GPU fields where this build has them."""
    n = torch.cuda.device_count()
    if n < 2:
        return f"DDP: {n} GPU visible: no scaling figure (needs two or more)"
    if not {"devices", "strategy"} <= set(cfgmod.FIELD_BY_NAME):
        return f"DDP: {n} GPUs visible but this build has no --devices/--strategy fields: skipped"
    if single is None or not single.engine_s:
        return "DDP: skipped (no single-GPU bf16 row to compare against)"
    out = os.path.join(work, "ddp")
    values = run_values(paths, out, base="none", checkpointing=True, attention="sdpa", steps=steps, dry=False)
    values.update(devices=str(n), strategy="ddp")
    config_path = os.path.join(work, "ddp.json")
    with open(config_path, "w") as fh:
        json.dump(values, fh)
    cmd = [sys.executable, "-m", "engine.cli", "train", "--config", config_path]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    events = os.path.join(out, "events.jsonl")
    if done.returncode != 0 or not os.path.isfile(events):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"DDP over {n} GPUs failed (exit {done.returncode}): {tail[0][:120]}"
    marks = [(e.step, e.ts) for e in protocol.read_events(events) if isinstance(e, protocol.StepMetrics) and e.step >= warmup]
    if len(marks) < 2:
        return f"DDP over {n} GPUs: too few steps recorded to time"
    step = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
    efficiency = single.engine_s / step  # n samples per DDP step vs 1 per single step, at the same per-GPU batch
    return f"DDP over {n} GPUs: {step * 1e3:.0f} ms/step for {n} samples, scaling efficiency {efficiency:.0%} (1 GPU: {single.engine_s * 1e3:.0f} ms)"


# --------------------------------------------------------------------------- table


def fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value * scale, spec)


def table(rows: list[Row]) -> str:
    head = (
        f"{'base':5} {'ckpt':4} {'attention':17} {'peak GiB':>8} {'engine ms':>9} {'bare ms':>8} {'eng/bare':>8} {'MFU':>6}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.engine_s / r.bare_s if r.engine_s and r.bare_s else None
        lines.append(
            f"{r.base:5} {'on' if r.checkpointing else 'off':4} {r.attention:17} {fmt(r.peak_gib, '8.2f')} "
            f"{fmt(r.engine_s, '9.1f', 1e3)} {fmt(r.bare_s, '8.1f', 1e3)} {fmt(ratio, '8.3f')} {fmt(r.mfu, '5.1%'):>6}  {r.note}"
        )
    return "\n".join(lines)


def plan(bases: list[str], dry: bool) -> list[Row]:
    attentions = ["sdpa"]
    if not dry and importlib.util.find_spec("flash_attn") is not None:
        attentions.append("flash_attention_2")
    rows = [Row("none", ckpt, attn) for attn in attentions for ckpt in (True, False)] if "none" in bases else []
    rows += [Row(base, True, attentions[-1]) for base in bases if base != "none"]
    if not dry and "flash_attention_2" not in attentions:
        rows.append(Row("none", True, "flash_attention_2", note="flash-attn not installed: skipped"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="a demo root to (re)use (default: a temp folder)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--only", default="none,int8,nf4", help="bases to measure (comma separated)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s, if not in the table")
    parser.add_argument("--no-ddp", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="the CPU parts on the tiny demo (no GPU figures)")
    parser.add_argument(
        "--full-flops", action="store_true", help="with --dry-run: also count the full-size FLOPs (minutes on a CPU)"
    )
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py needs a CUDA GPU and none is visible; --dry-run runs its CPU parts on the tiny demo",
            file=sys.stderr,
        )
        return 2
    bases = [b.strip() for b in args.only.split(",") if b.strip()]
    bad = [b for b in bases if b not in cfgmod.BASE_QUANTIZATIONS]
    if bad:
        print(f"--only: {', '.join(bad)} is not one of {', '.join(cfgmod.BASE_QUANTIZATIONS)}", file=sys.stderr)
        return 2
    steps, warmup = (3, 1) if dry else (args.steps, args.warmup)

    from engine.models.demo.build import demo_config, setup_demo, write_demo_dataset

    work = args.root or tempfile.mkdtemp(prefix="sidestep-gpu-bench-")
    size = "tiny" if dry else "full"
    paths = setup_demo(os.path.join(work, f"demo-{size}"), size=size, n_samples=4)
    model_config = demo_config(size)
    encoder_length = 48 if dry else 769
    if not dry:  # 60 s clips, so every step trains on a whole 60 s chunk
        paths["dataset_dir"] = write_demo_dataset(
            os.path.join(work, "dataset-60s"),
            n_samples=4,
            hidden_size=model_config.hidden_size,
            silence_latent=os.path.join(paths["checkpoint_dir"], "silence_latent.pt"),
            encoder_length=encoder_length,
            durations=(CHUNK_SECONDS,),
        )
    frames = 64 if dry else CHUNK_SECONDS * LATENT_FPS
    rank = 8 if dry else 64

    t0 = time.perf_counter()
    flops = flops_per_sample_step(model_config, frames, encoder_length, rank)
    print(
        f"decoder FLOPs per sample-step ({size}, {frames} frames): {flops:.3e} (counted on fake tensors in {time.perf_counter() - t0:.1f} s)"
    )
    if dry and args.full_flops:
        full = flops_per_sample_step(demo_config("full"), CHUNK_SECONDS * LATENT_FPS, 769, 64)
        print(f"decoder FLOPs per sample-step (full, {CHUNK_SECONDS * LATENT_FPS} frames): {full:.3e}", flush=True)

    if dry:
        device_name, peak = "CPU (dry run)", None
    else:
        device_name = torch.cuda.get_device_name()
        peak = args.peak_tflops or peak_tflops(device_name)
    print(
        f"device: {device_name}; peak bf16: {f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops for MFU)'}",
        flush=True,
    )

    rows = plan(bases, dry)
    for i, row in enumerate(rows):
        if row.note:
            continue
        values = run_values(
            paths,
            os.path.join(work, f"run{i}"),
            base=row.base,
            checkpointing=row.checkpointing,
            attention=row.attention,
            steps=steps,
            dry=dry,
        )
        measure(row, values, steps, warmup, flops, peak)
        print(f"  measured {row.base}/{'ckpt' if row.checkpointing else 'no-ckpt'}/{row.attention}", flush=True)
    print()
    print(table(rows))
    if not dry and not args.no_ddp:
        single = next((r for r in rows if r.base == "none" and r.checkpointing and r.attention == "sdpa"), None)
        print(ddp_line(paths, work, steps, warmup, single))
    elif dry:
        print("DDP: not run in a dry run")
    print("targets: peak <= 4.5 GiB (bf16 base, checkpointing), engine/bare <= 1.03, MFU >= 40 %")
    return 0 if all(not r.note or "skipped" in r.note for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
