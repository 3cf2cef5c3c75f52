"""Issue 12's smaller items: where TensorBoard writes, the missing model code message, CPU out-of-memory
advice. Each drives the real command line or the real function on the demo model."""

from __future__ import annotations

import json
from pathlib import Path

from engine.cli.main import main
from tests.reliability.conftest import demo_argv


def test_log_dir_from_a_config_file_stays_inside_the_run_folder(demo_paths, tmp_path, capsys) -> None:
    outside = tmp_path / "elsewhere"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"log_dir": str(outside)}))
    run = tmp_path / "run"
    assert main([*demo_argv(demo_paths, run), "--config", str(cfg)]) == 0
    text = "".join(capsys.readouterr())
    assert not outside.exists(), "a log_dir read from a file wrote outside -o"
    assert list((run / "runs").glob("events.out.tfevents*"))
    assert f"TensorBoard logs: {run / 'runs'}" in text
    assert "outside the output folder" in text and "--log-dir" in text


def test_log_dir_typed_on_the_command_line_is_obeyed_and_named(demo_paths, tmp_path, capsys) -> None:
    chosen = tmp_path / "chosen"
    run = tmp_path / "run"
    assert main([*demo_argv(demo_paths, run), "--log-dir", str(chosen)]) == 0
    assert list(chosen.glob("events.out.tfevents*"))
    assert f"TensorBoard logs: {chosen}" in "".join(capsys.readouterr())
