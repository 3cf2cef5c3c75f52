"""The flow-matching sampler over the DiT decoder (ACE_STEP.md §6.1; the checkpoint's ``generate_audio``).

Conventions are the training loss's (``engine.train.recipe``): ``x_t = t * noise + (1 - t) * x0`` with
t = 1 pure noise, and the decoder predicts the velocity ``v = noise - x0``. Sampling integrates the ODE
``dx/dt = v`` from t = 1 down to t = 0 with Euler steps ``x_{t'} = x_t - v * (t - t')``, on the
checkpoint's schedule: ``steps + 1`` evenly spaced times from 1 to 0, warped by ``shift``
(``shift * t / (1 + (shift - 1) * t)``; shift 3 with 8 steps gives the turbo schedule). The decoder is
called as in training (``timestep_r = timestep``, inputs in the compute dtype).

Guidance (base/sft): the conditional and the null-condition (``null_condition_emb``) predictions in one
batch of two, combined by APG (adaptive projected guidance, as the shipped model does): the
cond - uncond difference is smoothed by a momentum buffer (-0.75), its norm over time capped at 2.5,
and only its part orthogonal to the conditional prediction is added, times ``guidance - 1``.
``guidance <= 1`` is no guidance (turbo). The noise comes from the caller's ``torch.Generator``: the
global RNG is never used, so the same generator state renders the same latents.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
DEFAULT_GUIDANCE = 7.0  # the shipped generate_audio's default scale for base/sft
NO_GUIDANCE = 1.0


@dataclass(frozen=True)
class SamplerSettings:
    steps: int
    shift: float = 1.0
    guidance: float = NO_GUIDANCE  # <= 1: the conditional prediction alone

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sampling steps must be at least 1, not {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, not {self.shift}")

    @property
    def guided(self) -> bool:
        return self.guidance > NO_GUIDANCE


def settings_for(family: str | None, *, steps: int | None, shift: float | None, guidance: float | None = None) -> SamplerSettings:
    """Variant defaults (ACE_STEP.md §1.4, §17): turbo = 8 steps, shift 3, no guidance; base/sft =
    ``steps`` (default 50), shift 1, APG guidance 7. Explicit values win."""
    if family == "turbo":
        return SamplerSettings(steps=steps or 8, shift=shift if shift is not None else 3.0, guidance=guidance or NO_GUIDANCE)
    return SamplerSettings(
        steps=steps or 50,
        shift=shift if shift is not None else 1.0,
        guidance=guidance if guidance is not None else DEFAULT_GUIDANCE,
    )


def schedule(steps: int, shift: float) -> Tensor:
    """float32 ``[steps + 1]`` times from 1 to 0, shifted."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t


class MomentumBuffer:
    def __init__(self, momentum: float = APG_MOMENTUM) -> None:
        self.momentum = momentum
        self.average: Tensor | None = None

    def update(self, value: Tensor) -> Tensor:
        self.average = value if self.average is None else value + self.momentum * self.average
        return self.average


def apg(
    cond: Tensor, uncond: Tensor, scale: float, buffer: MomentumBuffer, *, norm_threshold: float = APG_NORM_THRESHOLD
) -> Tensor:
    """Adaptive projected guidance on ``[B, T, C]`` velocities, norms over time (dim 1)."""
    diff = buffer.update(cond - uncond)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=1, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
    d64, c64 = diff.double(), torch.nn.functional.normalize(cond.double(), dim=1)
    orthogonal = d64 - (d64 * c64).sum(dim=1, keepdim=True) * c64
    return cond + (scale - 1) * orthogonal.to(cond.dtype)


Decoder = Callable[..., object]


@torch.no_grad()
def sample_latents(
    decoder: Decoder,
    *,
    encoder_hidden_states: Tensor,
    encoder_attention_mask: Tensor,
    context_latents: Tensor,
    null_condition_emb: Tensor,
    settings: SamplerSettings,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Latents ``[1, T, C]`` (float32) for one conditioning: ``encoder_hidden_states [1, L, H]``,
    ``encoder_attention_mask [1, L]``, ``context_latents [1, T, 2C]``. ``decoder`` is called with the
    training keyword arguments and returns a tuple whose first item is the velocity."""
    frames, channels = context_latents.shape[1], context_latents.shape[2] // 2
    noise = torch.randn((1, frames, channels), generator=generator, device=generator.device, dtype=torch.float32)
    xt = noise.to(device)
    enc = encoder_hidden_states.to(device, dtype)
    enc_mask = encoder_attention_mask.to(device)
    ctx = context_latents.to(device, dtype)
    frame_mask = torch.ones(1, frames, device=device, dtype=dtype)
    batch = 1
    if settings.guided:
        null = null_condition_emb.reshape(1, 1, -1).to(device, dtype).expand_as(enc)
        enc = torch.cat([enc, null])
        enc_mask = torch.cat([enc_mask, enc_mask])
        ctx = torch.cat([ctx, ctx])
        frame_mask = torch.cat([frame_mask, frame_mask])
        batch = 2
    buffer = MomentumBuffer()
    times = schedule(settings.steps, settings.shift).tolist()
    for index, (t_now, t_next) in enumerate(itertools.pairwise(times)):
        x = xt.to(dtype).expand(batch, -1, -1)
        t = torch.full((batch,), t_now, device=device, dtype=dtype)
        out = decoder(
            hidden_states=x,
            timestep=t,
            timestep_r=t,
            attention_mask=frame_mask,
            encoder_hidden_states=enc,
            encoder_attention_mask=enc_mask,
            context_latents=ctx,
        )
        v = out[0].float()  # type: ignore[index]  # the decoder returns (velocity, cache)
        if settings.guided:
            v = apg(v[:1], v[1:], settings.guidance, buffer)
        xt = xt - v * (t_now - t_next)
        if progress is not None:
            progress(index + 1, settings.steps)
    return xt
