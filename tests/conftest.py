"""Shared fixtures. The demo model and dataset are generated once per test session (seconds, no
downloads); runs write under pytest's tmp dirs."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{checkpoint_dir, model_variant, dataset_dir, output_root} of a tiny demo written once."""
    from engine.cli.main import setup_demo

    root = tmp_path_factory.mktemp("demo")
    return setup_demo(str(root))


@pytest.fixture
def demo_config_values(demo_paths: dict[str, str], tmp_path) -> dict:
    """Config values for a short, fast CPU run on the demo (tests override what they exercise)."""
    return {
        "checkpoint_dir": demo_paths["checkpoint_dir"],
        "model_variant": demo_paths["model_variant"],
        "dataset_dir": demo_paths["dataset_dir"],
        "output_dir": os.path.join(str(tmp_path), "run"),
        "rank": 4,
        "alpha": 8,
        "lokr_linear_dim": 4,
        "lokr_linear_alpha": 4,
        "learning_rate": 1e-3,
        "gradient_accumulation": 1,
        "max_steps": 6,
        "warmup_steps": 2,
        "num_workers": 0,
        "device": "cpu",
        "log_every": 1,
        "log_heavy_every": 2,
        "save_every": 1000,
        "save_best_after": 1,
    }
