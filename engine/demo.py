"""The built-in demo, the stdlib side (contract module; the UI may import it): where it lives, its run
config, and its setup in a child interpreter.

The torch part (the demo model, synthesised songs, preprocessing) runs in ``python -m engine.cli demo
--setup-only`` (``engine.cli.main.setup_demo``), so a caller of ``prepare_demo`` stays free of torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from engine import config as cfgmod

DEMO_ROOT_ENV = "SIDESTEP_DEMO_ROOT"


def default_demo_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(DEMO_ROOT_ENV) or os.path.join(base, "sidestep", "demo")


def demo_config(paths: dict[str, str], *, adapter: str = "lora", max_steps: int = 200) -> cfgmod.TrainConfig:
    """A run that shows the whole product on a laptop CPU in well under a minute."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cfgmod.parse(
        {
            "checkpoint_dir": paths["checkpoint_dir"],
            "model_variant": paths["model_variant"],
            "dataset_dir": paths["dataset_dir"],
            "output_dir": os.path.join(paths["output_root"], f"demo-{adapter}-{stamp}"),
            "run_name": f"demo {adapter}",
            "adapter_type": adapter,
            "rank": 8,
            "alpha": 16,
            "lokr_linear_dim": 8,
            "lokr_linear_alpha": 8,
            "learning_rate": 2e-3,
            "batch_size": 1,
            "gradient_accumulation": 1,
            "epochs": 1000,
            "max_steps": max_steps,
            "warmup_steps": 20,
            "num_workers": 0,
            # A 1.4M-parameter model needs no activation recompute: without it each step takes a third less.
            "gradient_checkpointing": False,
            "save_every": 10,
            "save_best_after": 1,
            "log_every": 5,
            "log_heavy_every": 25,
            "device": "cpu",
        }
    )


def prepare_demo(root: str | None = None, *, audio: bool = True) -> dict[str, str]:
    """Write (or reuse) the demo model and data under ``root`` in a subprocess; returns its paths
    (checkpoint_dir, model_variant, dataset_dir, output_root). Raises ``RuntimeError`` naming the failure."""
    root = root or default_demo_root()
    argv = [sys.executable, "-m", "engine.cli", "demo", "--setup-only", "--root", root] + ([] if audio else ["--from-tensors"])
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"demo setup in {root} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
