"""What the UI shows of a rendered sample without reading its audio: a small mel spectrogram in dB and the
integrated loudness, computed where the audio is rendered and stored in the sample's JSON sidecar
(``engine.audio.generate.write_rendered``, used by training's samples and ``sidestep generate``). The UI
process reads them as plain JSON (``engine.samples_index``): it never imports numpy, soundfile or pyloudnorm.

- ``spectrogram``: ``{"db": [[int, ...] per mel band, low to high], "band_hz": [centre of each band],
  "hop_s": seconds between columns, "floor_db": the lowest value}``. Up to ``MAX_COLUMNS`` time columns,
  each a Hann-windowed ``N_FFT`` frame of the mono downmix centred on its time (the first and last moved
  inside the audio); ``MEL_BANDS`` triangular
  HTK-mel bands from 0 Hz to Nyquist; power in dB relative to a full-scale sine (a sine of amplitude A
  reads about ``20 log10 A`` in its band), rounded to whole dB and clipped at ``FLOOR_DB``.
- ``lufs``: integrated loudness (ITU-R BS.1770-4, pyloudnorm) of the stereo audio, rounded to 0.1 LU;
  None for audio shorter than one 400 ms gating block, or silence.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MEL_BANDS = 48
MAX_COLUMNS = 120
N_FFT = 2048
MIN_HOP = 1024  # short audio gets fewer columns, never overlapping more than half a frame
FLOOR_DB = -100


def hz_to_mel(hz: float | np.ndarray) -> Any:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: float | np.ndarray) -> Any:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_edges(sample_rate: int, bands: int = MEL_BANDS) -> np.ndarray:
    """``bands + 2`` frequencies (Hz): band i rises from edge i, peaks at edge i+1 and falls to edge i+2."""
    return mel_to_hz(np.linspace(0.0, float(hz_to_mel(sample_rate / 2)), bands + 2))


def mel_filterbank(sample_rate: int, n_fft: int = N_FFT, bands: int = MEL_BANDS) -> np.ndarray:
    """[bands, n_fft // 2 + 1] triangular weights (peak 1) over the FFT bins."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_edges(sample_rate, bands)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def mel_spectrogram(
    audio: np.ndarray, sample_rate: int, *, bands: int = MEL_BANDS, max_columns: int = MAX_COLUMNS
) -> dict[str, Any]:
    """The sidecar's ``spectrogram`` (see the module doc) of ``audio`` ([S] or [S, C] float)."""
    mono = np.asarray(audio, dtype=np.float64)
    if mono.ndim == 2:
        mono = mono.mean(axis=1)
    n = mono.shape[0]
    columns = max(1, min(max_columns, n // MIN_HOP))
    hop = n / columns
    padded = np.pad(mono, (0, max(0, N_FFT - n)))  # audio shorter than a frame: zeros after it
    centres = np.arange(columns) * hop + hop / 2
    # Each frame lies inside the audio (the first and last are moved in): frames hanging over its ends
    # would show the jump to silence as a broadband click.
    starts = np.clip(np.rint(centres - N_FFT / 2), 0, padded.shape[0] - N_FFT).astype(np.int64)
    frames = padded[starts[:, None] + np.arange(N_FFT)[None]]  # [columns, N_FFT]
    window = np.hanning(N_FFT)
    spectrum = np.abs(np.fft.rfft(frames * window[None], axis=1)) * (2.0 / window.sum())  # a sine of amplitude A peaks at A
    power = spectrum**2 @ mel_filterbank(sample_rate, N_FFT, bands).T  # [columns, bands]
    db = 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DB / 10.0)))
    db = np.clip(np.rint(db), FLOOR_DB, None).astype(np.int64)
    return {
        "db": db.T.tolist(),
        "band_hz": [round(float(f)) for f in mel_edges(sample_rate, bands)[1:-1]],
        "hop_s": round(hop / sample_rate, 5),
        "floor_db": FLOOR_DB,
    }


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness in LUFS (pyloudnorm's BS.1770-4 meter), or None when it has none."""
    import pyloudnorm

    data = np.asarray(audio, dtype=np.float64)
    meter = pyloudnorm.Meter(sample_rate)
    if data.shape[0] < int(meter.block_size * sample_rate):
        return None
    value = float(meter.integrated_loudness(data))
    return round(value, 1) if math.isfinite(value) else None


def describe(audio: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """The sidecar fields of this module: ``lufs`` and ``spectrogram``."""
    return {"lufs": integrated_lufs(audio, sample_rate), "spectrogram": mel_spectrogram(audio, sample_rate)}
