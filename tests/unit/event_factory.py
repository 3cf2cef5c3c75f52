"""Engine events for unit tests, with every field filled: a test names only the fields it is about."""

from __future__ import annotations

from typing import Any

from engine import protocol


def run_started(**fields: Any) -> protocol.RunStarted:
    values: dict[str, Any] = dict(
        run_dir="",
        config_json="{}",
        adapter_type="lora",
        model_dir="/m",
        model_variant="turbo",
        device="cpu",
        precision="fp32",
        attention_backend="sdpa",
        adapted_modules=1,
        trainable_params=1,
        total_params=2,
        num_samples=4,
        steps_per_epoch=2,
        total_steps=6,
        start_step=0,
        start_epoch=1,
        timestep_mu=-0.4,
        timestep_sigma=1.0,
        timestep_mode="continuous",
    )
    values.update(fields)
    return protocol.RunStarted(**values)


def step_metrics(step: int, loss: float, **fields: Any) -> protocol.StepMetrics:
    """One optimizer step's metrics with ``loss`` as its mean, min and max."""
    values: dict[str, Any] = dict(
        step=step,
        epoch=1,
        total_steps=6,
        loss=loss,
        loss_min=loss,
        loss_max=loss,
        steps_covered=1,
        lr=1e-3,
        grad_norm=1.0,
        samples_per_s=1.0,
        eta_s=1.0,
    )
    values.update(fields)
    return protocol.StepMetrics(**values)
