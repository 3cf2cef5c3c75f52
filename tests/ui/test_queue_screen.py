"""The Queue view: the entries of engine.queue with their state; reorder and remove write the queue file."""

from __future__ import annotations

import os

from ui_helpers import footer_keys, screen_text, wait_until

from engine.queue import RunQueue
from sidestep_tui.screens.queue import QueueScreen


def _add(q: RunQueue, name: str) -> None:
    q.add({"checkpoint_dir": "/m", "dataset_dir": "/d", "output_dir": f"/runs/{name}"})


async def test_queue_view_lists_reorders_and_removes(build_app) -> None:
    q = RunQueue()  # the UI tests' own SIDESTEP_CONFIG_DIR
    for name in ("alpha", "beta", "gamma"):
        _add(q, name)
    q.claim_next(pid=os.getpid())
    q.finish(1, "failed", "dataset folder /d holds no training tensors (*.pt); preprocess audio into it first")
    app = build_app(None, initial_mode="queue")
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, QueueScreen)
        await wait_until(pilot, lambda: len(screen.entries) == 3, what="the queue entries")
        text = screen_text(app)
        assert "failed" in text and "gamma" in text and "no worker" in text
        assert {"Start", "Remove"} <= footer_keys(app) and "Up" not in footer_keys(app)  # a failed entry does not move
        assert "holds no training tensors" in screen_text(app)

        await pilot.press("down", "down")  # gamma
        await wait_until(pilot, lambda: screen.selected is not None and screen.selected.name == "gamma", what="gamma")
        assert {"Up", "Down"} <= footer_keys(app)
        await pilot.press("u")
        await wait_until(pilot, lambda: [e.id for e in RunQueue().entries()] == [1, 3, 2], what="gamma moved up")
        assert screen.selected is not None and screen.selected.id == 3  # the cursor follows the entry
        await pilot.press("r")
        await wait_until(pilot, lambda: [e.id for e in RunQueue().entries()] == [1, 2], what="gamma removed")
        await wait_until(pilot, lambda: len(screen.entries) == 2, what="the view to follow")

        # A running entry is not removable; Start is off while a worker holds the lock.
        q.claim_next(pid=os.getpid())
        lock = q.acquire_worker_lock()
        try:
            await pilot.press("g", "down")
            await wait_until(pilot, lambda: screen.worker == os.getpid(), what="the worker seen")
            await wait_until(pilot, lambda: screen.selected is not None and screen.selected.id == 2, what="beta")
            assert "Remove" not in footer_keys(app) and "Start" not in footer_keys(app)
            assert f"worker pid {os.getpid()} working" in screen_text(app)
            await pilot.press("p")
            await wait_until(pilot, lambda: RunQueue().paused() and screen.paused, what="the pause")
            assert "ends after the current run" in screen_text(app) and "Pause" not in footer_keys(app)
            _add(q, "delta")
            await pilot.press("g")
            await wait_until(pilot, lambda: "Start" in footer_keys(app), what="Start (it lifts the pause)")
        finally:
            lock.release()
