"""Cruise control, EMA and the checkpoint hook in the one schema: Side-Step's / SimpleTuner's flag
names and defaults, the conflicts refused with one clear line, and the hook's argument list."""

from __future__ import annotations

import pytest

from engine import config as cfg

REQUIRED = {"checkpoint_dir": "c", "dataset_dir": "d", "output_dir": "o"}


def test_flags_and_defaults_follow_side_step_and_simpletuner() -> None:
    expected = {
        "target_loss": ("--target-loss", 0.0),
        "target_loss_floor": ("--target-loss-floor", 0.01),
        "target_loss_warmup": ("--target-loss-warmup", 50),
        "target_loss_smoothing": ("--target-loss-smoothing", 0.98),
        "use_ema": ("--use-ema", False),
        "ema_decay": ("--ema-decay", 0.995),
        "ema_update_interval": ("--ema-update-interval", 1),
        "ema_cpu_only": ("--ema-cpu-only", False),
        "post_checkpoint_script": ("--post-checkpoint-script", ""),
    }
    for name, (flag, default) in expected.items():
        f = cfg.FIELD_BY_NAME[name]
        assert (f.metadata["flag"], f.default) == (flag, default), name
        assert cfg.FLAG_TO_FIELD[flag] == name
    config = cfg.parse({**REQUIRED, "target_loss": "0.2", "use_ema": "true", "ema_decay": 0.9})
    assert cfg.parse(cfg.to_dict(config)) == config  # config.json round trip
    assert {"--target-loss", "0.2", "--use-ema", "--ema-decay", "0.9"} <= set(cfg.cli_args(config))


@pytest.mark.parametrize(
    ("values", "field", "needle"),
    [
        ({"target_loss": 0.2, "optimizer_type": "prodigy"}, "target_loss", "Prodigy"),
        ({"target_loss": 0.2, "early_stop_patience": 5}, "early_stop_patience", "set early_stop_patience 0"),
        ({"target_loss": -1}, "target_loss", "must be >= 0.0"),
        ({"target_loss_smoothing": 1.0}, "target_loss_smoothing", "must be <= 0.9999"),
        ({"ema_decay": 1.0}, "ema_decay", "must be <= 0.99999"),
        ({"ema_decay": 0}, "ema_decay", "must be > 0.0"),
        ({"ema_update_interval": 0}, "ema_update_interval", "must be >= 1"),
        ({"post_checkpoint_script": "sync {ckpt}"}, "post_checkpoint_script", "unknown placeholder {ckpt}"),
        ({"post_checkpoint_script": "sync 'unclosed"}, "post_checkpoint_script", "balance the quotes"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(values, field, needle) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse({**REQUIRED, **values})
    assert needle in info.value.by_field()[field]


def test_hook_argv_is_split_without_a_shell_and_filled_per_argument() -> None:
    values = {"checkpoint_path": "/runs/a b/checkpoints/step_10", "step": "10", "run_dir": "/runs/a b"}
    argv = cfg.hook_argv('python "my sync.py" {checkpoint_path} --step={step} {run_dir}/log; rm -rf {}', values)
    # quotes group words, placeholders are replaced inside arguments, a value with spaces stays one
    # argument, and shell syntax (;) is just text: there is no shell
    assert argv == ["python", "my sync.py", "/runs/a b/checkpoints/step_10", "--step=10", "/runs/a b/log;", "rm", "-rf", "{}"]
    # SimpleTuner's names are accepted
    assert cfg.hook_argv("x {local_checkpoint_path} {global_step}", values) == ["x", values["checkpoint_path"], "10"]
    # a value holding a placeholder is not substituted again
    assert cfg.hook_argv("x {checkpoint_path}", {**values, "checkpoint_path": "{step}"}) == ["x", "{step}"]
