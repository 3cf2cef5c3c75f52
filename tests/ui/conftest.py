"""UI test fixtures: isolated settings dir, UTC clock for log stamps, the app factory with a fake
engine, and helpers that wait on the pump without sleeping blindly."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_engine, for tests and benchmarks alike

from ui_helpers import FakeClock

from sidestep_tui.app import SidestepApp, make_app
from sidestep_tui.settings import Settings


@pytest.fixture(autouse=True)
def _isolated_ui_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture(autouse=True)
def _no_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """No screens built ahead (``SidestepApp.WARM_UP_AFTER_S``) unless a test asks: it is a worker that
    ``settle`` would wait for, and seconds of CPU per test. tests/ui/test_warm_up.py covers it, and the
    tmux and browser tests run the app as users do, with it."""
    monkeypatch.setattr(SidestepApp, "WARM_UP_AFTER_S", None)


@pytest.fixture(autouse=True)
def _record_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every notification the app shows, kept on the app (``_notes_seen``): a toast expires after a few
    seconds, and a loaded machine can take that long between the action and the assertion."""
    shown = SidestepApp.notify

    def notify(self: SidestepApp, message: Any, *args: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("_notes_seen", []).append(str(message))
        shown(self, message, *args, **kwargs)

    monkeypatch.setattr(SidestepApp, "notify", notify)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ui_settings(tmp_path: Path) -> Settings:
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    (tmp_path / "runs").mkdir(exist_ok=True)
    return Settings(checkpoint_root=str(tmp_path / "ckpt"), output_root=str(tmp_path / "runs"))


@pytest.fixture
def build_app(ui_settings: Settings, clock: FakeClock, tmp_path: Path) -> Callable[..., SidestepApp]:
    def build(client: Any = None, **kwargs: Any) -> SidestepApp:
        kwargs.setdefault("settings", ui_settings)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("initial_mode", "monitor")
        kwargs.setdefault("log_dir", str(tmp_path / "logs"))
        app = make_app(client=client, **kwargs)
        app.animation_level = "none"
        return app

    return build
