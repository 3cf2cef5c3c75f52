"""The UI process never loads the training stack: import the app, build it through the CLI's factory,
run it headless through every screen with a replayed run, and inspect ``sys.modules`` (fresh
interpreter, so nothing imported by pytest or other tests can hide a leak)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "lightning", "lightning_fabric", "pytorch_lightning", "transformers", "peft", "lycoris", "diffusers",
             "bitsandbytes", "safetensors", "numpy")

_PROBE = r"""
import asyncio, json, os, sys, tempfile
sys.path.insert(0, {fakes!r})
os.environ["SIDESTEP_CONFIG_DIR"] = tempfile.mkdtemp()
import sidestep_tui.__main__  # the console script's module
from sidestep_tui.app import make_app
from sidestep_tui.settings import Settings
from fake_engine import FakeEngineClient, recorded

async def main():
    root = tempfile.mkdtemp()
    app = make_app(client=FakeEngineClient(recorded()), settings=Settings(checkpoint_root=root, output_root=root), initial_mode="monitor")
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.5)
        for mode in ("runs", "models", "dataset", "setup", "monitor"):
            try:
                await app.switch_mode(mode)
            except ModuleNotFoundError as exc:  # a screen not written yet must not hide a leak elsewhere
                print("missing screen:", exc, file=sys.stderr)
            await pilot.pause(0.3)
asyncio.run(main())
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r}))))
"""


def test_running_the_app_loads_no_training_stack() -> None:
    code = _PROBE.format(fakes=str(REPO / "tests" / "ui"), forbidden=FORBIDDEN)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_cli_help_path_loads_neither_textual_nor_torch() -> None:
    code = (
        "import sys, json, contextlib, io\n"
        "from sidestep_tui.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['train', '--help'])\n    except SystemExit:\n        pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'torch', 'rich'})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
