"""engine.tailer: the one reader of a growing events.jsonl (a torn last line waits; a bad complete line is
skipped, counted and named once)."""

from __future__ import annotations

from pathlib import Path

from engine import protocol
from engine.tailer import EventTailer, read_run_events


def lines(n: int) -> list[str]:
    return [protocol.dumps(protocol.stamp(protocol.RunPaused(step=i), run_id="r", seq=i, ts=1.0)) + "\n" for i in range(1, n + 1)]


def test_a_torn_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tailer = EventTailer(str(path))
    assert tailer.read() == []  # no file yet: nothing, no error
    good = lines(3)
    path.write_text(good[0] + good[1][:17])
    assert [e.step for e in tailer.read()] == [1] and tailer.pending and tailer.caught_up
    with open(path, "a") as fh:
        fh.write(good[1][17:] + good[2])
    assert [e.step for e in tailer.read()] == [2, 3] and not tailer.pending
    assert tailer.skipped == 0 and tailer.problem is None


def test_bad_complete_lines_are_skipped_counted_and_the_first_named(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = lines(4)
    path.write_bytes(
        (good[0] + "{garbage\n" + good[1]).encode() + b"\xff\xfe not utf-8\n" + (good[2] + '{"type":"Nope"}\n' + good[3]).encode()
    )
    events, tailer = read_run_events(str(path))
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert tailer.skipped == 3 and tailer.problem is not None and tailer.problem.startswith(f"{path}:2: not an event")


def test_small_reads_reach_the_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(lines(50)))
    tailer = EventTailer(str(path))
    got: list = []
    while not tailer.caught_up:
        got.extend(tailer.read(max_bytes=64))
    assert [e.step for e in got] == list(range(1, 51))
    assert read_run_events(str(tmp_path / "missing.jsonl"))[0] == []
