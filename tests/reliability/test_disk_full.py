"""A disk that fills up during a run: the run goes on, the previous checkpoint stays loadable, the
refused save is tried again when space returns, and the last save waits for space before it gives up.

Where this process may mount (root with CAP_SYS_ADMIN, as on the project's CI machines), the run
folder lives on a real tmpfs of a few MB: torch's and safetensors' own writers hit a real ENOSPC.
Elsewhere those tests skip and the injected-ENOSPC test below still covers the trainer's logic."""

from __future__ import annotations

import ctypes
import errno
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import config as cfgmod
from engine import fsutil, layout, protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus, JsonlSink
from engine.train import checkpoint as ckpt
from engine.train import diskspace
from engine.train.trainer import Trainer

MNT_DETACH = 2


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(kib)``: a fresh tmpfs of that size under tmp_path (skips where mounting is not allowed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    mounted: list[bytes] = []

    def mount(kib: int) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        if libc.mount(b"tmpfs", bytes(target), b"tmpfs", 0, f"size={kib}k".encode()) != 0:
            pytest.skip(f"cannot mount a tmpfs here ({os.strerror(ctypes.get_errno())}); the injected test covers the logic")
        mounted.append(bytes(target))
        return target

    yield mount
    for target in mounted:
        libc.umount2(target, MNT_DETACH)


def fill(folder: Path, leave_kib: int) -> Path:
    """A filler file that leaves about ``leave_kib`` free on ``folder``'s filesystem."""
    filler = folder / "filler.bin"
    size = max(diskspace.free_bytes(str(folder)) - leave_kib * 1024, 0)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * size)
    return filler


def run(values: dict, *, on_event: Callable[[Any], None] | None = None) -> tuple[list[Any], Any]:
    events: list[Any] = []

    def collect(event: Any) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    bus = EventBus([CallbackSink(collect)])
    final = Trainer(cfgmod.parse(values), bus, CommandInbox(None), run_id="disk", metrics_hz=math.inf).fit()
    return events, final


def warnings(events: list[Any]) -> list[str]:
    return [e.message for e in events if isinstance(e, protocol.LogRecord) and e.level == "warning"]


def saved(events: list[Any]) -> list[tuple[int, str]]:
    return [(e.step, e.kind) for e in events if isinstance(e, protocol.CheckpointSaved)]


def no_temps(run_dir: Path) -> bool:
    return not [p for p in run_dir.rglob("*") if p.name.endswith(fsutil.TEMP_SUFFIX)]


def test_a_disk_filling_up_mid_run_keeps_the_run_and_the_last_checkpoint(demo_config_values, small_fs) -> None:
    # ~2.2 MB: config, log, events and one resumable checkpoint (~1.2 MB) fit; a second does not.
    run_dir = small_fs(2200) / "run"
    values = dict(demo_config_values, output_dir=str(run_dir), max_steps=6, save_every_n_steps=2)
    events, final = run(values)
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "message", final)
    assert (2, "periodic") in saved(events) and (6, "final") in saved(events)
    refused = [w for w in warnings(events) if w.startswith("disk full: the periodic checkpoint")]
    assert refused and str(run_dir / "checkpoints") in refused[0] and "needs about" in refused[0], warnings(events)
    assert "training goes on" in refused[0]
    assert ckpt.load_training_state(str(run_dir / "checkpoints" / "step_2"))["global_step"] == 2
    assert (run_dir / "final" / "adapter_model.safetensors").is_file() and no_temps(run_dir)
    # events.jsonl holds the whole run, warnings included, ending with RunFinished
    on_disk = protocol.read_events(layout.events_path(str(run_dir)))
    assert isinstance(on_disk[-1], protocol.RunFinished) and [e.seq for e in on_disk] == sorted({e.seq for e in on_disk})


def test_the_last_save_waits_for_space_and_then_succeeds(demo_config_values, small_fs, monkeypatch) -> None:
    fs = small_fs(2200)
    run_dir = fs / "run"
    filler = fill(fs, leave_kib=300)  # the final adapter (~0.5 MB) does not fit until the filler goes
    monkeypatch.setattr(diskspace, "LAST_SAVE_POLL_S", 0.05)

    def free_space_when_asked(event: Any) -> None:
        if isinstance(event, protocol.LogRecord) and "this is the run's last save" in event.message:
            filler.unlink()  # the user frees space while the engine waits

    values = dict(demo_config_values, output_dir=str(run_dir), max_steps=3, save_every_n_steps=0)
    events, final = run(values, on_event=free_space_when_asked)
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "message", final)
    assert not filler.exists() and (3, "final") in saved(events)
    waiting = [e for e in events if isinstance(e, protocol.PhaseChanged) and "waiting for space" in e.detail]
    assert waiting, "the UI must see that the save is waiting for space"
    assert (run_dir / "final" / "adapter_model.safetensors").is_file() and no_temps(run_dir)


def test_a_last_save_that_never_fits_fails_naming_the_path_and_size(demo_config_values, small_fs, monkeypatch) -> None:
    fs = small_fs(2200)
    run_dir = fs / "run"
    fill(fs, leave_kib=300)
    monkeypatch.setattr(diskspace, "LAST_SAVE_POLL_S", 0.05)
    monkeypatch.setattr(diskspace, "LAST_SAVE_WAIT_S", 0.2)
    values = dict(demo_config_values, output_dir=str(run_dir), max_steps=3, save_every_n_steps=0)
    _, final = run(values)
    assert isinstance(final, protocol.RunFailed) and final.error_type == "SaveFailed"
    line = final.message
    assert "\n" not in line and line.startswith("disk full: the final checkpoint")
    assert str(run_dir / "final") in line and "needs about" in line and "no checkpoint of this run was saved" in line
    assert not (run_dir / "final").exists() and no_temps(run_dir)


def test_an_injected_enospc_is_owed_and_retried_once_space_allows(demo_config_values, monkeypatch) -> None:
    """Runs everywhere: the step-4 save fails with ENOSPC; the run goes on, the debt is paid at step 5
    (space is there again), step 2 stays loadable, and the run completes."""
    real_write = ckpt.write_checkpoint_dir

    def write(target: str, **kwargs: Any) -> str:
        if os.path.basename(target) == "step_4":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(target, **kwargs)

    monkeypatch.setattr(ckpt, "write_checkpoint_dir", write)
    monkeypatch.setattr(diskspace, "RECHECK_S", 0.0)
    values = dict(demo_config_values, max_steps=6, save_every_n_steps=4)
    events, final = run(values)
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "message", final)
    assert saved(events) == [(5, "periodic"), (6, "final")]
    (line,) = [w for w in warnings(events) if "was not saved" in w]
    assert line.startswith("disk full: the periodic checkpoint") and "step_4" in line and "tried again" in line
    assert ckpt.load_training_state(os.path.join(values["output_dir"], "checkpoints", "step_5"))["global_step"] == 5


def test_events_wait_in_memory_while_the_disk_is_full(small_fs) -> None:
    fs = small_fs(64)
    path = fs / "events.jsonl"
    sink = JsonlSink(str(path))
    sink.emit(protocol.stamp(protocol.LogRecord(level="info", message="before"), run_id="r", seq=1))
    filler = fill(fs, leave_kib=0)
    for seq in range(2, 200):  # ~20 KB of lines that cannot be written
        sink.emit(protocol.stamp(protocol.LogRecord(level="info", message="x" * 100), run_id="r", seq=seq))
    assert sink.pending_bytes > 0
    filler.unlink()
    sink.emit(protocol.stamp(protocol.LogRecord(level="info", message="after"), run_id="r", seq=200))
    sink.close()
    assert [e.seq for e in protocol.read_events(str(path))] == list(range(1, 201))


def test_a_sink_on_a_device_that_is_always_full_keeps_events_instead_of_raising() -> None:
    sink = JsonlSink("/dev/full")
    for seq in range(3):
        sink.emit(protocol.stamp(protocol.LogRecord(level="info", message="m"), run_id="r", seq=seq))
    assert sink.pending_bytes > 0
    sink.close()
