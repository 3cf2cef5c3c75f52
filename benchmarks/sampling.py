"""Sampling speed: seconds of wall time per second of rendered audio through the one generation path
(``engine.audio.generate``: conditioning, the flow-matching sampler, the VAE decode), on the demo model.

    .venv/bin/python benchmarks/sampling.py [--root DIR] [--size tiny|full] [--device cpu] [--duration 10]
                                           [--steps 8] [--guidance 7] [--repeats 3]

Prints one line per repeat and the median, split into sampler and VAE decode time. Conditioning (the
text and condition encoders) is done once up front, as training does, and is reported apart. On a GPU
it also prints the peak memory of a sampling pass. The demo root is written on first use (tiny: seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from engine.audio import generate as gen
from engine.models import sampling
from engine.models.loader import load_decoder, resolve_device, resolve_dtype


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="a demo root to (re)use (default: a temp folder)")
    parser.add_argument("--size", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=1.0, help="1 = none (turbo-like), 7 = base/sft APG")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from engine.models.demo.audio import write_demo_audio_components
    from engine.models.demo.build import setup_demo

    root = args.root or tempfile.mkdtemp(prefix="sidestep-sampling-")
    paths = setup_demo(root, size=args.size)
    write_demo_audio_components(paths["checkpoint_dir"], size=args.size)
    model_dir = os.path.join(paths["checkpoint_dir"], paths["model_variant"])
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    loaded = load_decoder(model_dir, device=device, dtype=dtype)
    settings = sampling.SamplerSettings(steps=args.steps, shift=1.0, guidance=args.guidance)
    renderer = gen.Renderer.load(
        paths["checkpoint_dir"],
        model_dir,
        decoder=loaded.decoder,
        null_condition_emb=loaded.null_condition_emb,
        settings=settings,
        device=device,
        dtype=dtype,
    )
    prompt = gen.Prompt("a warm major chord, gentle pad", duration=args.duration, seed=0)
    started = time.perf_counter()
    cond = renderer.condition(prompt)
    print(f"conditioning (once per prompt): {time.perf_counter() - started:.2f} s")
    renderer.drop_encoders()
    totals, samplers, decodes = [], [], []
    for repeat in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        latents = sampling.sample_latents(
            renderer.decoder,
            encoder_hidden_states=cond.states,
            encoder_attention_mask=cond.mask,
            context_latents=cond.context,
            null_condition_emb=renderer.null_condition_emb,
            settings=settings,
            generator=torch.Generator().manual_seed(repeat),
            device=device,
            dtype=dtype,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        audio = renderer.decode(latents)
        t2 = time.perf_counter()
        seconds = audio.shape[0] / gen.SAMPLE_RATE
        totals.append((t2 - t0) / seconds)
        samplers.append((t1 - t0) / seconds)
        decodes.append((t2 - t1) / seconds)
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda" else ""
        print(
            f"repeat {repeat + 1}: {t2 - t0:.2f} s for {seconds:.1f} s of audio ({t1 - t0:.2f} sampler, {t2 - t1:.2f} decode){peak}"
        )
    print(
        f"{args.size} demo on {device} ({str(dtype).removeprefix('torch.')}), {args.steps} steps, guidance {args.guidance:g}: "
        f"median {statistics.median(totals):.3f} s per rendered second "
        f"(sampler {statistics.median(samplers):.3f}, VAE decode {statistics.median(decodes):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
