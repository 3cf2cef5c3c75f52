"""Optimizers and schedules (engine/train/optim.py) against ACE_STEP.md §8."""

from __future__ import annotations

import copy
import itertools
import sys

import pytest
import torch

from engine.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from engine.train.optim import (
    OptimizerUnavailable,
    build_optimizer,
    build_scheduler,
    effective_lr,
    load_training_state,
    warmup_steps,
)


def _module(width: int = 128) -> torch.nn.Module:
    """A tiny net; at the default width its first weight (8192 elements) gets bitsandbytes' 8-bit state."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.Linear(64, 8))


def _train(optimizer: torch.optim.Optimizer, module: torch.nn.Module, steps: int = 5) -> list[float]:
    x, y = torch.randn(32, 128, generator=torch.Generator().manual_seed(1)), torch.zeros(32, 8)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_each_optimizer_steps_on_cpu(kind):
    module = _module()
    before = [p.detach().clone() for p in module.parameters()]
    lines: list[str] = []
    config = TrainConfig(optimizer_type=kind, learning_rate=1.0 if kind == "prodigy" else 1e-3)
    optimizer = build_optimizer(module.parameters(), config, device_type="cpu", log=lines.append)
    _train(optimizer, module, steps=3 if kind == "prodigy" else 5)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    assert lines and all(isinstance(line, str) for line in lines)
    assert effective_lr(optimizer) > 0


def test_adamw8bit_keeps_8bit_state_on_cpu():
    module = _module()
    optimizer = build_optimizer(module.parameters(), TrainConfig(optimizer_type="adamw8bit"), device_type="cpu")
    assert type(optimizer).__name__ == "AdamW8bit"
    _train(optimizer, module, steps=1)
    state = optimizer.state[module[0].weight]
    assert state["state1"].dtype == torch.uint8


def test_optimizer_types_and_settings():
    params = list(_module().parameters())
    adamw = build_optimizer(params, TrainConfig(optimizer_type="adamw"), device_type="cpu")
    assert isinstance(adamw, torch.optim.AdamW) and not adamw.defaults.get("fused")
    assert adamw.defaults["lr"] == 3e-4 and adamw.defaults["weight_decay"] == 0.01
    adafactor = build_optimizer(params, TrainConfig(optimizer_type="adafactor"), device_type="cpu")
    assert type(adafactor).__name__ == "Adafactor"
    assert adafactor.defaults["relative_step"] is False and adafactor.defaults["scale_parameter"] is False
    assert adafactor.defaults["warmup_init"] is False and adafactor.defaults["lr"] == 3e-4
    prodigy = build_optimizer(params, TrainConfig(optimizer_type="prodigy"), device_type="cpu")
    d = prodigy.defaults
    assert d["safeguard_warmup"] is True and d["use_bias_correction"] is True and d["betas"] == (0.9, 0.99)
    assert d["weight_decay"] == 0.01


def test_prodigy_default_lr_is_one_and_user_lr_is_kept():
    params = list(_module().parameters())
    lines: list[str] = []
    default = build_optimizer(params, TrainConfig(optimizer_type="prodigy"), device_type="cpu", log=lines.append)
    assert default.param_groups[0]["lr"] == 1.0
    assert any("lr=1.0" in line and "default" in line for line in lines)
    lines.clear()
    user = build_optimizer(params, TrainConfig(optimizer_type="prodigy", learning_rate=0.5), device_type="cpu", log=lines.append)
    assert user.param_groups[0]["lr"] == 0.5
    assert not any("default" in line for line in lines)
    # the effective step is d * lr
    assert effective_lr(user) == pytest.approx(user.param_groups[0]["d"] * 0.5)


@pytest.mark.parametrize(
    "kind,module_name",
    [("prodigy", "prodigyopt"), ("adamw8bit", "bitsandbytes.optim"), ("adafactor", "transformers.optimization")],
)
def test_missing_package_is_an_error_not_a_fallback(monkeypatch, kind, module_name):
    monkeypatch.setitem(sys.modules, module_name, None)  # makes the import raise ImportError
    with pytest.raises(OptimizerUnavailable) as info:
        build_optimizer(_module().parameters(), TrainConfig(optimizer_type=kind), device_type="cpu")
    message = str(info.value)
    assert kind in message and "install" in message and "\n" not in message


def test_no_parameters_is_an_error():
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([], TrainConfig(), device_type="cpu")


def _lrs(config: TrainConfig, total: int) -> list[float]:
    optimizer = build_optimizer(_module(16).parameters(), config, device_type="cpu")
    scheduler = build_scheduler(optimizer, config, total)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_warmup_length_is_capped_at_a_tenth():
    assert warmup_steps(TrainConfig(warmup_steps=100), 2000) == 100
    assert warmup_steps(TrainConfig(warmup_steps=100), 500) == 50
    assert warmup_steps(TrainConfig(warmup_steps=100), 5) == 1
    assert warmup_steps(TrainConfig(warmup_steps=0), 5000) == 0


@pytest.mark.parametrize("kind", SCHEDULERS)
def test_warmup_starts_at_ten_percent_and_reaches_full_lr(kind):
    lr = 1e-3
    lrs = _lrs(TrainConfig(scheduler_type=kind, learning_rate=lr, warmup_steps=20), 400)
    assert lrs[0] == pytest.approx(0.1 * lr)
    assert lrs[10] == pytest.approx(0.55 * lr)
    assert lrs[20] == pytest.approx(lr)
    assert max(lrs) == pytest.approx(lr)
    assert all(a <= b + 1e-15 for a, b in itertools.pairwise(lrs[:21]))  # monotone ramp


def test_main_schedules_end_where_they_should():
    lr, total = 1e-3, 300
    cosine = _lrs(TrainConfig(scheduler_type="cosine", learning_rate=lr, warmup_steps=30), total)
    assert cosine[total] == pytest.approx(lr * 0.01)
    assert min(cosine) == pytest.approx(lr * 0.01)
    floor = _lrs(TrainConfig(scheduler_type="cosine", learning_rate=lr, cosine_eta_min_ratio=0.1, warmup_steps=30), total)
    assert floor[total] == pytest.approx(lr * 0.1)
    linear = _lrs(TrainConfig(scheduler_type="linear", learning_rate=lr, warmup_steps=30), total)
    assert linear[total] == pytest.approx(lr * 0.01)
    constant = _lrs(TrainConfig(scheduler_type="constant", learning_rate=lr, warmup_steps=30), total)
    assert constant[30:] == pytest.approx([lr] * (total - 29))
    restarts = _lrs(
        TrainConfig(scheduler_type="cosine_restarts", learning_rate=lr, warmup_steps=30, cosine_restarts_count=3), total
    )
    period = (total - 30) // 3
    assert restarts[30] == pytest.approx(lr) and restarts[30 + period] == pytest.approx(lr)
    assert restarts[30 + period - 1] < 0.05 * lr


def test_zero_warmup_starts_at_full_lr():
    lrs = _lrs(TrainConfig(scheduler_type="cosine", learning_rate=1e-3, warmup_steps=0), 100)
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-5)


@pytest.mark.parametrize("kind", SCHEDULERS)
@pytest.mark.parametrize("optimizer_type", ["adamw", "prodigy"])
def test_state_dict_round_trip_continues_the_schedule(kind, optimizer_type):
    if optimizer_type == "prodigy" and kind in ("cosine_restarts", "linear"):
        pytest.skip("the config refuses these schedules with prodigy")
    config = TrainConfig(scheduler_type=kind, optimizer_type=optimizer_type, warmup_steps=10)
    total, cut = 60, 23
    module = _module(16)
    optimizer = build_optimizer(module.parameters(), config, device_type="cpu")
    scheduler = build_scheduler(optimizer, config, total)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))

    def step(opt, sched, mod):
        mod(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        return effective_lr(opt)

    for _ in range(cut):
        step(optimizer, scheduler, module)
    # what a checkpoint holds (deep copies: the live state keeps changing)
    saved = copy.deepcopy((module.state_dict(), optimizer.state_dict(), scheduler.state_dict()))
    reference = [step(optimizer, scheduler, module) for _ in range(total - cut)]

    fresh = _module(16)
    fresh.load_state_dict(saved[0])
    optimizer2 = build_optimizer(fresh.parameters(), config, device_type="cpu")
    scheduler2 = build_scheduler(optimizer2, config, total)
    load_training_state(optimizer2, scheduler2, saved[1], saved[2])
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(saved[2]["_last_lr"][0])
    resumed = [step(optimizer2, scheduler2, fresh) for _ in range(total - cut)]
    assert resumed == pytest.approx(reference, rel=1e-12)
    for a, b in zip(module.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
