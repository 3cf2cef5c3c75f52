"""Issue 12, "Code the user did not choose": the model folder's Python runs (trust_remote_code) only from under
the checkpoint root the user chose, a run names that code with full sha256 hashes in its first lines, and code
that differs from the hashes first seen for the folder is called out ("custom code") at run start."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from engine import codehash, discovery, protocol
from engine.cli.main import main
from tests.reliability.conftest import demo_argv
from tests.reliability.test_honest_errors import one_error


def _train_argv(demo_paths: dict[str, str], root: Path | str, model: str, out: Path) -> list[str]:
    argv = demo_argv(demo_paths, out)
    argv[argv.index("--checkpoint-dir") + 1] = str(root)
    argv[argv.index("--model-variant") + 1] = model
    return argv


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_a_model_given_as_a_path_is_refused_before_the_run_folder_is_touched(demo_paths, tmp_path, capsys, kind) -> None:
    model_dir = os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"])
    model = (
        model_dir
        if kind == "absolute"
        else os.path.join("..", os.path.basename(demo_paths["checkpoint_dir"]), demo_paths["model_variant"])
    )
    out = tmp_path / "run"
    assert main(_train_argv(demo_paths, demo_paths["checkpoint_dir"], model, out)) != 0
    line = one_error(capsys)
    assert f"model {model!r} is a path" in line and "under the checkpoint root" in line
    assert not out.exists()


@pytest.mark.parametrize("link", ["folder", "code-file"])
def test_model_code_linking_outside_the_checkpoint_root_is_refused(demo_paths, tmp_path, capsys, link) -> None:
    demo_model = Path(demo_paths["checkpoint_dir"]) / demo_paths["model_variant"]
    root = tmp_path / "ckpt"
    root.mkdir()
    if link == "folder":  # the whole model folder is a link to one elsewhere
        (root / "acestep-v15-turbo").symlink_to(demo_model, target_is_directory=True)
        culprit = root / "acestep-v15-turbo"
    else:  # a real folder under the root whose modeling file links elsewhere
        folder = root / "acestep-v15-turbo"
        folder.mkdir()
        shutil.copy(demo_model / "config.json", folder / "config.json")
        shutil.copy(demo_model / "configuration_acestep_demo.py", folder)
        outside = tmp_path / "elsewhere" / "acestep_demo_modeling.py"
        outside.parent.mkdir()
        shutil.copy(demo_model / "acestep_demo_modeling.py", outside)
        (folder / "acestep_demo_modeling.py").symlink_to(outside)
        culprit = folder / "acestep_demo_modeling.py"
    out = tmp_path / "run"
    assert main(_train_argv(demo_paths, root, "turbo", out)) != 0
    line = one_error(capsys)
    assert f"{culprit}" in line and "outside the checkpoint root" in line and "model code only runs from" in line
    assert not out.exists()
    (shown,) = discovery.scan_checkpoints(str(root)).models  # the Models screen says so too
    assert any("outside the checkpoint root" in p for p in shown.problems)
    if link == "code-file":  # the same file copied in, and a link that stays inside the root: accepted
        (folder / "acestep_demo_modeling.py").unlink()
        shutil.copy(outside, folder / "acestep_demo_modeling.py")
        (root / "alias").symlink_to(folder, target_is_directory=True)
        assert discovery.check_model_name(str(root), "alias") == str(root / "alias")


def test_a_run_names_its_model_code_first_and_warns_when_it_changed(demo_paths, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SIDESTEP_CONFIG_DIR", str(tmp_path / "config"))
    model_dir = os.path.realpath(os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"]))
    files = {f.name: f.sha256 for f in codehash.code_files(model_dir)}
    assert set(files) == {"acestep_demo_modeling.py", "configuration_acestep_demo.py"}
    first_seen = time.time() - 3 * 86400
    recorded = {**files, "acestep_demo_modeling.py": "0" * 64}  # what the folder held when first seen
    store = tmp_path / "config" / codehash.STORE_FILE
    store.parent.mkdir()
    store.write_text(json.dumps({"version": 1, "folders": {model_dir: {"first_seen": first_seen, "files": recorded}}}))

    out = tmp_path / "run"
    assert main([*demo_argv(demo_paths, out), "--max-steps", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    code_line = next(i for i, line in enumerate(printed) if line.startswith("model code that runs (trust_remote_code)"))
    assert code_line < next(i for i, line in enumerate(printed) if line.startswith("dataset:"))  # before any other work
    for name, digest in files.items():
        assert f"{name} sha256 {digest}" in printed[code_line]  # the full hash in the log
    day = time.strftime("%Y-%m-%d", time.localtime(first_seen))
    warning = f"custom code: acestep_demo_modeling.py changed since first seen on {day}: review it"
    assert f"warning: {warning}" in printed
    logged = [e for e in protocol.read_events(str(out / "events.jsonl")) if isinstance(e, protocol.LogRecord)]
    assert any(e.level == "warning" and e.message == warning for e in logged)
    assert json.loads(store.read_text())["folders"][model_dir]["files"] == recorded  # the record is never replaced


def test_code_record_added_removed_and_a_broken_record(demo_paths, tmp_path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("acestep_demo_modeling.py", "configuration_acestep_demo.py"):
        shutil.copy(Path(demo_paths["checkpoint_dir"]) / demo_paths["model_variant"] / name, folder)
    store = tmp_path / "model_code.json"
    first = codehash.check(folder, store=store)
    assert first.first_seen and not first.custom and [f.name for f in first.files] == sorted(os.listdir(folder))
    (folder / "configuration_acestep_demo.py").unlink()
    (folder / "extra_code.py").write_text("print('new')\n")
    later = codehash.check(folder, store=store)
    assert later.custom and later.added == ("extra_code.py",) and later.removed == ("configuration_acestep_demo.py",)
    assert later.changed == () and len(later.warnings()) == 2
    store.write_text("{torn")
    broken = codehash.check(folder, store=store)  # never a crash, never a silent pass: the problem is named
    assert not broken.custom and "is unreadable" in broken.problem and store.read_text() == "{torn"
