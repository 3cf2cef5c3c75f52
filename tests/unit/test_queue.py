"""The run queue (engine/queue.py) and ``sidestep queue`` parsing and refusals, in this process.

The worker itself (a detached process training entries) is tested once, in
tests/integration/test_queue_worker.py."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from engine import queue as queue_mod
from engine.cli.main import main
from engine.queue import QueueError, RunQueue, WorkerBusy


def _config(out: str, **extra: object) -> dict:
    return {"checkpoint_dir": "/m", "dataset_dir": "/d", "output_dir": out, **extra}


@pytest.fixture
def q(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunQueue:
    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path / "cfg"))
    return RunQueue()


def _ids(q: RunQueue) -> list[int]:
    return [e.id for e in q.entries()]


def test_the_queue_lives_beside_the_settings(q: RunQueue, tmp_path: Path) -> None:
    assert q.path == str(tmp_path / "cfg" / "queue.json")
    q.add(_config("/r/a"))
    assert json.loads(Path(q.path).read_text())["entries"][0]["output_dir"] == "/r/a"


def test_add_move_remove_clear(q: RunQueue) -> None:
    for name in "abc":
        q.add(_config(f"/r/{name}"))
    assert _ids(q) == [1, 2, 3] and {e.state for e in q.entries()} == {"queued"}
    q.move(3, 1)
    assert _ids(q) == [3, 1, 2]
    q.move(3, 99)  # clamped to the end
    assert _ids(q) == [1, 2, 3]
    q.move(2, 1)
    assert _ids(q) == [2, 1, 3]
    assert q.remove(1).output_dir == "/r/a"
    assert _ids(q) == [2, 3]
    assert q.add(_config("/r/d")).id == 4  # ids are never reused
    with pytest.raises(QueueError, match=r"no queue entry 1 \(entries: 2, 3, 4\)"):
        q.remove(1)
    with pytest.raises(QueueError, match="positions start at 1"):
        q.move(2, 0)
    q.finish(2, "done")
    assert [e.id for e in q.clear(finished_only=True)] == [2]
    assert _ids(q) == [3, 4]
    assert len(q.clear()) == 2 and _ids(q) == []


def test_one_output_folder_is_queued_once(q: RunQueue) -> None:
    q.add(_config("/r/a"))
    with pytest.raises(QueueError, match="already queued as entry 1"):
        q.add(_config("/r/a"))
    q.add(_config("/r/a", resume_from="auto"))  # a later resume of the same run is fine
    assert _ids(q) == [1, 2]


def test_the_worker_side_claims_in_order_and_records_the_outcome(q: RunQueue) -> None:
    for name in "abc":
        q.add(_config(f"/r/{name}"))
    q.move(3, 1)
    first = q.claim_next(pid=4242)
    assert first is not None and first.id == 3 and first.state == "running" and first.pid == 4242
    with pytest.raises(QueueError, match="entry 3 is running; stop it first"):
        q.remove(3)
    with pytest.raises(QueueError, match="only queued entries can be moved"):
        q.move(3, 2)
    q.finish(3, "failed", "dataset folder /d holds no tensors\nTraceback ...")
    entry = q.get(3)
    assert entry.state == "failed" and entry.error == "dataset folder /d holds no tensors" and entry.ended
    nxt = q.claim_next(pid=4242)
    assert nxt is not None and nxt.id == 1
    # A worker that died mid-run leaves "running": the next worker records it as failed, saying why.
    recovered = q.recover(pid=777)
    assert [e.id for e in recovered] == [1] and "pid 4242" in q.get(1).error and q.get(1).state == "failed"
    assert q.claim_next(pid=777).id == 2  # type: ignore[union-attr]
    assert q.claim_next(pid=777) is None


def test_one_worker_at_a_time(q: RunQueue) -> None:
    assert q.worker_pid() is None
    lock = q.acquire_worker_lock()
    try:
        assert q.worker_pid() == os.getpid()
        with pytest.raises(WorkerBusy, match=f"already working \\(pid {os.getpid()}\\)"):
            q.acquire_worker_lock()
    finally:
        lock.release()
    assert q.worker_pid() is None
    q.acquire_worker_lock().release()


def test_concurrent_adders_lose_nothing(q: RunQueue) -> None:
    """Many writers at once (each its own lock descriptor, as separate processes have): every entry lands."""
    errors: list[BaseException] = []

    def adder(k: int) -> None:
        try:
            for i in range(8):
                RunQueue(q.folder).add(_config(f"/r/{k}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=adder, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entries = q.entries()
    assert len(entries) == 48 and sorted(e.id for e in entries) == list(range(1, 49))
    assert len({e.output_dir for e in entries}) == 48


def test_a_broken_queue_file_is_one_line_and_left_alone(q: RunQueue) -> None:
    os.makedirs(q.folder)
    Path(q.path).write_text("{not json")
    with pytest.raises(QueueError, match=r"unreadable .*fix or delete the file"):
        q.add(_config("/r/a"))
    assert Path(q.path).read_text() == "{not json"


# --------------------------------------------------------------------------- the CLI, in this process


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


FLAGS = ["-c", "models", "-d", "data", "--device", "cpu", "--max-steps", "2"]


def test_cli_add_checks_now_and_stores_absolute_paths(
    q: RunQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(["queue", "add", *FLAGS, "-o", "runs/a", "--rank", "8"], capsys)
    assert rc == 0 and "queued entry 1" in out and "sidestep queue run" in out, err
    entry = q.get(1)
    assert entry.output_dir == str(tmp_path / "runs" / "a") and entry.config["rank"] == 8
    assert entry.config["dataset_dir"] == str(tmp_path / "data") and entry.config["max_steps"] == 2

    # A config file as CONFIG, flags on top; then a preset by name.
    Path("c.json").write_text(json.dumps({"checkpoint_dir": "m", "dataset_dir": "d", "output_dir": "runs/b", "rank": 4}))
    assert _run(["queue", "add", "c.json", "--rank", "16"], capsys)[0] == 0
    assert q.get(2).config["rank"] == 16 and q.get(2).config["checkpoint_dir"] == str(tmp_path / "m")
    assert _run(["queue", "add", "quick_test", *FLAGS, "-o", "runs/c", "--name", "quick"], capsys)[0] == 0
    assert q.get(3).name == "quick"

    rc, out, _ = _run(["queue"], capsys)
    assert rc == 0 and out.count("queued") == 3 and "worker: not running" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--rank", "-3", "--lr", "x", "-o", "r"], "not queued: .*learning_rate .*; rank .*must be >= 1"),
        (["nosuch", "-o", "r"], "not queued: nosuch: no such preset"),
        (["c.json", "--config", "c.json", "-o", "r"], "give CONFIG .* or --config/--preset, not both"),
        (["missing.json", "-o", "r"], "not queued: .*missing.json"),
        (["-o", "r", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_add_refuses_a_bad_entry_in_one_line(
    q: RunQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c.json").write_text("{}")
    first = argv[:1] if argv[0] in ("nosuch", "c.json", "missing.json") else []
    rc, out, err = _run(["queue", "add", *first, *FLAGS, *argv[len(first) :]], capsys)
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert re.search(says, err), err
    assert "Traceback" not in err and q.entries() == []


def test_cli_add_refuses_a_folder_with_a_finished_run(
    q: RunQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "done"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"output_dir": str(run), "dataset_dir": "d"}))
    rc, _, err = _run(["queue", "add", *FLAGS, "-o", str(run)], capsys)
    assert rc == 2 and "holds a finished run" in err and q.entries() == []
    assert _run(["queue", "add", *FLAGS, "-o", str(run), "--overwrite"], capsys)[0] == 0


def test_cli_edits_and_their_errors(q: RunQueue, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in "abc":
        q.add(_config(str(tmp_path / name)))
    assert _run(["queue", "move", "3", "1"], capsys)[1].strip() == "entry 3 is now #1 of 3"
    assert _run(["queue", "remove", "2"], capsys)[0] == 0 and _ids(q) == [3, 1]
    rc, _, err = _run(["queue", "remove", "2"], capsys)
    assert rc == 2 and err.strip() == "error: no queue entry 2 (entries: 3, 1); see `sidestep queue list`"
    q.claim_next(pid=1)
    q.finish(3, "failed", "dataset folder holds no training tensors")
    rc, out, _ = _run(["queue", "list"], capsys)
    assert rc == 0 and "failed" in out and "! dataset folder holds no training tensors" in out
    assert _run(["queue", "clear", "--finished"], capsys)[1].strip() == "removed 1 entry" and _ids(q) == [1]
    assert _run(["queue", "clear"], capsys)[0] == 0 and _ids(q) == []
    rc, _, err = _run(["queue", "run"], capsys)
    assert rc == 2 and "nothing is queued" in err


def test_cli_run_says_which_worker_is_already_working(q: RunQueue, capsys: pytest.CaptureFixture[str]) -> None:
    q.add(_config("/r/a"))
    lock = q.acquire_worker_lock()
    try:
        for extra in ([], ["--foreground"]):
            rc, out, err = _run(["queue", "run", *extra], capsys)
            assert rc == 2 and not out, out
            assert err.strip() == f"error: a queue worker is already working (pid {os.getpid()}); it takes new entries as it goes"
    finally:
        lock.release()
    assert q.entries()[0].state == "queued"


def test_finish_accepts_only_end_states(q: RunQueue) -> None:
    q.add(_config("/r/a"))
    with pytest.raises(ValueError, match="finish state"):
        q.finish(1, "running")
    assert queue_mod.FINISHED == ("done", "failed", "stopped")


def test_pause_lets_the_current_run_finish_and_takes_no_other(q: RunQueue, capsys: pytest.CaptureFixture[str]) -> None:
    for name in "ab":
        q.add(_config(f"/r/{name}"))
    q.claim_next(pid=1)
    rc, out, _ = _run(["queue", "pause"], capsys)
    assert rc == 0 and "queue paused: no worker is running" in out and q.paused()
    q.finish(1, "done")
    assert q.claim_next(pid=1) is None and q.get(2).state == "queued"  # paused: the worker ends
    assert "not running (paused)" in _run(["queue"], capsys)[1]
    lock = q.acquire_worker_lock()  # a worker still finishing its run: `queue run` lifts the pause
    try:
        rc, out, _ = _run(["queue", "run"], capsys)
        assert rc == 0 and f"pause lifted: the worker (pid {os.getpid()}) goes on" in out and not q.paused()
    finally:
        lock.release()
    assert q.claim_next(pid=1).id == 2  # type: ignore[union-attr]
