"""Bad input gets one line naming the culprit and the fix, no traceback, and nothing half written.
Each test drives the real command line (``engine.cli.main.main``: what the ``sidestep`` entry point
runs) or the real pipeline, on the demo model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine.cli.main import main
from tests.reliability.conftest import demo_argv


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line the command printed (stdout or stderr), and no traceback."""
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text
    return errors[0]


def copy_dataset(demo_paths: dict[str, str], dest: Path) -> Path:
    shutil.copytree(demo_paths["dataset_dir"], dest)
    return dest


def first_pt(folder: Path) -> Path:
    return sorted(folder.glob("*.pt"))[0]


# --------------------------------------------------------------------------- config and presets


def test_config_from_a_newer_sidestep_is_refused(demo_paths, tmp_path, capsys) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"schema_version": 99, "rank": 8}))
    assert main([*demo_argv(demo_paths, tmp_path / "run"), "--config", str(cfg)]) == 2
    line = one_error(capsys)
    assert "made by a newer sidestep" in line and "99" in line
    assert not (tmp_path / "run").exists()


@pytest.fixture
def user_presets(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    from engine import presets

    return presets.user_dir()


def _preset_file(path: Path, **config: object) -> Path:
    path.write_text(json.dumps({"schema_version": 1, "name": path.stem, "description": "", "config": {"rank": 8, **config}}))
    return path


def test_presets_import_of_an_existing_name_names_the_overwrite_flag(user_presets, tmp_path, capsys) -> None:
    src = _preset_file(tmp_path / "mine.json")
    assert main(["presets", "import", str(src)]) == 0
    capsys.readouterr()
    _preset_file(src, alpha=32)
    assert main(["presets", "import", str(src)]) == 2
    assert "pass --overwrite" in one_error(capsys)
    assert json.loads((user_presets / "mine.json").read_text())["config"] == {"rank": 8}  # untouched
    assert main(["presets", "import", str(src), "--overwrite"]) == 0
    assert json.loads((user_presets / "mine.json").read_text())["config"]["alpha"] == 32


@pytest.mark.parametrize("variant", ["/some/abs/dir", "../elsewhere", "sub/dir"])
def test_a_preset_holding_a_path_as_model_variant_is_refused_at_import(user_presets, tmp_path, capsys, variant) -> None:
    src = _preset_file(tmp_path / "evil.json", model_variant=variant)
    assert main(["presets", "import", str(src)]) == 2
    line = one_error(capsys)
    assert "model_variant" in line and "is a path" in line
    assert not (user_presets / "evil.json").exists()


def test_a_preset_holding_a_path_as_model_variant_is_refused_at_load(user_presets, demo_paths, tmp_path, capsys) -> None:
    user_presets.mkdir(parents=True)
    _preset_file(user_presets / "planted.json", model_variant=demo_paths["checkpoint_dir"])  # copied in by hand
    assert main([*demo_argv(demo_paths, tmp_path / "run"), "--preset", "planted"]) == 2
    assert "is a path" in one_error(capsys)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- folders


def test_dataset_dir_that_is_a_file(demo_paths, tmp_path, capsys) -> None:
    file = tmp_path / "tensors.pt"
    file.write_bytes(b"x")
    argv = demo_argv(demo_paths, tmp_path / "run")
    argv[argv.index("--dataset-dir") + 1] = str(file)
    assert main(argv) == 1
    assert "is a file, not a folder" in one_error(capsys)


def test_dataset_command_input_that_is_a_file(tmp_path, capsys) -> None:
    file = tmp_path / "song.wav"
    file.write_bytes(b"x")
    assert main(["dataset", "-i", str(file)]) == 2
    assert "is a file, not a folder" in one_error(capsys)


@pytest.mark.parametrize("where", ["dataset", "inside-dataset", "checkpoint-root"])
def test_output_dir_in_the_dataset_or_checkpoint_root_is_refused(demo_paths, tmp_path, capsys, where) -> None:
    data = copy_dataset(demo_paths, tmp_path / "data")
    out = {"dataset": data, "inside-dataset": data / "run", "checkpoint-root": Path(demo_paths["checkpoint_dir"]) / "run"}[where]
    before = sorted(os.listdir(data)), sorted(os.listdir(demo_paths["checkpoint_dir"]))
    argv = demo_argv(demo_paths, out)
    argv[argv.index("--dataset-dir") + 1] = str(data)
    assert main(argv) == 1
    line = one_error(capsys)
    assert "is inside" in line and ("--dataset-dir" in line or "--checkpoint-dir" in line)
    assert (sorted(os.listdir(data)), sorted(os.listdir(demo_paths["checkpoint_dir"]))) == before


# --------------------------------------------------------------------------- tensors


def test_all_zero_attention_mask_is_refused_by_file_name(demo_paths, tmp_path, capsys) -> None:
    data = copy_dataset(demo_paths, tmp_path / "data")
    victim = first_pt(data)
    sample = torch.load(victim, weights_only=True)
    sample["attention_mask"] = torch.zeros_like(sample["attention_mask"])
    torch.save(sample, victim)
    argv = demo_argv(demo_paths, tmp_path / "run")
    argv[argv.index("--dataset-dir") + 1] = str(data)
    assert main(argv) == 1
    line = one_error(capsys)
    assert victim.name in line and "attention_mask is all zero" in line


def test_tensors_for_another_hidden_size(demo_paths, tmp_path, capsys) -> None:
    data = copy_dataset(demo_paths, tmp_path / "data")
    for pt in data.glob("*.pt"):
        sample = torch.load(pt, weights_only=True)
        sample["encoder_hidden_states"] = sample["encoder_hidden_states"][:, :64].clone()
        torch.save(sample, pt)
    argv = demo_argv(demo_paths, tmp_path / "run")
    argv[argv.index("--dataset-dir") + 1] = str(data)
    assert main(argv) == 1
    line = one_error(capsys)
    assert "made for hidden size 64" in line and "has 128" in line and "preprocess again" in line


# --------------------------------------------------------------------------- the model folder


def test_auto_map_naming_hub_code_is_refused_offline(demo_paths, tmp_path, capsys) -> None:
    root = tmp_path / "ck"
    shutil.copytree(demo_paths["checkpoint_dir"], root)
    cfg_path = root / demo_paths["model_variant"] / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"]["AutoModel"] = "someone/evil-repo--modeling.Backdoor"
    cfg_path.write_text(json.dumps(cfg))
    argv = demo_argv(demo_paths, tmp_path / "run")
    argv[argv.index("--checkpoint-dir") + 1] = str(root)
    assert main(argv) == 1
    line = one_error(capsys)
    assert "someone/evil-repo--modeling.Backdoor" in line and "model hub" in line


_NET_EVENTS: list[tuple[str, tuple]] = []
_WATCHING = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if _WATCHING["on"] and event in ("socket.connect", "socket.getaddrinfo"):
        _NET_EVENTS.append((event, args))


def test_loading_the_model_opens_no_socket(demo_paths) -> None:
    """The whole model load (config, remote code from the folder, weights, attention fallback) with an
    audit hook on every socket connect and name lookup: none may happen."""
    import sys

    from engine.models.loader import load_decoder

    sys.addaudithook(_audit)  # cannot be removed; it records only while _WATCHING is on
    _WATCHING["on"] = True
    try:
        loaded = load_decoder(
            os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"]),
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
    finally:
        _WATCHING["on"] = False
    assert loaded.decoder is not None
    assert _NET_EVENTS == []
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# --------------------------------------------------------------------------- preprocessing


@pytest.fixture(scope="module")
def audio_checkpoint(tmp_path_factory) -> str:
    from engine.models.demo.audio import write_demo_audio_components
    from engine.models.demo.build import write_demo_checkpoint

    root = tmp_path_factory.mktemp("audio-ck")
    write_demo_checkpoint(root)
    write_demo_audio_components(root)
    return str(root)


def _pre_argv(checkpoint: str, songs: Path, out: Path) -> list[str]:
    from engine.models.demo.build import DEMO_FOLDER

    return ["preprocess", "-c", checkpoint, "-M", DEMO_FOLDER, "-i", str(songs), "-o", str(out), "--device", "cpu"]


def test_preprocess_output_that_is_an_existing_file(audio_checkpoint, tmp_path, capsys) -> None:
    from engine.models.demo.audio import synthesize_demo_audio

    songs = tmp_path / "songs"
    synthesize_demo_audio(songs, 1, seconds=(1.0,))
    out = tmp_path / "out.pt"
    out.write_bytes(b"keep me")
    assert main(_pre_argv(audio_checkpoint, songs, out)) == 2
    assert "is a file, not a folder" in one_error(capsys)
    assert out.read_bytes() == b"keep me"


def test_mixed_good_and_bad_audio_counts_every_file(audio_checkpoint, tmp_path, capsys) -> None:
    from engine.models.demo.audio import synthesize_demo_audio

    songs = tmp_path / "songs"
    synthesize_demo_audio(songs, 1, seconds=(1.0,))
    (songs / "empty.wav").write_bytes(b"")
    (songs / "noise.flac").write_bytes(b"not audio at all" * 10)
    assert main(_pre_argv(audio_checkpoint, songs, tmp_path / "out")) == 1
    printed = capsys.readouterr().out
    done = [line for line in printed.splitlines() if "written" in line and "failed of" in line]
    assert done and "1 written" in done[-1] and "2 failed of 3" in done[-1], printed
