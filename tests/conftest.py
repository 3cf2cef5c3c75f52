"""Shared fixtures. The demo model and dataset are generated once per test session (seconds, no
downloads); runs write under pytest's tmp dirs.

A test that starts a process (the engine, a child interpreter, a CLI) is marked ``integration``; the
guard below fails any other test that tries (in its setup, fixtures included, or its body), so
``-m "not integration"`` means what it says."""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

_SPAWNERS: tuple[tuple[Any, str], ...] = (
    (subprocess.Popen, "_execute_child"),  # subprocess.run/check_output/Popen, asyncio subprocesses
    (multiprocessing.process.BaseProcess, "start"),  # every multiprocessing context
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
)  # not os.system: tests pickle it as an exploit payload, and a stand-in would not pickle by name


@contextlib.contextmanager
def _no_processes(item: pytest.Item) -> Iterator[list[str]]:
    """While active, starting a process raises, and is recorded (a worker thread may swallow the error)."""
    tried: list[str] = []
    saved = [(owner, name, getattr(owner, name)) for owner, name in _SPAWNERS if hasattr(owner, name)]

    def refuse(what: str) -> Any:
        def spawn(*_args: Any, **_kwargs: Any) -> Any:
            tried.append(what)
            raise RuntimeError(f"{item.nodeid} starts a process ({what}) but is not marked integration")

        return spawn

    for owner, name, _real in saved:
        setattr(owner, name, refuse(f"{getattr(owner, '__name__', owner)}.{name}"))
    try:
        yield tried
    finally:
        for owner, name, real in saved:
            setattr(owner, name, real)


def _guarded(item: pytest.Item) -> Iterator[Any]:
    if item.get_closest_marker("integration") is not None:
        return (yield)
    with _no_processes(item) as tried:
        result = yield
    if tried:
        pytest.fail(
            f"starts a process ({', '.join(sorted(set(tried)))}) but is not marked integration: "
            "mark it with pytest.mark.integration, or keep it in this process",
            pytrace=False,
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[Any]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    return (yield from _guarded(item))


@pytest.fixture(scope="session", autouse=True)
def _private_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs record model code hashes in the settings folder (engine/codehash.py): never the real ~/.config.
    Child engines inherit it; UI tests still set their own per test."""
    saved = os.environ.get("SIDESTEP_CONFIG_DIR")
    os.environ["SIDESTEP_CONFIG_DIR"] = str(tmp_path_factory.mktemp("config"))
    yield
    if saved is None:
        os.environ.pop("SIDESTEP_CONFIG_DIR", None)
    else:
        os.environ["SIDESTEP_CONFIG_DIR"] = saved


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{checkpoint_dir, model_variant, dataset_dir, output_root} of a tiny demo written once."""
    from engine.cli.main import setup_demo

    root = tmp_path_factory.mktemp("demo")
    return setup_demo(str(root))


@pytest.fixture(scope="session")
def demo_audio_root(demo_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint root with a copy of the session's demo model plus the demo VAE and text encoder:
    what generation and training samples need. The demo root itself stays as other tests expect it.
    (A copy, not a link: model code only runs from folders really under the checkpoint root.)"""
    import shutil

    from engine.models.demo.audio import write_demo_audio_components

    root = tmp_path_factory.mktemp("demo-audio")
    shutil.copytree(os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"]), root / demo_paths["model_variant"])
    shutil.copy2(os.path.join(demo_paths["checkpoint_dir"], "silence_latent.pt"), root / "silence_latent.pt")
    write_demo_audio_components(root)
    return str(root)


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
