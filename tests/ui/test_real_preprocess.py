"""The audio -> tensors flow through the real app and the real engine process, on the demo components:
an audio folder (written here with the standard library) -> the builder's report -> preprocessing in
the engine with per-file statuses -> the tensor folder goes to Setup, whose form accepts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable
from ui_helpers import screen_text, wait_until, write_song_folder

from engine import ptinspect
from sidestep_tui.app import make_app
from sidestep_tui.settings import Settings
from sidestep_tui.widgets.audio_prep import DONE, AudioPrep

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]

_WRITE = r"""
import json, sys
from engine.models.demo.build import DEMO_FOLDER, write_demo_checkpoint
from engine.models.demo.audio import write_demo_audio_components
write_demo_checkpoint(sys.argv[1])
write_demo_audio_components(sys.argv[1])
print(json.dumps({"model_variant": DEMO_FOLDER}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The demo model, VAE and text encoder (torch runs in the subprocess, not in this UI process)."""
    root = tmp_path_factory.mktemp("ckpt")
    done = subprocess.run([sys.executable, "-c", _WRITE, str(root)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"checkpoint_dir": str(root), **json.loads(done.stdout.strip().splitlines()[-1])}


def _status(prep: AudioPrep, row: str) -> str:
    return str(prep.query_one("#prep-files", DataTable).get_cell(row, "status"))


async def test_audio_folder_to_setup_against_the_real_engine(checkpoint: dict[str, str], tmp_path: Path) -> None:
    songs = write_song_folder(tmp_path / "songs")
    app = make_app(
        settings=Settings(checkpoint_root=checkpoint["checkpoint_dir"], output_root=str(tmp_path / "runs")),
        settings_path=str(tmp_path / "config" / "settings.json"),
        initial_mode="dataset",
        log_dir=str(tmp_path / "logs"),
        draft={**checkpoint, "device": "cpu", "num_workers": 0},
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+t")
        prep = app.screen.query_one(AudioPrep)
        prep.audio_field.input.value = str(songs)
        await wait_until(pilot, lambda: prep.report is not None, 60, "the builder's report")
        prep.option_row("normalize").widget.value = "peak"
        prep.option_row("tag").widget.value = "zq-style"
        await pilot.pause()
        await pilot.press("ctrl+s")

        await wait_until(pilot, lambda: prep.state not in ("idle", "starting", "running"), 420, "the job to end")
        assert prep.state == DONE, prep.result_line
        out = Path(prep.output_dir)
        assert out == Path(str(songs) + "_tensors")
        assert _status(prep, "anthem.wav").startswith("✓ done") and _status(prep, "sub/ballad.wav").startswith("✓ done")
        assert _status(prep, "empty.wav").startswith("✗")  # reported by name by the engine's scan, skipped
        assert _status(prep, "anthem_copy.wav").startswith("↷ same audio as anthem.wav")
        report = ptinspect.scan_dataset(str(out))
        assert report.samples >= 2 and not report.problems and report.variant == checkpoint["model_variant"]
        text = screen_text(app)
        assert "✓ done:" in text and f"train on these {report.samples} tensor files" in text
        meta = json.loads((out / "preprocess_meta.json").read_text())
        assert meta["normalize"] == "peak" and meta["custom_tag"] == "zq-style"

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "SetupScreen", 30, "Setup")
        await wait_until(pilot, lambda: app.screen.form.values.get("dataset_dir") == str(out), 30, "the form to show the folder")
        screen: Any = app.screen
        assert screen.form.errors == {}  # the form takes the new folder as it is
        await wait_until(
            pilot, lambda: app.session.client is not None and not app.session.client.is_alive, 60, "the engine to exit"
        )
        assert app.session.client.exit_code == 0 and not app.engine_banner
