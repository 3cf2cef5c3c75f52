"""Shared fixtures for engine tests that need the demo model (written once per session)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory) -> dict[str, str]:
    from engine.models.demo.build import setup_demo

    paths = setup_demo(tmp_path_factory.mktemp("demo"))
    paths["model_dir"] = os.path.join(paths["checkpoint_dir"], paths["model_variant"])
    return paths


@pytest.fixture(scope="session")
def tiny_config():
    from engine.models.demo.build import demo_config

    config = demo_config("tiny")
    config._attn_implementation = "sdpa"
    return config
