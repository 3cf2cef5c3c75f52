"""Audio samples during training, through the one generation path (``engine.audio.generate``).

At step 0 the base model renders every prompt once (the A side: adapter switched off); then every
``sample_every`` optimizer steps the adapter renders the same prompts at the same seeds. A round runs
between optimizer steps, under ``no_grad``, with the decoder in eval mode (train mode restored after)
and in the training precision (the Fabric-wrapped module). It cannot disturb training: everything
runs inside ``torch.random.fork_rng`` (the samples' noise comes from their own generator anyway), so
a run with samples and one without, same seed, train bit-identical adapters.

Prompts: ``sample_prompts`` (a prompts file, ``engine.audio.generate.read_prompts_file``), else up to
three captions and lyrics from the dataset's own samples, with the trigger tag as preprocessing
applied it. They are encoded once, up front; the text and condition encoders are then dropped and only
the VAE stays. Files: ``run_dir/samples/step_<N>/<n>-<slug>.flac`` + ``.json`` (atomic), TensorBoard
``samples/<n>-<slug>`` (mono downmix: TensorBoard's audio summary is mono) and a ``SampleRendered`` event.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from engine import layout, protocol
from engine.audio import generate as gen
from engine.models import sampling

MAX_DATASET_PROMPTS = 3


def dataset_prompts(dataset: Any, *, duration: float, seed: int) -> list[gen.Prompt]:
    """Up to three distinct captions (+ lyrics, metas and trigger tag) from the dataset's samples."""
    from engine.audio.preprocess.samples import apply_tag

    position = "prepend"
    meta_path = os.path.join(dataset.root, "preprocess_meta.json")
    with contextlib.suppress(OSError, ValueError, AttributeError), open(meta_path, encoding="utf-8") as fh:
        position = str(json.load(fh).get("tag_position") or position)
    prompts: list[gen.Prompt] = []
    seen: set[tuple[str, str]] = set()
    for index in range(dataset.num_files):
        meta = dataset[index].get("metadata") or {}
        text = str((meta.get("genre") if meta.get("prompt_override") == "genre" else meta.get("caption")) or "").strip()
        caption = apply_tag(text, str(meta.get("custom_tag") or ""), position)
        lyrics = str(meta.get("lyrics") or "[Instrumental]")
        if not caption or (caption, lyrics) in seen:
            continue
        seen.add((caption, lyrics))
        bpm = meta.get("bpm")
        prompts.append(
            gen.Prompt(
                caption,
                lyrics=lyrics,
                duration=duration,
                seed=seed,
                bpm=int(bpm) if isinstance(bpm, (int, float)) and not isinstance(bpm, bool) else None,
                keyscale=str(meta.get("keyscale") or ""),
                timesignature=str(meta.get("timesignature") or ""),
            )
        )
        if len(prompts) == MAX_DATASET_PROMPTS:
            break
    return prompts


class TrainingSampler:
    def __init__(self, renderer: gen.Renderer, prompts: list[gen.Prompt], *, every: int, devices: list[torch.device]) -> None:
        self.renderer = renderer
        self.prompts = prompts
        self.every = every
        self._devices = devices
        self.slugs = cls_slugs(prompts)

    @classmethod
    def build(cls, config: Any, parts: Any, log: Callable[[str], None]) -> TrainingSampler | None:
        """None when sampling is off. Loads the VAE and encoders and encodes every prompt (RNG untouched)."""
        if not config.sample_every:
            return None
        devices = [parts.device] if parts.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if config.sample_prompts:
                prompts = gen.read_prompts_file(config.sample_prompts, duration=config.sample_duration, seed=config.sample_seed)
            else:
                prompts = dataset_prompts(parts.dataset, duration=config.sample_duration, seed=config.sample_seed)
            if not prompts:
                raise gen.GenerateError(
                    "no sample prompts: the dataset's samples carry no captions; give a prompts file with --sample-prompts"
                )
            settings = sampling.settings_for(config.base_model, steps=config.num_inference_steps, shift=config.shift)
            renderer = gen.Renderer.load(
                config.checkpoint_dir,
                parts.model_dir,
                decoder=parts.module,
                null_condition_emb=parts.null_condition_emb,
                settings=settings,
                device=parts.device,
                dtype=parts.compute_input_dtype,
                adapter_module=parts.adapter.module,
            )
            for prompt in prompts:
                renderer.condition(prompt)
            renderer.drop_encoders()
        guidance = f"APG guidance {settings.guidance:g}" if settings.guided else "no guidance"
        log(
            f"samples every {config.sample_every} steps ({settings.steps} sampling steps, shift {settings.shift:g}, {guidance}, "
            f"{config.sample_duration:g} s, seed {config.sample_seed}): "
            + "; ".join(f"{slug}: {p.caption!r}" for slug, p in zip(cls_slugs(prompts), prompts, strict=True))
        )
        return cls(renderer, prompts, every=config.sample_every, devices=devices)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    @contextlib.contextmanager
    def _isolated(self) -> Iterator[None]:
        module = self.renderer.adapter_module
        was_training = module.training
        module.eval()
        try:
            with torch.random.fork_rng(devices=self._devices), torch.no_grad():
                yield
        finally:
            module.train(was_training)

    def render_round(
        self,
        step: int,
        run_dir: str,
        *,
        emit: Callable[[Any], Any],
        set_phase: Callable[[str], None],
        tensorboard: Any,
        should_stop: Callable[[], bool],
    ) -> int:
        """Render every prompt for ``step`` (step 0: the base model); returns how many were written.
        Stops early (between prompts) when ``should_stop()`` says so."""
        scale = 0.0 if step == 0 else 1.0
        folder = layout.sample_dir(run_dir, step)
        written = 0
        with self._isolated():
            for index, (prompt, slug) in enumerate(zip(self.prompts, self.slugs, strict=True), start=1):
                if should_stop():
                    break
                set_phase(f"{index}/{len(self.prompts)}")
                rendered = self.renderer.render(prompt, scale=scale)
                rendered.extra = {"step": step, "model": "base" if step == 0 else "adapter"}
                path = gen.write_rendered(rendered, os.path.join(folder, slug + ".flac"))
                if tensorboard is not None:
                    mono = rendered.audio.clip(-1.0, 1.0).mean(axis=1)
                    tensorboard.add_audio(f"samples/{slug}", torch.from_numpy(mono)[None], step, sample_rate=gen.SAMPLE_RATE)
                emit(
                    protocol.SampleRendered(
                        step=step,
                        path=path,
                        prompt=prompt.caption,
                        seed=prompt.seed,
                        duration_s=rendered.seconds,
                        adapter_scale=scale,
                        wall_s=rendered.wall_s,
                        index=index,
                        total=len(self.prompts),
                    )
                )
                written += 1
        if tensorboard is not None:
            tensorboard.flush()
        return written

    def close(self) -> None:
        self.renderer.close()


def cls_slugs(prompts: list[gen.Prompt]) -> list[str]:
    return [f"{i}-{p.slug()}" for i, p in enumerate(prompts, start=1)]
