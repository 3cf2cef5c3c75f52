"""The Runs screen's Samples table: the samples a run rendered while training (base model first, then the
newest step), and Enter / ``l`` playing one through the first player on PATH, or saying plainly that none exists."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from textual.widgets import DataTable
from ui_helpers import footer_keys, make_run_dir, screen_text, wait_until

from engine.samples_index import scan_samples
from sidestep_tui.screens.runs import RunsScreen

SLUGS = ("1-warm-piano", "2-fast-drums")


def fake_spectrogram(step: int, index: int, bands: int = 48, columns: int = 90) -> dict:
    """A sidecar's ``spectrogram`` as ``engine.audio.spectrum`` writes it: a tone gliding up over a quiet floor
    (higher and louder at later steps, so rows differ), built with the stdlib."""
    db = []
    for b in range(bands):
        row = []
        for c in range(columns):
            centre = 6 + 4 * index + step / 2 + 20 * c / columns
            row.append(round(-90 + 80 * math.exp(-(((b - centre) / 2.5) ** 2)) + 10 * math.exp(-b / 12)))
        db.append(row)
    band_hz = [round(700 * (10 ** ((i + 1) * 3923 / (bands + 1) / 2595) - 1)) for i in range(bands)]
    return {"db": db, "band_hz": band_hz, "hop_s": 0.02222, "floor_db": -100}


def add_samples(
    run_dir: Path, steps: tuple[int, ...] = (0, 10, 20), slugs: tuple[str, ...] = SLUGS, old_steps: tuple[int, ...] = ()
) -> None:
    """Sample files as training writes them (the scanner and the UI never read the audio itself); the
    sidecars of ``old_steps`` are as older versions wrote them (no loudness, no spectrogram)."""
    for step in steps:
        folder = run_dir / "samples" / f"step_{step}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, slug in enumerate(slugs):
            (folder / f"{slug}.flac").write_bytes(b"fLaC not really")
            sidecar = {"prompt": slug.split("-", 1)[1].replace("-", " "), "seed": 42 + i, "duration_s": 2.0, "step": step}
            if step not in old_steps:
                sidecar |= {"lufs": -20.0 + step / 10 - i, "spectrogram": fake_spectrogram(step, i)}
            (folder / f"{slug}.json").write_text(json.dumps(sidecar))


def test_scan_samples_pins_the_base_then_newest_first_and_survives_bad_sidecars(tmp_path: Path) -> None:
    add_samples(tmp_path, steps=(5, 0, 100, 20))
    (tmp_path / "samples" / "step_20" / "1-warm-piano.json").write_text("{not json")
    (tmp_path / "samples" / "stray").mkdir()
    found = scan_samples(str(tmp_path))
    assert [(s.step, s.slug) for s in found][:4] == [(0, SLUGS[0]), (0, SLUGS[1]), (100, SLUGS[0]), (100, SLUGS[1])]
    assert [s.step for s in found] == [0, 0, 100, 100, 20, 20, 5, 5]
    broken = next(s for s in found if s.step == 20 and s.slug == SLUGS[0])
    assert broken.prompt == "" and broken.seed is None and os.path.isfile(broken.path)
    assert (found[1].prompt, found[1].seed, found[1].duration_s) == ("fast drums", 43, 2.0)
    assert scan_samples(str(tmp_path / "nowhere")) == []


async def test_samples_table_lists_base_then_newest_and_says_when_no_player(
    build_app, ui_settings, tmp_path, monkeypatch
) -> None:
    run_dir = make_run_dir(Path(ui_settings.output_root), "demo-lora")
    add_samples(run_dir)
    empty = tmp_path / "no-players"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_until(pilot, lambda: screen.query_one("#samples").display, 10.0, "the Samples table")
        table = screen.query_one("#samples-table", DataTable)
        steps = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert steps == ["base", "base", "20", "20", "10", "10"]
        assert "Listen" in footer_keys(app) and "Listen" in screen_text(app)  # the two-row footer at 80x24 shows it
        table.focus()
        await pilot.press("down", "down", "enter")  # the newest adapter sample of the first prompt
        expected = str(run_dir / "samples" / "step_20" / f"{SLUGS[0]}.flac")
        message = f"no audio player found (ffplay, paplay, aplay, afplay): copy {expected}"
        await wait_until(pilot, lambda: any(n.message == message for n in app._notifications), 5.0, "the fallback")


@pytest.mark.integration
async def test_listen_starts_the_player_on_path_with_the_highlighted_file(build_app, ui_settings, tmp_path, monkeypatch) -> None:
    run_dir = make_run_dir(Path(ui_settings.output_root), "demo-lora")
    add_samples(run_dir)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.txt"
    player = bin_dir / "paplay"  # not the first of the list: ffplay is missing from this PATH
    player.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')  # printf: a builtin (PATH holds only this)
    player.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("PULSE_SERVER", "unix:/run/pulse/native")  # paplay has a server to talk to
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.query_one("#samples").display, 10.0, "the Samples table")
        screen.query_one("#samples-table", DataTable).move_cursor(row=3)
        screen.query_one("#runs-table", DataTable).focus()
        await pilot.press("l")
        await wait_until(pilot, lambda: record.exists() and record.read_text().endswith("\n"), 10.0, "the player's argv")
    assert record.read_text().splitlines() == [str(run_dir / "samples" / "step_20" / f"{SLUGS[1]}.flac")]


async def test_runs_without_samples_hide_the_table_and_the_key(build_app, ui_settings) -> None:
    make_run_dir(Path(ui_settings.output_root), "demo-lora")
    app = build_app(None, initial_mode="runs")
    async with app.run_test(size=(160, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: bool(screen.runs), 10.0, "the scan")
        await pilot.pause()
        assert not screen.query_one("#samples").display
        assert "Listen" not in footer_keys(app)
