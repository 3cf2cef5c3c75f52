"""The ACE-Step 1.5 flow-matching training recipe as small pure functions (ACE_STEP.md §6, §14).

Every random draw takes an explicit ``torch.Generator`` (or uses the global RNG when it is ``None``),
so a resumed run that restores its generators draws exactly what the uninterrupted run would have.
Draws happen on the generator's device and the result is moved to ``device``: a CPU generator can
feed a CUDA run.

Corrections to Side-Step folded in here: padded frames never count in the loss (ACE_STEP.md §3.4, the
decoder ignores masks, so a batch of unequal lengths would otherwise train on padding); CFG dropout
draws its uniforms in fp32 (not the compute dtype, where bf16 rounding skews the rate); the
timestep histogram is tracked for every loss weighting, not only min-SNR (§12.2-3).
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Sequence

import torch
from torch import Tensor

# Turbo shift-3 8-step schedule ([MF] SHIFT_TIMESTEPS[3.0]); the legacy "discrete" mode (§6.2).
DISCRETE_TIMESTEPS: tuple[float, ...] = (
    1.0,
    0.9545454545454546,
    0.9,
    0.8333333333333334,
    0.75,
    0.6428571428571429,
    0.5,
    0.3,
)
TIMESTEP_MODES = ("continuous", "discrete")
LOSS_WEIGHTINGS = ("none", "min_snr", "min_snr_v")


def _draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


def sample_timesteps(
    batch_size: int,
    *,
    mode: str,
    mu: float,
    sigma: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    share: tuple[int, int] = (0, 1),
) -> Tensor:
    """Per-sample flow time ``t`` in (0, 1], float32 ``[B]`` (t = 1 is pure noise).

    continuous: ``sigmoid(mu + sigma * N(0, 1))`` (logit-normal, the model's own recipe);
    discrete: a uniform choice among ``DISCRETE_TIMESTEPS``. ``share=(rank, world)``: draw for the
    whole global batch of ``B * world`` and keep this rank's rows (see ``share_rows``)."""
    draw_on = _draw_device(generator, device)
    if mode == "continuous":
        z = share_rows(torch.randn(batch_size * share[1], generator=generator, device=draw_on, dtype=torch.float32), share)
        t = torch.sigmoid(z * sigma + mu)
    elif mode == "discrete":
        idx = torch.randint(0, len(DISCRETE_TIMESTEPS), (batch_size * share[1],), generator=generator, device=draw_on)
        idx = share_rows(idx, share)
        t = torch.tensor(DISCRETE_TIMESTEPS, dtype=torch.float32, device=draw_on)[idx]
    else:
        raise ValueError(f"timestep mode {mode!r} is not one of {', '.join(TIMESTEP_MODES)}")
    return t.to(device)


def apply_cfg_dropout(
    encoder_hidden_states: Tensor,
    null_emb: Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
    share: tuple[int, int] = (0, 1),
) -> tuple[Tensor, Tensor]:
    """Replace each sample's *whole* conditioning ``[L, H]`` by the null embedding with probability
    ``ratio`` (§6.3). The encoder attention mask is deliberately left alone. Returns the new states
    (a new tensor; the input is not modified) and the bool ``[B]`` mask of dropped samples."""
    batch = encoder_hidden_states.shape[0]
    device = encoder_hidden_states.device
    u = torch.rand(batch * share[1], generator=generator, device=_draw_device(generator, device), dtype=torch.float32)
    u = share_rows(u, share)
    dropped = (u < ratio).to(device)
    null = null_emb.reshape(1, 1, -1).to(device=device, dtype=encoder_hidden_states.dtype)
    states = torch.where(dropped[:, None, None], null.expand_as(encoder_hidden_states), encoder_hidden_states)
    return states, dropped


def share_rows(drawn: Tensor, share: tuple[int, int]) -> Tensor:
    """Rank ``r`` of ``world``'s rows of values drawn for the whole global batch. Every rank draws the
    same global numbers from the same generator, so its state stays one value for all ranks (what a
    checkpoint saves) and rank r's samples get exactly what one process with the global batch would
    give them."""
    rank, world = share
    if world == 1:
        return drawn
    rows = drawn.shape[0] // world
    return drawn[rank * rows : (rank + 1) * rows]


def noisy_input(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = t * noise + (1 - t) * x0`` with ``t [B]`` broadcast over the remaining dims."""
    tb = t.reshape(-1, *([1] * (x0.dim() - 1))).to(dtype=x0.dtype, device=x0.device)
    return tb * noise + (1 - tb) * x0


def min_snr_weights(t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma weights exactly as Side-Step (§6.4): t in fp32 clamped to [1e-4, 1 - 1e-4],
    ``snr = ((1 - t) / t)^2`` clamped to <= 1e6, weight ``min(snr, gamma) / max(snr, 1e-6)``."""
    tf = t.float().clamp(1e-4, 1.0 - 1e-4)
    snr = ((1.0 - tf) / tf).pow(2).clamp(max=1e6)
    return snr.clamp(max=gamma) / snr.clamp(min=1e-6)


def min_snr_v_weights(t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma carried over to the velocity loss this trainer uses (``min_snr_v``).

    Min-SNR-gamma (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023,
    arXiv:2303.09556, §3.3-3.4) weights the *x0-space* loss ``||x0_hat - x0||^2`` by ``min(SNR, gamma)``,
    which for their eps target becomes ``min(SNR, gamma) / SNR``. Here ``x_t = (1 - t) x0 + t eps`` and the
    model predicts ``v = eps - x0``, so ``x0_hat = x_t - t v_hat`` and ``||x0_hat - x0||^2 = t^2 ||v_hat - v||^2``:
    the same weighting on the velocity MSE is ``t^2 min(SNR, gamma) = min((1 - t)^2, gamma t^2)`` with
    ``SNR = ((1 - t) / t)^2``. (Via eps instead: ``eps_hat - eps = (1 - t)(v_hat - v)``, and
    ``(1 - t)^2 min(SNR, gamma) / SNR`` is the same expression.) The paper's ``min(SNR, gamma)/(SNR + 1)`` is
    this derivation for a variance-preserving schedule, not for rectified flow.

    The curve rises as ``gamma t^2`` from the clean end, peaks at ``t* = 1 / (1 + sqrt(gamma))`` (where
    SNR = gamma) and falls as ``(1 - t)^2`` to the pure-noise end; it is divided by its peak
    ``gamma / (1 + sqrt(gamma))^2`` so the largest weight is 1, like ``min_snr``'s. t is clamped as there."""
    tf = t.float().clamp(1e-4, 1.0 - 1e-4)
    weight = torch.minimum((1.0 - tf).pow(2), gamma * tf.pow(2))
    return weight / (gamma / (1.0 + math.sqrt(gamma)) ** 2)


def flow_matching_loss(
    pred: Tensor,
    noise: Tensor,
    x0: Tensor,
    frame_mask: Tensor,
    *,
    t: Tensor,
    loss_weighting: str = "none",
    snr_gamma: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """Velocity MSE against ``noise - x0`` in fp32. ``frame_mask [B, T]`` is 1 for real frames and 0
    for padding; padded frames never count, whatever ``pred`` holds there.

    Returns ``(loss, per_sample)``: ``per_sample [B]`` is each sample's *unweighted* MSE over its
    valid frames and all channels; ``loss`` is its batch mean, weighted per sample by
    ``min_snr_weights`` (``"min_snr"``) or ``min_snr_v_weights`` (``"min_snr_v"``)."""
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting {loss_weighting!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")
    target = noise.float() - x0.float()
    frame_err = (pred.float() - target).pow(2).mean(dim=-1)  # [B, T]
    valid = frame_mask.to(device=frame_err.device) > 0
    frame_err = torch.where(valid, frame_err, torch.zeros_like(frame_err))
    per_sample = frame_err.sum(dim=1) / valid.sum(dim=1).clamp(min=1).to(frame_err.dtype)
    if loss_weighting == "min_snr":
        loss = (min_snr_weights(t, snr_gamma).to(per_sample.device) * per_sample).mean()
    elif loss_weighting == "min_snr_v":
        loss = (min_snr_v_weights(t, snr_gamma).to(per_sample.device) * per_sample).mean()
    else:
        loss = per_sample.mean()
    return loss, per_sample


# --------------------------------------------------------------------------- timestep histogram


def histogram_edges(n_bins: int = 20) -> tuple[float, ...]:
    """Equal-width bin edges on [0, 1]."""
    if n_bins < 1:
        raise ValueError("a histogram needs at least one bin")
    return tuple(i / n_bins for i in range(n_bins + 1))


def _f32(value: float) -> float:
    """``value`` rounded to float32, as a sampled ``t`` holds it (so discrete values that sit on a bin
    edge land in the same bin here as in the tracker)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _bin_of(value: float, edges: Sequence[float]) -> int:
    """Bin ``i`` with ``edges[i] <= value < edges[i + 1]``; the last bin also takes its right edge."""
    return min(max(bisect.bisect_right(edges, value) - 1, 0), len(edges) - 2)


def _logit_normal_cdf(x: float, mu: float, sigma: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    z = (math.log(x / (1.0 - x)) - mu) / sigma
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def expected_bin_mass(edges: Sequence[float], *, mode: str, mu: float, sigma: float) -> tuple[float, ...]:
    """The sampler's probability mass in each bin of ``edges`` (edges spanning [0, 1] sum to 1)."""
    n = len(edges) - 1
    if mode == "continuous":
        cdf = [_logit_normal_cdf(e, mu, sigma) for e in edges]
        return tuple(max(cdf[i + 1] - cdf[i], 0.0) for i in range(n))
    if mode == "discrete":
        mass = [0.0] * n
        for value in DISCRETE_TIMESTEPS:
            mass[_bin_of(_f32(value), edges)] += 1.0 / len(DISCRETE_TIMESTEPS)
        return tuple(mass)
    raise ValueError(f"timestep mode {mode!r} is not one of {', '.join(TIMESTEP_MODES)}")


class TimestepTracker:
    """Counts sampled ``t`` into fixed bins on [0, 1]: a recent window (since the last snapshot) and
    the run's cumulative counts. Counting stays on ``t``'s device (no host sync per step); only
    ``snapshot()`` reads the counts back. MPS lacks float64, so MPS tensors are counted on the CPU."""

    def __init__(self, *, mode: str, mu: float, sigma: float, n_bins: int = 20) -> None:
        self.bin_edges = histogram_edges(n_bins)
        self.expected = expected_bin_mass(self.bin_edges, mode=mode, mu=mu, sigma=sigma)
        self._recent: Tensor | None = None
        self._cumulative: Tensor | None = None
        self._inner: Tensor | None = None
        self._base = [0] * n_bins  # cumulative counts restored from a checkpoint

    def add(self, t: Tensor) -> None:
        t = t.detach().reshape(-1)
        if t.device.type == "mps":
            t = t.cpu()
        if self._recent is None or self._recent.device != t.device:
            self._move_to(t.device)
        assert self._recent is not None and self._cumulative is not None and self._inner is not None
        idx = torch.bucketize(t.to(torch.float64), self._inner, right=True)
        ones = torch.ones_like(idx)
        self._recent.index_add_(0, idx, ones)
        self._cumulative.index_add_(0, idx, ones)

    def _move_to(self, device: torch.device) -> None:
        n = len(self.bin_edges) - 1
        recent = self._recent.to(device) if self._recent is not None else torch.zeros(n, dtype=torch.int64, device=device)
        cumulative = (
            self._cumulative.to(device)
            if self._cumulative is not None
            else torch.tensor(self._base, dtype=torch.int64, device=device)
        )
        self._recent, self._cumulative = recent, cumulative
        self._inner = torch.tensor(self.bin_edges[1:-1], dtype=torch.float64, device=device)

    def snapshot(self, *, reset_recent: bool = True) -> dict[str, tuple]:
        """Primitive tuples for ``protocol.TimestepHistogram(step=..., **tracker.snapshot())``."""
        n = len(self.bin_edges) - 1
        recent = tuple(self._recent.tolist()) if self._recent is not None else (0,) * n
        cumulative = tuple(self._cumulative.tolist()) if self._cumulative is not None else tuple(self._base)
        if reset_recent and self._recent is not None:
            self._recent.zero_()
        return {"bin_edges": self.bin_edges, "recent": recent, "cumulative": cumulative, "expected": self.expected}

    def state_dict(self) -> dict:
        cumulative = self._cumulative.tolist() if self._cumulative is not None else list(self._base)
        return {"bin_edges": list(self.bin_edges), "cumulative": cumulative}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["bin_edges"]) != self.bin_edges:
            raise ValueError("timestep histogram bins differ from the checkpoint's")
        self._base = [int(c) for c in state["cumulative"]]
        self._recent = self._cumulative = self._inner = None
