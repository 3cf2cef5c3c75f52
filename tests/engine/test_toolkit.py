"""Cruise control, EMA of the adapter weights and the post-checkpoint script: the math against hand
computations, then the real Fabric loop on the CPU demo (LR damping in the events, EMA adapters on
disk, bit-exact resume with both on, a hook that runs and one that fails)."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from engine import config as cfgmod
from engine import protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.train import cruise, ema
from engine.train.trainer import Trainer


def train(values: dict, *, stop_at: int | None = None) -> tuple[list, object]:
    """A Trainer in-process with per-step metrics; a stop is requested after step ``stop_at``."""
    events: list = []
    inbox = CommandInbox(None)

    def collect(event):
        events.append(event)
        if stop_at is not None and isinstance(event, protocol.StepMetrics) and event.step >= stop_at:
            inbox.state.stop_requested = True

    final = Trainer(cfgmod.parse(values), EventBus([CallbackSink(collect)]), inbox, run_id="test", metrics_hz=math.inf).fit()
    return events, final


def step_losses(events: list) -> dict[int, float]:
    return {e.step: e.loss for e in events if isinstance(e, protocol.StepMetrics) and e.steps_covered == 1}


# --------------------------------------------------------------------------- cruise control: the curve


@pytest.mark.parametrize(
    ("ema_loss", "expected"),
    [
        (2.0, 1.0),  # far above the target: full LR
        (1.3, 1.0),  # the top of the band (target * 1.3)
        (1.15, 0.01 + 0.99 * 0.5),  # the band's middle: smoothstep(0.5) = 0.5
        (1.0 + 0.3 * 0.25, 0.01 + 0.99 * (0.25**2 * (3 - 2 * 0.25))),  # a quarter into the band
        (1.0, 0.01),  # at the target: the floor
        (0.9, 0.01 * math.exp(-1.0)),  # 10 % below: floor * exp(-10 * 0.1)
        (0.5, 0.01 * math.exp(-5.0)),
    ],
)
def test_damping_curve_at_known_points(ema_loss, expected):
    assert cruise.damping(ema_loss, 1.0, 0.01) == pytest.approx(expected, rel=1e-12)


def test_damping_is_continuous_and_monotonic():
    xs = [0.5 + i * 0.001 for i in range(1500)]
    ys = [cruise.damping(x, 1.0, 0.05) for x in xs]
    assert all(b >= a for a, b in itertools.pairwise(ys)), "the factor never rises as the loss falls"
    assert max(abs(b - a) for a, b in itertools.pairwise(ys)) < 0.01, "no jumps"
    assert cruise.damping(2.6, 2.0, 0.05) == 1.0 and cruise.damping(2.0, 2.0, 0.05) == pytest.approx(0.05)  # scales with X


def test_controller_ema_engagement_and_undamped_schedule():
    cc = cruise.CruiseControl(target=1.0, floor=0.1, smoothing=0.5, engage_after=2)
    assert cc.update(2.0, 1) == 1.0 and cc.ema == 2.0  # first loss seeds the EMA
    assert cc.update(0.4, 2) == 1.0 and cc.ema == pytest.approx(1.2)  # not engaged before step 3
    scale = cc.update(0.4, 3)  # EMA 0.8: 20 % below the target
    assert cc.ema == pytest.approx(0.8) and scale == pytest.approx(0.1 * math.exp(-2.0))
    # optimizer.step sees the damped LR; the scheduler then steps on the exact undamped LR
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    w.grad = torch.ones(1)
    with cc.applied(opt):
        assert opt.param_groups[0]["lr"] == 0.5 * scale
        opt.step()
    assert w.item() == pytest.approx(-0.5 * scale)
    assert opt.param_groups[0]["lr"] == 0.5
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)) / 2)
    state = cc.state_dict()
    other = cruise.CruiseControl(target=1.0, floor=0.1, smoothing=0.5, engage_after=2)
    other.load_state_dict(state)
    assert (other.ema, other.scale) == (cc.ema, cc.scale)


# --------------------------------------------------------------------------- EMA: the shadow


def test_ema_shadow_update_matches_hand_computation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)  # frozen base: never shadowed
    e = ema.AdapterEMA(model, decay=0.9, update_interval=2)
    assert set(e.shadow) == {"1.weight", "1.bias"}
    w0 = model[1].weight.detach().clone()
    expected = w0.clone()
    for step in range(1, 6):
        with torch.no_grad():
            model[1].weight.add_(float(step))  # the "optimizer step"
        updated = e.update(step)
        assert updated == (step % 2 == 0)
        if updated:
            expected = 0.9 * expected + 0.1 * model[1].weight.detach()
    # by hand: w1..w5 = w0+1, w0+3, w0+6, w0+10, w0+15; updates at steps 2 and 4
    by_hand = 0.9 * (0.9 * w0 + 0.1 * (w0 + 3)) + 0.1 * (w0 + 10)
    torch.testing.assert_close(e.shadow["1.weight"], by_hand, rtol=0, atol=1e-6)
    torch.testing.assert_close(e.shadow["1.weight"], expected, rtol=0, atol=1e-6)
    assert e.updates == 2 and e.shadow["1.weight"].dtype == torch.float32
    # swapping the shadow in and out gives back the raw weights bit for bit
    raw = model[1].weight.detach().clone()
    with e.swapped_in():
        assert torch.equal(model[1].weight, e.shadow["1.weight"])
    assert torch.equal(model[1].weight, raw)
    # a shadow for another adapter is refused with a message naming the fix
    other = ema.AdapterEMA(torch.nn.Linear(4, 4), decay=0.9)
    with pytest.raises(ValueError, match="resume without --use-ema"):
        e.load_state_dict(other.state_dict())


# --------------------------------------------------------------------------- the real loop


def metrics(events: list) -> list[protocol.StepMetrics]:
    return [e for e in events if isinstance(e, protocol.StepMetrics) and e.steps_covered == 1]


def test_cruise_control_flattens_the_lr_near_the_target(demo_config_values):
    """The demo's loss hovers around 5: a target of 5.5 is reached once cruise control engages, the
    LR drops from the cosine schedule to ~floor x LR and stays there; the event fields show it."""
    values = dict(
        demo_config_values,
        max_steps=8,
        warmup_steps=0,
        scheduler_type="cosine",
        target_loss=5.5,
        target_loss_warmup=3,
        target_loss_smoothing=0.5,
        save_every_n_steps=4,
    )
    events, final = train(values)
    assert isinstance(final, protocol.RunFinished), getattr(final, "traceback", final)
    steps = metrics(events)
    assert [m.step for m in steps] == list(range(1, 9))
    # the undamped cosine schedule after step t (eta_min = 1 % of the LR)
    undamped = [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * m.step / 8)) / 2 for m in steps]
    ema_loss = None
    for m, lr in zip(steps, undamped, strict=True):
        ema_loss = m.loss if ema_loss is None else 0.5 * ema_loss + 0.5 * m.loss
        assert m.cruise_ema == pytest.approx(ema_loss, rel=1e-6)
        expected = 1.0 if m.step <= 3 else cruise.damping(ema_loss, 5.5, 0.01)
        assert m.cruise_scale == pytest.approx(expected, rel=1e-9), m.step
        assert m.lr == pytest.approx(lr * expected, rel=1e-6), m.step
    engaged = [m for m in steps if m.step > 3]
    assert all(m.cruise_scale < 0.05 for m in engaged), [m.cruise_scale for m in engaged]
    assert all(m.lr < 0.05 * steps[2].lr for m in engaged), "the LR flattens near the floor once the target is reached"
    # the optimizer really took the damped steps: AdamW moves a weight by about the LR per step, so
    # over steps 5-8 no weight moves by more than a fraction of what the undamped LRs would allow
    ckpts = os.path.join(values["output_dir"], "checkpoints")
    w4 = load_file(os.path.join(ckpts, "step_4", "adapter_model.safetensors"))
    w8 = load_file(os.path.join(ckpts, "step_8", "adapter_model.safetensors"))
    moved = max(float((w8[k] - w4[k]).abs().max()) for k in w4)
    assert 0 < moved < 0.2 * sum(undamped[4:]), (moved, sum(undamped[4:]))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(values["output_dir"], "runs"), size_guidance={"scalars": 0})
    acc.Reload()
    scale_tb = [s.value for s in acc.Scalars("target_loss_scale")]
    assert scale_tb == pytest.approx([m.cruise_scale for m in steps], rel=1e-6)


def _shadow_as_files(shadow: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(".default.", "."): v for k, v in shadow.items()}


def test_ema_adapters_on_disk_and_bit_exact_resume_with_cruise_and_ema(demo_config_values, tmp_path):
    """8 straight steps == 4 steps, stop, resume, 4 steps, bit for bit, with cruise control and EMA
    both on; every saved adapter is the EMA shadow, the raw one sits in raw/."""
    values = dict(
        demo_config_values,
        max_steps=8,
        gradient_accumulation=2,
        cfg_ratio=0.5,
        max_latent_length=60,
        target_loss=5.5,
        target_loss_warmup=2,
        target_loss_smoothing=0.7,
        use_ema=True,
        ema_decay=0.8,
        ema_update_interval=1,
    )
    straight_dir, split_dir = str(tmp_path / "straight"), str(tmp_path / "split")
    events_a, final_a = train(dict(values, output_dir=straight_dir))
    assert isinstance(final_a, protocol.RunFinished) and final_a.steps == 8, getattr(final_a, "traceback", final_a)
    events_b1, final_b1 = train(dict(values, output_dir=split_dir), stop_at=4)
    assert final_b1.status == "stopped" and final_b1.steps == 4
    events_b2, final_b2 = train(dict(values, output_dir=split_dir, resume_from="auto"))
    assert isinstance(final_b2, protocol.RunFinished) and final_b2.steps == 8, getattr(final_b2, "traceback", final_b2)

    straight, first, second = step_losses(events_a), step_losses(events_b1), step_losses(events_b2)
    assert sorted(first | second) == list(range(1, 9))
    assert first | second == straight  # exact floats
    a_cruise = {m.step: (m.cruise_scale, m.cruise_ema, m.lr) for m in metrics(events_a)}
    b_cruise = {m.step: (m.cruise_scale, m.cruise_ema, m.lr) for m in metrics(events_b1) + metrics(events_b2)}
    assert a_cruise == b_cruise
    assert any(scale < 1.0 for scale, _, _ in a_cruise.values()), "cruise control must have engaged"

    for sub in ("", "raw"):
        a = load_file(os.path.join(straight_dir, "final", sub, "adapter_model.safetensors"))
        b = load_file(os.path.join(split_dir, "final", sub, "adapter_model.safetensors"))
        assert a.keys() == b.keys() and a
        for key in a:
            assert torch.equal(a[key], b[key]), f"{sub or 'ema'} {key}"

    # the stop checkpoint: top-level adapter = the EMA shadow, raw/ = the training weights
    stop = next(e.path for e in events_b1 if isinstance(e, protocol.CheckpointSaved) and e.kind == "stop")
    state = torch.load(os.path.join(stop, "training_state.pt"), weights_only=True)
    shadow = _shadow_as_files(state["ema"]["shadow"])
    top = load_file(os.path.join(stop, "adapter_model.safetensors"))
    raw = load_file(os.path.join(stop, "raw", "adapter_model.safetensors"))
    assert top.keys() == shadow.keys() == raw.keys() == state["adapter"].keys()
    for key in top:
        assert torch.equal(top[key], shadow[key]), key
        assert torch.equal(raw[key], state["adapter"][key]), key
    assert any(not torch.equal(top[k], raw[k]) for k in top), "the EMA must differ from the raw weights"
    assert state["ema"]["updates"] == 4 and state["cruise"]["ema"] == b_cruise[4][1]


@pytest.mark.integration
def test_post_checkpoint_script_runs_with_arguments_and_a_failure_does_not_stop_training(demo_config_values, tmp_path):
    script = tmp_path / "hook.py"
    out = tmp_path / "calls.txt"
    script.write_text(
        "import json, sys\n"
        "open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n')\n"
        "print('hook output for step', sys.argv[3])\n"
        "sys.exit(3 if sys.argv[3] == '2' else 0)\n",
        encoding="utf-8",
    )
    run_dir = demo_config_values["output_dir"]
    template = f'{sys.executable} "{script}" "{out}" {{checkpoint_path}} {{step}} --run={{run_dir}}'
    values = dict(demo_config_values, max_steps=4, save_every_n_steps=2, post_checkpoint_script=template)
    events, final = train(values)
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "traceback", final)
    calls = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    ckpt = os.path.join(run_dir, "checkpoints")
    assert calls == [
        [os.path.join(ckpt, "step_2"), "2", f"--run={run_dir}"],
        [os.path.join(ckpt, "step_4"), "4", f"--run={run_dir}"],
        [os.path.join(run_dir, "final"), "4", f"--run={run_dir}"],
    ]
    reports = [e for e in events if isinstance(e, protocol.LogRecord) and e.logger == "post_checkpoint_script"]
    assert [r.level for r in reports] == ["warning", "info", "info"]
    assert "exited 3" in reports[0].message and "hook output for step 2" in reports[0].message
    assert "exited 0" in reports[1].message
    # the run log has them too, and the events.jsonl on disk
    with open(os.path.join(run_dir, "sidestep.log"), encoding="utf-8") as fh:
        assert "post-checkpoint script exited 3" in fh.read()
    on_disk = protocol.read_events(os.path.join(run_dir, "events.jsonl"))
    assert sum(isinstance(e, protocol.LogRecord) and e.logger == "post_checkpoint_script" for e in on_disk) == 3


@pytest.mark.integration
def test_post_checkpoint_script_that_cannot_start_is_reported(demo_config_values, tmp_path):
    values = dict(demo_config_values, max_steps=2, post_checkpoint_script=f"{tmp_path}/no-such-program {{step}}")
    events, final = train(values)
    assert isinstance(final, protocol.RunFinished) and final.status == "completed"
    reports = [e for e in events if isinstance(e, protocol.LogRecord) and e.logger == "post_checkpoint_script"]
    assert len(reports) == 1 and reports[0].level == "warning" and "could not start" in reports[0].message
