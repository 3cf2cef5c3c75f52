"""The one config schema: strict parsing, every error at once, complete metadata, CLI round trip,
adapter targets and variant defaults."""

from __future__ import annotations

import dataclasses

import pytest

from engine import config as cfg

PATHS = {"checkpoint_dir": "/ckpt", "dataset_dir": "/data", "output_dir": "/out"}


def parse(**values):
    return cfg.parse({**PATHS, **values})


def test_defaults_with_required_paths_are_valid() -> None:
    config = parse()
    assert config.checkpoint_dir == "/ckpt" and config.rank == 64
    assert cfg.diff_from_defaults(config) == PATHS


def test_required_paths_are_reported_together() -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse({})
    assert set(info.value.by_field()) == {"checkpoint_dir", "dataset_dir", "output_dir"}
    assert all(m == "is required" for m in info.value.by_field().values())


def test_unknown_key_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(cfg.ConfigError) as info:
        parse(rnak=4)
    assert info.value.by_field() == {"rnak": "unknown setting; did you mean rank?"}
    with pytest.raises(cfg.ConfigError, match=r"unknown setting$"):
        parse(zzzzzz=1)


def test_all_errors_are_reported_together() -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse({"checkpoint_dir": "/c", "rank": "many", "optimizer_type": "sgd", "dropout": 2.0, "batch_size": 0, "bogus": 1})
    errors = info.value.by_field()
    assert set(errors) == {"rank", "optimizer_type", "dropout", "batch_size", "bogus", "dataset_dir", "output_dir"}
    assert "expected a whole number" in errors["rank"]
    assert "adamw, adamw8bit, adafactor, prodigy" in errors["optimizer_type"]  # names the allowed values
    assert "<= 0.9" in errors["dropout"]
    assert ">= 1" in errors["batch_size"]
    text = str(info.value)
    assert "rank (--rank):" in text and "optimizer_type (--optimizer-type):" in text


def test_cross_field_checks() -> None:
    with pytest.raises(cfg.ConfigError) as info:
        parse(attention_type="self", self_target_modules="q_proj")
    assert "self_target_modules" in info.value.by_field()
    with pytest.raises(cfg.ConfigError, match="nothing to adapt"):
        parse(target_modules="", target_mlp=False)
    with pytest.raises(cfg.ConfigError, match="device"):
        parse(device="gpu0")
    assert parse(device="cuda:1").device == "cuda:1"


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("rank", "32", 32),
        ("rank", 32.0, 32),
        ("learning_rate", "3e-4", 3e-4),
        ("learning_rate", "", None),
        ("dropout", "0.05", 0.05),
        ("dropout", 0, 0.0),
        ("target_mlp", "no", False),
        ("target_mlp", "TRUE", True),
        ("gradient_checkpointing", "off", False),
        ("target_modules", "q_proj, v_proj", ("q_proj", "v_proj")),
        ("target_modules", ["k_proj"], ("k_proj",)),
        ("chunk_duration", " 60 ", 60),
        ("chunk_duration", "", None),
        ("run_name", "  spaced  ", "spaced"),
    ],
)
def test_coercion_from_strings_and_json(key, raw, expected) -> None:
    assert getattr(parse(**{key: raw}), key) == expected


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("rank", True, "expected a whole number"),
        ("rank", 2.5, "expected a whole number"),
        ("dropout", "lots", "expected a number"),
        ("dropout", float("nan"), "finite"),
        ("target_mlp", "maybe", "expected true or false"),
        ("target_modules", "q_proj w_proj", "unknown w_proj"),
        ("rank", None, "a value is required"),
        ("run_name", 5, "expected text"),
    ],
)
def test_bad_values_name_the_problem(key, raw, message) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        parse(**{key: raw})
    assert message in info.value.by_field()[key]


@pytest.mark.parametrize("f", cfg.FIELDS, ids=lambda f: f.name)
def test_every_field_has_complete_metadata(f: dataclasses.Field) -> None:
    meta = f.metadata
    for key in ("label", "help", "group", "flag"):
        assert isinstance(meta.get(key), str) and meta[key], f"{f.name}: metadata {key!r} missing"
    assert meta["group"] in cfg.GROUPS
    assert meta["flag"].startswith("--")
    if meta.get("choices") and f.default is not None:
        assert f.default in meta["choices"]
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, (int, float)) and not isinstance(default, bool) and not meta.get("required"):
        if meta.get("min") is not None:
            assert default >= meta["min"]
        if meta.get("max") is not None:
            assert default <= meta["max"]


def test_flags_are_unique() -> None:
    seen: dict[str, str] = {}
    for f in cfg.FIELDS:
        for flag in (f.metadata["flag"], *f.metadata.get("aliases", ())):
            assert flag not in seen, f"{flag} used by {seen.get(flag)} and {f.name}"
            seen[flag] = f.name
    assert seen == cfg.FLAG_TO_FIELD


def _args_to_dict(args: list[str]) -> dict:
    """A minimal reader for what ``cli_args`` writes (the real CLI is argparse-based)."""
    out: dict = {}
    i = 0
    while i < len(args):
        flag = args[i]
        if flag.startswith("--no-") and flag not in cfg.FLAG_TO_FIELD:
            out[cfg.FLAG_TO_FIELD["--" + flag[5:]]] = False
            i += 1
            continue
        name = cfg.FLAG_TO_FIELD[flag]
        f = cfg.FIELD_BY_NAME[name]
        values = []
        i += 1
        while i < len(args) and not ((args[i].startswith("--") and args[i] in cfg.FLAG_TO_FIELD) or args[i].startswith("--no-")):
            values.append(args[i])
            i += 1
        if str(f.type) == "bool" and not values:
            out[name] = True
        elif str(f.type).startswith("tuple"):
            out[name] = [v for v in values if v]
        else:
            (out[name],) = values
    return out


def test_cli_args_round_trip_through_parse() -> None:
    config = parse(
        rank=16,
        alpha=32,
        learning_rate=1e-4,
        target_mlp=False,
        attention_type="both",
        self_target_modules=("q_proj", "v_proj"),
        optimizer_type="prodigy",
        scheduler_type="constant",
        timestep_mu=-0.5,
        gradient_checkpointing=False,
        run_name="my run",
        resume_from="auto",
        chunk_duration=60,
        device="cuda:0",
    )
    args = cfg.cli_args(config)
    assert "--lr" in args and "--no-target-mlp" in args and "--no-gradient-checkpointing" in args
    assert cfg.parse(_args_to_dict(args)) == config
    assert cfg.cli_args(parse()) == [a for p in PATHS.items() for a in (cfg.FIELD_BY_NAME[p[0]].metadata["flag"], p[1])]


def test_json_round_trip() -> None:
    config = parse(rank=8, target_modules=("q_proj",), learning_rate=None)
    data = cfg.to_dict(config)
    assert data["schema_version"] == cfg.SCHEMA_VERSION and data["target_modules"] == ["q_proj"]
    assert cfg.from_json(cfg.to_json(config)) == config


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (dict(attention_type="both", target_mlp=False, target_modules=("q_proj",)), ("self_attn.q_proj", "cross_attn.q_proj")),
        (
            dict(attention_type="self", target_mlp=False, target_modules=("q_proj", "o_proj")),
            ("self_attn.q_proj", "self_attn.o_proj"),
        ),
        (dict(attention_type="cross", target_mlp=False, target_modules=("k_proj",)), ("cross_attn.k_proj",)),
        (
            dict(attention_type="both", target_mlp=False, target_modules=("q_proj",), self_target_modules=("v_proj",)),
            ("self_attn.v_proj", "cross_attn.q_proj"),
        ),
        (
            dict(
                attention_type="both",
                target_mlp=False,
                self_target_modules=("q_proj",),
                cross_target_modules=("k_proj", "v_proj"),
            ),
            ("self_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj"),
        ),
        (
            dict(attention_type="cross", target_mlp=True, target_modules=("q_proj",)),
            ("cross_attn.q_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        ),
        (dict(target_modules=(), target_mlp=True), ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
    ],
)
def test_resolve_targets(values, expected) -> None:
    assert cfg.resolve_targets(parse(**values)) == expected


def test_default_targets_cover_both_attention_types_and_mlp() -> None:
    targets = cfg.resolve_targets(parse())
    assert len(targets) == 4 * 2 + 3


@pytest.mark.parametrize(
    ("variant", "model_config", "shift", "steps"),
    [
        ("turbo", None, 3.0, 8),
        ("base", None, 1.0, 50),
        ("sft", None, 1.0, 50),
        ("xl-turbo", None, 3.0, 8),
        ("my-finetune", {"is_turbo": True}, 3.0, 8),
        ("my-finetune", {}, 1.0, 50),
    ],
)
def test_variant_defaults_fill_only_empty_fields(variant, model_config, shift, steps) -> None:
    resolved = cfg.resolve_variant_defaults(parse(model_variant=variant), model_config)
    assert (resolved.shift, resolved.num_inference_steps) == (shift, steps)
    assert (resolved.timestep_mu, resolved.timestep_sigma) == (cfg.DEFAULT_TIMESTEP_MU, cfg.DEFAULT_TIMESTEP_SIGMA)


def test_variant_defaults_never_override_user_values() -> None:
    user = parse(model_variant="turbo", shift=2.0, num_inference_steps=12, timestep_mu=0.3, timestep_sigma=0.7, base_model="sft")
    resolved = cfg.resolve_variant_defaults(user, {"is_turbo": True, "timestep_mu": -1.0, "timestep_sigma": 2.0})
    assert (resolved.shift, resolved.num_inference_steps, resolved.timestep_mu, resolved.timestep_sigma) == (2.0, 12, 0.3, 0.7)
    assert resolved.base_model == "sft"


def test_variant_defaults_read_the_model_config() -> None:
    resolved = cfg.resolve_variant_defaults(parse(model_variant="base"), {"timestep_mu": -0.8, "timestep_sigma": 1.2})
    assert (resolved.timestep_mu, resolved.timestep_sigma) == (-0.8, 1.2)


def test_derived_values() -> None:
    config = parse(batch_size=2, gradient_accumulation=3)
    assert config.effective_batch_size() == 6
    assert config.resolved_learning_rate() == cfg.DEFAULT_LEARNING_RATE
    assert parse(optimizer_type="prodigy", scheduler_type="constant").resolved_learning_rate() == 1.0
    assert parse(model_variant="xl-sft").model_dir() == "/ckpt/acestep-v15-xl-sft"
    assert parse(model_variant="my-ft").model_dir() == "/ckpt/my-ft"
