"""``sidestep analyze`` (PP++): measure, preview, confirm (on a terminal, unless ``--yes``), then write
``fisher_map.json`` atomically into the dataset folder. Ctrl+C or SIGTERM stops between batches and
writes nothing."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from engine import fishermap

PREVIEW_ROWS = 20


def preview_lines(fmap: fishermap.FisherMap, rows: int = PREVIEW_ROWS) -> list[str]:
    table = fishermap.table_rows(fmap)
    width = max([len("module"), *(len(r[0]) for r in table)])
    lines = [f"{'module':{width}}  {'score ± spread':>22}  {'eff. rank':>9}  {'rank':>4}"]
    for name, score, eff, rank in table[:rows]:
        lines.append(f"{name:{width}}  {score:>22}  {eff:>9}  {rank:>4}")
    if len(table) > rows:
        lines.append(f"... {len(table) - rows} more ranked modules")
    heat = fishermap.layer_heat(fmap)
    if heat:
        lines.append(f"layers 0-{len(heat) - 1}: [{fishermap.heat_strip(heat)}]")
    by_group: dict[str, list[int]] = {}
    for key, assigned in fmap.rank_pattern.items():
        by_group.setdefault(fishermap.group_of(key) or "?", []).append(assigned)
    lines.append("per group: " + ", ".join(f"{g} {len(r)} modules, mean rank {sum(r) / len(r):.0f}" for g, r in by_group.items()))
    lines.append(fmap.summary())
    return lines


def progress_line(p: Any) -> str:
    return (
        f"run {p.run}/{p.runs}  pass {p.pass_index}/{p.passes} {p.group:10}  {p.batches} batch(es)  "
        f"[{p.done}/{p.total}]  {p.elapsed_s:.1f} s"
    )


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag the analysis polls between batches (restored on exit)."""

    def __init__(self) -> None:
        self.stopped = False
        self._saved: list[tuple[int, Any]] = []

    def __enter__(self) -> _StopOnSignal:
        def handler(signum: int, _frame: Any) -> None:
            if not self.stopped:
                print("stopping after this batch; nothing will be written", file=sys.stderr, flush=True)
            self.stopped = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved.append((sig, signal.signal(sig, handler)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._saved:
            signal.signal(sig, previous)


def options_from_args(ns: argparse.Namespace) -> Any:
    from engine.analysis.fisher import AnalyzeOptions

    return AnalyzeOptions(
        checkpoint_dir=os.path.abspath(os.path.expanduser(ns.checkpoint_dir)),
        model_variant=ns.model_variant,
        dataset_dir=os.path.abspath(os.path.expanduser(ns.dataset_dir)),
        rank=ns.rank,
        rank_min=ns.rank_min,
        rank_max=ns.rank_max,
        timestep_focus=ns.timestep_focus,
        runs=ns.runs,
        batches=ns.batches,
        device=ns.device,
        precision=ns.precision,
        attention_backend=ns.attention_backend,
    )


def run_analyze_command(ns: argparse.Namespace, *, ask: Callable[[str], str] = input) -> int:
    from engine.analysis.fisher import Stopped, run_analysis

    options = options_from_args(ns)
    try:
        options.check()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = fishermap.path_in(options.dataset_dir)

    def note(level: str, message: str) -> None:
        print(message if level == "info" else f"{level}: {message}", flush=True)

    def progress(p: Any) -> None:
        if p.batch == p.batches:  # one line per pass
            print(progress_line(p), flush=True)

    with _StopOnSignal() as stop:
        try:
            data = run_analysis(options, progress=progress, should_stop=lambda: stop.stopped, note=note)
        except Stopped:
            print(f"stopped: {target} not written", file=sys.stderr)
            return 130
        except (ValueError, OSError) as exc:  # dataset, model, device problems: one line each
            print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
            return 1
    fmap = fishermap.FisherMap(path=target, data=data)
    for line in preview_lines(fmap):
        print(line)
    if not ns.yes and sys.stdin.isatty():
        verb = "replace" if os.path.isfile(target) else "write"
        try:
            answer = ask(f"{verb} {target}? [Y/n] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = "n"
        if answer not in ("", "y", "yes"):
            print("not written")
            return 1
    fishermap.write(options.dataset_dir, data)
    print(f"wrote {target}: LoRA/DoRA training on this dataset uses these ranks (--ignore-fisher-map to refuse them)")
    return 0
