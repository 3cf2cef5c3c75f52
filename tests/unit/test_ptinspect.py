"""Reading torch.save files without torch, checked against real torch.save output."""

from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest

from engine import ptinspect

torch = pytest.importorskip("torch")


def sample(T: int = 50, L: int = 12, H: int = 32, **overrides) -> dict:
    data = {
        "target_latents": torch.zeros(T, 64, dtype=torch.bfloat16),
        "attention_mask": torch.ones(T, dtype=torch.bfloat16),
        "encoder_hidden_states": torch.zeros(L, H, dtype=torch.bfloat16),
        "encoder_attention_mask": torch.ones(L, dtype=torch.bool),
        "context_latents": torch.zeros(T, 128, dtype=torch.bfloat16),
        "metadata": {"filename": "song.wav", "duration": T // 25, "caption": "a song", "bpm": None, "repeat": 1},
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


def save(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------- reading


def test_shapes_dtypes_and_plain_values(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    obj = {
        "bf16": torch.zeros(10, 64, dtype=torch.bfloat16),
        "f16": torch.zeros(2, 3, 4, dtype=torch.float16),
        "f64": torch.zeros(1, dtype=torch.float64),
        "mask": torch.ones(5, dtype=torch.bool),
        "long": torch.arange(4),
        "int8": torch.zeros(3, dtype=torch.int8),
        "uint8": torch.zeros(3, dtype=torch.uint8),
        "scalar": torch.tensor(3.0),
        "transposed": base.t(),
        "slice": base[1:],
        "param": torch.nn.Parameter(torch.zeros(7)),
        "f8": torch.zeros(2, dtype=torch.float8_e4m3fn),
        "metadata": {
            "duration": 3,
            "caption": "x",
            "bpm": None,
            "tags": ["a", "b"],
            "pair": (1, 2.5),
            "blob": b"\x00\xff",
            "set": {1, 2},
        },
        "nested": {"inner": [torch.zeros(2, 2), {"deep": torch.ones(1)}]},
    }
    info = ptinspect.inspect_pt(str(save(obj, tmp_path / "x.pt")))
    expected = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in obj.items() if isinstance(v, torch.Tensor)}
    assert {k: (v.shape, v.dtype) for k, v in info.items() if isinstance(v, ptinspect.TensorInfo)} == expected
    assert info["metadata"] == obj["metadata"]
    inner = info["nested"]["inner"]
    assert inner[0] == ptinspect.TensorInfo((2, 2), "float32") and inner[1]["deep"].shape == (1,)
    assert info["bf16"].ndim == 2 and info["bf16"].numel == 640 and info["scalar"].numel == 1


def test_matches_torch_load_on_a_sample(tmp_path: Path) -> None:
    path = save(sample(), tmp_path / "s.pt")
    loaded = torch.load(path, weights_only=True)
    info = ptinspect.inspect_pt(str(path))
    assert set(info) == set(loaded)
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            assert info[key] == ptinspect.TensorInfo(tuple(value.shape), str(value.dtype).removeprefix("torch."))
        else:
            assert info[key] == value


def test_unknown_classes_become_inert_opaques(tmp_path: Path) -> None:
    import collections

    np = pytest.importorskip("numpy")
    path = save({"np": np.float64(1.5), "od": collections.OrderedDict(a=1), "arr": np.zeros(3)}, tmp_path / "n.pt")
    info = ptinspect.inspect_pt(str(path))
    assert isinstance(info["np"], ptinspect.Opaque) and "numpy" in repr(info["np"])
    assert info["od"] == {"a": 1}
    assert isinstance(info["arr"], ptinspect.Opaque)


def test_devices_and_dtypes_as_values(tmp_path: Path) -> None:
    path = save(
        {"device": torch.device("cpu"), "dtype": torch.bfloat16, "t": torch.zeros(2, dtype=torch.float8_e5m2)}, tmp_path / "d.pt"
    )
    info = ptinspect.inspect_pt(str(path))
    assert isinstance(info["device"], ptinspect.Opaque)
    assert info["t"] == ptinspect.TensorInfo((2,), "float8_e5m2")
    assert "bfloat16" in repr(info["dtype"])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_nothing_from_the_file_is_executed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": _Exploit()}, protocol=2))
    info = ptinspect.inspect_pt(str(path))
    assert isinstance(info["x"], ptinspect.Opaque)
    assert not (tmp_path / "PWNED").exists()


def test_only_data_pkl_is_read(tmp_path: Path, monkeypatch) -> None:
    path = save(sample(T=2000), tmp_path / "big.pt")
    opened: list[str] = []
    original = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):  # ZipFile.read goes through open too
        opened.append(name if isinstance(name, str) else name.filename)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    ptinspect.inspect_pt(str(path))
    assert opened == ["big/data.pkl"]


# --------------------------------------------------------------------------- bad files


def test_legacy_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"a": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ptinspect.PtError, match=r"legacy.pt: legacy \(pre-1.6, non-zip\) torch.save format"):
        ptinspect.inspect_pt(str(path))


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = save(sample(), tmp_path / "t.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ptinspect.PtError, match=r"t\.pt: corrupt or truncated"):
        ptinspect.inspect_pt(str(path))


def test_corrupt_data_pkl_is_caught_by_the_crc(tmp_path: Path) -> None:
    path = save(sample(), tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    offset = data.find(b"target_latents")
    data[offset : offset + 6] = b"XXXXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(ptinspect.PtError, match=r"c\.pt: corrupt or truncated"):
        ptinspect.inspect_pt(str(path))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"", "empty file"), (b"hello world", "not a torch.save zip archive"), (b"PK\x03\x04garbage", "corrupt or truncated")],
)
def test_other_non_torch_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(ptinspect.PtError, match=fragment):
        ptinspect.inspect_pt(str(path))


def test_zip_without_data_pkl_and_non_dict(tmp_path: Path) -> None:
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hi")
    with pytest.raises(ptinspect.PtError, match=r"without data\.pkl"):
        ptinspect.inspect_pt(str(path))
    tensor_only = save(torch.zeros(3), tmp_path / "tensor.pt")
    assert ptinspect.read_structure(str(tensor_only)) == ptinspect.TensorInfo((3,), "float32")
    with pytest.raises(ptinspect.PtError, match="holds a TensorInfo, not a dict"):
        ptinspect.inspect_pt(str(tensor_only))


# --------------------------------------------------------------------------- datasets


def test_scan_a_good_dataset(tmp_path: Path) -> None:
    for i, T in enumerate((50, 100, 250)):
        save(sample(T=T), tmp_path / f"song{i}.pt")
    save({"target_latents": torch.zeros(3, 64)}, tmp_path / "half.tmp.pt")  # pass-1 intermediate: ignored
    (tmp_path / "preprocess_meta.json").write_text(json.dumps({"model_variant": "turbo", "total": 3}))
    report = ptinspect.scan_dataset(str(tmp_path))
    assert report.problems == ()
    assert report.ok
    assert report.samples == 3
    assert report.files == ("song0.pt", "song1.pt", "song2.pt")
    assert report.total_seconds == pytest.approx((50 + 100 + 250) / 25)
    assert report.longest_seconds == pytest.approx(10.0)
    assert report.variant == "turbo" and report.hidden_size == 32 and not report.used_manifest
    assert report.tensor_format == ptinspect.TensorFormat(1, "legacy", recorded=True)  # a meta from before format versions


def _meta(folder: Path, **fields) -> None:
    (folder / "preprocess_meta.json").write_text(json.dumps(fields))


def test_conditioning_format_warnings(tmp_path: Path) -> None:
    """The decision behind the training warning (issue 9): only current inference-format tensors made
    by the model being trained pass; every other case is one line that names how to preprocess again."""
    current = {"tensor_format": ptinspect.TENSOR_FORMAT, "conditioning": "inference", "model_dir": "/m/acestep-v15-base"}
    cases = {
        "no_meta": None,  # the demo tensors, ACE-Step's or Side-Step's own: no format recorded
        "v1": {"model_variant": "base", "source_audio_dir": "/my songs"},  # this project before formats were recorded
        "legacy": {**current, "conditioning": "legacy"},
        "mixed": {**current, "conditioning": ptinspect.MIXED_CONDITIONING},
        "newer": {**current, "tensor_format": ptinspect.TENSOR_FORMAT + 1},
        "current": current,
    }
    lines = {}
    for name, fields in cases.items():
        (tmp_path / name).mkdir()
        if fields is not None:
            _meta(tmp_path / name, **fields)
        lines[name] = ptinspect.format_warnings(str(tmp_path / name), "/ckpt/acestep-v15-base/")
    assert lines["current"] == []
    for name in ("no_meta", "v1", "legacy", "mixed", "newer"):
        assert len(lines[name]) == 1 and "\n" not in lines[name][0], name
        assert lines[name][0].startswith(str(tmp_path / name) + ": ") and "sidestep preprocess -i " in lines[name][0], name
    assert "legacy conditioning" in lines["no_meta"][0] and "AUDIO_FOLDER" in lines["no_meta"][0]
    assert "older preprocessing" in lines["v1"][0] and "-i '/my songs' -o" in lines["v1"][0]  # the source, quoted
    assert "--conditioning legacy" in lines["legacy"][0] and "file_conditioning" in lines["mixed"][0]
    assert "newer Side-Step" in lines["newer"][0]
    # another model's condition encoder made the states: its own line, with the fix
    other = ptinspect.format_warnings(str(tmp_path / "current"), "acestep-v15-turbo")
    assert other == [
        f"{tmp_path / 'current'}: tensors were made by the condition encoder of acestep-v15-base, but this run trains "
        "acestep-v15-turbo; preprocess again with --model acestep-v15-turbo"
    ]
    assert ptinspect.format_warnings(str(tmp_path / "current")) == []  # no model given: no model check
    labels = {n: ptinspect.tensor_format(ptinspect.read_preprocess_meta(str(tmp_path / n))).label() for n in cases}
    assert labels["current"] == "inference conditioning (format 2)" and labels["legacy"] == "legacy conditioning (format 2)"
    assert labels["no_meta"].startswith("legacy conditioning assumed") and "format 1" in labels["v1"]


def test_scan_reports_each_bad_file(tmp_path: Path) -> None:
    for i in range(3):
        save(sample(T=50), tmp_path / f"good{i}.pt")
    save(sample(context_latents=None, metadata=None), tmp_path / "missing.pt")
    save(sample(target_latents=torch.zeros(50, 64, 1)), tmp_path / "rank.pt")
    save(sample(attention_mask=torch.ones(49)), tmp_path / "tmismatch.pt")
    save(sample(encoder_attention_mask=torch.ones(11, dtype=torch.bool)), tmp_path / "lmismatch.pt")
    save(sample(H=48), tmp_path / "width.pt")
    save(sample(context_latents=torch.zeros(50, 65)), tmp_path / "ctx65.pt")
    save(sample(target_latents=torch.zeros(50, 64, dtype=torch.int64)), tmp_path / "dtype.pt")
    save(sample(metadata="not a dict", target_latents=[1, 2]), tmp_path / "notensor.pt")
    truncated = save(sample(), tmp_path / "truncated.pt")
    truncated.write_bytes(truncated.read_bytes()[:300])

    report = ptinspect.scan_dataset(str(tmp_path))
    problems = dict(report.problems)
    assert report.samples == 3
    assert len(report.files) == 12
    assert problems["missing.pt"] == "missing key(s): context_latents"
    assert problems["rank.pt"] == "target_latents has shape [50, 64, 1], expected [T, 64]"
    assert problems["tmismatch.pt"] == "T differs: target_latents 50, attention_mask 49, context_latents 50"
    assert problems["lmismatch.pt"] == "L differs: encoder_hidden_states 12, encoder_attention_mask 11"
    assert problems["width.pt"] == "encoder_hidden_states width 48 differs from the other files (32)"
    assert problems["ctx65.pt"] == "context_latents has shape [50, 65], expected [T, 128]"
    assert problems["dtype.pt"] == "target_latents has dtype int64, expected a floating type"
    assert problems["notensor.pt"] == "target_latents is not a tensor (list)"
    assert problems["truncated.pt"].startswith("corrupt or truncated")
    assert not report.ok
    assert report.total_seconds == pytest.approx(3 * 2.0)


def test_scan_uses_the_manifest(tmp_path: Path) -> None:
    save(sample(T=25), tmp_path / "a.pt")
    save(sample(T=50), tmp_path / "sub" / "b.pt")
    save(sample(T=75), tmp_path / "unlisted.pt")
    manifest = {
        "metadata": {"name": "ds"},
        "samples": ["a.pt", "sub\\b.pt", "C:\\old\\machine\\a.pt", "gone.pt"],
        "num_samples": 4,
        "extra": True,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = ptinspect.scan_dataset(str(tmp_path))
    assert report.used_manifest
    assert report.files == ("a.pt", os.path.join("sub", "b.pt"))  # the Windows path falls back to a.pt, deduplicated
    assert report.problems == (("gone.pt", "listed in manifest.json but missing"),)
    assert report.total_seconds == pytest.approx(3.0)


def test_invalid_manifest_falls_back_to_scanning(tmp_path: Path) -> None:
    save(sample(T=25), tmp_path / "a.pt")
    (tmp_path / "manifest.json").write_text("{broken")
    report = ptinspect.scan_dataset(str(tmp_path))
    assert report.files == ("a.pt",) and report.samples == 1 and not report.used_manifest
    assert report.problems[0][0] == "manifest.json" and "scanning *.pt instead" in report.problems[0][1]


def test_empty_and_missing_dataset(tmp_path: Path) -> None:
    report = ptinspect.scan_dataset(str(tmp_path / "nope"))
    assert report.problems == ((".", "dataset folder does not exist"),)
    save({"target_latents": torch.zeros(3, 64)}, tmp_path / "x.tmp.pt")
    report = ptinspect.scan_dataset(str(tmp_path))
    assert report.samples == 0 and not report.ok
    assert report.problems == ((".", "no sample .pt files (1 *.tmp.pt intermediates: preprocessing did not finish)"),)


def test_many_files_use_the_thread_pool(tmp_path: Path) -> None:
    for i in range(40):
        save(sample(T=25 + i), tmp_path / f"s{i:02d}.pt")
    report = ptinspect.scan_dataset(str(tmp_path))
    assert report.samples == 40 and report.problems == ()
    assert report.files == tuple(f"s{i:02d}.pt" for i in range(40))
    assert report.longest_seconds == pytest.approx(64 / 25)


def test_the_ui_tests_stdlib_writer_writes_what_torch_writes(tmp_path: Path, monkeypatch) -> None:
    """tests/ui/pt_files.py writes samples for the UI tests without torch: torch loads them, and they read
    exactly as torch's own files of the same content."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pt_files", Path(__file__).resolve().parents[1] / "ui" / "pt_files.py")
    pt_files = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pt_files", pt_files)
    spec.loader.exec_module(pt_files)
    ours = pt_files.save(pt_files.sample(75, tokens=12, hidden=32, filename="song.wav"), tmp_path / "ours.pt")
    theirs = save(sample(T=75, L=12, H=32, metadata={"duration": 3, "filename": "song.wav"}), tmp_path / "theirs.pt")
    loaded, reference = torch.load(ours, weights_only=True), torch.load(theirs, weights_only=True)
    assert set(loaded) == set(reference) and loaded["metadata"] == reference["metadata"]
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], torch.zeros_like(value)), key
    assert ptinspect.inspect_pt(str(ours)) == ptinspect.inspect_pt(str(theirs))


def test_the_demo_dataset_is_synthetic_and_earns_no_format_warning(demo_paths: dict[str, str]) -> None:
    """The demo's generated states encode no prompt: nothing to preprocess again, so no warning on every
    demo run (a meta without a format would read as legacy)."""
    meta = ptinspect.read_preprocess_meta(demo_paths["dataset_dir"])
    fmt = ptinspect.tensor_format(meta)
    assert fmt.conditioning == ptinspect.SYNTHETIC_CONDITIONING and fmt.current and "synthetic" in fmt.label()
    assert ptinspect.format_warnings(demo_paths["dataset_dir"], demo_paths["model_variant"]) == []
