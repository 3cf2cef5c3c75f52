"""The Monitor's Samples panel: shown at large sizes once the run has rendered samples (rescanned from the run
folder on every ``SampleRendered``), base rows pinned, newest step next and highlighted as new ones arrive;
``l`` plays the highlighted one; hidden at 80x24."""

from __future__ import annotations

from pathlib import Path

from fake_engine import FakeEngineClient, scripted_run
from test_runs_samples import SLUGS, add_samples
from textual.widgets import DataTable
from ui_helpers import drain, footer_keys, screen_text, wait_until

from engine import protocol as p


def sample_events(run_dir: Path, steps: tuple[int, ...], seq: int, ts: float) -> list[p.SampleRendered]:
    """What the engine emits after writing each sample (``engine.train.samples``)."""
    out = []
    for step in steps:
        for i, slug in enumerate(SLUGS, start=1):
            out.append(
                p.SampleRendered(
                    run_id="run-1",
                    seq=seq + len(out),
                    ts=ts + len(out),
                    step=step,
                    path=str(run_dir / "samples" / f"step_{step}" / f"{slug}.flac"),
                    prompt=slug,
                    seed=41 + i,
                    duration_s=2.0,
                    adapter_scale=0.0 if step == 0 else 1.0,
                    wall_s=1.5,
                    index=i,
                    total=len(SLUGS),
                )
            )
    return out


async def test_samples_panel_follows_new_samples_and_hides_at_80x24(build_app, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLORTERM", "truecolor")
    monkeypatch.delenv("NO_COLOR", raising=False)
    run_dir = tmp_path / "runs" / "demo"
    add_samples(run_dir, steps=(0, 10))
    events = scripted_run(run_dir=str(run_dir), steps=20, total_steps=100, finish=None)
    events += sample_events(run_dir, (0, 10), events[-1].seq + 1, events[-1].ts)
    fake = FakeEngineClient(events)
    empty = tmp_path / "no-players"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    app = build_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await drain(pilot, fake, timeout=15.0)
        screen = app.screen
        panel = screen.query_one("#samples-panel")
        table = screen.query_one("#samples-table", DataTable)

        def steps() -> list[str]:
            return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]

        await wait_until(pilot, lambda: panel.display and steps() == ["base", "base", "10", "10"], 10.0, "the panel")
        assert table.cursor_row == 2 and "step 10 · seed 42" in screen_text(app)  # the newest adapter sample
        assert "Listen" in footer_keys(app)

        add_samples(run_dir, steps=(20,))  # the next round: files first, then the events
        fake.push(*sample_events(run_dir, (20,), events[-1].seq + 10, events[-1].ts + 10))
        await wait_until(pilot, lambda: steps() == ["base", "base", "20", "20", "10", "10"], 10.0, "the new round")
        assert table.cursor_row == 2 and "step 20 · seed 42" in screen_text(app) and "-18.0 LUFS" in screen_text(app)

        await pilot.press("l")
        expected = str(run_dir / "samples" / "step_20" / f"{SLUGS[0]}.flac")
        message = f"no audio player found (ffplay, paplay, aplay, afplay): copy {expected}"
        await wait_until(pilot, lambda: any(n.message == message for n in app._notifications), 5.0, "the fallback")

        await pilot.resize_terminal(80, 24)
        await wait_until(pilot, lambda: not panel.display, 5.0, "the panel hidden at 80x24")
        assert "Listen" not in footer_keys(app)
