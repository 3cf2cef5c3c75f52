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
    """What the entry point dispatched to: the headless handler (with the parsed namespace) or the TUI."""
    seen: dict[str, list] = {"cli": [], "tui": []}
    monkeypatch.setattr(engine.cli.main, "run_command", lambda ns: seen["cli"].append(ns) or 0)
    monkeypatch.setattr(entry, "_run", lambda **kwargs: seen["tui"].append(kwargs) or 0)
    return seen


def test_no_command_opens_the_tui(calls) -> None:
    assert entry.main([]) == 0
    assert calls["tui"] == [{}] and calls["cli"] == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["runs", "/x"], {"command": "runs", "root": "/x"}),
        (["presets", "list"], {"command": "presets", "action": "list"}),
        (["attach", "/r", "--plain"], {"command": "attach", "run_dir": "/r", "plain": True, "stop": False}),
        (["attach", "/r", "--plain", "--stop"], {"command": "attach", "run_dir": "/r", "stop": True}),
        (["demo", "--plain"], {"command": "demo", "plain": True, "adapter": "lora"}),
        (["train", "--preset", "fast", "--epochs", "3"], {"command": "train", "preset": "fast", "epochs": "3"}),
        (["dataset", "-i", "/songs", "--dry-run"], {"command": "dataset", "input": "/songs", "dry_run": True}),
    ],
)
def test_headless_commands_go_to_the_engine_cli_parsed_once(calls, argv, expected) -> None:
    assert entry.main(argv) == 0
    (ns,) = calls["cli"]
    assert {key: getattr(ns, key) for key in expected} == expected and calls["tui"] == []


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["attach", "--help"], ["demo", "--help"], ["preprocess", "--help"]]
)
def test_help_is_answered_by_the_one_parser(calls, argv, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        entry.main(argv)
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: sidestep {argv[0] if len(argv) > 1 else ''}".rstrip())
    assert calls == {"cli": [], "tui": []}


@pytest.mark.parametrize(
    ("argv", "prog", "says"),
    [
        (["attach"], "sidestep attach", "run_dir"),
        (["attach", "/r", "--stop"], "sidestep attach", "--stop needs --plain"),
        (["bogus"], "sidestep", "invalid choice: 'bogus'"),
        (["train", "--epochs"], "sidestep train", "expected one argument"),
        (["demo", "--adapter", "xx"], "sidestep demo", "invalid choice: 'xx'"),
        (["presets"], "sidestep presets", "ACTION"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(calls, capsys, argv, prog, says) -> None:
    with pytest.raises(SystemExit) as info:
        entry.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{prog}: error: ") and says in err and f"see `{prog} --help`" in err
    assert calls == {"cli": [], "tui": []}


def test_demo_without_a_terminal_is_plain(calls, monkeypatch) -> None:
    monkeypatch.setattr(entry, "_is_tty", lambda: False)
    entry.main(["demo"])
    assert [ns.command for ns in calls["cli"]] == ["demo"] and calls["tui"] == []


def test_demo_setup_only_is_headless_on_a_terminal(calls, monkeypatch) -> None:
    monkeypatch.setattr(entry, "_is_tty", lambda: True)
    entry.main(["demo", "--setup-only"])
    assert [ns.setup_only for ns in calls["cli"]] == [True] and calls["tui"] == []


def test_demo_on_a_terminal_opens_the_monitor(calls, monkeypatch) -> None:
    monkeypatch.setattr(entry, "_is_tty", lambda: True)
    entry.main(["demo", "--max-steps", "50", "--adapter", "lokr"])
    (kwargs,) = calls["tui"]
    assert kwargs["initial_mode"] == "monitor" and kwargs["demo"] == {"root": None, "adapter": "lokr", "max_steps": 50}


def test_demo_from_tensors_on_a_terminal_needs_plain(calls, monkeypatch, capsys) -> None:
    monkeypatch.setattr(entry, "_is_tty", lambda: True)
    with pytest.raises(SystemExit) as info:
        entry.main(["demo", "--from-tensors"])
    assert info.value.code == 2 and "--from-tensors needs --plain" in capsys.readouterr().err
    assert calls == {"cli": [], "tui": []}


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
