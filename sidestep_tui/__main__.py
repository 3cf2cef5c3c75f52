"""``sidestep``: the TUI, or the headless command line. One parser (``engine.cli.parser``) reads
every command line; then:

- ``sidestep``                 the TUI
- ``sidestep demo``            the TUI on the built-in demo (plain output with --plain, --setup-only or without a TTY)
- ``sidestep attach RUN_DIR``  the monitor on an existing run (--plain: follow it as text)
- ``sidestep serve``           the TUI in a browser tab (textual-serve)
- anything else                a headless handler in ``engine.cli.main`` (train, presets, runs, preprocess, dataset, ...)

The parser is stdlib only and the headless paths never import textual or torch before they need to,
so ``sidestep --help`` and ``sidestep train --help`` answer at once; usage errors are argparse's (one
line, exit 2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any


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
    from engine.cli.parser import build_parser

    parser = build_parser()
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if ns.command is None:
        return run_tui()
    if ns.command == "attach" and not ns.plain:
        if ns.stop:
            parser.commands["attach"].error("--stop needs --plain (in the monitor, Stop is a key)")
        return run_attach(ns.run_dir)
    if ns.command == "serve":
        from .serve import run_serve

        return run_serve(ns.host, ns.port)
    if ns.command == "demo" and not (ns.plain or ns.setup_only) and _is_tty():
        if ns.from_tensors:
            parser.commands["demo"].error("--from-tensors needs --plain (the TUI demo preprocesses its songs)")
        return run_demo(ns.root, ns.adapter, ns.max_steps)
    from engine.cli.main import run_command

    return run_command(ns)


if __name__ == "__main__":
    sys.exit(main())
