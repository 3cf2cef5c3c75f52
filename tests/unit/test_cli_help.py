"""`sidestep COMMAND --help` describes every argument a user can type (issue 13)."""

from __future__ import annotations

import re

import pytest

from engine import config as cfgmod
from engine.cli.parser import build_parser


def _help(*path: str) -> str:
    parser = build_parser()
    target = parser.commands[path[0]]
    for name in path[1:]:
        sub = next(a for a in target._actions if a.__class__.__name__ == "_SubParsersAction")
        target = sub.choices[name]  # type: ignore[attr-defined]
    return target.format_help()


def _described(text: str, name: str) -> str:
    """The help text argparse prints for ``name`` (empty when it prints none)."""
    match = re.search(rf"^ +{re.escape(name)}(?=\s)[^\n]*?(?: {{2,}}|\n\s{{6,}})(\S[^\n]*)", text, re.MULTILINE)
    return match.group(1) if match else ""


def test_presets_help_lists_its_actions_with_what_they_do() -> None:
    text = _help("presets")
    for action in ("list", "show", "export", "import"):
        assert _described(text, action), f"`presets --help` does not describe {action!r}:\n{text}"


def test_demo_help_describes_adapter_and_max_steps() -> None:
    text = _help("demo")
    choices = "{" + ",".join(cfgmod.ADAPTER_TYPES) + "}"
    assert "adapter" in _described(text, f"--adapter {choices}"), text
    assert "step" in _described(text, "--max-steps N"), text


def test_runs_help_describes_root() -> None:
    text = _help("runs")
    assert "folder" in _described(text, "root"), text


@pytest.mark.parametrize("command", ["train", "demo", "presets", "runs", "attach", "dataset", "preprocess"])
def test_no_empty_default_is_printed(command: str) -> None:
    text = " ".join(_help(command).split())  # argparse wraps lines
    assert "(default: )" not in text and "[default: ]" not in text and "(default )" not in text
