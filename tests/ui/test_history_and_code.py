"""Issue 12 in the UI: the Runs detail lists a resumed run's segments and its redone steps; the Models screen
names the Python files a model folder runs (short sha256) and marks the folder "custom code" once they
differ from the hashes first seen there. No engine process: hand-written events, the demo model's code files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from test_forms import ckpt, env, models_view  # noqa: F401  (fixtures)
from textual.widgets import Static
from ui_helpers import wait_until

from engine import codehash
from sidestep_tui.screens.runs import RunsScreen
from tests.reliability.test_run_history import T0, killed_then_resumed_from_an_earlier_checkpoint

DEMO_CODE = Path(codehash.__file__).resolve().parent / "models" / "demo"  # what the demo model folder runs


async def test_runs_detail_lists_each_segment_and_the_redone_steps(build_app, ui_settings) -> None:
    killed_then_resumed_from_an_earlier_checkpoint(Path(ui_settings.output_root) / "resumed-run")
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_until(pilot, lambda: bool(screen.runs), 10.0, "the Runs screen's scan")
        await pilot.pause()
        detail = str(screen.query_one("#run-detail", Static).render())

    def at(ts: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

    assert "resumed 2 time(s), 100 step(s) trained again (resumed from an earlier checkpoint):" in detail
    assert f"1  started {at(T0 + 1)}, died (no end event) at step 300/400" in detail
    assert f"2  started {at(T0 + 603)} from step 200, stopped at step 350/400 (redid 100 steps)" in detail
    assert f"3  started {at(T0 + 905)} from step 350, completed at step 400/400" in detail


async def test_models_screen_names_the_code_and_marks_changed_code_custom(ckpt: Path, env: Path) -> None:  # noqa: F811
    folder = ckpt / "acestep-v15-turbo"
    for source in sorted(DEMO_CODE.glob("*_demo*.py")):  # the tiny model's code files, not its weights
        shutil.copy(source, folder / source.name)
    files = codehash.code_files(folder)
    assert [f.name for f in files] == ["acestep_demo_modeling.py", "configuration_acestep_demo.py"]

    status, detail = await models_view(env, "acestep-v15-turbo")
    assert status == "✓ ok" and "custom code" not in detail
    for f in files:  # every file that runs, with its short hash
        assert f"{f.name}  sha256 {f.sha256[:12]}" in detail
    record = json.loads((env / "config" / codehash.STORE_FILE).read_text())["folders"]
    assert record[str(folder.resolve())]["files"] == {f.name: f.sha256 for f in files}  # first seen, recorded

    with open(folder / "acestep_demo_modeling.py", "a") as fh:  # the code changes under the same folder name
        fh.write("\nimport os  # something new runs now\n")
    status, detail = await models_view(env, "acestep-v15-turbo")
    day = time.strftime("%Y-%m-%d", time.localtime(record[str(folder.resolve())]["first_seen"]))
    assert status == "! custom code"
    assert f"acestep_demo_modeling.py changed since first seen on {day}: review it" in detail
    assert "configuration_acestep_demo.py changed" not in detail
    other_status, other = await models_view(env, "acestep-v15-base")  # a folder without code: no code lines
    assert other_status == "✓ ok" and "code (runs)" not in other
