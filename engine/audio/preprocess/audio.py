"""Decode an audio file to 48 kHz stereo float32 (ACE_STEP.md §5.1), numpy only.

soundfile (libsndfile 1.2: WAV, FLAC, MP3, OGG/Vorbis, Opus, ...) decodes; formats it lacks (m4a/AAC)
go through ``ffmpeg`` when it is on PATH, otherwise the file fails with a one-line error naming the
format. Resampling uses soxr (HQ), a proper band-limited resampler. Mono is duplicated to stereo, more
than two channels keep the first two, and the result is cropped to ``max_duration`` seconds (the crop
happens before resampling so a long file is never resampled whole).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import numpy as np

from engine.audio.builder import AudioReadError, unreadable_reason
from engine.sidecars import FFMPEG_ONLY, error_line, format_name

SAMPLE_RATE = 48_000
HOP = 1920  # VAE samples per latent frame: 48 kHz / 1920 = 25 frames/s
MIN_SECONDS = 1.0  # shorter clips are too short for the VAE's receptive field and useless to train on
TRUNCATED_FRACTION = 0.95  # decoding less than this share of the declared length means a cut-off file


def load_audio(path: str, *, max_duration: float = 0.0) -> np.ndarray:
    """``[2, S]`` float32 at 48 kHz. ``max_duration`` <= 0 means no crop. ``AudioReadError`` on failure."""
    reason = unreadable_reason(path)
    if reason:
        raise AudioReadError(path, reason)
    if os.path.splitext(path)[1].lower() in FFMPEG_ONLY:
        audio, rate = _decode_ffmpeg(path, max_duration)
    else:
        audio, rate = _decode_soundfile(path, max_duration)
    if audio.shape[0] == 0:
        raise AudioReadError(path, "no audio frames in the file")
    if not np.isfinite(audio).all():
        raise AudioReadError(path, "the decoded audio holds NaN or infinite samples")
    if audio.shape[1] == 1:
        audio = np.repeat(audio, 2, axis=1)
    elif audio.shape[1] > 2:
        audio = audio[:, :2]
    if rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(np.ascontiguousarray(audio), rate, SAMPLE_RATE, quality="HQ")
    if max_duration > 0:
        audio = audio[: round(max_duration * SAMPLE_RATE)]
    if audio.shape[0] < MIN_SECONDS * SAMPLE_RATE:
        seconds = math.floor(audio.shape[0] / SAMPLE_RATE * 100) / 100  # never shows "1.00 s" for 0.999
        raise AudioReadError(path, f"only {seconds:.2f} s of audio; at least {MIN_SECONDS:g} s is needed")
    return np.ascontiguousarray(audio.T, dtype=np.float32)


def _decode_soundfile(path: str, max_duration: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        with sf.SoundFile(path) as fh:
            rate, declared = fh.samplerate, fh.frames
            frames = -1
            if max_duration > 0:
                frames = math.ceil(max_duration * rate) + 64  # a little slack for the resampler
            audio = fh.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:  # LibsndfileError / RuntimeError / TypeError depending on the version
        raise AudioReadError(path, f"cannot decode {format_name(path)}: {error_line(exc)}") from None
    # A cut-off MP3/OGG decodes without an error but stops early; the header still has the full length.
    expected = declared if frames < 0 else min(frames, declared)
    if expected > 0 and audio.shape[0] < TRUNCATED_FRACTION * expected:
        raise AudioReadError(
            path, f"truncated: the header promises {declared / rate:.1f} s but only {audio.shape[0] / rate:.1f} s decode"
        )
    return audio, rate


def _decode_ffmpeg(path: str, max_duration: float) -> tuple[np.ndarray, int]:
    """Decode with the ffmpeg binary straight to 48 kHz float32 stereo (only for formats libsndfile lacks)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:  # unreadable_reason() said so already; kept for a PATH that changed since
        raise AudioReadError(path, f"{format_name(path)} needs ffmpeg, which is not installed; convert it to FLAC or WAV")
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", path]
    if max_duration > 0:
        command += ["-t", f"{max_duration:.3f}"]
    command += ["-f", "f32le", "-ac", "2", "-ar", str(SAMPLE_RATE), "-"]
    done = subprocess.run(command, capture_output=True, timeout=600)
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
        raise AudioReadError(path, f"ffmpeg cannot decode {format_name(path)}: {error_line(message)}")
    audio = np.frombuffer(done.stdout, dtype=np.float32)
    return audio[: audio.size // 2 * 2].reshape(-1, 2).copy(), SAMPLE_RATE
