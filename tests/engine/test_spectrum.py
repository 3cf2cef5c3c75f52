"""What a sample's sidecar says about its audio (``engine.audio.spectrum``), from real generated tones: the
mel spectrogram peaks in the band of the tone's frequency, the integrated loudness of a tone of known level
is what BS.1770 says it is, and ``write_rendered`` stores both where the UI's stdlib reader finds them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from engine.audio import generate as gen
from engine.audio import spectrum
from engine.models import sampling
from engine.samples_index import scan_samples

RATE = 48_000


def tone(freq: float, amplitude: float, seconds: float, *, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    mono = amplitude * np.sin(2 * np.pi * freq * t)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


@pytest.mark.parametrize("freq", [220.0, 1000.0, 6000.0])
def test_a_sine_peaks_in_the_mel_band_of_its_frequency_at_its_level(freq) -> None:
    spec = spectrum.mel_spectrogram(tone(freq, 0.5, 2.0), RATE)
    db = np.array(spec["db"])
    assert db.shape == (spectrum.MEL_BANDS, 93)  # 2 s at one column per 1024 samples (MIN_HOP)
    centres = np.array(spec["band_hz"])
    expected = int(np.argmin(np.abs(centres - freq)))
    peaks = db.argmax(axis=0)
    assert np.all(np.abs(peaks - expected) <= 1), (freq, centres[expected], peaks)  # a tone between two centres
    assert np.bincount(peaks).argmax() == expected
    assert -9 <= db.max() <= -3  # a sine of amplitude 0.5 is -6 dB re full scale (a band sums a few bins)
    far = np.abs(np.arange(len(centres)) - expected) > 6
    assert db[far].max() < db.max() - 40  # the rest of the picture is quiet


def test_columns_are_capped_and_silence_sits_on_the_floor() -> None:
    spec = spectrum.mel_spectrogram(np.zeros((RATE * 3, 2), np.float32), RATE)
    assert len(spec["db"][0]) == spectrum.MAX_COLUMNS and {v for row in spec["db"] for v in row} == {spectrum.FLOOR_DB}
    assert spectrum.integrated_lufs(np.zeros((RATE * 2, 2)), RATE) is None  # silence has no loudness
    assert spectrum.integrated_lufs(tone(997, 0.5, 0.2), RATE) is None  # shorter than one 400 ms block


@pytest.mark.parametrize(("amplitude", "channels", "expected"), [(0.5, 2, -6.02), (0.1, 2, -20.0), (1.0, 1, -3.01)])
def test_loudness_of_a_997_hz_tone_is_what_bs1770_defines(amplitude, channels, expected) -> None:
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LUFS; in both channels of a stereo pair 0 LUFS.
    lufs = spectrum.integrated_lufs(tone(997.0, amplitude, 3.0, channels=channels), RATE)
    assert lufs is not None and abs(lufs - expected) <= 0.5, lufs


def test_write_rendered_stores_them_in_the_sidecar_for_the_stdlib_reader(tmp_path) -> None:
    audio = tone(1000.0, 0.25, 1.5)
    rendered = gen.Rendered(audio, gen.Prompt("warm piano", duration=1.5, seed=7), sampling.SamplerSettings(steps=8), 1.0, 0.5)
    path = gen.write_rendered(rendered, str(tmp_path / "run" / "samples" / "step_10" / "1-warm-piano.flac"))
    with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as fh:
        sidecar = json.load(fh)
    assert sidecar["prompt"] == "warm piano" and sidecar["seed"] == 7
    assert abs(sidecar["lufs"] - (20 * np.log10(0.25) + 0.0)) <= 0.5  # both channels: 0 LUFS at full scale
    (sample,) = scan_samples(str(tmp_path / "run"))
    assert sample.lufs == sidecar["lufs"] and sample.spectrogram is not None
    assert sample.spectrogram.db == tuple(tuple(row) for row in sidecar["spectrogram"]["db"])
    peak_band = max(range(len(sample.spectrogram.db)), key=lambda b: max(sample.spectrogram.db[b]))
    assert abs(sample.spectrogram.band_hz[peak_band] - 1000) < 120
