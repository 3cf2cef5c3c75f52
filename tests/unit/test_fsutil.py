"""The one atomic writer: a failed write leaves the old file and no temp; writers never share a temp;
the data is fsynced before the rename; whole folders are swapped in or not at all."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from engine import fsutil


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if fsutil.is_temp(name) or name.startswith("."))


class Boom(RuntimeError):
    pass


def test_text_bytes_and_json_round_trip(tmp_path: Path) -> None:
    fsutil.write_text(tmp_path / "a.txt", "héllo\n")
    fsutil.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    fsutil.write_json(tmp_path / "c.json", {"name": "ü", "n": [1, 2]})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    text = (tmp_path / "c.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"name": "ü", "n": [1, 2]} and "ü" in text and text.endswith("\n")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["atomic_file", "atomic_write", "write_json"])
def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, how: str) -> None:
    target = tmp_path / "state.json"
    target.write_text("old contents", encoding="utf-8")
    with pytest.raises((Boom, TypeError)):
        if how == "atomic_file":
            with fsutil.atomic_file(target) as fh:
                fh.write("half of the new")
                fh.flush()
                raise Boom("disk full")
        elif how == "atomic_write":

            def writer(tmp: str) -> None:
                Path(tmp).write_text("half of the new", encoding="utf-8")
                raise Boom("disk full")

            fsutil.atomic_write(target, writer)
        else:
            fsutil.write_json(target, {"not json": object()})
    assert target.read_text(encoding="utf-8") == "old contents"
    assert leftovers(tmp_path) == []


def test_a_writer_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsutil.atomic_write(tmp_path / "x.bin", lambda tmp: None)
    assert os.listdir(tmp_path) == []


def test_concurrent_writers_of_one_file_never_share_a_temp(tmp_path: Path) -> None:
    """Eight writers of the same file, each stopped half way until all have started: each must end
    with its own complete file renamed in, so the result is one writer's whole payload."""
    target = tmp_path / "shared.txt"
    writers = 8
    payloads = [f"{i}:".ljust(200_000, chr(ord("a") + i)) for i in range(writers)]
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            with fsutil.atomic_file(target) as fh:
                fh.write(payloads[i][:100_000])
                fh.flush()
                barrier.wait(timeout=30)
                fh.write(payloads[i][100_000:])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert target.read_text(encoding="utf-8") in payloads
    assert leftovers(tmp_path) == []


def test_the_data_is_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fsutil.write_text(tmp_path / "a.txt", "x")
    fsutil.atomic_write(tmp_path / "b.txt", lambda tmp: Path(tmp).write_text("y"))
    expected = ["fsync-file", "replace"] + (["fsync-dir"] if os.name == "posix" else [])
    assert calls == expected * 2


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_new_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    fsutil.write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o666 & ~umask


def test_atomic_dir_swaps_a_whole_folder_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with fsutil.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "b.txt").write_text("1")
        assert not target.exists(), "nothing is visible before the commit"
    assert sorted(os.listdir(target)) == ["a.txt", "b.txt"]

    with pytest.raises(Boom), fsutil.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("2")
        raise Boom("crash while saving")
    assert sorted(os.listdir(target)) == ["a.txt", "b.txt"] and (target / "a.txt").read_text() == "1"

    with fsutil.atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert os.listdir(target) == ["c.txt"], "a replaced folder keeps nothing of the old one"
    assert leftovers(tmp_path) == []


def test_atomic_dir_merge_keeps_other_files(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "training_state.pt").write_bytes(b"state")
    (target / "a.txt").write_text("old")
    with fsutil.atomic_dir(target, merge=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["a.txt", "training_state.pt"] and (target / "a.txt").read_text() == "new"
    assert leftovers(tmp_path) == []
