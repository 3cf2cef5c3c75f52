"""``sidestep audio-analyze``: tempo of synthetic click tracks at known BPM (within 0.1 BPM), their meter
(accent every 3 or 4 beats), and the key of synthetic chords, generated here with numpy.

The analysis is the project's own numpy code, so these run on every install."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.audio import analysis
from engine.cli.main import main as cli
from engine.sidecars import load_sidecar

SR = analysis.SAMPLE_RATE
NOTES = {name: i for i, name in enumerate(analysis.NOTE_NAMES)}


def click_track(bpm: float, seconds: float = 12.0, beats_per_bar: int = 4) -> np.ndarray:
    """Short decaying clicks on every beat, the first of each bar louder and higher."""
    out = np.zeros(int(seconds * SR), np.float32)
    t = np.arange(int(0.02 * SR)) / SR
    beat = 0
    while (start := round(beat * 60.0 / bpm * SR)) + t.size < out.size:
        downbeat = beat % beats_per_bar == 0
        out[start : start + t.size] += (
            (1.0 if downbeat else 0.45) * np.sin(2 * np.pi * (1500 if downbeat else 1000) * t) * np.exp(-t / 0.004)
        )
        beat += 1
    return out


def tone(midi: int, seconds: float) -> np.ndarray:
    f = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(int(seconds * SR)) / SR
    return sum(np.sin(2 * np.pi * f * h * t) / h**2 for h in (1, 2, 3)) * np.minimum(1, t * 20) * np.exp(-t * 0.5)


def triad(root: str, minor: bool, seconds: float = 1.0) -> np.ndarray:
    base = NOTES[root] + 60
    return sum(tone(m, seconds) for m in (base, base + (3 if minor else 4), base + 7))


def cadence(tonic: str, minor: bool) -> np.ndarray:
    """i/I - iv/IV - V - i/I: the chords that say which key a piece is in."""
    names = analysis.NOTE_NAMES
    four, five = names[(NOTES[tonic] + 5) % 12], names[(NOTES[tonic] + 7) % 12]
    chords = [(tonic, minor), (four, minor), (five, False), (tonic, minor)]
    return (0.2 * np.concatenate([triad(n, m) for n, m in chords])).astype(np.float32)


@pytest.mark.parametrize(("bpm", "beats_per_bar"), [(90, 4), (120, 3), (150, 4), (174, 3)])
def test_click_track_tempo_within_one_bpm_and_its_meter(bpm: int, beats_per_bar: int) -> None:
    # One envelope frame is 6 BPM at 174 BPM: only the sub-frame refinement (a parabola through each
    # autocorrelation peak, a period fitted through the peaks at 1..8 beats) gets within 0.1 BPM; either
    # half alone is 0.2-0.6 BPM off at some of these tempi.
    est = analysis.analyze_audio(click_track(bpm, beats_per_bar=beats_per_bar))
    assert abs(est.bpm - bpm) <= 0.1, est
    assert est.bpm_confidence > 0.5, est
    assert est.time_signature == beats_per_bar, est


@pytest.mark.parametrize(
    ("tonic", "minor", "expected"),
    [("C", False, "C major"), ("A", True, "A minor"), ("F#", False, "F# major"), ("E", True, "E minor")],
)
def test_chords_give_their_key(tonic: str, minor: bool, expected: str) -> None:
    key, confidence = analysis.estimate_key(cadence(tonic, minor))
    assert key == expected
    assert confidence > 0.5
    held = (0.2 * triad(tonic, minor, 3.0)).astype(np.float32)
    assert analysis.estimate_key(held)[0] == expected  # one chord held
    # ...has no tempo: whatever the beat tracker guesses is not sure enough to be written into a sidecar.
    assert "bpm" not in analysis.analyze_audio(held).sidecar_fields()


def test_audio_analyze_writes_estimates_and_keeps_caption_and_lyrics(tmp_path, capsys) -> None:
    import soundfile as sf

    audio = np.concatenate([cadence("A", True)] * 3) + click_track(120, 12.0)
    sf.write(tmp_path / "song.wav", audio, SR)
    sidecar = "caption: a test song\ngenre: test\nbpm: 60\nlyrics:\n[Verse]\nla la\n"
    (tmp_path / "song.txt").write_text(sidecar, encoding="utf-8")

    assert cli(["audio-analyze", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "song.wav: " in out and "BPM (confidence" in out and "wrote 1 sidecar" in out
    assert "kept bpm '60'" in out  # fill_missing: the value the user wrote stays
    fields = load_sidecar(str(tmp_path / "song.wav")).fields
    assert (fields["bpm"], fields["keyscale"], fields["timesignature"]) == ("60", "A minor", "4")
    text = (tmp_path / "song.txt").read_text(encoding="utf-8")
    assert text == sidecar.replace("lyrics:", "key: A minor\nsignature: 4\nlyrics:")

    assert cli(["audio-analyze", str(tmp_path), "--overwrite"]) == 0
    assert abs(int(load_sidecar(str(tmp_path / "song.wav")).fields["bpm"]) - 120) <= 1
    assert (tmp_path / "song.txt").read_text(encoding="utf-8").startswith("caption: a test song\ngenre: test\nbpm: 12")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp files left
