"""The audio samples a run rendered while training, listed from its folder (stdlib only; the Runs screen).

Training writes ``run_dir/samples/step_<N>/<slug>.flac`` with a ``<slug>.json`` sidecar (``engine.layout``,
``engine.train.samples``); step 0 is the base model. Only names and sidecars are read, never the audio: the
sidecar carries the sample's loudness and a small mel spectrogram (``engine.audio.spectrum`` computes them
where the audio is rendered; samples of older versions have neither).

Also the local player that plays one (the first of ``PLAYERS`` found on PATH, and whether this machine has
an audio output it can use at all), and picking a sample's checkpoint by ear: ``choose_checkpoint`` copies
the adapter saved at that sample's step to ``run_dir/chosen/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from engine import fsutil, layout
from engine.layout import SAMPLES_DIR

_STEP_RE = re.compile(r"^step_(\d+)$")

# The players tried, in order, with the arguments that play a file once without a window.
PLAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ffplay", ("-nodisp", "-autoexit", "-loglevel", "quiet")),
    ("paplay", ()),
    ("aplay", ()),
    ("afplay", ()),
)


@dataclass(frozen=True, slots=True)
class Spectrogram:
    """A sidecar's ``spectrogram`` (``engine.audio.spectrum``): whole dB per mel band (low to high) x column."""

    db: tuple[tuple[int, ...], ...]
    band_hz: tuple[int, ...]
    hop_s: float
    floor_db: int

    @property
    def columns(self) -> int:
        return len(self.db[0]) if self.db else 0


def _spectrogram(value: object) -> Spectrogram | None:
    """The sidecar's spectrogram, or None when it has none (an older version) or it is malformed."""
    if not isinstance(value, dict):
        return None
    db, band_hz = value.get("db"), value.get("band_hz")
    if not isinstance(db, list) or not db or not isinstance(band_hz, list) or len(band_hz) != len(db):
        return None
    rows: list[tuple[int, ...]] = []
    for row in db:
        if not isinstance(row, list) or not row or len(row) != len(db[0]):
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in row):
            return None
        rows.append(tuple(row))
    hop, floor = _number(value.get("hop_s"), float), _number(value.get("floor_db"), int)
    if hop is None or floor is None or not all(isinstance(f, (int, float)) for f in band_hz):
        return None
    return Spectrogram(tuple(rows), tuple(int(f) for f in band_hz), float(hop), int(floor))


@dataclass(frozen=True, slots=True)
class Sample:
    step: int  # 0: the base model
    slug: str
    path: str  # the .flac
    prompt: str = ""
    seed: int | None = None
    duration_s: float | None = None
    lufs: float | None = None  # integrated loudness; None for older samples, silence or audio under 0.4 s
    spectrogram: Spectrogram | None = None  # None: rendered by an older version (or an unreadable sidecar)

    @property
    def is_base(self) -> bool:
        return self.step == 0


def _sidecar(flac_path: str) -> dict[str, object]:
    try:
        with open(os.path.splitext(flac_path)[0] + ".json", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: object, kind: type[int] | type[float]) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def scan_samples(run_dir: str) -> list[Sample]:
    """Every ``.flac`` under ``run_dir/samples/step_<N>/``: the base model's (step 0) first, then the newest
    step first; within a step by slug. A run without samples (or an unreadable folder) gives ``[]``."""
    root = os.path.join(run_dir, SAMPLES_DIR)
    try:
        steps = [(int(match.group(1)), entry.path) for entry in os.scandir(root) if (match := _STEP_RE.match(entry.name))]
    except OSError:
        return []
    found: list[Sample] = []
    for step, folder in steps:
        try:
            names = sorted(name for name in os.listdir(folder) if name.endswith(".flac"))
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            meta = _sidecar(path)
            seed = _number(meta.get("seed"), int)
            duration = _number(meta.get("duration_s"), float)
            lufs = _number(meta.get("lufs"), float)
            found.append(
                Sample(
                    step=step,
                    slug=name[: -len(".flac")],
                    path=path,
                    prompt=str(meta.get("prompt") or ""),
                    seed=None if seed is None else int(seed),
                    duration_s=None if duration is None else float(duration),
                    lufs=None if lufs is None else float(lufs),
                    spectrogram=_spectrogram(meta.get("spectrogram")),
                )
            )
    found.sort(key=lambda s: (not s.is_base, -s.step, s.slug))
    return found


def find_player(path: str | None = None) -> list[str] | None:
    """The command (without the file) of the first player on PATH (``path`` overrides PATH), or None."""
    for name, args in PLAYERS:
        if (exe := shutil.which(name, path=path)) is not None:
            return [exe, *args]
    return None


def player_names() -> str:
    return ", ".join(name for name, _ in PLAYERS)


# --------------------------------------------------------------------------- audio output

DEV_SND = "/dev/snd"  # ALSA's devices; a playback PCM is named pcmC<card>D<device>p


def _alsa_playback(dev_snd: str) -> bool:
    try:
        return any(name.startswith("pcmC") and name.endswith("p") for name in os.listdir(dev_snd))
    except OSError:
        return False


def _sound_server(env: Mapping[str, str]) -> bool:
    """A PulseAudio server (or PipeWire, which serves the same socket) this user can reach."""
    if env.get("PULSE_SERVER"):
        return True
    runtime = env.get("XDG_RUNTIME_DIR") or (f"/run/user/{os.getuid()}" if hasattr(os, "getuid") else "")
    return bool(runtime) and any(os.path.exists(os.path.join(runtime, name)) for name in ("pulse/native", "pipewire-0"))


def audio_output_problem(command: list[str], env: Mapping[str, str] | None = None, dev_snd: str | None = None) -> str | None:
    """Why ``command``'s player cannot make a sound on this machine, or None when it has an output to use.

    The check is simple and errs towards trying: macOS always has one (afplay); paplay needs a PulseAudio
    or PipeWire server (``PULSE_SERVER``, or a socket in ``XDG_RUNTIME_DIR``); aplay an ALSA playback device
    under /dev/snd (or such a server behind ALSA's default device); ffplay either, unless
    ``SDL_AUDIODRIVER`` names one that makes no sound (dummy, disk)."""
    env = os.environ if env is None else env
    name = os.path.basename(command[0])
    if sys.platform == "darwin":
        return None
    if name == "ffplay" and env.get("SDL_AUDIODRIVER", "").lower() in ("dummy", "disk"):
        return f"ffplay is set to SDL_AUDIODRIVER={env['SDL_AUDIODRIVER']}, which plays no sound"
    alsa = _alsa_playback(DEV_SND if dev_snd is None else dev_snd)
    server = _sound_server(env)
    if name == "paplay" and not server:
        return "paplay found but no PulseAudio or PipeWire server (no PULSE_SERVER, no socket in XDG_RUNTIME_DIR)"
    if not (alsa or server):
        return f"{name} found but this machine has no audio output (no playback device in /dev/snd, no PulseAudio or PipeWire server)"
    return None


# --------------------------------------------------------------------------- pick by ear

CHOSEN_INFO_FILE = "chosen.json"  # in chosen/: which checkpoint and which sample it was picked from
_SKIPPED_IN_CHOSEN = (layout.TRAINER_STATE_FILE,)  # the resumable state is not part of the adapter


def checkpoints_by_step(run_dir: str) -> dict[int, str]:
    """Every saved adapter folder of the run by the optimizer step it holds: the periodic (resumable)
    checkpoints, then final/ and best/ (from their ``checkpoint.json``) where no checkpoint holds that step."""
    found = {step: path for step, path in layout.list_checkpoints(run_dir) if step >= 0}
    for folder in (layout.final_dir(run_dir), layout.best_dir(run_dir)):
        step = (layout.read_checkpoint_meta(folder) or {}).get("step")
        if isinstance(step, int) and not isinstance(step, bool) and step not in found and os.path.isdir(folder):
            found[step] = folder
    return found


class ChooseError(ValueError):
    """A sample whose checkpoint cannot be chosen; the message says why and what there is instead."""


def checkpoint_for_sample(run_dir: str, sample: Sample) -> str:
    """The adapter folder saved at the sample's step, or ``ChooseError`` naming the steps that have one."""
    if sample.is_base:
        raise ChooseError("the base model's sample (step 0) has no adapter to keep; pick a sample of a later step")
    found = checkpoints_by_step(run_dir)
    if sample.step in found:
        return found[sample.step]
    saved = ", ".join(str(step) for step in sorted(found)) or "none"
    raise ChooseError(f"no checkpoint was saved at step {sample.step}; steps with one: {saved}")


def chosen_info(run_dir: str) -> dict[str, object] | None:
    """``chosen/chosen.json`` (step, source, sample, comfyui) when the run has a chosen adapter, else None."""
    try:
        with open(os.path.join(layout.chosen_dir(run_dir), CHOSEN_INFO_FILE), encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def choose_checkpoint(run_dir: str, sample: Sample) -> dict[str, object]:
    """Copy the adapter saved at ``sample``'s step (its files, the ComfyUI file among them; not the
    training state) to ``run_dir/chosen/``, all or nothing: built in a temp folder beside it and renamed
    in (``fsutil.atomic_dir``), an earlier choice replaced whole. Returns what ``chosen.json`` records."""
    source = checkpoint_for_sample(run_dir, sample)
    comfyui = ""
    with fsutil.atomic_dir(layout.chosen_dir(run_dir)) as tmp:
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if name.startswith(".") or name in _SKIPPED_IN_CHOSEN:
                continue
            if os.path.isdir(path):
                shutil.copytree(path, tmp / name)
                continue
            shutil.copy2(path, tmp / name)
            if name.endswith("_comfyui.safetensors"):
                comfyui = name
        info: dict[str, object] = {
            "step": sample.step,
            "source": os.path.relpath(source, run_dir),
            "sample": os.path.relpath(sample.path, run_dir),
            "comfyui": comfyui,
        }
        (tmp / CHOSEN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
