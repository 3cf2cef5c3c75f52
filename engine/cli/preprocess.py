"""``sidestep preprocess`` and ``sidestep train --preprocess``: the config from the parsed flags
(``engine.cli.parser``), plain progress lines.

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

from engine import prepconfig as cfgmod
from engine.cli.parser import TRAIN_PREPROCESS_FROM_TRAIN, TRAIN_PREPROCESS_PREFIX
from engine.config import ConfigError


def config_from_args(args: argparse.Namespace) -> cfgmod.PreprocessConfig:
    return cfgmod.parse({f.name: getattr(args, f.name) for f in cfgmod.FIELDS if hasattr(args, f.name)})


def preprocess_config_from_train(args: argparse.Namespace, train_config: Any) -> cfgmod.PreprocessConfig | None:
    """The ``PreprocessConfig`` for ``sidestep train --preprocess[-only]``, or None without either flag.
    Raises ``ConfigError`` (every problem at once) like ``config.parse``."""
    if not (getattr(args, "preprocess", False) or getattr(args, "preprocess_only", False)):
        return None
    values: dict[str, Any] = {name: getattr(train_config, name) for name in TRAIN_PREPROCESS_FROM_TRAIN}
    values["output_dir"] = train_config.dataset_dir
    for f in cfgmod.FIELDS:
        if hasattr(args, TRAIN_PREPROCESS_PREFIX + f.name):
            values[f.name] = getattr(args, TRAIN_PREPROCESS_PREFIX + f.name)
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

    from engine.audio.preprocess.encode import PreprocessModelError
    from engine.audio.preprocess.pipeline import run_preprocess
    from engine.models.loader import DeviceError

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
