"""Model discovery over a synthetic checkpoint root (config.json files only, never weights)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from engine import discovery

AUTO_MAP = {
    "AutoConfig": "configuration_acestep_v15.AceStepConfig",
    "AutoModel": "modeling_acestep_v15_base.AceStepConditionGenerationModel",
}


def model(
    root: Path, name: str, *, weights: bytes | None = b"\0" * 1000, code: bool = True, silence: bool = False, **config
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    body = {
        "model_type": "acestep",
        "auto_map": AUTO_MAP,
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "timestep_mu": -0.4,
        "timestep_sigma": 1.0,
        **config,
    }
    (folder / "config.json").write_text(json.dumps(body), encoding="utf-8")
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    if code:
        (folder / "modeling_acestep_v15_base.py").write_text("# remote code\n")
        (folder / "configuration_acestep_v15.py").write_text("# remote code\n")
    if silence:
        (folder / "silence_latent.pt").write_bytes(b"PK-not-really")
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "checkpoints"
    r.mkdir()
    model(r, "acestep-v15-turbo", is_turbo=True, silence=True)
    model(r, "acestep-v15-base", is_turbo=False)
    model(r, "acestep-v15-xl-sft", hidden_size=2560, num_hidden_layers=32, weights=None)
    (r / "acestep-v15-xl-sft" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    (r / "acestep-v15-xl-sft" / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 10)
    (r / "acestep-v15-xl-sft" / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 20)
    model(r, "my-finetune", timestep_mu=-0.3)
    model(r, "zz-turbo-finetune")
    model(r, "broken-config", weights=None).joinpath("config.json").write_text("{ not json", encoding="utf-8")
    model(r, "no-weights", weights=None)
    model(r, "lfs-pointer", weights=b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4566000000\n")
    model(r, "no-code", code=False)
    (r / "not-a-model").mkdir()
    (r / "not-a-model" / "config.json").write_text(json.dumps({"whatever": 1}))
    (r / "empty-folder").mkdir()
    model(r, "acestep-5Hz-lm-1.7B")  # planner LM: skipped
    model(r, "Qwen3-Embedding-0.6B")  # text encoder: skipped as a model, counted as shared
    (r / "README.md").write_text("a file, not a folder")
    return r


def test_models_found_officials_first_then_by_name(root: Path) -> None:
    scan = discovery.scan_checkpoints(str(root))
    names = [m.name for m in scan.models]
    assert names == [
        "acestep-v15-base",
        "acestep-v15-turbo",
        "acestep-v15-xl-sft",
        "broken-config",
        "lfs-pointer",
        "my-finetune",
        "no-code",
        "no-weights",
        "zz-turbo-finetune",
    ]
    assert [m.official for m in scan.models][:4] == [True, True, True, False]


def test_variant_alias_and_key_values(root: Path) -> None:
    by_name = {m.name: m for m in discovery.scan_checkpoints(str(root)).models}
    turbo, base, xl = by_name["acestep-v15-turbo"], by_name["acestep-v15-base"], by_name["acestep-v15-xl-sft"]
    assert (turbo.variant, turbo.alias, turbo.xl, turbo.is_turbo) == ("turbo", "turbo", False, True)
    assert (base.variant, base.alias, base.xl, base.is_turbo) == ("base", "base", False, False)
    assert (xl.variant, xl.alias, xl.xl) == ("sft", "xl-sft", True)
    assert (xl.hidden_size, xl.num_hidden_layers) == (2560, 32)
    assert (turbo.timestep_mu, turbo.timestep_sigma) == (-0.4, 1.0)
    assert turbo.has_silence_latent and not base.has_silence_latent
    assert turbo.ok and base.ok and xl.ok, (turbo.problems, base.problems, xl.problems)


def test_finetunes_are_custom_with_detected_base(root: Path) -> None:
    by_name = {m.name: m for m in discovery.scan_checkpoints(str(root)).models}
    ft = by_name["my-finetune"]
    assert (ft.official, ft.alias, ft.variant, ft.base_model) == (False, "my-finetune", "unknown", None)
    assert ft.timestep_mu == -0.3
    assert by_name["zz-turbo-finetune"].base_model == "turbo"


def test_xl_is_detected_from_hidden_size_alone(tmp_path: Path) -> None:
    model(tmp_path, "big-finetune", hidden_size=2560)
    (info,) = discovery.scan_checkpoints(str(tmp_path)).models
    assert info.xl and info.variant == "unknown"


def test_sizes_come_from_file_sizes(root: Path) -> None:
    by_name = {m.name: m for m in discovery.scan_checkpoints(str(root)).models}
    turbo = by_name["acestep-v15-turbo"]
    folder = root / "acestep-v15-turbo"
    assert turbo.size_bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert turbo.weights_bytes == 1000  # silence_latent.pt is not weights
    assert by_name["acestep-v15-xl-sft"].weights_bytes == 30


def test_problems_per_model(root: Path) -> None:
    by_name = {m.name: m for m in discovery.scan_checkpoints(str(root)).models}
    assert by_name["broken-config"].problems[0].startswith("config.json is unreadable (line 1")
    assert by_name["no-weights"].problems == ("no weights (model.safetensors or model.safetensors.index.json)",)
    assert "Git LFS pointer" in by_name["lfs-pointer"].problems[0]
    assert by_name["no-code"].problems == (
        "missing modeling file(s) named in auto_map: configuration_acestep_v15.py, modeling_acestep_v15_base.py",
    )
    assert not by_name["no-code"].ok


def test_missing_shard_is_a_problem(tmp_path: Path) -> None:
    folder = model(tmp_path, "sharded", weights=None)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})
    )
    (folder / "s1.safetensors").write_bytes(b"x")
    (info,) = discovery.scan_checkpoints(str(tmp_path)).models
    assert info.problems == ("missing weight shard(s) listed in model.safetensors.index.json: s2.safetensors",)


def test_auto_map_with_repo_prefix_and_lists(tmp_path: Path) -> None:
    auto_map = {"AutoModel": "someone/repo--modeling_acestep_v15_base.Model", "AutoTokenizer": ["tok.Slow", None]}
    folder = model(tmp_path, "prefixed", auto_map=auto_map)
    (info,) = discovery.scan_checkpoints(str(tmp_path)).models
    assert info.problems == ("missing modeling file(s) named in auto_map: tok.py",)
    (folder / "tok.py").write_text("")
    assert discovery.scan_checkpoints(str(tmp_path)).models[0].ok


def test_non_models_and_skipped_folders(root: Path) -> None:
    names = {m.name for m in discovery.scan_checkpoints(str(root)).models}
    assert not names & {"not-a-model", "empty-folder", "acestep-5Hz-lm-1.7B", "Qwen3-Embedding-0.6B", "vae", "README.md"}


def test_shared_components_and_root_problems(root: Path) -> None:
    scan = discovery.scan_checkpoints(str(root))
    assert scan.shared == {"vae": False, "text_encoder": True, "silence_latent": True}
    assert len(scan.problems) == 1 and scan.problems[0].startswith("vae/")

    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    (root / "acestep-v15-turbo" / "silence_latent.pt").unlink()
    scan = discovery.scan_checkpoints(str(root))
    assert scan.shared == {"vae": True, "text_encoder": True, "silence_latent": False}
    assert scan.problems == ("silence_latent.pt is missing (looked in the root and every model folder)",)
    (root / "silence_latent.pt").write_bytes(b"x")
    assert discovery.scan_checkpoints(str(root)).problems == ()


def test_missing_or_empty_root(tmp_path: Path) -> None:
    scan = discovery.scan_checkpoints(str(tmp_path / "nowhere"))
    assert scan.models == () and "does not exist" in scan.problems[0]
    scan = discovery.scan_checkpoints(str(tmp_path))
    assert scan.models == () and scan.problems[0].startswith("no model folders")
    assert len(scan.problems) == 4


def test_resolve_model_dir(root: Path) -> None:
    assert discovery.resolve_model_dir(str(root), "turbo") == str(root / "acestep-v15-turbo")
    assert discovery.resolve_model_dir(str(root), "xl-sft") == str(root / "acestep-v15-xl-sft")
    assert discovery.resolve_model_dir(str(root), "my-finetune") == str(root / "my-finetune")
    assert discovery.resolve_model_dir(str(root), "acestep-v15-base") == str(root / "acestep-v15-base")
    with pytest.raises(discovery.DiscoveryError) as info:
        discovery.resolve_model_dir(str(root), "xl-turbo")
    message = str(info.value)
    assert "\n" not in message
    assert "no folder acestep-v15-xl-turbo" in message
    assert "available: base, turbo, xl-sft, broken-config" in message
    with pytest.raises(discovery.DiscoveryError, match=r"has no config\.json"):
        discovery.resolve_model_dir(str(root), "empty-folder")


def test_one_model_folder_rule_for_the_engine_the_config_and_the_screens(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.model_dir(), resolve_model_dir (engine) and find_model (Dataset / Setup screens) all map
    root + variant through model_folder, so they cannot disagree (e.g. on ``~``)."""
    from engine import config as cfg

    monkeypatch.setenv("HOME", str(root.parent))
    home_root = f"~/{root.name}"
    assert discovery.model_folder(home_root, "turbo") == str(root / "acestep-v15-turbo")
    config = cfg.TrainConfig(checkpoint_dir=home_root, model_variant="xl-sft", dataset_dir="d", output_dir="o")
    assert config.model_dir() == discovery.resolve_model_dir(home_root, "xl-sft") == str(root / "acestep-v15-xl-sft")
    found = discovery.find_model(home_root, "turbo")
    assert found is not None and found.path == str(root / "acestep-v15-turbo") and found.alias == "turbo"
    assert discovery.find_model(home_root, "xl-turbo") is None  # no such folder: quiet
    assert discovery.find_model("", "turbo") is None and discovery.find_model(home_root, "") is None


# --------------------------------------------------------------------------- GPUs


class _FakeNVMLError(Exception):
    pass


def _fake_pynvml(count: int = 2, init_error: bool = False, bad_index: int | None = None) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.NVMLError = _FakeNVMLError
    calls: list[str] = []
    module.calls = calls

    def init():
        calls.append("init")
        if init_error:
            raise _FakeNVMLError("NVML Shared Library Not Found")

    def handle(index):
        if index == bad_index:
            raise _FakeNVMLError("GPU is lost")
        return index

    module.nvmlInit = init
    module.nvmlShutdown = lambda: calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: count
    module.nvmlDeviceGetHandleByIndex = handle
    module.nvmlDeviceGetName = lambda h: b"NVIDIA Fake" if h == 0 else "NVIDIA Other"
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=512 * 2**20, total=80 * 2**30)
    return module


def test_gpus_reads_nvml(monkeypatch) -> None:
    fake = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = discovery.gpus()
    assert gpus == [(0, "NVIDIA Fake", 512.0, 81920.0), (1, "NVIDIA Other", 512.0, 81920.0)]
    assert gpus[1].name == "NVIDIA Other" and gpus[0].total_mb == 81920.0
    assert fake.calls == ["init", "shutdown"]


def test_gpus_skips_a_lost_gpu(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(count=3, bad_index=1))
    assert [g.index for g in discovery.gpus()] == [0, 2]


def test_gpus_without_driver_or_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_error=True))
    assert discovery.gpus() == []
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert discovery.gpus() == []


def test_gpus_with_the_real_package() -> None:
    gpus = discovery.gpus()  # [] on a machine without a driver, never an exception
    assert isinstance(gpus, list)
    for gpu in gpus:
        assert gpu.total_mb > 0 and 0 <= gpu.used_mb <= gpu.total_mb


OFFICIAL = {  # ACE_STEP.md §1.1: folder -> (variant, xl, alias)
    "acestep-v15-turbo": ("turbo", False, "turbo"),
    "acestep-v15-base": ("base", False, "base"),
    "acestep-v15-sft": ("sft", False, "sft"),
    "acestep-v15-turbo-shift1": ("turbo", False, "acestep-v15-turbo-shift1"),
    "acestep-v15-turbo-shift3": ("turbo", False, "acestep-v15-turbo-shift3"),
    "acestep-v15-turbo-continuous": ("turbo", False, "acestep-v15-turbo-continuous"),
    "acestep-v15-xl-turbo": ("turbo", True, "xl-turbo"),
    "acestep-v15-xl-base": ("base", True, "xl-base"),
    "acestep-v15-xl-sft": ("sft", True, "xl-sft"),
}


def official_root(demo_paths: dict[str, str], root: Path) -> Path:
    """An official checkpoint root (ACE_STEP.md §1.1) made of the demo writer's model folder under every
    official name (config.json per family, the weights hard-linked), plus the shared folders."""
    import os
    import shutil

    demo = Path(demo_paths["checkpoint_dir"]) / demo_paths["model_variant"]
    for name in OFFICIAL:
        folder = root / name
        folder.mkdir(parents=True)
        for item in demo.iterdir():
            if item.name == "config.json":
                config = json.loads(item.read_text())
                config["is_turbo"] = "turbo" in name
                (folder / "config.json").write_text(json.dumps(config))
            elif item.suffix == ".safetensors":
                os.link(item, folder / item.name)
            else:
                shutil.copyfile(item, folder / item.name)
    shutil.copyfile(Path(demo_paths["checkpoint_dir"]) / discovery.SILENCE_LATENT, root / discovery.SILENCE_LATENT)
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text("{}")
    (root / discovery.TEXT_ENCODER_DIR).mkdir()
    (root / "acestep-5Hz-lm-1.7B").mkdir()  # the planner LM: never a training model
    (root / "acestep-5Hz-lm-1.7B" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    return root


def test_official_root_from_the_demo_writer_lists_every_variant(demo_paths: dict[str, str], tmp_path: Path) -> None:
    root = official_root(demo_paths, tmp_path / "checkpoints")
    scan = discovery.scan_checkpoints(str(root))
    assert scan.problems == () and all(scan.shared.values())
    found = {m.name: (m.variant, m.xl, m.alias) for m in scan.models if m.ok and m.official}
    assert found == OFFICIAL and len(scan.models) == len(OFFICIAL)
    assert all(discovery.resolve_model_dir(str(root), alias) == str(root / name) for name, (_, _, alias) in OFFICIAL.items())

    # Broken official folders are listed with what is wrong, never hidden (an interrupted download).
    (root / "acestep-v15-turbo" / "config.json").write_text("")
    (root / "acestep-v15-sft" / "config.json").write_text("{}")
    (root / "acestep-v15-xl-base" / "config.json").unlink()
    (root / "acestep-v15-base" / "model.safetensors").unlink()
    (root / "acestep-v15-turbo-shift1").joinpath("config.json").write_text("{ not json")
    models = {m.name: m for m in discovery.scan_checkpoints(str(root)).models}
    assert set(models) == set(OFFICIAL)
    assert {name: (m.variant, m.xl, m.alias) for name, m in models.items()} == OFFICIAL  # the name still tells
    problems = {name: m.problems[0] for name, m in models.items() if m.problems}
    assert problems == {
        "acestep-v15-turbo": f"config.json is empty ({discovery.REFETCH})",
        "acestep-v15-sft": f"config.json has neither auto_map nor model_type ({discovery.REFETCH})",
        "acestep-v15-xl-base": f"no config.json ({discovery.REFETCH})",
        "acestep-v15-base": "no weights (model.safetensors or model.safetensors.index.json)",
        "acestep-v15-turbo-shift1": "config.json is unreadable (line 1: Expecting property name enclosed in double quotes)",
    }
