"""Presets: every built-in loads, validates and matches ACE_STEP.md §9; the search order holds; bad
files are refused with one line naming the file and the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engine import config as cfg
from engine import presets

REPO_PRESETS = Path(__file__).resolve().parents[2] / "presets"
BUILTIN_FILES = sorted(REPO_PRESETS.glob("*.json"))
# The adapter presets choose only the adapter and its own settings (presets/README.md).
ADAPTER_PRESETS = {
    "lokr": {"adapter_type": "lokr", "lokr_linear_dim": 64, "lokr_linear_alpha": 128, "lokr_factor": -1},
    "loha": {"adapter_type": "loha", "loha_linear_dim": 32, "loha_linear_alpha": 32},
    "oft": {"adapter_type": "oft", "oft_dim": 32, "oft_constraint": 0.0},
}
SCHEDULE_FILES = [p for p in BUILTIN_FILES if p.stem not in ADAPTER_PRESETS]
PATHS = {"checkpoint_dir": "/ckpt", "dataset_dir": "/data", "output_dir": "/out"}

# ACE_STEP.md §9, mapped onto TrainConfig names.
COLUMNS = (
    "rank",
    "alpha",
    "target_mlp",
    "learning_rate",
    "batch_size",
    "gradient_accumulation",
    "epochs",
    "warmup_steps",
    "save_every",
    "save_best",
    "save_best_after",
    "log_every",
    "offload_encoder",
)
EXPECTED = {
    "recommended": (64, 128, True, 3e-4, 1, 4, 1000, 100, 50, True, 200, 10, True),
    "high_quality": (128, 256, True, 2e-4, 1, 4, 1000, 100, 50, True, 200, 10, True),
    "quick_test": (16, 32, True, 3e-4, 1, 4, 10, 10, 5, False, 0, 5, True),
    "vram_24gb_plus": (128, 256, True, 3e-4, 2, 2, 1000, 100, 50, True, 200, 10, False),
    "vram_16gb": (64, 128, True, 3e-4, 2, 2, 1000, 100, 50, True, 200, 10, True),
    "vram_12gb": (32, 64, True, 3e-4, 1, 4, 1000, 100, 50, True, 200, 10, True),
    "vram_8gb": (16, 32, False, 3e-4, 1, 8, 1000, 100, 50, True, 200, 10, True),
}
COMMON = {
    "dropout": 0.1,
    "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "attention_type": "both",
    "bias": "none",
    "max_steps": 0,
    "dataset_repeats": 1,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "seed": 42,
    "optimizer_type": "adamw8bit",
    "scheduler_type": "cosine",
    "cfg_ratio": 0.15,
    "loss_weighting": "none",
    "snr_gamma": 5.0,
    "early_stop_patience": 0,
    "log_heavy_every": 50,
    "gradient_checkpointing": True,
    "gradient_checkpointing_ratio": 1.0,
}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """cwd and the user config dir inside tmp_path, so only the built-ins are visible at first."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("APPDATA", raising=False)
    return tmp_path


def write(path: Path, values: dict | None = None, **top) -> Path:
    document = {"schema_version": 1, "name": path.stem, "description": "test preset", "config": values or {}}
    document.update(top)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- built-ins


def test_all_ten_builtins_ship() -> None:
    assert {p.stem for p in BUILTIN_FILES} == set(EXPECTED) | set(ADAPTER_PRESETS)
    assert set(presets.BUILTIN_ORDER) == set(EXPECTED) | set(ADAPTER_PRESETS)
    assert presets.builtin_dir() is not None
    assert presets.builtin_dir().resolve() == REPO_PRESETS.resolve()


@pytest.mark.parametrize("path", SCHEDULE_FILES, ids=lambda p: p.stem)
def test_builtin_loads_validates_and_matches_the_table(path: Path, isolated) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["schema_version"] == presets.PRESET_SCHEMA_VERSION
    assert document["name"] == path.stem
    assert document["description"].strip()
    assert not set(document["config"]) & presets.FORBIDDEN_KEYS

    values = presets.load_preset(path.stem)
    assert values == presets.load_preset(str(path))
    assert dict(zip(COLUMNS, EXPECTED[path.stem], strict=True)) == {k: values[k] for k in COLUMNS}
    assert {k: values[k] for k in COMMON} == COMMON
    assert set(values) == set(COLUMNS) | set(COMMON)

    config = cfg.parse(presets.apply_preset(path.stem, PATHS))  # the caller parses the merged dict
    for key, value in values.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize("name", sorted(ADAPTER_PRESETS))
def test_adapter_preset_sets_only_the_adapter(name: str, isolated) -> None:
    assert presets.load_preset(name) == ADAPTER_PRESETS[name]
    config = cfg.parse(presets.apply_preset(name, PATHS))
    default = cfg.parse(PATHS)
    changed = {k for k in ADAPTER_PRESETS[name] if getattr(config, k) != getattr(default, k)}
    assert "adapter_type" in changed and config.adapter_type == name
    others = [f.name for f in dataclasses.fields(config) if f.name not in ADAPTER_PRESETS[name]]
    assert {k: getattr(config, k) for k in others} == {k: getattr(default, k) for k in others}


@pytest.mark.parametrize("path", BUILTIN_FILES, ids=lambda p: p.stem)
def test_builtin_round_trips_through_save(path: Path, isolated) -> None:
    values = presets.load_preset(path.stem)
    saved = presets.save_preset(f"copy_{path.stem}", values, "copy")
    assert presets.load_preset(saved) == values
    assert presets.load_preset(f"copy_{path.stem}") == values


def test_list_presets_shows_builtins_in_curated_order(isolated) -> None:
    listed = presets.list_presets()
    assert [p.name for p in listed] == list(presets.BUILTIN_ORDER)
    assert all(p.source == "builtin" and p.error is None and p.description for p in listed)


def test_running_from_the_repo_root_does_not_list_builtins_twice(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(REPO_PRESETS.parent)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    listed = presets.list_presets()
    assert [p.source for p in listed] == ["builtin"] * len(BUILTIN_FILES)


# --------------------------------------------------------------------------- search order


def test_search_order_project_then_user_then_builtin(isolated) -> None:
    project = isolated / "work" / "presets"
    user = isolated / "xdg" / "sidestep" / "presets"
    write(project / "recommended.json", {"rank": 8}, description="project override")
    write(user / "recommended.json", {"rank": 4})
    write(user / "mine.json", {"rank": 12}, description="user only")
    write(project / "shared.json", {"rank": 2})
    write(user / "shared.json", {"rank": 3})

    assert [(s, d) for s, d in presets.search_path()] == [
        ("project", project),
        ("user", user),
        ("builtin", presets.builtin_dir()),
    ]
    by_name = {p.name: p for p in presets.list_presets()}
    assert by_name["recommended"].source == "project" and by_name["recommended"].description == "project override"
    assert by_name["shared"].source == "project"
    assert by_name["mine"].source == "user"
    assert by_name["vram_8gb"].source == "builtin"
    assert presets.load_preset("recommended") == {"rank": 8}
    assert presets.load_preset("shared") == {"rank": 2}
    assert presets.load_preset("mine") == {"rank": 12}
    names = [p.name for p in presets.list_presets()]
    assert names[:3] == ["recommended", "shared", "mine"]  # project, then user, then built-ins
    assert names[3:] == [n for n in presets.BUILTIN_ORDER if n != "recommended"]


def test_user_dir_follows_xdg_and_home(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("APPDATA", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert presets.user_dir() == tmp_path / "cfg" / "sidestep" / "presets"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert presets.user_dir() == tmp_path / "home" / ".config" / "sidestep" / "presets"


def test_unknown_name_lists_what_exists(isolated) -> None:
    with pytest.raises(presets.PresetError, match=r"^nope: no such preset \(available: recommended, high_quality"):
        presets.load_preset("nope")


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("config", "top", "fragment"),
    [
        ({"rnak": 4}, {}, "key 'rnak': unknown setting; did you mean rank?"),
        ({"rank": "lots"}, {}, "key 'rank': expected a whole number"),
        ({"rank": 0}, {}, "key 'rank': must be >= 1"),
        ({"optimizer_type": "sgd"}, {}, "key 'optimizer_type': 'sgd' is not one of"),
        ({"checkpoint_dir": "/x"}, {}, "config key 'checkpoint_dir' is not allowed in a preset"),
        ({"device": "cuda"}, {}, "config key 'device' is not allowed"),
        ({"output_dir": "/o", "run_name": "x"}, {}, "config key 'output_dir' is not allowed"),
        ({"schema_version": 1}, {}, "config key 'schema_version' belongs at the top level"),
        ({}, {"schema_version": 2}, "schema_version 2 was written by a newer Side-Step TUI"),
        ({}, {"schema_version": "1"}, "schema_version must be a positive whole number"),
        ({}, {"extra": 1}, "unknown top-level key 'extra'"),
        ({}, {"config": [1]}, "config must be a JSON object"),
        ({}, {"description": 5}, "description must be text"),
        (
            {"attention_type": "self", "self_target_modules": ["q_proj"]},
            {},
            "key 'self_target_modules': per-attention lists need",
        ),
    ],
)
def test_bad_preset_errors_name_file_and_key(isolated, config, top, fragment) -> None:
    path = write(isolated / "bad.json", config, **top)
    with pytest.raises(presets.PresetError) as info:
        presets.load_preset(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_several_bad_keys_are_reported_together(isolated) -> None:
    path = write(isolated / "bad.json", {"rank": "x", "alpha": -1, "bogus": True})
    with pytest.raises(presets.PresetError) as info:
        presets.load_preset(str(path))
    message = str(info.value)
    assert "key 'rank'" in message and "key 'alpha'" in message and "key 'bogus'" in message


def test_missing_schema_version_and_invalid_json(isolated) -> None:
    missing = isolated / "missing.json"
    missing.write_text(json.dumps({"name": "m", "config": {}}), encoding="utf-8")
    with pytest.raises(presets.PresetError, match="schema_version is missing"):
        presets.load_preset(str(missing))
    broken = isolated / "broken.json"
    broken.write_text('{"schema_version": 1,\n "config": {', encoding="utf-8")
    with pytest.raises(presets.PresetError, match=r"broken\.json: not valid JSON \(line 2"):
        presets.load_preset(str(broken))
    with pytest.raises(presets.PresetError, match="no such preset file"):
        presets.load_preset(str(isolated / "absent.json"))


def test_invalid_files_are_listed_with_their_error(isolated) -> None:
    write(isolated / "work" / "presets" / "broken.json", {"rank": "x"}, description="still described")
    (isolated / "work" / "presets" / "garbage.json").write_text("nope", encoding="utf-8")
    by_name = {p.name: p for p in presets.list_presets()}
    assert "key 'rank'" in by_name["broken"].error and by_name["broken"].description == "still described"
    assert "not valid JSON" in by_name["garbage"].error
    assert by_name["recommended"].error is None


# --------------------------------------------------------------------------- save / export / import


def test_save_preset_is_validated_and_refuses_to_clobber(isolated) -> None:
    full = cfg.to_dict(cfg.parse({**PATHS, "rank": 8, "device": "cpu", "run_name": "r"}))
    path = Path(presets.save_preset("mine", full, "my settings"))
    assert path == isolated / "xdg" / "sidestep" / "presets" / "mine.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["schema_version"] == 1 and document["description"] == "my settings"
    assert not set(document["config"]) & (presets.FORBIDDEN_KEYS | {"schema_version"})  # paths dropped
    assert presets.load_preset("mine")["rank"] == 8
    assert not [p for p in path.parent.iterdir() if p.name != "mine.json"]  # no temp files left

    with pytest.raises(presets.PresetError, match="already exists"):
        presets.save_preset("mine", {"rank": 4})
    presets.save_preset("mine", {"rank": 4}, overwrite=True)
    assert presets.load_preset("mine") == {"rank": 4}

    with pytest.raises(presets.PresetError, match="'recommended' is a built-in preset name"):
        presets.save_preset("recommended", {"rank": 4})
    presets.save_preset("recommended", {"rank": 4}, overwrite=True)
    assert presets.load_preset("recommended") == {"rank": 4}  # the user copy shadows the built-in

    with pytest.raises(presets.PresetError, match="key 'rank'"):
        presets.save_preset("bad", {"rank": "x"})
    assert not (path.parent / "bad.json").exists()
    with pytest.raises(presets.PresetError, match="preset name"):
        presets.save_preset("../escape", {"rank": 4})


def test_save_preset_into_a_directory(isolated) -> None:
    target = isolated / "work" / "presets"
    path = presets.save_preset("local", {"learning_rate": "1e-4"}, directory=target)
    assert Path(path).parent == target
    assert json.loads(Path(path).read_text())["config"] == {"learning_rate": 1e-4}  # coerced on save
    assert presets.find_preset("local").source == "project"


def test_export_and_import(isolated) -> None:
    out = isolated / "exported"
    out.mkdir()
    path = presets.export_preset("vram_12gb", out)
    assert Path(path) == out / "vram_12gb.json"
    assert presets.load_preset(path) == presets.load_preset("vram_12gb")

    with pytest.raises(presets.PresetError, match="built-in preset name"):
        presets.import_preset(path)
    renamed = out / "shared_12gb.json"
    Path(path).rename(renamed)
    info = presets.import_preset(renamed)
    assert info.source == "user" and info.name == "shared_12gb"
    assert Path(info.path).parent == presets.user_dir()
    assert presets.load_preset("shared_12gb") == presets.load_preset("vram_12gb")
    with pytest.raises(presets.PresetError, match="already exists"):
        presets.import_preset(renamed)

    bad = write(isolated / "bad_one.json", {"rank": "x"})
    with pytest.raises(presets.PresetError, match="key 'rank'"):
        presets.import_preset(bad)
    assert not (presets.user_dir() / "bad_one.json").exists()


def test_apply_preset_merges_over_base(isolated) -> None:
    merged = presets.apply_preset("quick_test", {**PATHS, "rank": 999, "model_variant": "turbo"})
    assert merged["rank"] == 16 and merged["model_variant"] == "turbo" and merged["dataset_dir"] == "/data"
    assert presets.apply_preset("quick_test")["epochs"] == 10


def test_a_bare_file_name_falls_back_to_the_preset_name(isolated) -> None:
    assert presets.load_preset("vram_8gb.json") == presets.load_preset("vram_8gb")
    with pytest.raises(presets.PresetError, match="no such preset"):
        presets.load_preset("nothing.json")


def test_lycoris_adapter_settings_go_through_presets() -> None:
    """The new adapter types and their fields are ordinary schema keys for presets; bad values are named."""
    values = presets.validate_values(
        {"adapter_type": "oft", "oft_dim": 16, "lycoris_bypass": "on", "loha_linear_dim": 8}, "test.json"
    )
    assert values["adapter_type"] == "oft" and values["oft_dim"] == 16 and values["lycoris_bypass"] == "on"
    with pytest.raises(presets.PresetError, match="lycoris_bypass"):
        presets.validate_values({"adapter_type": "loha", "lycoris_bypass": "sometimes"}, "test.json")
