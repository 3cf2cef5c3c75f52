"""Helpers shared by the UI tests, the snapshot tests and benchmarks/ui.py (importable by name:
``tests/ui`` is put on ``sys.path`` by the conftests)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fake_engine import DATA, FakeEngineClient

from engine import protocol as p


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def wait_until(pilot: Any, condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    """Let the app process messages until ``condition()`` holds; fail after ``timeout`` seconds."""
    for _ in range(max(1, int(timeout / 0.02))):
        await pilot.pause(0.02)
        if condition():
            await pilot.pause()
            return
    state = pilot.app.run_state
    raise AssertionError(
        f"timed out waiting for {what} (phase {state.phase}, step {state.step}, banner {pilot.app.engine_banner!r})"
    )


async def drain(pilot: Any, fake: FakeEngineClient, *, until: Callable[[], bool] | None = None, timeout: float = 5.0) -> None:
    """Wait until the fake has handed out every event and the app has folded them in."""
    await wait_until(pilot, lambda: fake.drained and (until is None or until()), timeout, "the pump to drain the fake")


def screen_text(app: Any) -> str:
    """The screen as plain text (what a user reads)."""
    from rich.console import Console

    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def footer_keys(app: Any) -> set[str]:
    """The descriptions of the keys the footer offers now (enabled and shown)."""
    return {b.binding.description for b in app.screen.active_bindings.values() if b.enabled and b.binding.show}


def make_run_dir(
    root: Path, name: str = "demo-lora", events: str = "demo_run.jsonl", config: dict[str, Any] | None = None
) -> Path:
    """A run folder as the recorded run left its own: the recorded events.jsonl with the recording's run
    folder (a temp folder on the machine that made it) rewritten to this one, the checkpoint folders its
    events name (empty), and a config.json pointing at itself. Nothing refers to the recording machine."""
    import json

    from engine import config as cfg

    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    text = (DATA / events).read_text(encoding="utf-8")
    recorded_dir = next((e.run_dir for e in p.read_events(str(DATA / events)) if isinstance(e, p.RunStarted)), "")
    if recorded_dir:  # the folder as spelt inside JSON strings, followed by a separator or the string's end
        pattern = re.escape(json.dumps(recorded_dir)[1:-1]) + r'(?=[/"\\])'
        text = re.sub(pattern, lambda _m: json.dumps(str(run))[1:-1], text)
    (run / "events.jsonl").write_text(text, encoding="utf-8")
    for event in p.read_events(str(run / "events.jsonl")):
        if isinstance(event, p.CheckpointSaved) and Path(event.path).is_relative_to(run):
            Path(event.path).mkdir(parents=True, exist_ok=True)
    values = {"checkpoint_dir": "/ckpt", "dataset_dir": "/data", "output_dir": str(run), "run_name": name, **(config or {})}
    (run / "config.json").write_text(cfg.to_json(cfg.parse(values)))
    return run


def write_wav(path: Path, seconds: float, *, freq: float = 440.0, rate: int = 48000) -> Path:
    """A stereo 16-bit sine WAV written with the standard library (UI tests must not import numpy)."""
    import array
    import math
    import wave

    n = int(seconds * rate)
    samples = array.array("h", (int(8000 * math.sin(2 * math.pi * freq * (i // 2) / rate)) for i in range(2 * n)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(2)
        fh.setsampwidth(2)
        fh.setframerate(rate)
        fh.writeframes(samples.tobytes())
    return path


def write_song_folder(root: Path) -> Path:
    """An audio folder with one of each case the Dataset screen reports: a ``key: value`` sidecar, a
    ``.caption.txt``, no sidecar, a duplicate and a zero-length file (unreadable)."""
    import shutil as _shutil

    write_wav(root / "anthem.wav", 1.0, freq=330.0)
    (root / "anthem.txt").write_text("caption: bright synth anthem\ngenre: synthpop\nlyrics:\n[Verse]\nla la\n", encoding="utf-8")
    write_wav(root / "sub" / "ballad.wav", 1.5, freq=220.0)
    (root / "sub" / "ballad.caption.txt").write_text("slow piano ballad", encoding="utf-8")
    write_wav(root / "untitled_take.wav", 0.5, freq=550.0)
    _shutil.copy(root / "anthem.wav", root / "anthem_copy.wav")
    (root / "empty.wav").write_bytes(b"")
    return root
