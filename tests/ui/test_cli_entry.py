"""``sidestep``'s entry: which argv opens the TUI, which goes to the headless CLI, and clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from ui_helpers import make_run_dir

import engine.cli.main
from sidestep_tui import __main__ as entry
from sidestep_tui.engine_client import AttachClient


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    seen: dict[str, list] = {"cli": [], "tui": []}
    monkeypatch.setattr(engine.cli.main, "main", lambda argv: seen["cli"].append(list(argv)) or 0)
    monkeypatch.setattr(entry, "_run", lambda **kwargs: seen["tui"].append(kwargs) or 0)
    return seen


def test_no_command_opens_the_tui(calls) -> None:
    assert entry.main([]) == 0
    assert calls["tui"] == [{}] and calls["cli"] == []


@pytest.mark.parametrize("argv", [["train", "--help"], ["runs", "/x"], ["presets", "list"], ["--help"], ["attach", "/r", "--plain"],
                                  ["attach", "--help"], ["demo", "--plain"]])
def test_headless_commands_go_to_the_engine_cli(calls, argv) -> None:
    assert entry.main(argv) == 0
    assert calls["cli"] == [argv] and calls["tui"] == []


def test_demo_without_a_terminal_is_plain(calls, monkeypatch) -> None:
    monkeypatch.setattr(entry, "_is_tty", lambda: False)
    entry.main(["demo"])
    assert calls["cli"] == [["demo"]]


def test_demo_on_a_terminal_opens_the_monitor(calls, monkeypatch) -> None:
    monkeypatch.setattr(entry, "_is_tty", lambda: True)
    entry.main(["demo", "--max-steps", "50", "--adapter", "lokr"])
    (kwargs,) = calls["tui"]
    assert kwargs["initial_mode"] == "monitor" and kwargs["demo"] == {"root": None, "adapter": "lokr", "max_steps": 50}


def test_attach_opens_the_monitor_on_a_run(calls, tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    entry.main(["attach", str(run)])
    (kwargs,) = calls["tui"]
    assert isinstance(kwargs["client"], AttachClient) and kwargs["client"].run_dir == str(run)


def test_attach_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert entry.main(["attach", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_broken_settings_file_is_an_error_message(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path))
    (tmp_path / "settings.json").write_text("{broken")
    assert entry.main([]) == 2
    assert "settings.json: not valid JSON" in capsys.readouterr().err
