"""The audio samples a run rendered while training, listed from its folder (stdlib only; the Runs screen).

Training writes ``run_dir/samples/step_<N>/<slug>.flac`` with a ``<slug>.json`` sidecar (``engine.layout``,
``engine.train.samples``); step 0 is the base model. Only names and sidecars are read, never the audio.
Also the local player that plays one: the first of ``PLAYERS`` found on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

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
class Sample:
    step: int  # 0: the base model
    slug: str
    path: str  # the .flac
    prompt: str = ""
    seed: int | None = None
    duration_s: float | None = None

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
            found.append(
                Sample(
                    step=step,
                    slug=name[: -len(".flac")],
                    path=path,
                    prompt=str(meta.get("prompt") or ""),
                    seed=None if seed is None else int(seed),
                    duration_s=None if duration is None else float(duration),
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
