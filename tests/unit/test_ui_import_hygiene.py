"""The UI process never loads the training stack: import the app, build it through the CLI's factory,
run it headless through every screen with a replayed run, and inspect ``sys.modules`` (fresh
interpreter, so nothing imported by pytest or other tests can hide a leak). The heavy list and the
engine's sub-packages are import-linter's, read from ``pyproject.toml`` (``import_contract``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .import_contract import ENGINE_SUBPACKAGES, HEAVY, REPO

pytestmark = pytest.mark.integration  # every check starts a fresh interpreter

FORBIDDEN = HEAVY

_PROBE = r"""
import asyncio, json, os, sys
sys.path.insert(0, {fakes!r})
os.environ["SIDESTEP_CONFIG_DIR"] = os.path.join({root!r}, "config")
import sidestep_tui.__main__  # the console script's module
from sidestep_tui.app import make_app
from sidestep_tui.settings import Settings
from fake_engine import FakeEngineClient, recorded
from ui_helpers import wait_until

async def main():
    root = {root!r}
    fake = FakeEngineClient(recorded())
    app = make_app(client=fake, settings=Settings(checkpoint_root=root, output_root=root), initial_mode="monitor",
                   log_dir=os.path.join(root, "logs"))
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: fake.drained, 60, "the recorded run to be replayed")
        for mode in ("runs", "models", "dataset", "setup", "monitor"):
            await app.switch_mode(mode)
            await pilot.pause()  # each screen's scans run in workers: let them all finish
            await app.workers.wait_for_complete([w for w in app.workers if w.group != "engine-pump"])
            await pilot.pause()
asyncio.run(main())
print(json.dumps({{
    "heavy": sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r})),
    "torch_side": sorted(m for m in sys.modules if m in {subpackages!r} or m.startswith(tuple(p + "." for p in {subpackages!r}))),
}}))
"""


@pytest.fixture(scope="module")
def app_run(tmp_path_factory) -> dict[str, list[str]]:
    """What one headless run of the app through every screen loaded (heavy packages, engine sub-packages)."""
    root = tmp_path_factory.mktemp("app_run")
    code = _PROBE.format(fakes=str(REPO / "tests" / "ui"), root=str(root), forbidden=FORBIDDEN, subpackages=ENGINE_SUBPACKAGES)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_running_the_app_loads_no_training_stack(app_run) -> None:
    assert app_run["heavy"] == []


def test_running_the_app_loads_only_the_contract_modules(app_run) -> None:
    assert app_run["torch_side"] == []


HELP_ARGVS = [["--help"], ["train", "--help"], ["dataset", "--help"], ["preprocess", "--help"]]


@pytest.fixture(scope="module")
def help_loads() -> dict[str, tuple[list[str], list[str]]]:
    """For each argv of HELP_ARGVS, run in turn by one fresh interpreter: (heavy or UI-toolkit packages,
    modules of engine and sidestep_tui) loaded once ``sidestep ARGV --help`` has run. The sets only grow,
    so a clean entry is clean on its own and the first dirty one names the culprit."""
    code = (
        "import sys, json, contextlib, io\n"
        "from sidestep_tui.__main__ import main\n"
        f"for argv in {HELP_ARGVS!r}:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n            main(argv)\n        except SystemExit as exc:\n            assert exc.code == 0, exc.code\n"
        "    assert out.getvalue().startswith('usage: sidestep'), out.getvalue()[:200]\n"
        "    heavy = sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'rich', *%r})\n"
        "    ours = sorted(m for m in sys.modules if m.startswith(('engine.', 'sidestep_tui.')))\n"
        "    print(json.dumps([' '.join(argv), heavy, ours]))\n" % (FORBIDDEN,)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()[-len(HELP_ARGVS) :]]
    return {key: (heavy, ours) for key, heavy, ours in rows}


@pytest.mark.parametrize("argv", HELP_ARGVS)
def test_cli_help_path_loads_neither_textual_nor_torch(help_loads, argv: list[str]) -> None:
    """The one parser answers --help from the stdlib schemas: no UI toolkit, no training stack, no handler."""
    heavy, ours = help_loads[" ".join(argv)]
    assert heavy == [] and "engine.cli.parser" in ours and "engine.cli.main" not in ours, ours


@pytest.mark.parametrize("argv", HELP_ARGVS)
def test_cli_help_path_loads_no_torch_side_module(help_loads, argv: list[str]) -> None:
    """Of the engine's sub-packages, --help loads only engine.cli (the parser)."""
    _, ours = help_loads[" ".join(argv)]
    assert [m for m in ours if m.startswith(tuple(p + "." for p in ENGINE_SUBPACKAGES)) and not m.startswith("engine.cli.")] == []


_ENGINE_PROBE = r"""
import json, os, sys, time
from sidestep_tui.engine_client import EngineClient
from engine import config as cfgmod, protocol as p
from engine.demo import demo_config

def main():
    root = {root!r}
    paths = dict({paths!r}, output_root=os.path.join(root, "runs"))  # the session's demo, shared read-only
    config_json = cfgmod.to_json(demo_config(paths, adapter="lora", max_steps=3))
    client = EngineClient(log_path=os.path.join(root, "engine.log"))
    client.start()
    client.send(p.StartRun(run_id="hygiene", config_json=config_json))
    deadline = time.monotonic() + 240
    done = False
    while not done and time.monotonic() < deadline:
        for event in client.poll(0.2):
            done = done or isinstance(event, (p.RunFinished, p.RunFailed))
    client.shutdown(10)
    if not done:
        sys.exit("timed out waiting for the demo run to finish")
    print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r}))))

if __name__ == "__main__":
    main()
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ui_process_stays_torch_free_with_the_real_engine(tmp_path, demo_paths) -> None:
    """Events cross the queue by pickle: a torch or numpy value inside one (``torch.__version__`` is a
    ``TorchVersion``, ``np.float64`` a float subclass) would import torch into the UI on unpickling."""
    script = tmp_path / "probe.py"  # a file, so the spawned engine can re-import the main module safely
    script.write_text(_ENGINE_PROBE.format(root=str(tmp_path), forbidden=FORBIDDEN, paths=demo_paths))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=380, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
