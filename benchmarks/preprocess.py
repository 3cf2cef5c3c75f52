"""Preprocessing throughput: seconds of audio turned into training tensors per second of wall time.

    python benchmarks/preprocess.py                      # CPU, tiny demo components (the default)
    python benchmarks/preprocess.py --device cuda --size full --songs 8 --seconds 60
                                                         # GPU, demo at the real 2B / VAE / Qwen3-0.6B size:
                                                         # also prints peak GPU memory of each pass

Everything is generated under a temporary folder (``--keep`` to look at it): the demo checkpoint
(``engine.models.demo.build``), the demo VAE and text encoder (``engine.models.demo.audio``) and synthetic
songs with sidecars. It then runs the same two passes as ``sidestep preprocess`` and prints one line
per pass and the end-to-end figure. Model loading is included in the pass times (it is part of what
a user waits for); the "steady" figure excludes it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--size", default="tiny", choices=("tiny", "full"), help="demo component size (default tiny)")
    parser.add_argument("--songs", type=int, default=6, help="number of synthetic songs (default 6)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each song in seconds (default 4)")
    parser.add_argument("--normalize", default="lufs", choices=("none", "peak", "lufs"))
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args(argv)

    import torch

    from engine import prepconfig as pcfg
    from engine.audio.preprocess.pipeline import run_preprocess
    from engine.models.demo.audio import synthesize_demo_audio, write_demo_audio_components
    from engine.models.demo.build import DEMO_FOLDER, write_demo_checkpoint

    root = tempfile.mkdtemp(prefix="sidestep-bench-pre-")
    try:
        t0 = time.perf_counter()
        write_demo_checkpoint(os.path.join(root, "ck"), size=args.size)
        write_demo_audio_components(os.path.join(root, "ck"), size=args.size)
        synthesize_demo_audio(os.path.join(root, "songs"), args.songs, seconds=(args.seconds,))
        setup_s = time.perf_counter() - t0
        config = pcfg.parse(
            {
                "checkpoint_dir": os.path.join(root, "ck"),
                "model_variant": DEMO_FOLDER,
                "audio_dir": os.path.join(root, "songs"),
                "output_dir": os.path.join(root, "tensors"),
                "normalize": args.normalize,
                "device": args.device,
                "precision": args.precision,
            }
        )
        encoded: list[tuple[float, float]] = []  # (elapsed_s, audio_seconds) of each pass-1 file

        def emit(event) -> None:
            if event.status == "ok" and event.stage == "pass1":
                encoded.append((event.elapsed_s, event.audio_seconds))
            if event.status == "failed":
                print(f"FAILED {event.file}: {event.message}", file=sys.stderr)

        cpu0 = time.process_time()
        summary = run_preprocess(config, emit)
        cpu_s = time.process_time() - cpu0
        audio = summary.audio_seconds
        print(
            f"device {args.device} ({torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != 'cpu' else 'CPU'}), "
            f"size {args.size}, torch threads {torch.get_num_threads()}, setup {setup_s:.1f} s (not counted)"
        )
        print(f"{summary.processed} songs, {audio:.1f} s of audio, {len(summary.failed)} failed")
        for name in ("pass1", "pass2"):
            seconds = summary.pass_seconds.get(name, 0.0)
            peak = summary.peak_gpu_mb.get(name)
            memory = f", peak GPU memory {peak:,.0f} MiB" if peak is not None else ""
            print(f"{name}: {seconds:.1f} s incl. model load{memory}")
        # Steady state: from the first encoded file to the last, so model loading and warm-up drop out.
        span = encoded[-1][0] - encoded[0][0] if len(encoded) > 1 else 0.0
        steady_rate = sum(a for _, a in encoded[1:]) / span if span > 0 else float("nan")
        print(
            f"throughput: {audio / summary.elapsed_s:.2f} s of audio per second end to end "
            f"({summary.elapsed_s:.1f} s wall), pass 1 steady state {steady_rate:.2f} s/s"
        )
        # CPU time is what a busy shared machine does not distort: a figure to compare across runs.
        print(
            f"process CPU time {cpu_s:.1f} s = {cpu_s / audio:.2f} CPU-s per second of audio (load average now {os.getloadavg()[0]:.1f})"
        )
        if args.keep:
            print(f"kept {root}")
        return 0 if not summary.failed else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
