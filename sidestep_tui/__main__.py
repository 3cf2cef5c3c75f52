"""``sidestep``: the TUI, or the headless command line.

- ``sidestep``                 the TUI
- ``sidestep demo``            the TUI on the built-in demo (plain output with --plain or without a TTY)
- ``sidestep attach RUN_DIR``  the monitor on an existing run (--plain: follow it as text)
- anything else                ``engine.cli.main`` (train, presets, runs, preprocess, dataset, ...)

The headless paths never import textual or torch before they need to, so ``sidestep --help`` and
``sidestep train --help`` answer at once.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence


def _wants_help(args: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in args)


def _is_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _run(**kwargs: Any) -> int:
    """Build the app with the one factory and run it; a broken settings file is an error message."""
    from .app import make_app
    from .settings import SettingsError

    try:
        app = make_app(**kwargs)
    except SettingsError as exc:
        print(f"error: {exc} (fix or delete the file)", file=sys.stderr)
        return 2
    app.run()
    return int(app.return_code or 0)


def run_tui() -> int:
    return _run()


def run_attach(run_dir: str) -> int:
    from engine.runs import is_run_dir

    from .engine_client import AttachClient

    if not is_run_dir(run_dir):
        print(f"error: {run_dir} is not a run folder (no events.jsonl or run config.json)", file=sys.stderr)
        return 2
    return _run(client=AttachClient(os.path.abspath(run_dir)), initial_mode="monitor")


def run_demo(root: str | None, adapter: str, max_steps: int) -> int:
    return _run(initial_mode="monitor", demo={"root": root, "adapter": adapter, "max_steps": max_steps})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        return run_tui()
    command = args[0]
    if command == "attach" and "--plain" not in args and not _wants_help(args):
        rest = [a for a in args[1:] if not a.startswith("-")]
        if len(rest) != 1 or len(rest) != len(args) - 1:
            print("usage: sidestep attach RUN_DIR [--plain] [--stop]   (--stop needs --plain)", file=sys.stderr)
            return 2
        return run_attach(rest[0])
    if command == "demo" and "--plain" not in args and not _wants_help(args) and _is_tty():
        from engine.cli.main import build_parser

        ns = build_parser().parse_args(args)
        return run_demo(ns.root, ns.adapter, ns.max_steps)
    from engine.cli.main import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
