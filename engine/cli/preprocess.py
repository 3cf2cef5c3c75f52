"""``sidestep preprocess``: flags from the ``PreprocessConfig`` schema, plain progress lines.

Importing this module is cheap (no torch); the pipeline is imported when the command runs, so
``--help`` stays fast. Ctrl-C once finishes the current file and stops (a re-run resumes); twice
aborts at once (files are written atomically, so that is safe too).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from engine.config import ConfigError
from engine import prepconfig as cfgmod


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``PreprocessConfig`` field (Side-Step's names and aliases). Values are left as
    strings and coerced by ``config.parse`` so the CLI, the TUI and JSON share one validation."""
    for f in cfgmod.FIELDS:
        meta = f.metadata
        help_text = meta["help"]
        if meta.get("choices"):
            help_text += f" ({'|'.join(meta['choices'])})"
        if f.default not in (None, ""):
            help_text += f" [default: {f.default}]"
        parser.add_argument(meta["flag"], *meta.get("aliases", ()), dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> cfgmod.PreprocessConfig:
    return cfgmod.parse({f.name: getattr(args, f.name) for f in cfgmod.FIELDS if hasattr(args, f.name)})


# ``sidestep train --preprocess``: the model, device and precision come from the training config, the
# tensors go to its --dataset-dir unless --tensor-output says otherwise (Side-Step's flags).
_FROM_TRAIN = ("checkpoint_dir", "model_variant", "device", "precision")
_TRAIN_PREFIX = "preprocess_"


def add_train_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preprocess``, ``--preprocess-only`` and the preprocessing flags that ``sidestep train``
    does not already have (long names only, so they cannot clash with training's short flags)."""
    group = parser.add_argument_group("preprocess audio first")
    group.add_argument("--preprocess", action="store_true", help="turn --audio-dir / --dataset-json into tensors, then train on them")
    group.add_argument("--preprocess-only", action="store_true", help="like --preprocess, but stop before training")
    for f in cfgmod.FIELDS:
        if f.name in _FROM_TRAIN:
            continue
        flag = "--tensor-output" if f.name == "output_dir" else f.metadata["flag"]
        help_text = f.metadata["help"] + (" [default: the training --dataset-dir]" if f.name == "output_dir" else "")
        group.add_argument(flag, dest=_TRAIN_PREFIX + f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)


def preprocess_config_from_train(args: argparse.Namespace, train_config: Any) -> cfgmod.PreprocessConfig | None:
    """The ``PreprocessConfig`` for ``sidestep train --preprocess[-only]``, or None without either flag.
    Raises ``ConfigError`` (every problem at once) like ``config.parse``."""
    if not (getattr(args, "preprocess", False) or getattr(args, "preprocess_only", False)):
        return None
    values: dict[str, Any] = {name: getattr(train_config, name) for name in _FROM_TRAIN}
    values["output_dir"] = train_config.dataset_dir
    for f in cfgmod.FIELDS:
        if hasattr(args, _TRAIN_PREFIX + f.name):
            values[f.name] = getattr(args, _TRAIN_PREFIX + f.name)
    return cfgmod.parse(values)


def format_progress(event: Any) -> str:
    """One plain line per ``PreprocessProgress``."""
    where = f"{event.stage} {event.index}/{event.total}" if event.stage in ("pass1", "pass2") else event.stage
    status = {"ok": "ok", "skipped": "skip", "failed": "FAILED"}.get(event.status, event.status)
    parts = [f"[{where}]", status]
    if event.file:
        parts.append(event.file)
    if event.message:
        parts.append(f"- {event.message}")
    return " ".join(parts) + f"  ({event.elapsed_s:.1f} s)"


def run_preprocess_command(args: argparse.Namespace) -> int:
    """Exit codes: 0 all files done, 1 some files failed (the rest are done), 2 bad input or a
    missing model, 130 stopped by Ctrl-C (run again to resume)."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"sidestep preprocess: error: {error}", file=sys.stderr)
        return 2

    from engine.models.loader import DeviceError
    from engine.audio.preprocess.encode import PreprocessModelError
    from engine.audio.preprocess.pipeline import run_preprocess

    stop = {"requested": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("stopping after the current file (Ctrl-C again to abort now)", file=sys.stderr, flush=True)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        summary = run_preprocess(config, lambda e: print(format_progress(e), flush=True), lambda: stop["requested"])
    except (PreprocessModelError, DeviceError, FileNotFoundError, ValueError) as exc:
        print(f"sidestep preprocess: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sidestep preprocess: aborted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    for warning in summary.warnings:
        print(f"warning: {warning}")
    if summary.stopped:
        return 130
    return 1 if summary.failed else 0
