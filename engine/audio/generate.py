"""The one generation path: text + lyrics -> conditioning -> flow-matching sampler -> VAE decode -> FLAC.

Used by ``sidestep generate`` and by samples during training. Prompt and lyrics are encoded by
preprocessing's own functions (``engine.audio.preprocess.encode``: the text encoder, the lyric token
embeddings, the checkpoint's condition encoder and the silence-latent context), with the prompt
template preprocessing writes (``samples.format_prompt``), so a sample is conditioned exactly like the
tensors the adapter trained on. The sampler is ``engine.models.sampling`` (the checkpoint's schedule,
shift and APG guidance); the VAE decodes in tiles like preprocessing encodes.

Determinism: each render draws its noise from a private ``torch.Generator`` seeded with the prompt's
seed, on the CPU; nothing here touches the global RNG, so one seed renders the same audio every time
(on one machine and device).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from engine import fsutil
from engine.audio.preprocess import encode
from engine.audio.preprocess.audio import HOP, SAMPLE_RATE
from engine.audio.preprocess.samples import format_prompt
from engine.models import sampling
from engine.sidecars import INSTRUMENTAL

LATENT_FPS = SAMPLE_RATE / HOP  # 25 latent frames per second
MAX_DURATION = 600.0
TILE_OVERLAP_FRAMES = 50  # latent frames of context on each side of a decoded tile (2 s)
Log = Callable[[str], None]


class GenerateError(ValueError):
    """Bad input for a render (a prompt file, a duration, an adapter folder); one line."""


@dataclass(frozen=True)
class Prompt:
    caption: str
    lyrics: str = INSTRUMENTAL
    duration: float = 10.0
    seed: int = 0
    bpm: int | None = None
    keyscale: str = ""
    timesignature: str = ""

    def __post_init__(self) -> None:
        if not self.caption.strip():
            raise GenerateError("the prompt is empty; give a caption such as 'warm ambient pad, slow attack'")
        if not 1.0 / LATENT_FPS <= self.duration <= MAX_DURATION:
            raise GenerateError(f"duration {self.duration:g} s is outside 0.04-{MAX_DURATION:g} s")

    def frames(self) -> int:
        return max(1, round(self.duration * LATENT_FPS))

    def text(self) -> str:
        """The text-encoder prompt, as preprocessing builds it for a clip of this duration."""
        return format_prompt(
            self.caption,
            bpm=self.bpm,
            timesignature=self.timesignature,
            keyscale=self.keyscale,
            duration=round(self.duration),
        )

    def slug(self) -> str:
        words = re.sub(r"[^a-z0-9]+", "-", self.caption.lower()).strip("-")
        return words[:40].rstrip("-") or "sample"


@dataclass
class Conditioning:
    states: torch.Tensor  # [1, L, H]
    mask: torch.Tensor  # [1, L] bool
    context: torch.Tensor  # [1, T, 128]


@dataclass
class Rendered:
    audio: np.ndarray  # [S, 2] float32, 48 kHz
    prompt: Prompt
    settings: sampling.SamplerSettings
    adapter_scale: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE

    def sidecar(self) -> dict[str, Any]:
        p = self.prompt
        return {
            "prompt": p.caption,
            "lyrics": p.lyrics,
            "seed": p.seed,
            "bpm": p.bpm,
            "keyscale": p.keyscale,
            "timesignature": p.timesignature,
            "duration_s": round(self.seconds, 4),
            "steps": self.settings.steps,
            "shift": self.settings.shift,
            "guidance": self.settings.guidance,
            "adapter_scale": self.adapter_scale,
            "sample_rate": SAMPLE_RATE,
            "wall_s": round(self.wall_s, 3),
            **self.extra,
        }


# --------------------------------------------------------------------------- prompts


def read_lyrics(path: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8-sig") as fh:
            return fh.read().strip() or INSTRUMENTAL
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerateError(f"cannot read lyrics file {path}: {exc}") from None


PROMPT_KEYS = ("prompt", "caption", "lyrics", "duration", "seed", "bpm", "keyscale", "timesignature")


def read_prompts_file(path: str, *, duration: float, seed: int) -> list[Prompt]:
    """One prompt per non-empty line: a JSON object (``{"prompt": ..., "lyrics": ..., "duration": ...,
    "seed": ...}``; also ``bpm``, ``keyscale``, ``timesignature``) or plain text (the caption). Lines
    starting with ``#`` are comments. Missing duration/seed take the given defaults."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerateError(f"cannot read prompts file {path}: {exc}") from None
    prompts = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path} line {number}"
        if not line.startswith("{"):
            prompts.append(_prompt(where, caption=line, duration=duration, seed=seed))
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise GenerateError(f"{where}: not valid JSON ({exc}); write one JSON object or plain text per line") from None
        unknown = sorted(set(data) - set(PROMPT_KEYS)) if isinstance(data, dict) else []
        if not isinstance(data, dict) or unknown:
            raise GenerateError(f"{where}: expected an object with keys {', '.join(PROMPT_KEYS)}; found {unknown or data!r}")
        prompts.append(
            _prompt(
                where,
                caption=str(data.get("prompt") or data.get("caption") or ""),
                lyrics=str(data.get("lyrics") or INSTRUMENTAL),
                duration=data.get("duration", duration),
                seed=data.get("seed", seed),
                bpm=data.get("bpm"),
                keyscale=str(data.get("keyscale") or ""),
                timesignature=str(data.get("timesignature") or ""),
            )
        )
    if not prompts:
        raise GenerateError(f"{path} holds no prompts (one per line: plain text or a JSON object)")
    return prompts


def _prompt(where: str, **values: Any) -> Prompt:
    try:
        values["duration"] = float(values["duration"])
        values["seed"] = int(values["seed"])
        if values.get("bpm") is not None:
            values["bpm"] = int(values["bpm"])
        return Prompt(**values)
    except GenerateError as exc:
        raise GenerateError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise GenerateError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- adapters


def load_adapter(decoder: torch.nn.Module, folder: str) -> Any:
    """Attach the adapter saved in ``folder`` to ``decoder``: a folder this trainer wrote (its
    config.json rebuilds the exact adapter, any kind), else a plain PEFT folder. Returns the module to call."""
    from engine import config as cfgmod
    from engine.adapters import AdapterLoadError, AdapterMismatchError, attach_adapter

    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise GenerateError(f"adapter folder {folder} does not exist")
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as fh:
                config = cfgmod.parse(json.load(fh))
        except (OSError, ValueError) as exc:
            raise GenerateError(f"{config_path} is not a readable run config ({str(exc).splitlines()[0]})") from None
        adapter = attach_adapter(decoder, config)
        try:
            adapter.load(folder)
        except (AdapterLoadError, AdapterMismatchError) as exc:
            raise GenerateError(str(exc)) from None
        adapter.module.eval()
        return adapter.module
    if os.path.isfile(os.path.join(folder, "adapter_config.json")):
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(decoder, folder, is_trainable=False).eval()
        except Exception as exc:  # PEFT raises ValueError / KeyError / RuntimeError by case
            raise GenerateError(f"cannot load the PEFT adapter in {folder}: {str(exc).splitlines()[0]}") from None
    raise GenerateError(f"{folder} holds no adapter (no config.json from a run, no adapter_config.json)")


@contextlib.contextmanager
def adapter_scale(module: Any, scale: float) -> Iterator[None]:
    """Run ``module`` (a decoder with an adapter) at ``scale`` x the adapter's strength; 0 switches the
    adapter off entirely (the base model's exact output), 1 leaves it as trained."""
    from engine.adapters.lyco import NET_ATTR

    if scale == 1.0:
        yield
        return
    if scale < 0:
        raise GenerateError(f"adapter scale {scale:g} is negative; use 0 (off) to 1 (as trained) or more")
    peft = _peft_model(module)
    if peft is not None:
        if scale == 0.0:
            with peft.disable_adapter():
                yield
            return
        from peft.tuners.lora import LoraLayer

        layers = [m for m in peft.modules() if isinstance(m, LoraLayer)]
        saved = [dict(layer.scaling) for layer in layers]
        try:
            for layer in layers:
                for name in layer.scaling:
                    layer.scaling[name] = layer.scaling[name] * scale
            yield
        finally:
            for layer, scaling in zip(layers, saved, strict=True):
                layer.scaling.clear()
                layer.scaling.update(scaling)
        return
    net = _find_attr(module, NET_ATTR)
    if net is None:
        raise GenerateError("adapter scale needs an adapter; this decoder carries none")
    if scale == 0.0:
        wrapped = [(lora.org_module[0], lora.org_module[0].forward, lora.org_forward) for lora in net.loras]
        try:
            for target, _, original in wrapped:
                target.forward = original
            yield
        finally:
            for target, hooked, _ in wrapped:
                target.forward = hooked
        return
    if any(hasattr(lora, "oft_blocks") for lora in net.loras):
        raise GenerateError("OFT adapters play at scale 0 or 1 only")
    previous = [lora.multiplier for lora in net.loras]
    try:
        for lora in net.loras:
            lora.multiplier = lora.multiplier * scale
        yield
    finally:
        for lora, value in zip(net.loras, previous, strict=True):
            lora.multiplier = value


def _peft_model(module: Any) -> Any:
    from peft import PeftModel

    return next((m for m in module.modules() if isinstance(m, PeftModel)), None)


def _find_attr(module: Any, name: str) -> Any:
    for sub in module.modules():
        found = sub._modules.get(name)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- the renderer


class Renderer:
    """Holds the VAE, the text and condition encoders and a decoder; renders prompts to audio.

    ``decoder`` is anything called like the bare decoder (a PEFT model, Fabric's wrapper); its
    ``adapter_module`` (for scales) defaults to it. ``drop_encoders()`` frees the text and condition
    encoders once every prompt is encoded (training encodes its prompts once, up front)."""

    def __init__(
        self,
        *,
        pass1: encode.Pass1Models,
        pass2: encode.Pass2Models,
        decoder: Any,
        null_condition_emb: torch.Tensor,
        settings: sampling.SamplerSettings,
        device: torch.device,
        dtype: torch.dtype,
        adapter_module: Any = None,
    ) -> None:
        self.pass1 = pass1
        self.pass2 = pass2
        self.decoder = decoder
        self.adapter_module = adapter_module if adapter_module is not None else decoder
        self.null_condition_emb = null_condition_emb
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self._cache: dict[tuple[str, str, int], Conditioning] = {}

    @classmethod
    def load(
        cls,
        checkpoint_dir: str,
        model_dir: str,
        *,
        decoder: Any,
        null_condition_emb: torch.Tensor,
        settings: sampling.SamplerSettings,
        device: torch.device,
        dtype: torch.dtype,
        adapter_module: Any = None,
    ) -> Renderer:
        """Load the VAE, the text encoder and the checkpoint's condition encoder (raises
        ``encode.PreprocessModelError``, one line, when a folder is missing or broken)."""
        pass1 = encode.load_pass1(checkpoint_dir, device, dtype)
        pass2 = encode.load_pass2(checkpoint_dir, model_dir, device, dtype)
        return cls(
            pass1=pass1,
            pass2=pass2,
            decoder=decoder,
            null_condition_emb=null_condition_emb,
            settings=settings,
            device=device,
            dtype=dtype,
            adapter_module=adapter_module,
        )

    def condition(self, prompt: Prompt) -> Conditioning:
        """Encode ``prompt`` as preprocessing does (cached per text, lyrics and length)."""
        key = (prompt.text(), prompt.lyrics, prompt.frames())
        if key not in self._cache:
            if self.pass1.text_encoder is None or self.pass2.encoder is None:
                raise RuntimeError("the encoders were dropped; condition every prompt before drop_encoders()")
            text, text_mask = encode.encode_text(self.pass1, key[0])
            lyric, lyric_mask = encode.encode_lyrics(self.pass1, prompt.lyrics)
            states, mask = encode.condition(
                self.pass2,
                {
                    "text_hidden_states": text,
                    "text_attention_mask": text_mask,
                    "lyric_hidden_states": lyric,
                    "lyric_attention_mask": lyric_mask,
                },
            )
            context = encode.context_latents(self.pass2.silence, prompt.frames())
            self._cache[key] = Conditioning(states[None], mask[None], context[None])
        return self._cache[key]

    def drop_encoders(self) -> None:
        self.pass1.text_encoder = self.pass1.tokenizer = None
        self.pass2.close()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """``[1, T, 64]`` latents -> ``[T * 1920, 2]`` float32 audio, in tiles of the preprocessing window."""
        z = latents[0].transpose(0, 1)  # [64, T]
        frames = z.shape[1]
        window = int(self.pass1.tile_seconds * LATENT_FPS)
        core = max(1, window - 2 * TILE_OVERLAP_FRAMES)
        pieces = []
        for start in range(0, frames, core if frames > window else frames):
            end = min(start + core, frames) if frames > window else frames
            lo, hi = max(0, start - TILE_OVERLAP_FRAMES), min(frames, end + TILE_OVERLAP_FRAMES)
            chunk = z[:, lo:hi][None].to(self.device, self.pass1.vae.dtype)
            wave = self.pass1.vae.decode(chunk).sample[0].float().cpu()  # [2, (hi - lo) * HOP]
            pieces.append(wave[:, (start - lo) * HOP : (end - lo) * HOP])
        return torch.cat(pieces, dim=1).transpose(0, 1).contiguous().numpy()

    def render(self, prompt: Prompt, *, scale: float = 1.0, progress: Callable[[int, int], None] | None = None) -> Rendered:
        started = time.monotonic()
        cond = self.condition(prompt)
        generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
        with adapter_scale(self.adapter_module, scale):
            latents = sampling.sample_latents(
                self.decoder,
                encoder_hidden_states=cond.states,
                encoder_attention_mask=cond.mask,
                context_latents=cond.context,
                null_condition_emb=self.null_condition_emb,
                settings=self.settings,
                generator=generator,
                device=self.device,
                dtype=self.dtype,
                progress=progress,
            )
        if not torch.isfinite(latents).all():
            raise RuntimeError("the sampler produced NaN/Inf latents")
        audio = self.decode(latents)
        return Rendered(audio, prompt, self.settings, scale, time.monotonic() - started)

    def close(self) -> None:
        self.pass1.close()
        self.pass2.close()


# --------------------------------------------------------------------------- files


def write_flac(path: str, audio: np.ndarray) -> None:
    """48 kHz stereo 24-bit FLAC, written atomically (a file that exists is complete)."""
    import soundfile as sf

    clipped = np.clip(audio, -1.0, 1.0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fsutil.atomic_write(path, lambda tmp: sf.write(tmp, clipped, SAMPLE_RATE, format="FLAC", subtype="PCM_24"))


def write_rendered(rendered: Rendered, flac_path: str) -> str:
    """The FLAC and its JSON sidecar (same name, ``.json``), with the sample's loudness and small mel
    spectrogram (``engine.audio.spectrum``: what the UI shows without reading audio); returns the FLAC path.
    The sidecar is one compact line (the spectrogram is a few thousand numbers)."""
    from engine.audio import spectrum

    write_flac(flac_path, rendered.audio)
    sidecar = {**rendered.sidecar(), **spectrum.describe(np.clip(rendered.audio, -1.0, 1.0), SAMPLE_RATE)}
    fsutil.write_text(
        os.path.splitext(flac_path)[0] + ".json", json.dumps(sidecar, ensure_ascii=False, separators=(",", ":")) + "\n"
    )
    return flac_path


def prompt_dict(prompt: Prompt) -> dict[str, Any]:
    return asdict(prompt)
