"""Snapshots of the first-run, Models, Dataset and Setup screens (and the Setup dialogs) at 80x24 and
160x48. Deterministic: relative paths under a fresh cwd, no GPUs, no cursor blink, no animation, a
fixed HOME; the output folder is given (no timestamped default).

Update only after looking at the report: ``pytest tests/snapshots/test_forms_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pt_files import write_dataset
from textual.widgets import Input
from textual.worker import WorkerState

from engine import discovery
from sidestep_tui.app import make_app
from sidestep_tui.settings import Settings

SIZES = [(80, 24), (160, 48)]
MODEL_CONFIG = {"model_type": "acestep", "num_hidden_layers": 24, "hidden_size": 2048, "timestep_mu": -0.4, "timestep_sigma": 1.0}


def _model(root: Path, name: str, *, weights: bool = True, **config: Any) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "config.json").write_text(json.dumps({**MODEL_CONFIG, **config}))
    if weights:
        (root / name / "model.safetensors").write_bytes(b"\0" * 4096)


@pytest.fixture(scope="session")
def snapshot_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four samples of fixed lengths (10 s, 20 s, 5 s, 15 s) in the ACE-Step tensor format, written
    without torch (tests/ui/pt_files.py), independent of how the demo data is made."""
    return write_dataset(tmp_path_factory.mktemp("snap-data") / "dataset", (250, 500, 125, 375))


@pytest.fixture
def snap_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot_dataset: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(discovery, "gpus", lambda: [])
    monkeypatch.setattr(Input, "cursor_blink", False)
    root = tmp_path / "ckpt"
    _model(root, "acestep-v15-turbo", is_turbo=True)
    _model(root, "acestep-v15-base", is_turbo=False)
    _model(root, "acestep-v15-xl-sft", hidden_size=2560, num_hidden_layers=32, timestep_mu=-0.3)
    _model(root, "my-sft-finetune", is_turbo=False)
    _model(root, "broken-model", weights=False)
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    shutil.copytree(snapshot_dataset, tmp_path / "data")
    (tmp_path / "data" / "song_x.pt").write_bytes(b"not a torch file")
    (tmp_path / "data" / "preprocess_meta.json").write_text(json.dumps({"model_variant": "turbo"}))  # stale for base
    return tmp_path


def _app(mode: str, *, settings: Settings | None = None, draft: dict[str, Any] | None = None):
    app = make_app(
        settings=settings if settings is not None else Settings(checkpoint_root="ckpt", output_root="runs"),
        settings_path="config/settings.json",
        initial_mode=mode,
        draft=draft,
    )
    app.animation_level = "none"
    return app


DRAFT = {"checkpoint_dir": "ckpt", "model_variant": "base", "dataset_dir": "data", "output_dir": "runs/snap"}


async def _settle(pilot, rounds: int = 50) -> None:
    """Until no worker runs: a path check starts a scan, so one ``wait_for_complete`` is not enough."""
    for _ in range(rounds):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in pilot.app.workers):
            return
    raise AssertionError("the app did not settle")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_first_run(snap_compare, snap_env: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        pilot.app.screen.query_one("#checkpoint-root Input", Input).value = "ckpt"
        await _settle(pilot)

    assert snap_compare(_app("models", settings=Settings()), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_models(snap_compare, snap_env: Path, size: tuple[int, int]) -> None:
    assert snap_compare(_app("models"), terminal_size=size, run_before=_settle)


def test_models_filtered(snap_compare, snap_env: Path) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press(*"sft")
        await _settle(pilot)

    assert snap_compare(_app("models"), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dataset_with_a_corrupt_file(snap_compare, snap_env: Path, size: tuple[int, int]) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        pilot.app.screen.query_one("#dataset-path Input", Input).value = "data"
        await _settle(pilot)

    assert snap_compare(
        _app("dataset", draft={"checkpoint_dir": "ckpt", "model_variant": "base"}), terminal_size=size, run_before=run_before
    )


@pytest.mark.integration  # the audio folder is scanned by the dataset builder in a child interpreter
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dataset_audio_folder(snap_compare, snap_env: Path, size: tuple[int, int]) -> None:
    """The audio tab after the builder's scan: a file per row with its sidecar, the problems in place."""
    from ui_helpers import write_song_folder

    write_song_folder(snap_env / "songs")

    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("ctrl+t")
        pilot.app.screen.query_one("#audio-path Input", Input).value = "songs"
        await _settle(pilot)

    assert snap_compare(
        _app("dataset", draft={"checkpoint_dir": "ckpt", "model_variant": "base"}), terminal_size=size, run_before=run_before
    )


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_setup(snap_compare, snap_env: Path, size: tuple[int, int]) -> None:
    assert snap_compare(_app("setup", draft=DRAFT), terminal_size=size, run_before=_settle)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_setup_with_errors(snap_compare, snap_env: Path, size: tuple[int, int]) -> None:
    draft = {**DRAFT, "rank": "0", "learning_rate": "abc"}

    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("ctrl+n")  # jump to the first problem
        await _settle(pilot)

    assert snap_compare(_app("setup", draft=draft), terminal_size=size, run_before=run_before)


def test_setup_advanced_lokr(snap_compare, snap_env: Path) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("ctrl+t")
        await _settle(pilot)
        pilot.app.screen.form.focus_field("lokr_linear_dim")
        await _settle(pilot)

    assert snap_compare(_app("setup", draft={**DRAFT, "adapter_type": "lokr"}), terminal_size=(160, 48), run_before=run_before)


def test_presets_dialog(snap_compare, snap_env: Path) -> None:
    assert snap_compare(_app("setup", draft=DRAFT), terminal_size=(80, 24), press=["ctrl+l"], run_before=_settle)


def test_review_dialog(snap_compare, snap_env: Path) -> None:
    assert snap_compare(_app("setup", draft=DRAFT), terminal_size=(160, 48), press=["ctrl+r"], run_before=_settle)
