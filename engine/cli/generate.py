"""``sidestep generate``: render prompts to FLAC through the one generation path (``engine.audio.generate``).

Input is checked before any model loads; every problem is one ``error:`` line and exit code 2. Each
file written is printed (``wrote PATH``), with its JSON sidecar beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _outputs(ns: argparse.Namespace, count: int) -> list[str]:
    """OUT.flac for one prompt; OUT_1.flac ... OUT_n.flac for a prompts file."""
    out = os.path.abspath(os.path.expanduser(ns.output))
    if count == 1 and not ns.prompts_file:
        return [out]
    stem = os.path.splitext(out)[0]
    return [f"{stem}_{i}.flac" for i in range(1, count + 1)]


def _check(ns: argparse.Namespace) -> None:
    from engine.audio.generate import GenerateError

    if not ns.output.lower().endswith(".flac"):
        raise GenerateError(f"--output {ns.output} must end in .flac (the renders are FLAC files)")
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(ns.output)))
    if not os.path.isdir(parent):
        raise GenerateError(f"--output: the folder {parent} does not exist; create it first")
    if ns.compare and not ns.adapter:
        raise GenerateError("--compare renders with and without an adapter; give one with --adapter DIR")
    if ns.adapter_scale < 0:
        raise GenerateError(f"--adapter-scale {ns.adapter_scale:g} is negative; use 0 (base model) to 1 (as trained)")
    if ns.steps is not None and not 1 <= ns.steps <= 1000:
        raise GenerateError(f"--steps {ns.steps} is outside 1-1000")
    if ns.shift is not None and not ns.shift > 0:
        raise GenerateError(f"--shift {ns.shift:g} must be positive")
    if ns.guidance is not None and ns.guidance < 0:
        raise GenerateError(f"--guidance {ns.guidance:g} is negative; 1 = off, 7 = the base model's default")
    if not os.path.isdir(os.path.expanduser(ns.checkpoint_dir)):
        raise GenerateError(f"--checkpoint-dir {ns.checkpoint_dir} is not a folder")
    if ns.adapter and not os.path.isdir(os.path.expanduser(ns.adapter)):
        raise GenerateError(f"--adapter {ns.adapter} is not a folder (give a run's final/, best/ or a checkpoint folder)")


def _prompts(ns: argparse.Namespace) -> list[Any]:
    from engine.audio.generate import Prompt, read_lyrics, read_prompts_file

    if ns.prompts_file:
        return read_prompts_file(ns.prompts_file, duration=ns.duration, seed=ns.seed)
    lyrics = read_lyrics(ns.lyrics) if ns.lyrics else "[Instrumental]"
    return [Prompt(ns.prompt, lyrics=lyrics, duration=ns.duration, seed=ns.seed)]


def run_generate_command(ns: argparse.Namespace) -> int:
    from engine.audio.generate import GenerateError

    try:
        _check(ns)
        prompts = _prompts(ns)
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from engine.audio.preprocess.encode import PreprocessModelError
    from engine.discovery import DiscoveryError
    from engine.models.loader import DeviceError, ModelLoadError

    try:
        return _render_all(ns, prompts)
    except (GenerateError, PreprocessModelError, DiscoveryError, DeviceError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _render_all(ns: argparse.Namespace, prompts: list[Any]) -> int:
    from pathlib import Path

    from engine import config as cfgmod
    from engine.audio import generate as gen
    from engine.discovery import resolve_model_dir
    from engine.models import sampling
    from engine.models.loader import load_decoder, read_model_config, resolve_device, resolve_dtype

    root = os.path.abspath(os.path.expanduser(ns.checkpoint_dir))
    model_dir = resolve_model_dir(root, ns.model_variant)
    draft = cfgmod.TrainConfig(checkpoint_dir=root, model_variant=ns.model_variant)
    family = cfgmod.resolve_variant_defaults(draft, read_model_config(Path(model_dir))).base_model
    settings = sampling.settings_for(family, steps=ns.steps, shift=ns.shift, guidance=ns.guidance)
    device = resolve_device(ns.device)
    dtype = resolve_dtype(ns.precision, device)
    print(f"loading {model_dir} on {device} ...", flush=True)
    loaded = load_decoder(model_dir, device=device, dtype=dtype)
    decoder: Any = loaded.decoder
    if ns.adapter:
        decoder = gen.load_adapter(decoder, ns.adapter)
        decoder.to(device)
    renderer = gen.Renderer.load(
        root,
        model_dir,
        decoder=decoder,
        null_condition_emb=loaded.null_condition_emb,
        settings=settings,
        device=device,
        dtype=dtype,
    )
    guidance = f", APG guidance {settings.guidance:g}" if settings.guided else ", no guidance"
    print(f"sampling: {settings.steps} steps, shift {settings.shift:g}{guidance}", flush=True)
    for prompt, out in zip(prompts, _outputs(ns, len(prompts)), strict=True):
        if ns.compare:
            base = renderer.render(prompt, scale=0.0)
            base.extra = {"model": ns.model_variant, "adapter": ""}
            print(f"wrote {gen.write_rendered(base, os.path.splitext(out)[0] + '_base.flac')}", flush=True)
        done = renderer.render(prompt, scale=ns.adapter_scale if ns.adapter else 1.0)
        done.extra = {"model": ns.model_variant, "adapter": os.path.abspath(ns.adapter) if ns.adapter else ""}
        if not ns.adapter:
            done.adapter_scale = 0.0
        print(f"wrote {gen.write_rendered(done, out)} ({done.seconds:.1f} s of audio in {done.wall_s:.1f} s)", flush=True)
    return 0
