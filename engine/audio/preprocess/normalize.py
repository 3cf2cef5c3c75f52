"""Loudness normalisation before the VAE (ACE_STEP.md §5.1), numpy + pyloudnorm.

- ``peak``: scale so the largest sample sits at ``target_db`` dBFS (−1 by default).
- ``lufs``: scale to ``target_lufs`` integrated loudness (ITU-R BS.1770 via pyloudnorm, −14 by
  default), then run a look-ahead peak limiter so no sample exceeds −1 dBFS. Side-Step's version has
  no limiter, so quiet, peaky material pushed to −14 LUFS clipped.

Edge cases: digital silence (< 1e-6, or loudness −inf below the BS.1770 gate) is left untouched; a
clip shorter than pyloudnorm's 0.4 s block is measured on a looped copy of itself, which has the same
loudness (the gate is per block, and every block then holds the clip's own material).
"""

from __future__ import annotations

import math

import numpy as np

from engine.audio.preprocess.audio import SAMPLE_RATE
from engine.prepconfig import NORMALIZE_MODES

SILENCE = 1e-6
LIMITER_CEILING_DB = -1.0
LIMITER_WINDOW_S = 0.005  # look-ahead and smoothing half-window: 5 ms (attack ~5 ms, release ~10 ms)
_BLOCK_S = 0.4  # pyloudnorm's default gating block


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def integrated_loudness(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """BS.1770 integrated loudness of ``[C, S]`` audio in LUFS (−inf for silence)."""
    import pyloudnorm

    data = np.asarray(audio, dtype=np.float64).T  # pyloudnorm wants (samples, channels)
    minimum = math.ceil(_BLOCK_S * rate) + 1
    if data.shape[0] < minimum:
        data = np.tile(data, (math.ceil(minimum / max(1, data.shape[0])), 1))
    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(rate).integrated_loudness(data))


def _sliding_min(values: np.ndarray, radius: int) -> np.ndarray:
    """Minimum over ``[i - radius, i + radius]`` for every i, in O(n) (van Herk / Gil-Werman)."""
    width = 2 * radius + 1
    n = values.shape[0]
    padded_len = -(-(n + 2 * radius) // width) * width
    padded = np.full(padded_len, np.inf, dtype=values.dtype)
    padded[radius : radius + n] = values
    blocks = padded.reshape(-1, width)
    prefix = np.minimum.accumulate(blocks, axis=1).ravel()
    suffix = np.minimum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].ravel()
    start = np.arange(n)
    return np.minimum(suffix[start], prefix[start + width - 1])


def limit(audio: np.ndarray, ceiling_db: float = LIMITER_CEILING_DB, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A look-ahead peak limiter with linked channels: no output sample exceeds the ceiling.

    The needed gain per sample is ``min(1, ceiling / |x|)``. Taking its sliding minimum over ±r and
    then a moving average of width 2r+1 gives a smooth gain that is still <= the needed gain at every
    sample (each averaged value is a minimum over a window that contains the sample), so the ceiling
    holds exactly while the gain ramps over ~r samples instead of jumping.
    """
    ceiling = db_to_gain(ceiling_db)
    peak_per_sample = np.abs(audio).max(axis=0)
    if peak_per_sample.max(initial=0.0) <= ceiling:
        return audio
    needed = np.minimum(1.0, ceiling / np.maximum(peak_per_sample, 1e-12))
    radius = max(1, int(LIMITER_WINDOW_S * rate))
    held = _sliding_min(needed, radius)
    cumulative = np.concatenate([[0.0], np.cumsum(np.pad(held, radius, mode="edge"), dtype=np.float64)])
    width = 2 * radius + 1
    smooth = (cumulative[width:] - cumulative[:-width]) / width
    out = audio * smooth[None, :].astype(audio.dtype)
    return np.clip(out, -ceiling, ceiling)  # float rounding only; the gain already guarantees it


def normalize(
    audio: np.ndarray,
    mode: str,
    *,
    target_db: float = -1.0,
    target_lufs: float = -14.0,
    rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Return ``[C, S]`` audio normalised by ``mode`` (``none`` | ``peak`` | ``lufs``)."""
    if mode == "none":
        return audio
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize {mode!r} is not one of {', '.join(NORMALIZE_MODES)}")
    peak = float(np.abs(audio).max(initial=0.0))
    if peak < SILENCE:
        return audio
    if mode == "peak":
        return (audio * (db_to_gain(target_db) / peak)).astype(audio.dtype, copy=False)
    loudness = integrated_loudness(audio, rate)
    if not math.isfinite(loudness):
        return audio
    gained = (audio * db_to_gain(target_lufs - loudness)).astype(audio.dtype, copy=False)
    return limit(gained, LIMITER_CEILING_DB, rate)
