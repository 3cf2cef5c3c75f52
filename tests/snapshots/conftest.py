"""Determinism for snapshots: a private settings dir, UTC for log stamps, no cursor blink, no animation,
a fixed clock, no real GPUs, the default theme, no screens built ahead. Files go under each test's own ``tmp_path`` (never a
fixed folder: parallel runs would share it); where a screen prints a path, the test says how it is spelt.
Update snapshots only after reading the report: ``pytest tests/snapshots --snapshot-update`` is refused
unless SIDESTEP_SNAPSHOT_UPDATE=1."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ui"))


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--snapshot-update", default=False) and os.environ.get("SIDESTEP_SNAPSHOT_UPDATE") != "1":
        raise pytest.UsageError("look at the snapshot report first, then run with SIDESTEP_SNAPSHOT_UPDATE=1 to update")


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from textual.widgets import Input

    from engine import discovery

    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)  # the cursor stays drawn
    monkeypatch.setattr(discovery, "gpus", lambda: [])
    from sidestep_tui.app import SidestepApp

    monkeypatch.setattr(SidestepApp, "WARM_UP_AFTER_S", None)  # no screens built ahead mid-snapshot
