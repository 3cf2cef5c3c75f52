"""The built-in demo: a checkpoint folder and a preprocessed dataset that look exactly like the real ones.

``write_demo_checkpoint`` writes ``<root>/sidestep-demo-base/`` (config.json with ``auto_map``, the
standalone remote-code files, model.safetensors) and ``<root>/silence_latent.pt``, so the demo loads
through the same ``AutoModel.from_pretrained(trust_remote_code=True)`` path as ACE-Step 1.5.
``write_demo_dataset`` writes per-sample ``.pt`` dicts in the format of ACE_STEP.md §4.1 plus an
upstream-style ``manifest.json``, the ``dataset.json`` (§5.8) the samples would come from and a
``preprocess_meta.json`` naming the model they are for, as a real preprocessed folder has. Each
sample's latents mix a few fixed patterns (a level plus a sinusoid per channel) with weights its
condition encodes; the tiny base is briefly pre-trained on other patterns, so an adapter's loss
visibly falls within a few hundred steps. Every file is written atomically; ``setup_demo`` reuses
what is already there and valid.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine import fsutil, ptinspect, sidecars

DEMO_FOLDER = "sidestep-demo-base"  # "base" in the name: variant detection says base
DEMO_VERSION = 5  # bump when the modeling file, sizes or data recipe change; forces a rewrite
MODELING_FILE = "acestep_demo_modeling.py"
CONFIG_FILE = "configuration_acestep_demo.py"
CODE_FILES = (CONFIG_FILE, MODELING_FILE)  # the remote code copied into the folder
LATENT_FPS = 25
SILENCE_FRAMES = 750  # 30 s: longer than any demo clip
DEMO_DURATIONS = (3, 4, 5, 6, 8)  # seconds; varied so batches need bucketing
DEFAULT_PRETRAIN_STEPS = 60  # at PRETRAIN_LR: held-out flow loss 3.78 -> 1.24 in ~4 s (200 steps at 1e-3: 1.12 in 16 s)
PRETRAIN_LR = 3e-3
PRETRAIN_SECONDS = 3  # one clip length: 3.6 s for the 60 steps (5.6 s over the dataset's lengths), held-out loss 1.25
PRETRAIN_SEED_OFFSET = 1000  # the base learns other patterns than the demo dataset's
EPOCH = "1970-01-01T00:00:00"  # no wall-clock dates in the demo's files: a rewrite only changes what changed
SIZES: dict[str, dict[str, Any]] = {
    # Trains in seconds on a CPU; same tree and interfaces as the real decoder.
    "tiny": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        sliding_window=16,
        num_lyric_encoder_hidden_layers=1,
        num_timbre_encoder_hidden_layers=1,
    ),
    # The shipped 2B values (the config class defaults): honest memory and speed figures.
    "full": {},
}
_STATE_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}  # tiny weights per (size, seed, steps), this process
_AUTO_MAP = {
    "AutoConfig": "configuration_acestep_demo.AceStepDemoConfig",
    "AutoModel": "acestep_demo_modeling.AceStepConditionGenerationModel",
}


def _code_source(name: str) -> Path:
    return Path(__file__).with_name(name)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with fsutil.atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


@contextlib.contextmanager
def _root_lock(root: Path) -> Iterator[None]:
    """One writer per demo root (the UI and an engine may both set it up); no-op where fcntl is absent."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(root / ".sidestep-demo.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def demo_config(size: str = "tiny") -> Any:
    """The ``AceStepDemoConfig`` for a size ("tiny" or "full"), with ``auto_map`` filled in."""
    from engine.models.demo.configuration_acestep_demo import AceStepDemoConfig

    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; use one of {', '.join(SIZES)}")
    config = AceStepDemoConfig(**SIZES[size])
    config.auto_map = dict(_AUTO_MAP)
    config.architectures = ["AceStepConditionGenerationModel"]
    return config


def _checkpoint_is_valid(model_dir: Path, size: str) -> bool:
    try:
        config = json.loads((model_dir / "config.json").read_text())
        same_code = all((model_dir / n).read_bytes() == _code_source(n).read_bytes() for n in CODE_FILES)
        weights = model_dir / "model.safetensors"
        return (
            config.get("sidestep_demo_version") == DEMO_VERSION
            and config.get("sidestep_demo_size") == size
            and same_code
            and weights.is_file()
            and weights.stat().st_size > 0
            and (model_dir.parent / "silence_latent.pt").is_file()
        )
    except (OSError, ValueError):
        return False


def write_demo_checkpoint(
    root: str | os.PathLike, *, size: str = "tiny", seed: int = 0, pretrain_steps: int | None = None
) -> str:
    """Write ``<root>/sidestep-demo-base/`` and ``<root>/silence_latent.pt``; return the model folder.

    An existing valid folder of the same size and version is reused untouched. The tiny model is
    briefly pre-trained (``pretrain_steps``, default 60, about 4 s on a CPU) on pattern data of
    its own, so like a real base it already denoises and an adapter has something to build on; the
    demo dataset uses other patterns, so the adapter's loss visibly falls. The full size holds the
    real 2B decoder (~1.58 B params), untrained, stored in bf16 like the shipped checkpoints.
    """
    from safetensors.torch import save_file

    from engine.models.demo.acestep_demo_modeling import AceStepConditionGenerationModel

    root = Path(root)
    model_dir = root / DEMO_FOLDER
    if _checkpoint_is_valid(model_dir, size):
        return str(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    config = demo_config(size)
    config.sidestep_demo_version = DEMO_VERSION
    config.sidestep_demo_size = size
    store_dtype = torch.float32 if size == "tiny" else torch.bfloat16
    config._attn_implementation = "sdpa"
    steps = (DEFAULT_PRETRAIN_STEPS if size == "tiny" else 0) if pretrain_steps is None else pretrain_steps

    generator = torch.Generator().manual_seed(seed + 1)
    silence = 0.05 * torch.randn(1, config.audio_acoustic_hidden_dim, SILENCE_FRAMES, generator=generator)
    key = (size, seed, steps)
    state = _STATE_CACHE.get(key)
    if state is None:
        with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the caller's RNG
            torch.manual_seed(seed)
            previous = torch.get_default_dtype()
            torch.set_default_dtype(store_dtype)  # build the full size straight in bf16 (half the RAM)
            try:
                model = AceStepConditionGenerationModel(config)
            finally:
                torch.set_default_dtype(previous)
            if steps:
                _pretrain(model, steps, silence[0].transpose(0, 1), seed=seed + PRETRAIN_SEED_OFFSET)
        state = {k: v.detach().to(store_dtype).contiguous() for k, v in model.state_dict().items()}
        del model
        if size == "tiny":  # a few MB; saves the pre-training when tests write many demo folders
            _STATE_CACHE[key] = state

    with fsutil.atomic_dir(model_dir) as staging:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        for name in CODE_FILES:
            shutil.copyfile(_code_source(name), staging / name)
        config_dict = config.to_dict()
        config_dict["dtype"] = "float32" if store_dtype == torch.float32 else "bfloat16"
        config_dict["sidestep_demo_pretrain_steps"] = steps
        config_dict.pop("_attn_implementation_autoset", None)
        (staging / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
        _atomic_torch_save(silence, root / "silence_latent.pt")
    return str(model_dir)


class CheckpointJob:
    """The demo model being written by ``start_demo_checkpoint``. ``wait()`` returns the model folder
    once it is there, or raises ``RuntimeError`` with the one-line reason; ``cancel()`` stops a writer
    that is no longer wanted (the folder is written atomically, so nothing half-written is left)."""

    def __init__(self, model_dir: Path, pid: int | None = None, read_fd: int | None = None) -> None:
        self.model_dir = model_dir
        self._pid = pid
        self._read_fd = read_fd

    def wait(self) -> str:
        if self._pid is not None and self._read_fd is not None:
            with os.fdopen(self._read_fd, "rb") as pipe:
                message = pipe.read().decode("utf-8", "replace").strip()
            _, status = os.waitpid(self._pid, 0)
            self._pid = self._read_fd = None
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                reason = message or (f"killed by signal {-code}" if code < 0 else f"exit status {code}")
                raise RuntimeError(f"writing the demo model {self.model_dir} failed: {reason}")
        return str(self.model_dir)

    def cancel(self) -> None:
        if self._pid is not None and self._read_fd is not None:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGTERM)
            os.waitpid(self._pid, 0)
            os.close(self._read_fd)
            self._pid = self._read_fd = None


def start_demo_checkpoint(root: str | os.PathLike, *, size: str = "tiny", seed: int = 0) -> CheckpointJob:
    """``write_demo_checkpoint(<root>/checkpoints)`` under the root's lock, in a forked child when the
    model must be built (Linux): its pre-training runs on one thread while the caller does other work
    (the demo's audio side and first preprocessing pass), and ``wait()`` joins it. The child writes the
    same bytes as a call here would. Elsewhere, or when the folder is already valid, it runs here now."""
    root = Path(root)
    checkpoint_root = root / "checkpoints"
    model_dir = checkpoint_root / DEMO_FOLDER
    steps = DEFAULT_PRETRAIN_STEPS if size == "tiny" else 0
    if _checkpoint_is_valid(model_dir, size) or (size, seed, steps) in _STATE_CACHE or not sys.platform.startswith("linux"):
        with _root_lock(root):
            return CheckpointJob(Path(write_demo_checkpoint(checkpoint_root, size=size, seed=seed)))
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: write, report a failure in one line, leave without the parent's exit handlers
        status = 1
        try:
            os.close(read_fd)
            torch.set_num_threads(1)  # the caller keeps the other core; a model this small builds fastest on one
            with _root_lock(root):
                write_demo_checkpoint(checkpoint_root, size=size, seed=seed)
            status = 0
        except BaseException as exc:  # everything must reach the parent as one line
            with contextlib.suppress(OSError):
                os.write(write_fd, f"{type(exc).__name__}: {sidecars.error_line(exc)}".encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    return CheckpointJob(model_dir, pid, read_fd)


def _pretrain(model: Any, steps: int, silence: torch.Tensor, *, seed: int, batch: int = 4) -> None:
    """Flow-matching pre-training of decoder + null embedding on pattern data (own seed), with CFG dropout."""
    decoder = model.decoder
    hidden = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    patterns = _patterns(64, generator)
    conditions = torch.randn(N_PATTERNS, 48, hidden, generator=generator)
    params = [*decoder.parameters(), model.null_condition_emb]
    optimizer = torch.optim.AdamW(params, lr=PRETRAIN_LR, weight_decay=0.0)
    decoder.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread (and never oversubscribes)
    try:
        _pretrain_steps(model, optimizer, steps, silence, patterns, conditions, generator, batch)
    finally:
        torch.set_num_threads(threads)
    decoder.eval()


def _pretrain_steps(
    model: Any,
    optimizer: torch.optim.Optimizer,
    steps: int,
    silence: torch.Tensor,
    patterns: dict[str, torch.Tensor],
    conditions: torch.Tensor,
    generator: torch.Generator,
    batch: int,
) -> None:
    decoder = model.decoder
    frames = PRETRAIN_SECONDS * LATENT_FPS
    for _ in range(steps):
        weights = torch.softmax(3.0 * torch.randn(batch, N_PATTERNS, generator=generator), dim=-1)
        x0 = torch.stack([_sample_latents(w, frames, patterns) for w in weights])
        cond = torch.einsum("bk,klh->blh", weights, conditions)
        drop = torch.rand(batch, generator=generator) < 0.15
        cond = torch.where(drop[:, None, None], model.null_condition_emb.expand_as(cond), cond)
        context = torch.cat([silence[:frames], torch.ones(frames, 64)], dim=-1).expand(batch, -1, -1)
        t = torch.sigmoid(torch.randn(batch, generator=generator) - 0.4)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * x0
        pred = decoder(
            hidden_states=x_t,
            timestep=t,
            timestep_r=t,
            attention_mask=None,
            encoder_hidden_states=cond,
            encoder_attention_mask=None,
            context_latents=context,
        )[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


# --------------------------------------------------------------------------- dataset

N_PATTERNS = 4


def _patterns(channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per pattern and channel: a level plus a sinusoid (frequency in Hz, phase, amplitude)."""
    return {
        "level": 2.0 * torch.randn(N_PATTERNS, channels, generator=generator),
        "freq": 0.2 + 2.0 * torch.rand(N_PATTERNS, channels, generator=generator),
        "phase": 2 * math.pi * torch.rand(N_PATTERNS, channels, generator=generator),
        "amp": 0.3 + 0.5 * torch.rand(N_PATTERNS, channels, generator=generator),
    }


def _sample_latents(weights: torch.Tensor, frames: int, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The condition decides the mix: the levels are quick to learn (loss falls early), the waves
    need the position (RoPE, context) and come later."""
    t = torch.arange(frames, dtype=torch.float32)[:, None, None] / LATENT_FPS  # [T, 1, 1]
    waves = p["level"][None] + p["amp"][None] * torch.sin(2 * math.pi * p["freq"][None] * t + p["phase"][None])
    return torch.einsum("k,tkc->tc", weights, waves)


def write_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    n_samples: int = 16,
    seed: int = 0,
    hidden_size: int | None = None,
    silence_latent: str | os.PathLike | None = None,
    encoder_length: int = 48,
    durations: tuple[int, ...] = DEMO_DURATIONS,
    model_variant: str = DEMO_FOLDER,
) -> str:
    """Write ``n_samples`` training tensors (ACE_STEP.md §4.1) and ``manifest.json`` to ``out_dir``,
    with the two files a real dataset folder has beside them: ``dataset.json`` (§5.8: one sample per
    tensor, with the caption, genre, bpm, key ... the tensor's metadata holds; the songs are synthetic,
    so ``audio_path`` is empty) and ``preprocess_meta.json`` (§4.2: made for ``model_variant``).

    ``hidden_size`` must match the model the data is for (default: the tiny demo's). The silence
    latent, when given, fills the context half of ``context_latents`` like real preprocessing.
    """
    hidden = hidden_size or SIZES["tiny"]["hidden_size"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    patterns = _patterns(64, generator)
    # One fixed condition sequence per pattern; a sample's condition mixes them with its weights.
    pattern_conditions = torch.randn(N_PATTERNS, encoder_length, hidden, generator=generator)
    if silence_latent is not None:
        silence = torch.load(silence_latent, weights_only=True)[0].transpose(0, 1).float()  # [T_s, 64]
    else:
        silence = torch.zeros(SILENCE_FRAMES, 64)

    samples, info, entries = [], [], []
    for index in range(n_samples):
        duration = durations[index % len(durations)]
        frames = duration * LATENT_FPS
        weights = torch.softmax(3.0 * torch.randn(N_PATTERNS, generator=generator), dim=0)
        valid = int(encoder_length * (0.6 + 0.4 * torch.rand(1, generator=generator).item()))
        states = torch.einsum("k,klh->lh", weights, pattern_conditions)
        states[valid:] = 0.0  # packed: valid tokens first, padding after
        mask = torch.arange(encoder_length) < valid
        src = (
            silence[:frames]
            if silence.shape[0] >= frames
            else torch.cat([silence, silence[:1].expand(frames - silence.shape[0], -1)])
        )
        context = torch.cat([src, torch.ones(frames, 64)], dim=-1)
        latents = _sample_latents(weights, frames, patterns)
        dominant = int(weights.argmax())
        name = f"demo_{index:03d}.pt"
        metadata = {
            "audio_path": "",
            "filename": f"demo_{index:03d}.wav",
            "caption": f"demo pattern {dominant}",
            "lyrics": "[Instrumental]",
            "duration": duration,
            "bpm": 120,
            "keyscale": "C major",
            "timesignature": "4",
            "genre": f"pattern-{dominant}",
            "is_instrumental": True,
            "custom_tag": "",
            "prompt_override": None,
            "repeat": 1,
        }
        record = {
            "target_latents": latents.to(torch.bfloat16),
            "attention_mask": torch.ones(frames, dtype=torch.bfloat16),
            "encoder_hidden_states": states.to(torch.bfloat16),
            "encoder_attention_mask": mask,
            "context_latents": context.to(torch.bfloat16),
            "metadata": metadata,
        }
        _atomic_torch_save(record, out / name)
        entries.append(_dataset_entry(out, metadata))
        samples.append(name)
        info.append(
            {
                "path": name,
                "duration": duration,
                "frames": frames,
                "encoder_length": encoder_length,
                "encoder_valid": valid,
                "shapes": {k: list(v.shape) for k, v in record.items() if isinstance(v, torch.Tensor)},
            }
        )

    manifest = {
        "metadata": {
            "name": "sidestep-demo",
            "custom_tag": "",
            "tag_position": "prepend",
            "created_at": EPOCH,
            "num_samples": n_samples,
            "all_instrumental": True,
            "genre_ratio": 0,
        },
        "samples": samples,
        "num_samples": n_samples,
        # Not upstream: what stdlib-only readers (the UI) need without opening a tensor.
        "sample_info": info,
        "hidden_size": hidden,
        "sidestep_demo_version": DEMO_VERSION,
        "seed": seed,
    }
    fsutil.write_json(out / "manifest.json", manifest)
    document = sidecars.dataset_document(entries, name="sidestep-demo", tag="", tag_position="prepend", genre_ratio=0)
    document["metadata"]["created_at"] = EPOCH
    fsutil.write_json(out / sidecars.DATASET_FILE, document)
    fsutil.write_json(
        out / "preprocess_meta.json",
        {
            "schema_version": 1,
            "created_at": EPOCH,
            "updated_at": EPOCH,
            "source": "sidestep demo: synthetic tensors (no audio)",
            # Generated states: no prompt was encoded, so there is no conditioning format to warn about
            # and no audio to preprocess again.
            "tensor_format": ptinspect.TENSOR_FORMAT,
            "conditioning": ptinspect.SYNTHETIC_CONDITIONING,
            "dataset_json": str((out / sidecars.DATASET_FILE).resolve()),
            "model_variant": model_variant,
            "total": n_samples,
            "processed": n_samples,
            "failed": 0,
        },
    )
    return str(out)


def _dataset_entry(out: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The ``dataset.json`` sample (§5.8) of one demo tensor, from the metadata the tensor carries."""
    fields = {k: str(metadata[k]) for k in ("caption", "genre", "bpm", "keyscale", "timesignature", "lyrics")}
    entry = sidecars.make_sample(str(out / metadata["filename"]), sidecars.Sidecar("key_value", fields), metadata["duration"])
    return {**entry, "audio_path": "", "is_instrumental": metadata["is_instrumental"]}


def _dataset_is_valid(dataset_dir: Path, n_samples: int, hidden: int) -> bool:
    try:
        manifest = json.loads((dataset_dir / "manifest.json").read_text())
        return (
            manifest.get("sidestep_demo_version") == DEMO_VERSION
            and manifest.get("hidden_size") == hidden
            and manifest.get("num_samples") == n_samples
            and all((dataset_dir / name).is_file() for name in manifest["samples"])
            and all((dataset_dir / name).is_file() for name in ("dataset.json", "preprocess_meta.json"))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def setup_demo(root: str | os.PathLike, *, size: str = "tiny", n_samples: int = 16, seed: int = 0) -> dict[str, str]:
    """Make ``<root>/checkpoints/`` (demo model) and ``<root>/dataset/`` (demo tensors), reusing valid
    existing files (safe to call from several processes at once). Returns ``checkpoint_dir`` (the
    checkpoint root), ``model_variant`` (the folder name) and ``dataset_dir``: the TrainConfig fields.
    The full size gets the real encoder length (769 tokens, ACE_STEP.md §4.1) for honest memory figures."""
    root = Path(root)
    checkpoint_root = root / "checkpoints"
    dataset_dir = root / "dataset"
    hidden = demo_config(size).hidden_size
    with _root_lock(root):
        write_demo_checkpoint(checkpoint_root, size=size, seed=seed)
        if not _dataset_is_valid(dataset_dir, n_samples, hidden):
            write_demo_dataset(
                dataset_dir,
                n_samples=n_samples,
                seed=seed,
                hidden_size=hidden,
                silence_latent=checkpoint_root / "silence_latent.pt",
                encoder_length=48 if size == "tiny" else 769,
            )
    return {"checkpoint_dir": str(checkpoint_root), "model_variant": DEMO_FOLDER, "dataset_dir": str(dataset_dir)}
