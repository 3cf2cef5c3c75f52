"""``sidestep demo`` in the TUI: write (or reuse) the demo model and data, then the run config.

Stdlib only: the torch part of the setup runs in a subprocess (``engine.demo.prepare_demo``), so the UI
process stays free of torch. Called from a worker thread; raises with a readable message on failure.
"""

from __future__ import annotations

from typing import Any

from engine import config as cfgmod
from engine.demo import demo_config, prepare_demo


def prepare_demo_run(root: str | None = None, adapter: str = "lora", max_steps: int = 200) -> tuple[dict[str, str], str]:
    """(paths, config_json): paths has checkpoint_dir, model_variant, dataset_dir, output_root."""
    paths = prepare_demo(root)
    config = demo_config(paths, adapter=adapter, max_steps=max_steps)
    return paths, cfgmod.to_json(config)


def demo_draft(paths: dict[str, str]) -> dict[str, Any]:
    return {
        "checkpoint_dir": paths["checkpoint_dir"],
        "model_variant": paths["model_variant"],
        "dataset_dir": paths["dataset_dir"],
    }
