"""Demo audio components: a random-weight VAE and text encoder, plus synthetic songs with sidecars.

With ``engine.models.demo.build.write_demo_checkpoint`` (the demo DiT and its condition encoder) these make a
checkpoint root shaped like ACE-Step 1.5's, so ``sidestep demo`` runs the real preprocessing path:
audio files -> ``dataset.json`` -> two-pass preprocessing -> tensors -> adapter.

- ``<root>/vae/``: a real diffusers ``AutoencoderOobleck`` with the real hop (48 kHz, ratios
  [2, 4, 4, 6, 10] = 1920, 25 latent frames/s) and 64 latent channels. Tiny: every stage 128 wide
  (the latent width fixes ``encoder_hidden_size`` = 2 x 64); full: the shipped config.
- ``<root>/Qwen3-Embedding-0.6B/``: a transformers ``Qwen3Model`` whose width matches the demo DiT's
  ``text_hidden_dim``, and a byte-level BPE tokenizer trained here on a few local sentences (no
  download), saved so ``AutoTokenizer.from_pretrained`` loads it. Full: Qwen3-Embedding-0.6B's shape.
Weights are random: the tensors have the right shapes and statistics, not meaning.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine import fsutil
from engine.discovery import TEXT_ENCODER_DIR, VAE_DIR

DEMO_AUDIO_VERSION = 1  # bump when a component changes; forces a rewrite
MARKER_FILE = "sidestep_demo.json"
SAMPLE_RATE = 48_000
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(encoder_hidden_size=128, channel_multiples=[1, 1, 1, 1, 1], decoder_channels=8),
    "full": dict(encoder_hidden_size=128, channel_multiples=[1, 2, 4, 8, 16], decoder_channels=128),
}
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_ratio=2),
    # Qwen3-Embedding-0.6B: 28 layers, 16 heads (8 KV) of 128, MLP 3072, vocab 151,669.
    "full": dict(
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_ratio=3,
        vocab_size=151_669,
    ),
}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CORPUS = """# Instruction
Fill the audio semantic mask based on the given conditions:
# Caption
# Metas
- bpm: 120
- timesignature: 4
- keyscale: C major
- duration: 30 seconds
N/A
[Instrumental] [Verse] [Chorus] [Bridge] [Intro] [Outro]
a bright sine tone with soft harmonics, calm ambient drone
a warm major chord, gentle pad, slow attack
rhythmic noise bursts like a drum machine, electronic, techno, house, pop, rock, jazz, folk
the night is long and the stars are bright, we sing along until the morning light
hold on, hold on, la la la, oh oh oh, yeah
mélodie douce, naïve, café, déjà vu
"""


def _is_current(folder: Path, size: str) -> bool:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == {"version": DEMO_AUDIO_VERSION, "size": size} and (folder / "config.json").is_file()


def _mark(folder: Path, size: str) -> None:
    # A file of its own: an extra key in config.json makes diffusers warn on every load.
    (folder / MARKER_FILE).write_text(json.dumps({"version": DEMO_AUDIO_VERSION, "size": size}) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _publishing(target: Path, size: str) -> Iterator[Path]:
    """A temp folder that becomes ``target`` (replacing an outdated one) once it holds the marker."""
    with fsutil.atomic_dir(target) as staging:
        yield staging
        _mark(staging, size)


def write_demo_vae(root: str | os.PathLike, *, size: str = "tiny", seed: int = 0) -> str:
    import torch
    from diffusers import AutoencoderOobleck

    target = Path(root) / VAE_DIR
    if _is_current(target, size):
        return str(target)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # the caller's RNG stays untouched
        torch.manual_seed(seed)
        # diffusers' Oobleck still uses the deprecated weight_norm
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        vae = AutoencoderOobleck(
            downsampling_ratios=[2, 4, 4, 6, 10],
            decoder_input_channels=64,
            audio_channels=2,
            sampling_rate=SAMPLE_RATE,
            **VAE_CONFIGS[size],
        )
    with _publishing(target, size) as staging:
        vae.save_pretrained(staging, safe_serialization=True)  # type: ignore[attr-defined]  # diffusers types its lazy export as the torch-less dummy
    return str(target)


def build_demo_tokenizer() -> Any:
    """A byte-level BPE tokenizer (any Unicode text encodes) trained on ``_CORPUS``, as a
    ``PreTrainedTokenizerFast``; ``<|endoftext|>`` is a special token and the padding token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=32768,
    )


def write_demo_text_encoder(root: str | os.PathLike, *, hidden_size: int, size: str = "tiny", seed: int = 0) -> str:
    import torch
    from transformers import Qwen3Config, Qwen3Model

    target = Path(root) / TEXT_ENCODER_DIR
    if _is_current(target, size):
        config = json.loads((target / "config.json").read_text(encoding="utf-8"))
        if config.get("hidden_size") == hidden_size:
            return str(target)
    tokenizer = build_demo_tokenizer()
    spec = dict(TEXT_CONFIGS[size])
    ratio = spec.pop("intermediate_ratio")
    heads = spec["num_attention_heads"]
    config = Qwen3Config(
        vocab_size=spec.pop("vocab_size", len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=ratio * hidden_size,
        head_dim=spec.pop("head_dim", max(8, hidden_size // heads)),
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **spec,
    )
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stays untouched
        torch.manual_seed(seed)
        model = Qwen3Model(config).to(dtype)  # type: ignore[arg-type]  # transformers' decorator hides nn.Module.to's signature
    with _publishing(target, size) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return str(target)


def write_demo_audio_components(
    root: str | os.PathLike, *, size: str = "tiny", text_hidden_dim: int | None = None
) -> dict[str, str]:
    """Write ``<root>/vae/`` and ``<root>/Qwen3-Embedding-0.6B/`` (idempotent: current folders are
    kept). ``text_hidden_dim`` defaults to the demo DiT's for ``size``."""
    if text_hidden_dim is None:
        from engine.models.demo.build import demo_config

        text_hidden_dim = int(demo_config(size).text_hidden_dim)
    return {
        "vae": write_demo_vae(root, size=size),
        "text_encoder": write_demo_text_encoder(root, hidden_size=text_hidden_dim, size=size),
    }


# --------------------------------------------------------------------------- synthetic songs

_NOTES = {"C": 261.63, "D": 293.66, "E": 329.63, "F": 349.23, "G": 392.0, "A": 440.0, "B": 493.88}


def _envelope(n: int, rate: int, attack: float = 0.02, release: float = 0.1) -> np.ndarray:
    env = np.ones(n)
    a, r = min(n, int(attack * rate)), min(n, int(release * rate))
    env[:a] = np.linspace(0, 1, a)
    env[n - r :] = np.minimum(env[n - r :], np.linspace(1, 0, r))
    return env


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k**1.5 for k in (1, 2, 3, 4))
    return 0.3 * wave * _envelope(t.size, rate) * (1 + 0.1 * np.sin(2 * np.pi * 5 * t))


def _chord(names: str, seconds: float, rate: int) -> np.ndarray:
    return np.stack([_tone(_NOTES[n], seconds, rate) for n in names]).mean(axis=0)


def _arpeggio(names: str, seconds: float, rate: int, bpm: int) -> np.ndarray:
    step = 60.0 / bpm / 2
    notes = [_tone(_NOTES[names[i % len(names)]] * (2 if i % 8 >= 4 else 1), step, rate) for i in range(int(seconds / step))]
    out = np.concatenate(notes)
    return np.pad(out, (0, max(0, int(seconds * rate) - out.size)))


def _noise_bursts(seconds: float, rate: int, bpm: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * rate)
    out = 0.002 * rng.standard_normal(n)
    beat = int(60.0 / bpm * rate)
    burst = int(0.08 * rate)
    decay = np.exp(-np.linspace(0, 6, burst))
    for start in range(0, n - burst, beat):
        out[start : start + burst] += 0.5 * rng.standard_normal(burst) * decay
    return out


def _stereo(mono: np.ndarray, pan: float) -> np.ndarray:
    return np.stack([mono * (1 - pan), mono * (1 + pan)], axis=1).astype(np.float32)


def _write_text(path: Path, text: str, *, bom: bool = False) -> None:
    with fsutil.atomic_file(path, encoding="utf-8-sig" if bom else "utf-8") as fh:
        fh.write(text)


def _write_audio(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile as sf

    kind = path.suffix[1:].upper()  # WAV or FLAC
    fsutil.atomic_write(path, lambda tmp: sf.write(tmp, audio, rate, format=kind))


def synthesize_demo_audio(
    directory: str | os.PathLike, n: int = 6, *, seed: int = 0, seconds: tuple[float, ...] = (1.0, 1.25)
) -> list[str]:
    """Write ``n`` short songs (tones, chords, arpeggios, noise bursts; WAV and FLAC; one mono 44.1 kHz)
    with sidecars in every supported convention. Returns the audio paths. Deterministic for a seed.

    The default lengths are the preprocessor's 1 s minimum and a little more: on a CPU the VAE's first
    stage (128 channels at 48 kHz) costs over a second per second of audio, the bulk of the demo's setup."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[str] = []
    for i in range(n):
        kind = i % 6
        secs = seconds[i % len(seconds)]
        suffix = "" if i < 6 else f"_{i // 6}"
        bpm = 90 + 10 * (i % 5)
        rate = SAMPLE_RATE
        if kind == 0:  # key: value sidecar with multi-line lyrics
            path = out / f"tone_a440{suffix}.wav"
            audio = _stereo(_tone(440.0 * (1 + 0.05 * (i // 6)), secs, rate), 0.1)
            _write_text(
                path.with_suffix(".txt"),
                f"caption: a bright sine tone with soft harmonics\ngenre: ambient\nbpm: {bpm}\nkey: A major\n"
                "signature: 4\nlyrics:\n[Verse]\nthe night is long and the stars are bright\nwe sing along until the morning light\n\n[Chorus]\nhold on, hold on\n",
            )
        elif kind == 1:  # upstream caption-only sidecar
            path = out / f"chord_c_major{suffix}.flac"
            audio = _stereo(_chord("CEG", secs, rate), -0.2)
            _write_text(path.with_name(path.stem + ".caption.txt"), "a warm major chord, gentle pad, slow attack")
        elif kind == 2:  # lyrics-only .txt
            path = out / f"noise_bursts{suffix}.wav"
            audio = _stereo(_noise_bursts(secs, rate, bpm, rng), 0.0)
            _write_text(path.with_suffix(".txt"), "[Chorus]\noh oh oh, yeah\nla la la\n")
        elif kind == 3:  # non-ASCII name, key: value with a byte-order mark, instrumental
            path = out / f"mélodie_douce{suffix}.flac"
            audio = _stereo(_arpeggio("CEGB", secs, rate, bpm), 0.3)
            _write_text(
                path.with_suffix(".txt"),
                f"caption: mélodie douce, arpeggio\ngenre: folk\nbpm: {bpm}\nlyrics: [Instrumental]\n",
                bom=True,
            )
        elif kind == 4:  # rhythm + chord, key: value
            path = out / f"pulse_minor{suffix}.wav"
            audio = _stereo(0.7 * _chord("ACE", secs, rate) + 0.5 * _noise_bursts(secs, rate, bpm, rng), 0.0)
            _write_text(
                path.with_suffix(".txt"),
                f"caption: rhythmic noise bursts over a minor chord\ngenre: electronic\nbpm: {bpm}\nkey: A minor\n",
            )
        else:  # mono 44.1 kHz (exercises resampling and mono -> stereo), caption + lyrics files
            rate = 44_100
            path = out / f"mono_arp{suffix}.wav"
            audio = _arpeggio("DFA", secs, rate, bpm).astype(np.float32)
            _write_text(path.with_name(path.stem + ".caption.txt"), "a plucked minor arpeggio, mono recording")
            _write_text(path.with_name(path.stem + ".lyrics.txt"), "[Instrumental]")
        _write_audio(path, audio, rate)
        paths.append(str(path))
    return paths
