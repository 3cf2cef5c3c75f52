"""Engine overhead: the Trainer's mean optimizer-step time (data loading, CFG dropout, timestep
tracking, events to a queue and events.jsonl, TensorBoard scalars and histograms, command polling)
against a bare PyTorch loop doing the same forward / backward / clip / step on the same model, the
same adapter and a fixed batch, in the same process. Target: ratio <= 1.05.

    .venv/bin/python benchmarks/engine_overhead.py [--size tiny|small] [--steps 300] [--repeats 3]

Runs alternate (bare, engine, bare, engine, ...) and the medians are compared, so a neighbour that
loads the machine for a while hurts both sides alike.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from engine import config as cfgmod
from engine import protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus, QueueSink
from engine.train import recipe
from engine.train.trainer import Trainer


def run_config(paths: dict, out: str, steps: int) -> cfgmod.TrainConfig:
    return cfgmod.parse(
        {
            "checkpoint_dir": paths["checkpoint_dir"],
            "model_variant": paths["model_variant"],
            "dataset_dir": paths["dataset_dir"],
            "output_dir": out,
            "rank": 16,
            "alpha": 16,
            "gradient_accumulation": 1,
            "max_steps": steps,
            "epochs": 100000,
            "warmup_steps": 10,
            "num_workers": 0,
            "device": "cpu",
            "max_latent_length": 100,  # every sample the same length, as in the bare loop's fixed batch
            "log_every": 10,
            "log_heavy_every": 50,
            "save_every": 100000,
            "save_best": False,
        }
    )


def engine_step_time(config: cfgmod.TrainConfig, warmup: int) -> float:
    marks: list[tuple[int, float]] = []

    def on_event(event):
        if isinstance(event, protocol.StepMetrics):
            marks.append((event.step, time.perf_counter()))

    q = mp.get_context("spawn").Queue()
    bus = EventBus([QueueSink(q), CallbackSink(on_event)])
    final = Trainer(config, bus, CommandInbox(None), run_id="bench").fit()
    bus.close()
    if not isinstance(final, protocol.RunFinished):
        raise SystemExit(f"engine run failed: {final.message}\n{final.traceback}")
    first = next((s, t) for s, t in marks if s >= warmup)
    last = marks[-1]
    return (last[1] - first[1]) / (last[0] - first[0])


def bare_step_time(config: cfgmod.TrainConfig, steps: int, warmup: int) -> float:
    from engine.adapters import attach_adapter
    from engine.data.dataset import TensorDataset
    from engine.data.loader import build_loader, build_planner
    from engine.models.loader import enable_gradient_checkpointing, load_decoder

    config = cfgmod.resolve_variant_defaults(config, {})
    dataset = TensorDataset(config.dataset_dir)
    loader = build_loader(dataset, config, planner=build_planner(dataset, config))
    batch = next(iter(loader))
    torch.manual_seed(config.seed)
    loaded = load_decoder(config.model_dir(), device=torch.device("cpu"), dtype=torch.float32)
    adapter = attach_adapter(loaded.decoder, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(adapter.module, config.gradient_checkpointing_ratio)
    adapter.module.train()
    opt = torch.optim.AdamW(adapter.parameters(), lr=config.resolved_learning_rate(), weight_decay=config.weight_decay)
    x0, mask = batch["target_latents"].float(), batch["frame_mask"]
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        t = recipe.sample_timesteps(x0.shape[0], mode="continuous", mu=-0.4, sigma=1.0)
        noise = torch.randn_like(x0)
        x_t = recipe.noisy_input(x0, noise, t)
        pred = adapter.module(
            hidden_states=x_t,
            timestep=t,
            timestep_r=t,
            attention_mask=mask,
            encoder_hidden_states=batch["encoder_hidden_states"].float(),
            encoder_attention_mask=batch["encoder_attention_mask"],
            context_latents=batch["context_latents"].float(),
        )[0]
        loss, _ = recipe.flow_matching_loss(pred, noise, x0, mask, t=t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), config.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core each side: steadier numbers on a shared 2-core machine

    from engine.models.demo.build import setup_demo

    work = tempfile.mkdtemp(prefix="sidestep-bench-")
    paths = setup_demo(os.path.join(work, "demo"), size=args.size)
    warmup = max(20, args.steps // 10)
    bare, eng = [], []
    for r in range(args.repeats):
        config = run_config(paths, os.path.join(work, f"run{r}"), args.steps)
        bare.append(bare_step_time(config, args.steps, warmup))
        eng.append(engine_step_time(config, warmup))
        print(f"repeat {r + 1}: bare {bare[-1] * 1e3:.2f} ms/step, engine {eng[-1] * 1e3:.2f} ms/step", flush=True)
    b, e = statistics.median(bare), statistics.median(eng)
    ratio = e / b
    print(f"median bare {b * 1e3:.2f} ms/step, engine {e * 1e3:.2f} ms/step")
    print(f"engine/bare step-time ratio: {ratio:.3f} (target <= 1.05) {'OK' if ratio <= 1.05 else 'ABOVE TARGET'}")
    if not math.isfinite(ratio):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
