"""Offline estimates of tempo (BPM), key (tonic and mode) and time signature of an audio file, with a
confidence for each, for ``sidestep audio-analyze`` (librosa: ``pip install sidestep-tui[analysis]``).

- Tempo: librosa's onset envelope and beat tracker (hop 256 at 22.05 kHz, ~86 frames/s), refined by a
  least-squares line through the beat times, so a steady tempo is found to a fraction of a BPM rather
  than to the beat tracker's frame grid. Confidence: how regular the beat intervals are (1 = perfectly
  steady) times how much the onset envelope pulses at that period.
- Key: the mean constant-Q chroma against the Krumhansl-Kessler major and minor key profiles in all 12
  transpositions (the Krumhansl-Schmuckler method); the best correlation wins. Confidence: its lead over
  the best key of the other kind (relative major/minor is the usual confusion), scaled to 0..1.
- Only estimates at least ``MIN_CONFIDENCE`` sure are written into sidecars (``--min-confidence``).
- Time signature: the beat-synchronous onset strength is folded at 2, 3 and 4 beats; the grouping
  whose accents stand out most wins (``4`` when none does, with a low confidence). Written as ACE-Step's
  ``timesignature`` value: the beats per bar (``3``, ``4``).

numpy is imported at module level; librosa only in ``require_librosa`` (so a missing extra is one line).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 22_050
HOP = 256
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
INSTALL_HINT = "pip install sidestep-tui[analysis]"
MIN_CONFIDENCE = 0.5  # estimates below this are reported, not written


class MissingLibrary(RuntimeError):
    """librosa is not installed; ``str()`` says how to install it."""


class AnalysisError(ValueError):
    """A file that cannot be analysed; ``str()`` is one line."""


def require_librosa() -> Any:
    try:
        import librosa
    except ImportError:
        raise MissingLibrary(f"audio analysis needs librosa, which is not installed: {INSTALL_HINT}") from None
    return librosa


@dataclass(frozen=True)
class Estimate:
    bpm: float
    bpm_confidence: float
    key: str  # "C major", "A minor"
    key_confidence: float
    time_signature: int  # beats per bar
    time_signature_confidence: float
    seconds: float  # of audio analysed

    def sidecar_fields(self, min_confidence: float = MIN_CONFIDENCE) -> dict[str, str]:
        """The values to write into sidecars (engine.sidecars field names): only those at least
        ``min_confidence`` sure (a held chord has no tempo; a guess is worse than no value)."""
        fields = {
            "bpm": (str(round(self.bpm)), self.bpm_confidence),
            "keyscale": (self.key, self.key_confidence),
            "timesignature": (str(self.time_signature), self.time_signature_confidence),
        }
        return {k: v for k, (v, sure) in fields.items() if v and v != "0" and sure >= min_confidence}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (
            f"{self.bpm:.1f} BPM (confidence {self.bpm_confidence:.2f}), {self.key} ({self.key_confidence:.2f}), "
            f"{self.time_signature}/4 ({self.time_signature_confidence:.2f})"
        )


def load_mono(path: str, *, max_seconds: float = 120.0) -> np.ndarray:
    """Mono float32 at ``SAMPLE_RATE``: the project's own decoder (soundfile, ffmpeg for AAC), then soxr."""
    import soxr

    from engine.audio.builder import AudioReadError
    from engine.audio.preprocess.audio import SAMPLE_RATE as DECODED_RATE
    from engine.audio.preprocess.audio import load_audio

    try:
        stereo = load_audio(path, max_duration=max_seconds)
    except AudioReadError as exc:
        raise AnalysisError(str(exc)) from None
    mono = stereo.mean(axis=0)
    if float(np.max(np.abs(mono))) == 0.0:
        raise AnalysisError(f"{os.path.basename(path)}: silent; nothing to analyse")
    return np.ascontiguousarray(soxr.resample(mono, DECODED_RATE, SAMPLE_RATE, quality="HQ"), dtype=np.float32)


def estimate_tempo(audio: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(bpm, confidence, beat frames, onset envelope)."""
    librosa = require_librosa()
    envelope = librosa.onset.onset_strength(y=audio, sr=sr, hop_length=HOP)
    coarse, beats = librosa.beat.beat_track(onset_envelope=envelope, sr=sr, hop_length=HOP, units="frames")
    coarse = float(np.atleast_1d(coarse)[0])
    if len(beats) < 4 or coarse <= 0:
        return coarse, 0.0, np.asarray(beats), envelope
    times = librosa.frames_to_time(beats, sr=sr, hop_length=HOP)
    # Sub-frame beat times: the centroid of the onset envelope around each beat frame.
    refined = []
    for frame, t in zip(beats, times, strict=True):
        lo, hi = max(0, frame - 2), min(len(envelope), frame + 3)
        weights = envelope[lo:hi]
        if weights.sum() > 0:
            t = float(np.dot(np.arange(lo, hi), weights) / weights.sum()) * HOP / sr
        refined.append(t)
    index = np.arange(len(refined))
    period = float(np.polyfit(index, refined, 1)[0])
    bpm = 60.0 / period if period > 0 else coarse
    intervals = np.diff(refined)
    regularity = float(np.clip(1.0 - float(np.std(intervals)) / max(float(np.mean(intervals)), 1e-9) / 0.1, 0.0, 1.0))
    # Pulse clarity: the envelope's autocorrelation at the beat period against its value at lag 0.
    centred = envelope - envelope.mean()
    lag = round(period * sr / HOP)
    ac0 = float(np.dot(centred, centred))
    pulse = float(np.clip(np.dot(centred[:-lag], centred[lag:]) / ac0, 0.0, 1.0)) if ac0 > 0 and 0 < lag < len(centred) else 0.0
    return bpm, round(regularity * (0.5 + 0.5 * pulse), 3), np.asarray(beats), envelope


def estimate_key(audio: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[str, float]:
    librosa = require_librosa()
    chroma = librosa.feature.chroma_cqt(y=audio, sr=sr, hop_length=2048)
    profile = chroma.mean(axis=1)
    if not np.isfinite(profile).all() or profile.std() == 0:
        return "", 0.0
    scores = []
    for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            scores.append((float(np.corrcoef(profile, np.roll(template, tonic))[0, 1]), f"{NOTE_NAMES[tonic]} {mode}"))
    scores.sort(reverse=True)
    best, key = scores[0]
    other_mode = "minor" if key.endswith("major") else "major"
    rival = next(s for s, k in scores if k.endswith(other_mode))
    runner_up = scores[1][0]
    confidence = float(np.clip(0.5 * (best - runner_up) / 0.1 + 0.5 * (best - rival) / 0.2, 0.0, 1.0)) * max(best, 0.0)
    return key, round(confidence, 3)


def estimate_meter(envelope: np.ndarray, beats: np.ndarray) -> tuple[int, float]:
    """Beats per bar from the accent pattern of the beat-synchronous onset strength."""
    if len(beats) < 8:
        return 4, 0.0
    strength = np.array([envelope[max(0, b - 1) : b + 2].max() for b in beats])
    best, best_score = 4, 0.0
    for group in (3, 4):
        usable = len(strength) // group * group
        if usable < 2 * group:
            continue
        folded = strength[:usable].reshape(-1, group)
        means = folded.mean(axis=0)
        # Accent contrast: the strongest position against the rest, steady across bars.
        top = int(np.argmax(means))
        rest = np.delete(means, top).mean()
        contrast = (means[top] - rest) / max(means[top], 1e-9)
        steadiness = float(np.mean(np.argmax(folded, axis=1) == top))
        score = float(contrast * steadiness)
        if score > best_score + 0.05:
            best, best_score = group, score
    return best, round(float(np.clip(best_score / 0.3, 0.0, 1.0)), 3)


def analyze_audio(audio: np.ndarray, sr: int = SAMPLE_RATE) -> Estimate:
    with warnings.catch_warnings():
        # librosa warns when a clip is shorter than one FFT window; the confidence says so already.
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        bpm, bpm_conf, beats, envelope = estimate_tempo(audio, sr)
        key, key_conf = estimate_key(audio, sr)
    meter, meter_conf = estimate_meter(envelope, beats)
    return Estimate(
        bpm=round(bpm, 2),
        bpm_confidence=bpm_conf,
        key=key,
        key_confidence=key_conf,
        time_signature=meter,
        time_signature_confidence=meter_conf,
        seconds=round(len(audio) / sr, 2),
    )


def analyze_file(path: str, *, max_seconds: float = 120.0) -> Estimate:
    return analyze_audio(load_mono(path, max_seconds=max_seconds))
