"""The model-facing half of preprocessing (ACE_STEP.md §5.2–5.6): VAE, text encoder, condition encoder.

Pass 1 needs ``vae/`` (diffusers ``AutoencoderOobleck``) and ``Qwen3-Embedding-0.6B/`` (transformers
``AutoModel`` + ``AutoTokenizer``); pass 2 needs only the DiT checkpoint's ``encoder`` (the condition
encoder), loaded on the CPU through the checkpoint's own code and moved alone to the device, so the
GPU never holds the decoder during preprocessing.
"""

from __future__ import annotations

import gc
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.audio.preprocess.audio import HOP, SAMPLE_RATE
from engine.discovery import SILENCE_LATENT, TEXT_ENCODER_DIR, VAE_DIR
from engine.ptinspect import LATENT_CHANNELS
from engine.sidecars import error_line

TEXT_MAX_LENGTH = 256
LYRICS_MAX_LENGTH = 512  # legacy (the upstream trainer); inference allows 2048 (ACE_STEP.md §19)
INFERENCE_LYRICS_MAX_LENGTH = 2048
TIMBRE_FRAMES = 750  # inference's text2music timbre reference: the first 750 frames of the silence latent
TILE_SECONDS = 30.0  # VAE window; 15 s on GPUs with <= 8 GB (§5.2)
TILE_OVERLAP_SECONDS = 2.0  # context on each side of a window's kept core, discarded after encoding


class PreprocessModelError(ValueError):
    """A component folder that is missing or cannot be loaded; one line naming the folder."""


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _require_dir(path: str, what: str) -> str:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise PreprocessModelError(
            f"{what} not found: {path} has no config.json (checkpoint root must hold {os.path.basename(path)}/)"
        )
    return path


# --------------------------------------------------------------------------- pass 1


@dataclass
class Pass1Models:
    vae: Any
    tokenizer: Any
    text_encoder: Any
    device: torch.device
    dtype: torch.dtype
    tile_seconds: float

    def close(self) -> None:
        self.vae = self.text_encoder = self.tokenizer = None
        _free(self.device)


def load_pass1(checkpoint_dir: str, device: torch.device, dtype: torch.dtype) -> Pass1Models:
    from diffusers import AutoencoderOobleck
    from transformers import AutoModel, AutoTokenizer

    from engine.models.loader import dtype_kwarg

    vae_dir = _require_dir(os.path.join(checkpoint_dir, VAE_DIR), "VAE")
    text_dir = _require_dir(os.path.join(checkpoint_dir, TEXT_ENCODER_DIR), "text encoder")
    try:
        with warnings.catch_warnings():  # diffusers' Oobleck still uses the deprecated weight_norm
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            vae = AutoencoderOobleck.from_pretrained(vae_dir, torch_dtype=dtype, local_files_only=True)
    except Exception as exc:  # diffusers raises OSError / ValueError / EnvironmentError by case
        raise PreprocessModelError(f"cannot load the VAE from {vae_dir}: {error_line(exc)}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
        text_encoder = AutoModel.from_pretrained(text_dir, local_files_only=True, **{dtype_kwarg(): dtype})
    except Exception as exc:
        raise PreprocessModelError(f"cannot load the text encoder from {text_dir}: {error_line(exc)}") from exc
    vae.to(device).eval().requires_grad_(False)
    text_encoder.to(device).eval().requires_grad_(False)
    tile = TILE_SECONDS
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory <= 8 * 1024**3:
        tile = 15.0
    return Pass1Models(vae, tokenizer, text_encoder, device, dtype, tile)


@torch.no_grad()
def vae_encode(
    models: Pass1Models, audio: np.ndarray, *, generator: torch.Generator | None = None, sample: bool = True
) -> torch.Tensor:
    """``[2, S]`` 48 kHz audio -> ``[T, 64]`` float32 latents on the CPU, T = S // 1920.

    Long audio is encoded in windows of ``tile_seconds``: each window keeps its core and drops
    ``TILE_OVERLAP_SECONDS`` of context on each side, so the seams see the same receptive field as
    the middle. Window edges sit on latent-frame boundaries, so the pieces line up exactly.
    ``sample=False`` returns the posterior mean instead of a sample (for tests and analysis).
    """
    frames = audio.shape[1] // HOP
    window = int(models.tile_seconds * SAMPLE_RATE) // HOP
    overlap = int(TILE_OVERLAP_SECONDS * SAMPLE_RATE) // HOP
    pieces = []
    if frames <= window:
        spans = [(0, frames, 0, audio.shape[1])]
    else:
        core = window - 2 * overlap
        if core <= 0:
            raise ValueError(
                f"VAE tile of {models.tile_seconds} s leaves no room beside {TILE_OVERLAP_SECONDS} s of overlap on each side"
            )
        spans = []
        for start in range(0, frames, core):
            end = min(start + core, frames)
            lo = max(0, start - overlap)
            hi_sample = audio.shape[1] if end + overlap >= frames else (end + overlap) * HOP
            spans.append((start, end, lo, hi_sample))
    for start, end, lo, hi_sample in spans:
        x = torch.from_numpy(audio[:, lo * HOP : hi_sample]).unsqueeze(0).to(models.device, models.dtype)
        dist = models.vae.encode(x).latent_dist
        latent = dist.sample(generator=generator) if sample else dist.mean  # [1, 64, t]
        pieces.append(latent[0, :, start - lo : end - lo].float().cpu())
    out = torch.cat(pieces, dim=1).transpose(0, 1).contiguous()
    if out.shape[0] != frames or out.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"VAE returned {tuple(out.shape)} latents, expected ({frames}, {LATENT_CHANNELS}); is vae/ the 48 kHz ACE-Step VAE?"
        )
    return out


def _tokenize(models: Pass1Models, text: str, max_length: int, *, pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``pad``: padded to ``max_length`` (legacy); else only the true tokens, as ACE-Step's inference
    tokenizes one sample (``padding="longest"``). Both truncate at ``max_length``."""
    padding = "max_length" if pad else "longest"
    enc = models.tokenizer(text, padding=padding, max_length=max_length, truncation=True, return_tensors="pt")
    return enc["input_ids"].to(models.device), enc["attention_mask"].to(models.device)


@torch.no_grad()
def encode_text(models: Pass1Models, prompt: str, conditioning: str = "inference") -> tuple[torch.Tensor, torch.Tensor]:
    """Full text encoder on the prompt's ids (no attention mask, as upstream): ``[1, n, H]``, ``[1, n]``
    with n = its tokens (at most 256) for ``inference``, n = 256 (padded) for ``legacy``."""
    ids, mask = _tokenize(models, prompt, TEXT_MAX_LENGTH, pad=conditioning == "legacy")
    hidden = models.text_encoder(input_ids=ids).last_hidden_state
    return hidden.to(models.dtype).cpu(), mask.to(models.dtype).cpu()


@torch.no_grad()
def encode_lyrics(models: Pass1Models, lyrics: str, conditioning: str = "inference") -> tuple[torch.Tensor, torch.Tensor]:
    """Lyrics through the token-embedding table only. ``inference``: ``lyrics`` is already wrapped by
    ``samples.format_lyrics``, up to 2048 tokens, unpadded; ``legacy``: raw, padded to 512."""
    legacy = conditioning == "legacy"
    ids, mask = _tokenize(models, lyrics, LYRICS_MAX_LENGTH if legacy else INFERENCE_LYRICS_MAX_LENGTH, pad=legacy)
    hidden = models.text_encoder.get_input_embeddings()(ids)
    return hidden.to(models.dtype).cpu(), mask.to(models.dtype).cpu()


# --------------------------------------------------------------------------- pass 2


@dataclass
class Pass2Models:
    encoder: Any
    silence: torch.Tensor  # [T_s, 64] float32, CPU
    hidden_size: int
    device: torch.device
    dtype: torch.dtype

    def close(self) -> None:
        self.encoder = None
        _free(self.device)


def find_silence_latent(checkpoint_dir: str, model_dir: str) -> str:
    for candidate in (os.path.join(checkpoint_dir, SILENCE_LATENT), os.path.join(model_dir, SILENCE_LATENT)):
        if os.path.isfile(candidate):
            return candidate
    raise PreprocessModelError(
        f"{SILENCE_LATENT} not found in {checkpoint_dir} or {model_dir}; it ships with the main ACE-Step download"
    )


def load_silence_latent(path: str) -> torch.Tensor:
    """``silence_latent.pt`` is stored ``[1, 64, T_s]``; returns ``[T_s, 64]`` float32."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, torch.Tensor) or data.dim() != 3 or data.shape[1] != LATENT_CHANNELS:
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise PreprocessModelError(f"{path}: expected a [1, {LATENT_CHANNELS}, T] tensor, found {shape}")
    return data[0].transpose(0, 1).float().contiguous()


def load_pass2(checkpoint_dir: str, model_dir: str, device: torch.device, dtype: torch.dtype) -> Pass2Models:
    """The checkpoint's condition encoder on ``device``; the rest of the model never leaves the CPU."""
    from pathlib import Path

    from engine.models.loader import ModelLoadError, check_weights, from_pretrained, prepare_acestep, read_model_config

    silence = load_silence_latent(find_silence_latent(checkpoint_dir, model_dir))
    path = Path(model_dir)
    try:
        config = read_model_config(path)
        check_weights(path)
        prepare_acestep(path)
    except ModelLoadError as exc:
        raise PreprocessModelError(str(exc)) from None
    errors = []
    model = info = None
    for backend in ("sdpa", "eager"):
        try:
            model, info = from_pretrained(path, backend, dtype)
            break
        except Exception as exc:  # the checkpoint's own code may raise anything
            errors.append(f"{backend}: {error_line(exc)}")
    if model is None or info is None:
        raise PreprocessModelError(f"cannot load {model_dir}: " + "; ".join(errors))
    # A missing encoder weight would be silently random: every tensor would be conditioned on noise.
    keys = [k[0] if isinstance(k, tuple) else k for k in [*info.get("missing_keys", []), *info.get("mismatched_keys", [])]]
    lacking = [k for k in keys if str(k).startswith("encoder.")]
    if lacking:
        raise PreprocessModelError(
            f"{path / 'model.safetensors'} lacks or mis-shapes condition-encoder weights ({len(lacking)} keys, e.g. {lacking[0]}); re-download the folder"
        )
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise PreprocessModelError(f"{path.name} has no condition encoder (`encoder`): not an ACE-Step 1.5 DiT checkpoint")
    del model
    on_meta = [n for n, t in [*encoder.named_parameters(), *encoder.named_buffers()] if t.is_meta]
    if on_meta:
        raise PreprocessModelError(f"{path.name}: encoder tensors left uninitialised after loading ({on_meta[0]}, ...)")
    encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
    _free(device)
    return Pass2Models(encoder, silence, int(config.get("hidden_size", 0)), device, dtype)


@torch.no_grad()
def condition(models: Pass2Models, tmp: dict[str, Any], conditioning: str = "inference") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the condition encoder on pass-1 outputs: ``[L, hidden]`` states and ``[L]`` bool mask.

    ``inference``: the timbre reference is ``silence[:750]`` (order mask ``[0]``), as ACE-Step's
    text2music inference passes it, and the packed output (valid tokens first) is cut to its valid
    tokens, so L = text + lyric tokens + 1 and the file holds no padding. ``legacy``: a zero
    ``[1, 1, 64]`` reference and the full padded length (upstream trainer, 769 tokens on the 2B)."""
    d, t = models.device, models.dtype
    if conditioning == "legacy":
        refer = torch.zeros(1, 1, LATENT_CHANNELS, device=d, dtype=t)  # the upstream trainer: no timbre reference
    else:
        refer = models.silence[:TIMBRE_FRAMES].unsqueeze(0).to(d, t)
    order = torch.zeros(1, device=d, dtype=torch.long)
    states, mask = models.encoder(
        text_hidden_states=tmp["text_hidden_states"].to(d, t),
        text_attention_mask=tmp["text_attention_mask"].to(d, t),
        lyric_hidden_states=tmp["lyric_hidden_states"].to(d, t),
        lyric_attention_mask=tmp["lyric_attention_mask"].to(d, t),
        refer_audio_acoustic_hidden_states_packed=refer,
        refer_audio_order_mask=order,
    )
    states, mask = states[0].float().cpu(), mask[0].to(torch.bool).cpu()
    if conditioning != "legacy":
        valid = int(mask.sum())
        states, mask = states[:valid].contiguous(), mask[:valid].clone()
    return states, mask


def context_latents(silence: torch.Tensor, frames: int) -> torch.Tensor:
    """``[T, 128]``: the silence latent (tiled when shorter than T) ‖ an all-ones chunk mask (§5.6)."""
    repeats = -(-frames // silence.shape[0])
    src = silence.repeat(repeats, 1)[:frames] if repeats > 1 else silence[:frames]
    return torch.cat([src, torch.ones(frames, LATENT_CHANNELS)], dim=1)
