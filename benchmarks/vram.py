"""VRAM estimate vs what the model keeps: ``engine/vram.py`` against a count of autograd's saved bytes
on the meta device (``engine/analysis/memcount.py``), and on a CUDA GPU against
``torch.cuda.max_memory_allocated``.

    .venv/bin/python benchmarks/vram.py [--layers 24] [--frames 750 1500 3000] [--ratios 0.5 1.0 0]
                                        [--rank 64] [--batch 1] [--backend sdpa] [--adapter lora|dora|lokr|loha|oft]
                                        [--cuda]

Meta (any machine, no memory used): one line per (checkpoint ratio, crop): the estimator's activation
figure, the counted bytes and their ratio (the test demands 0.85..1.15; tests/engine/test_vram.py runs
4 layers of the full-width decoder, this runs the full depth by default).

``--cuda``: the same decoder with real random weights on the GPU, one forward + backward + optimizer
step under bf16 autocast; prints the measured static memory (weights + adapter), activations after the
forward, and the peak (``max_memory_allocated``) beside the estimate's parts. Refuses without CUDA.
Record the figures (GPU, torch version, date) in ``benchmarks/vram_results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import vram
from engine.config import ATTENTION_BACKENDS, TrainConfig

MIB = 2**20


def _config(args: argparse.Namespace, ratio: float) -> TrainConfig:
    return TrainConfig(
        gradient_checkpointing=ratio > 0,
        gradient_checkpointing_ratio=ratio if ratio > 0 else 1.0,
        rank=args.rank,
        alpha=2 * args.rank,
        batch_size=args.batch,
        attention_backend=args.backend,
        adapter_type="lora" if args.adapter == "dora" else args.adapter,
        use_dora=args.adapter == "dora",
    )


def _shape(layers: int) -> vram.ModelShape:
    return dataclasses.replace(vram.ModelShape(), layers=layers, sliding_layers=(layers + 1) // 2)


def meta(args: argparse.Namespace) -> int:
    from engine.analysis import memcount

    worst = 0.0
    for ratio in args.ratios:
        config = _config(args, ratio)
        started = time.perf_counter()
        model = memcount.build(config, layers=args.layers)
        for frames in args.frames:
            counted = memcount.count_saved_bytes(model, frames=frames, batch=args.batch)
            estimated = vram.activation_bytes(_shape(args.layers), config, frames)
            worst = max(worst, abs(estimated / counted - 1))
            print(
                f"layers {args.layers} ratio {ratio:g} ({model.checkpointed} checkpointed) frames {frames} ({frames / 25:g} s) "
                f"batch {args.batch}: estimate {estimated / MIB:9.1f} MiB  counted {counted / MIB:9.1f} MiB  "
                f"ratio {estimated / counted:.3f}",
                flush=True,
            )
        print(f"  (ratio {ratio:g}: {time.perf_counter() - started:.1f} s)", flush=True)
    print(f"largest deviation {worst:.1%} (allowed 15 %)")
    return 0 if worst <= 0.15 else 1


def cuda(args: argparse.Namespace) -> int:
    import torch

    from engine.analysis import memcount

    if not torch.cuda.is_available():
        print("error: --cuda needs a CUDA GPU (none visible); the meta-device count runs without one", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__}")
    for ratio in args.ratios:
        config = _config(args, ratio)
        for frames in args.frames:
            measured = memcount.cuda_peak(config, frames=frames, batch=args.batch)
            est = vram.estimate(_shape(args.layers), config, frames=frames)
            static = est.weights + est.adapter
            peak = est.total - est.context  # max_memory_allocated does not see the CUDA context
            print(
                f"ratio {ratio:g} frames {frames}: static {measured['static'] / MIB:.0f} (est {static / MIB:.0f}) MiB, "
                f"activations {measured['activations'] / MIB:.0f} (est {est.activations / MIB:.0f}) MiB, "
                f"peak {measured['peak'] / MIB:.0f} (est {peak / MIB:.0f}) MiB, ratio {peak / measured['peak']:.3f}",
                flush=True,
            )
            torch.cuda.empty_cache()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="decoder depth (24 = the shipped 2B; --cuda always builds 24)")
    parser.add_argument("--frames", type=int, nargs="+", default=[750, 1500, 3000], help="crop lengths in latent frames (25/s)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 1.0, 0.0], help="checkpoint ratios (0 = off)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--adapter",
        default="lora",
        choices=["lora", "dora", "lokr", "loha", "oft"],
        help="adapter kind (its own settings at the defaults)",
    )
    parser.add_argument("--backend", default="sdpa", choices=[b for b in ATTENTION_BACKENDS if b != "flash_attention_2"])
    parser.add_argument("--cuda", action="store_true", help="compare with torch.cuda.max_memory_allocated on a GPU")
    args = parser.parse_args()
    if args.cuda:
        args.layers = 24
        return cuda(args)
    return meta(args)


if __name__ == "__main__":
    raise SystemExit(main())
