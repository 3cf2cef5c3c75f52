"""The training recipe (engine/train/recipe.py) against ACE_STEP.md §6."""

from __future__ import annotations

import math

import pytest
import torch

scipy_stats = pytest.importorskip("scipy.stats")

from engine.train.recipe import (  # noqa: E402
    DISCRETE_TIMESTEPS,
    TimestepTracker,
    apply_cfg_dropout,
    expected_bin_mass,
    flow_matching_loss,
    histogram_edges,
    min_snr_v_weights,
    min_snr_weights,
    noisy_input,
    sample_timesteps,
)

N = 20000


def _logits(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    return torch.log(t / (1 - t))


def test_discrete_values_are_the_turbo_shift3_schedule():
    assert DISCRETE_TIMESTEPS == (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3)


@pytest.mark.parametrize("mu,sigma", [(-0.4, 1.0), (0.3, 0.7)])
def test_continuous_timesteps_are_logit_normal(mu, sigma):
    t = sample_timesteps(N, mode="continuous", mu=mu, sigma=sigma, device="cpu", generator=torch.Generator().manual_seed(1))
    assert t.dtype == torch.float32 and t.shape == (N,)
    assert bool(((t > 0) & (t < 1)).all())
    result = scipy_stats.kstest(_logits(t).numpy(), "norm", args=(mu, sigma))
    assert result.pvalue > 0.01, result


def test_continuous_timesteps_negative_control():
    """The KS test has power: samples drawn with mu=-0.4 are rejected as N(0, 1)."""
    t = sample_timesteps(N, mode="continuous", mu=-0.4, sigma=1.0, device="cpu", generator=torch.Generator().manual_seed(1))
    assert scipy_stats.kstest(_logits(t).numpy(), "norm", args=(0.0, 1.0)).pvalue < 1e-6


def test_discrete_timesteps_hit_exactly_the_eight_values():
    t = sample_timesteps(4000, mode="discrete", mu=0.0, sigma=1.0, device="cpu", generator=torch.Generator().manual_seed(2))
    allowed = torch.tensor(DISCRETE_TIMESTEPS, dtype=torch.float32)
    assert set(t.tolist()) == set(allowed.tolist())
    counts = torch.stack([(t == v).sum() for v in allowed])
    assert int(counts.min()) > 4000 / 8 * 0.8  # roughly uniform


def test_timesteps_are_reproducible_from_the_generator_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = sample_timesteps(16, mode="continuous", mu=-0.4, sigma=1.0, generator=torch.Generator().manual_seed(7))
    b = sample_timesteps(16, mode="continuous", mu=-0.4, sigma=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(before, torch.random.get_rng_state())


def test_unknown_timestep_mode_is_an_error():
    with pytest.raises(ValueError, match="timestep mode"):
        sample_timesteps(2, mode="uniform", mu=0, sigma=1)


def test_cfg_dropout_rate_and_replacement():
    B, L, H, ratio = 4000, 3, 8, 0.15
    states = torch.randn(B, L, H)
    original = states.clone()
    null = torch.randn(1, 1, H)
    out, dropped = apply_cfg_dropout(states, null, ratio, generator=torch.Generator().manual_seed(3))
    assert dropped.dtype == torch.bool and dropped.shape == (B,)
    # binomial bound: 5 standard deviations
    sd = math.sqrt(B * ratio * (1 - ratio))
    assert abs(int(dropped.sum()) - B * ratio) < 5 * sd
    assert torch.equal(out[dropped], null.expand(int(dropped.sum()), L, H))
    assert torch.equal(out[~dropped], original[~dropped])
    assert torch.equal(states, original)  # input untouched


def test_cfg_dropout_extremes():
    states = torch.randn(50, 2, 4)
    null = torch.zeros(1, 1, 4)
    out, dropped = apply_cfg_dropout(states, null, 0.0)
    assert not dropped.any() and torch.equal(out, states)
    out, dropped = apply_cfg_dropout(states, null, 1.0)
    assert dropped.all() and torch.equal(out, torch.zeros_like(states))


def test_min_snr_weights_hand_computed():
    gamma = 5.0
    t = torch.tensor([0.5, 0.1, 0.9, 0.0, 1.0])
    w = min_snr_weights(t, gamma)
    # t=0.5: snr 1 -> 1/1; t=0.1: snr 81 -> 5/81; t=0.9: snr 1/81 -> 1;
    # t=0 -> clamp 1e-4: snr (0.9999/1e-4)^2 ~ 9.998e7 -> clamp 1e6 -> 5/1e6;
    # t=1 -> clamp 1-1e-4: snr ~ 1.0002e-8 -> min(snr,5)/max(snr,1e-6) = snr/1e-6 ~ 0.010002
    t_hi = torch.tensor(1 - 1e-4, dtype=torch.float32).item()  # the clamp bound as fp32 holds it
    snr_hi = ((1 - t_hi) / t_hi) ** 2
    expected = torch.tensor([1.0, 5.0 / 81.0, 1.0, 5.0 / 1e6, snr_hi / 1e-6])
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, expected, rtol=1e-4, atol=1e-7)


def test_min_snr_is_flat_above_the_gamma_point_and_only_lowers_clean_samples():
    """The help text's claim, on the curve: weight 1 for t >= 1/(1+sqrt(gamma)) (0.309 at 5), below 1 only
    for smaller t (cleaner samples)."""
    gamma = 5.0
    t_star = 1 / (1 + math.sqrt(gamma))
    t = torch.tensor([t_star + 1e-4, 0.31, 0.4, 0.6, 0.8, 0.99])
    torch.testing.assert_close(min_snr_weights(t, gamma), torch.ones(6), rtol=1e-5, atol=1e-6)
    clean = min_snr_weights(torch.tensor([0.05, 0.1, 0.2, 0.3]), gamma)
    assert bool((clean < 1).all()) and bool((clean[1:] > clean[:-1]).all())


def test_min_snr_v_weights_hand_computed():
    """min((1-t)^2, gamma t^2) / (gamma / (1+sqrt(gamma))^2): at gamma 5 the peak is 0.4774575 at t* = 0.3090170."""
    gamma = 5.0
    peak = gamma / (1 + math.sqrt(gamma)) ** 2
    t_star = 1 / (1 + math.sqrt(gamma))
    t = torch.tensor([t_star, 0.5, 0.1, 0.9, 0.2])
    # t*: (1-t*)^2 = peak -> 1; 0.5: min(0.25, 1.25); 0.1: min(0.81, 0.05); 0.9: min(0.01, 4.05); 0.2: min(0.64, 0.2)
    expected = torch.tensor([1.0, 0.25 / peak, 0.05 / peak, 0.01 / peak, 0.2 / peak])
    w = min_snr_v_weights(t, gamma)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-6)
    assert peak == pytest.approx(0.4774575, rel=1e-6)
    # the velocity form equals the x0-space min-SNR weight times t^2 (x0_hat - x0 = -t (v_hat - v)), normalised
    tt = torch.linspace(0.02, 0.98, 49)
    snr = ((1 - tt) / tt) ** 2
    torch.testing.assert_close(min_snr_v_weights(tt, gamma), tt**2 * snr.clamp(max=gamma) / peak, rtol=1e-5, atol=1e-6)
    # rises to the peak, then falls: both ends down-weighted, unlike min_snr
    grid = min_snr_v_weights(torch.linspace(0.01, 0.99, 99), gamma)
    top = int(grid.argmax())
    assert 0.29 <= 0.01 + 0.01 * top <= 0.32
    assert bool((grid[1 : top + 1] >= grid[:top]).all()) and bool((grid[top + 1 :] <= grid[top:-1]).all())


def test_min_snr_v_loss_is_weighted_mean():
    pred, noise, x0 = torch.randn(3, 5, 2), torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    t = torch.tensor([0.1, 0.5, 0.9])
    loss, per_sample = flow_matching_loss(pred, noise, x0, torch.ones(3, 5), t=t, loss_weighting="min_snr_v", snr_gamma=5.0)
    torch.testing.assert_close(loss, (min_snr_v_weights(t, 5.0) * per_sample).mean())
    plain, _ = flow_matching_loss(pred, noise, x0, torch.ones(3, 5), t=t, loss_weighting="min_snr", snr_gamma=5.0)
    assert not torch.isclose(loss, plain), "the two weightings must differ"


def test_noisy_input_interpolates_per_sample():
    x0, noise = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    t = torch.tensor([0.0, 1.0, 0.25])
    xt = noisy_input(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], noise[1])
    torch.testing.assert_close(xt[2], 0.25 * noise[2] + 0.75 * x0[2])


def test_loss_is_plain_mse_without_padding():
    pred, noise, x0 = torch.randn(2, 6, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    t = torch.tensor([0.3, 0.7])
    loss, per_sample = flow_matching_loss(pred, noise, x0, torch.ones(2, 6), t=t)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(pred, noise - x0))
    torch.testing.assert_close(per_sample, ((pred - (noise - x0)) ** 2).mean(dim=(1, 2)))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("weighting", ["none", "min_snr", "min_snr_v"])
def test_padded_frames_never_count(weighting):
    gen = torch.Generator().manual_seed(4)
    short = [torch.randn(1, 4, 3, generator=gen) for _ in range(3)]  # pred, noise, x0 of a 4-frame clip
    long = [torch.randn(1, 7, 3, generator=gen) for _ in range(3)]
    t = torch.tensor([0.2, 0.8])

    def batch(pad_value: float):
        padded = [torch.cat([s, torch.full((1, 3, 3), pad_value)], dim=1) for s in short]
        return [torch.cat([p, q]) for p, q in zip(padded, long, strict=True)]

    mask = torch.tensor([[1.0] * 4 + [0.0] * 3, [1.0] * 7])
    loss_a, per_a = flow_matching_loss(*batch(0.0), mask, t=t, loss_weighting=weighting, snr_gamma=5.0)
    loss_b, per_b = flow_matching_loss(*batch(1e6), mask, t=t, loss_weighting=weighting, snr_gamma=5.0)
    pred_nan = batch(0.0)
    pred_nan[0][0, 4:] = float("nan")
    loss_c, _ = flow_matching_loss(*pred_nan, mask, t=t, loss_weighting=weighting, snr_gamma=5.0)
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(loss_a, loss_c)
    torch.testing.assert_close(per_a, per_b)
    alone, _ = flow_matching_loss(*short, torch.ones(1, 4), t=t[:1])
    torch.testing.assert_close(per_a[0], alone)


def test_min_snr_loss_is_weighted_mean():
    pred, noise, x0 = torch.randn(3, 5, 2), torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    t = torch.tensor([0.1, 0.5, 0.9])
    loss, per_sample = flow_matching_loss(pred, noise, x0, torch.ones(3, 5), t=t, loss_weighting="min_snr", snr_gamma=5.0)
    torch.testing.assert_close(loss, (min_snr_weights(t, 5.0) * per_sample).mean())


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_expected_bin_mass_sums_to_one(mode):
    for n in (1, 10, 20, 37):
        mass = expected_bin_mass(histogram_edges(n), mode=mode, mu=-0.4, sigma=1.0)
        assert len(mass) == n and all(m >= 0 for m in mass)
        assert math.isclose(sum(mass), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_tracker_matches_expected_mass(mode):
    tracker = TimestepTracker(mode=mode, mu=-0.4, sigma=1.0, n_bins=20)
    gen = torch.Generator().manual_seed(5)
    for _ in range(10):
        tracker.add(sample_timesteps(N // 10, mode=mode, mu=-0.4, sigma=1.0, generator=gen))
    snap = tracker.snapshot()
    assert set(snap) == {"bin_edges", "recent", "cumulative", "expected"}
    assert all(isinstance(v, tuple) for v in snap.values())
    assert sum(snap["recent"]) == N and snap["recent"] == snap["cumulative"]
    observed = torch.tensor(snap["cumulative"], dtype=torch.float64)
    expected = torch.tensor(snap["expected"], dtype=torch.float64) * N
    assert bool(((observed > 0) == (expected > 0)).all())
    # every bin within 5 binomial standard deviations (+1 count slack)
    sd = torch.sqrt(expected * (1 - expected / N))
    assert bool(((observed - expected).abs() <= 5 * sd + 1).all())
    # the recent window resets, the cumulative one does not
    tracker.add(torch.tensor([0.51]))
    snap2 = tracker.snapshot()
    assert sum(snap2["recent"]) == 1 and sum(snap2["cumulative"]) == N + 1


def test_tracker_state_round_trip():
    tracker = TimestepTracker(mode="continuous", mu=0.0, sigma=1.0, n_bins=8)
    tracker.add(torch.tensor([0.1, 0.2, 0.9]))
    restored = TimestepTracker(mode="continuous", mu=0.0, sigma=1.0, n_bins=8)
    restored.load_state_dict(tracker.state_dict())
    assert restored.snapshot()["cumulative"] == tracker.snapshot()["cumulative"]
    restored.add(torch.tensor([0.95]))
    assert sum(restored.snapshot()["cumulative"]) == 4
    with pytest.raises(ValueError):
        TimestepTracker(mode="continuous", mu=0.0, sigma=1.0, n_bins=4).load_state_dict(tracker.state_dict())


def test_timestep_mu_sigma_needs_a_resolved_config():
    from engine import config as cfgmod
    from engine.train.build import timestep_mu_sigma

    user = cfgmod.parse({"checkpoint_dir": "ckpt", "dataset_dir": "data", "output_dir": "out"})
    with pytest.raises(ValueError, match="resolve_variant_defaults"):
        timestep_mu_sigma(user)
    resolved = cfgmod.resolve_variant_defaults(user, {"timestep_mu": -0.8, "timestep_sigma": 1.2})
    assert timestep_mu_sigma(resolved) == (-0.8, 1.2)
