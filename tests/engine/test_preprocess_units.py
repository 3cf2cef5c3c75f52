"""Preprocessing pieces without models: normalisation + limiter, audio decoding rules, config, prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from engine import prepconfig as pcfg
from engine.audio.builder import AudioReadError
from engine.audio.preprocess.audio import SAMPLE_RATE, load_audio
from engine.audio.preprocess.normalize import LIMITER_CEILING_DB, db_to_gain, integrated_loudness, limit, normalize
from engine.audio.preprocess.samples import Job, apply_tag, collect_jobs, format_lyrics, format_prompt, job_language, job_prompt
from engine.config import ConfigError

RATE = SAMPLE_RATE
CEILING = db_to_gain(LIMITER_CEILING_DB)


def music_like(seconds=10.0, level=0.03, seed=0):
    """Two partials with vibrato and a little noise, stereo: a moderate crest factor, like music."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    mono = level * (np.sin(2 * np.pi * 220 * t + 0.3 * np.sin(2 * np.pi * 5 * t)) + 0.6 * np.sin(2 * np.pi * 331 * t))
    mono += 0.1 * level * rng.standard_normal(t.size)
    return np.stack([mono, 0.8 * mono]).astype(np.float32)


def peak_db(audio):
    return 20 * np.log10(np.abs(audio).max())


@pytest.mark.parametrize("level", [0.003, 0.03, 0.5])
def test_lufs_hits_target_without_clipping(level):
    audio = music_like(level=level)
    out = normalize(audio, "lufs", target_lufs=-14.0)
    assert integrated_loudness(out) == pytest.approx(-14.0, abs=0.5)
    assert np.abs(out).max() <= CEILING + 1e-6
    assert out.dtype == np.float32 and out.shape == audio.shape


def test_limiter_keeps_peaky_material_under_the_ceiling():
    """Quiet music with loud clicks: reaching -14 LUFS needs gain that would push the clicks far past 0 dBFS."""
    rng = np.random.default_rng(1)
    audio = music_like(level=0.02)
    for k in range(0, 10, 2):
        audio[:, k * RATE : k * RATE + 100] += (0.9 * rng.standard_normal((2, 100))).astype(np.float32)
    gain_needed = db_to_gain(-14.0 - integrated_loudness(audio))
    assert np.abs(audio).max() * gain_needed > 3, "the test signal must really need the limiter"
    out = normalize(audio, "lufs")
    assert np.abs(out).max() <= CEILING + 1e-6
    assert integrated_loudness(out) < -14.0  # the clicks carried the loudness; limited, they carry less
    # the gain ramps over milliseconds instead of jumping from sample to sample
    gain = out[0] / np.where(np.abs(audio[0]) > 1e-3, audio[0] * gain_needed, np.nan)
    assert np.nanmax(np.abs(np.diff(gain))) < 0.05


def test_limit_is_a_no_op_below_the_ceiling():
    audio = music_like(level=0.1)
    assert limit(audio) is audio


def test_short_clips_and_silence():
    short = music_like(seconds=0.2, level=0.05)  # shorter than pyloudnorm's 0.4 s block
    out = normalize(short, "lufs")
    assert integrated_loudness(out) == pytest.approx(-14.0, abs=0.5)
    silence = np.zeros((2, RATE), np.float32)
    for mode in ("lufs", "peak"):
        assert np.array_equal(normalize(silence, mode), silence)
    assert np.array_equal(normalize(short, "none"), short)


def test_peak_normalisation():
    out = normalize(music_like(level=0.02), "peak", target_db=-3.0)
    assert peak_db(out) == pytest.approx(-3.0, abs=1e-3)


def test_load_audio_resamples_and_fixes_channels(tmp_path):
    t = np.arange(44_100 * 2) / 44_100
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "mono.wav", mono, 44_100)
    audio = load_audio(str(tmp_path / "mono.wav"))
    assert audio.shape == (2, 2 * RATE) and audio.dtype == np.float32
    assert np.array_equal(audio[0], audio[1])
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.01)  # a proper resampler keeps the level

    four = np.stack([mono, -mono, mono * 0, mono], axis=1)
    sf.write(tmp_path / "quad.flac", four, 44_100)
    audio = load_audio(str(tmp_path / "quad.flac"), max_duration=1.5)
    assert audio.shape == (2, int(1.5 * RATE))
    assert np.allclose(audio[0], -audio[1], atol=1e-4)  # the first two channels, in order


def test_load_audio_rejects_short_truncated_and_empty(tmp_path):
    sf.write(tmp_path / "short.wav", np.zeros((RATE // 2, 2), np.float32), RATE)
    (tmp_path / "empty.flac").write_bytes(b"")
    sf.write(tmp_path / "full.flac", (0.1 * np.random.default_rng(0).standard_normal((2 * RATE, 2))).astype(np.float32), RATE)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    for name, words in (("short.wav", "at least 1 s"), ("empty.flac", "empty"), ("cut.flac", "cannot decode flac")):
        with pytest.raises(AudioReadError) as info:
            load_audio(str(tmp_path / name))
        assert str(info.value).startswith(name + ": ") and words in str(info.value)


def test_config_is_strict_and_round_trips():
    good = pcfg.parse({"checkpoint_dir": "/ck", "audio_dir": "/a", "output_dir": "/o", "max_duration": "30", "normalize": "lufs"})
    assert good.max_duration == 30.0 and good.dataset_json is None and good.source() == "/a"
    assert pcfg.from_json(pcfg.to_json(good)) == good
    with pytest.raises(ConfigError) as info:
        pcfg.parse({"checkpoint_dir": "", "output_dir": "/o", "audio_dir": "/a", "normalise": "peak", "genre_ratio": 101})
    problems = info.value.by_field()
    assert set(problems) == {"checkpoint_dir", "normalise", "genre_ratio"}
    assert "normalize" in problems["normalise"]  # did-you-mean
    assert "--genre-ratio" in str(info.value)
    with pytest.raises(ConfigError, match="exactly one"):
        pcfg.parse({"checkpoint_dir": "/ck", "audio_dir": "/a", "dataset_json": "/d.json", "output_dir": "/o"})
    with pytest.raises(ConfigError, match="exactly one"):
        pcfg.parse({"checkpoint_dir": "/ck", "output_dir": "/o"})


def test_prompt_template_and_tags():
    prompt = format_prompt("tag, calm piano", bpm=90, keyscale="C major", duration=31)
    assert prompt == (
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\ntag, calm piano\n\n"
        "# Metas\n- bpm: 90\n- timesignature: N/A\n- keyscale: C major\n- duration: 31 seconds\n<|endoftext|>\n"
    )
    assert apply_tag("text", "t", "prepend") == "t, text"
    assert apply_tag("text", "t", "append") == "text, t"
    assert apply_tag("text", "t", "replace") == "t"
    assert apply_tag("text", "", "replace") == "text"


def test_inference_lyrics_template_and_conditioning_setting():
    """ACE-Step's inference lyric input (ACE_STEP.md §19): language header, lyrics, <|endoftext|>, nothing after."""
    assert format_lyrics("[Verse]\nla la", "en") == "# Languages\nen\n\n# Lyric\n[Verse]\nla la<|endoftext|>"
    assert format_lyrics("oh {yeah} {0}", "ja") == "# Languages\nja\n\n# Lyric\noh {yeah} {0}<|endoftext|>"  # braces kept
    job = Job("s", "/a/s.wav", "s.wav", {"lyrics": "x"}, 1.0)
    assert job_language(job) == "unknown"  # ACE-Step's value for an unknown language
    job.sample["language"] = " de "
    assert job_language(job) == "de"
    base = {"checkpoint_dir": "/ck", "audio_dir": "/a", "output_dir": "/o"}
    assert pcfg.parse(base).conditioning == "inference"  # new datasets match inference
    assert pcfg.parse({**base, "conditioning": "legacy"}).conditioning == "legacy"
    with pytest.raises(ConfigError, match=r"conditioning \(--conditioning\).*inference, legacy"):
        pcfg.parse({**base, "conditioning": "padded"})


def test_jobs_from_dataset_json_with_tags_and_genre(tmp_path):
    songs = tmp_path / "songs"
    (songs / "sub").mkdir(parents=True)
    for name in ("a.wav", "sub/b.wav", "c.wav", "d.wav"):
        sf.write(songs / name, np.zeros((RATE, 2), np.float32), RATE)
    samples = [
        {"audio_path": "a.wav", "caption": "alpha", "genre": "rock", "custom_tag": "own"},
        {"filename": "sub/b.wav", "caption": "beta", "genre": "jazz", "prompt_override": "genre"},
        {"audio_path": str(songs / "c.wav"), "caption": "gamma", "prompt_override": "caption", "genre": "pop"},
        {"filename": "missing.wav"},
        {"audio_path": "d.wav"},
    ]
    (songs / "dataset.json").write_text(
        json.dumps({"metadata": {"custom_tag": "dstag", "tag_position": "append"}, "samples": samples})
    )
    config = pcfg.parse(
        {"checkpoint_dir": "/ck", "dataset_json": str(songs / "dataset.json"), "output_dir": "/o", "genre_ratio": 100}
    )
    jobs = collect_jobs(config)
    assert [j.stem for j in jobs.jobs] == ["a", "sub__b", "c", "d"]
    assert jobs.failed == [("missing.wav", jobs.failed[0][1])] and "not found" in jobs.failed[0][1]
    assert jobs.max_duration == 1.0  # auto = the longest file
    captions = [job_prompt(j, jobs, 1).split("# Caption\n")[1].split("\n")[0] for j in jobs.jobs]
    # genre_ratio 100 picks genre where there is one; "caption" override wins; dataset tag appended
    assert captions == ["rock, own", "jazz, dstag", "gamma, dstag", "d, dstag"]
    config = pcfg.parse(
        {
            "checkpoint_dir": "/ck",
            "dataset_json": str(songs / "dataset.json"),
            "output_dir": "/o",
            "tag": "cli",
            "tag_position": "replace",
        }
    )
    jobs = collect_jobs(config)
    assert [job_prompt(j, jobs, 1).split("# Caption\n")[1].split("\n")[0] for j in jobs.jobs] == ["own", "cli", "cli", "cli"]


def test_train_preprocess_flags_take_model_and_device_from_training():
    import argparse

    from engine import config as tcfg
    from engine.cli.parser import add_train_preprocess_arguments
    from engine.cli.preprocess import preprocess_config_from_train

    parser = argparse.ArgumentParser()
    parser.add_argument("-o")  # training's own short flags stay untouched
    add_train_preprocess_arguments(parser)
    train = tcfg.parse(
        {"checkpoint_dir": "/ck", "model_variant": "turbo", "dataset_dir": "/tensors", "output_dir": "/run", "device": "cpu"}
    )
    assert preprocess_config_from_train(parser.parse_args([]), train) is None
    ns = parser.parse_args(["--preprocess", "--audio-dir", "/songs", "--normalize", "peak", "--target-db", "-2"])
    pre = preprocess_config_from_train(ns, train)
    assert (pre.checkpoint_dir, pre.model_variant, pre.device, pre.output_dir) == ("/ck", "turbo", "cpu", "/tensors")
    assert pre.audio_dir == "/songs" and pre.normalize == "peak" and pre.target_db == -2.0
    ns = parser.parse_args(["--preprocess-only", "--dataset-json", "/d.json", "--tensor-output", "/t2"])
    assert preprocess_config_from_train(ns, train).output_dir == "/t2"
    with pytest.raises(ConfigError):
        preprocess_config_from_train(parser.parse_args(["--preprocess"]), train)  # no audio source
