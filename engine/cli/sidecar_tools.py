"""``sidestep tags``, ``sidestep convert-sidecars`` and ``sidestep audio-analyze``: the handlers.

The edits are ``engine.sidecar_edit``'s (stdlib; the TUI uses the same functions); audio analysis is
``engine.audio.analysis`` (numpy).
Errors are one line on stderr and exit code 2; a dry run prints the diff and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from engine import sidecar_edit as edit


def _folder(ns: argparse.Namespace, command: str) -> str:
    folder = ns.directory or ns.input_compat
    if not folder:
        raise edit.EditError(f"no folder given; usage: sidestep {command} DATASET_DIR")
    return os.path.abspath(os.path.expanduser(folder))


def _error(command: str, message: object) -> int:
    print(f"sidestep {command}: error: {message}", file=sys.stderr)
    return 2


def _show(plan: edit.Plan, *, apply: bool, hint: str = "add --apply to write them") -> int:
    """Print a plan's diff and notes; write it when ``apply``."""
    text = plan.diff()
    if text:
        print(text, end="", flush=True)
    for note in plan.notes:
        print(f"note: {note}")
    if plan.errors:
        for err in plan.errors:
            print(f"refused: {err}", file=sys.stderr)
        print(f"nothing written: {len(plan.errors)} song(s) refused", file=sys.stderr)
        return 2
    if not apply:
        print(f"dry run: {plan.summary()}{'; ' + hint if plan.edits else ''}")
        return 0
    done = plan.apply()
    print(f"wrote {len(done)} file{'s' * (len(done) != 1)}" if done else "nothing to change")
    return 0


def run_tags_command(ns: argparse.Namespace) -> int:
    try:
        folder = _folder(ns, f"tags {ns.tags_action}")
        if ns.tags_action == "list":
            found = edit.list_tags(folder)
            if not found:
                print("no caption part is shared by more than one song")
            for t in found:
                print(f"{t.tag}\t{t.songs} of {t.total} captions")
            return 0
        if ns.tags_action == "add":
            plan = edit.plan_add(folder, ns.tag, ns.position)
        elif ns.tags_action == "remove":
            plan = edit.plan_remove(folder, ns.tag)
        else:
            plan = edit.plan_clear(folder)
        return _show(plan, apply=ns.apply)
    except (edit.EditError, OSError) as exc:
        return _error("tags", exc)


def run_convert_command(ns: argparse.Namespace) -> int:
    try:
        return _show(edit.plan_convert(_folder(ns, "convert-sidecars"), ns.to), apply=ns.apply)
    except (edit.EditError, OSError) as exc:
        return _error("convert-sidecars", exc)


def run_audio_analyze_command(ns: argparse.Namespace) -> int:
    from engine.audio import analysis  # numpy only
    from engine.sidecars import find_audio_files

    try:
        folder = _folder(ns, "audio-analyze")
        if not os.path.isdir(folder):
            raise edit.EditError(f"{folder}: no such folder")
    except edit.EditError as exc:
        return _error("audio-analyze", exc)
    songs = find_audio_files(folder)
    if not songs:
        return _error("audio-analyze", f"{folder}: no audio files in it")
    values: dict[str, dict[str, str]] = {}
    failed = 0
    for path in songs:
        rel = os.path.relpath(path, folder)
        try:
            est = analysis.analyze_file(path, max_seconds=ns.max_seconds)
        except analysis.AnalysisError as exc:
            failed += 1
            print(f"{rel}: not analysed: {exc}", file=sys.stderr, flush=True)
            continue
        values[path] = est.sidecar_fields(ns.min_confidence)
        unsure = sorted({"bpm", "keyscale", "timesignature"} - set(values[path]))
        if ns.json:
            print(json.dumps({"file": rel, **est.to_dict(), "written": sorted(values[path])}), flush=True)
        else:
            note = f"; not sure enough to write: {', '.join(unsure)}" if unsure else ""
            print(f"{rel}: {est.line()}{note}", flush=True)
    try:
        plan = edit.plan_fields(folder, values, ns.policy)
        if ns.dry_run:
            return _show(plan, apply=False, hint="run without --dry-run to write them") or (1 if failed else 0)
        for note in plan.notes:
            print(f"note: {note}")
        done = plan.apply()
    except (edit.EditError, OSError) as exc:
        return _error("audio-analyze", exc)
    print(f"wrote {len(done)} sidecar{'s' * (len(done) != 1)}" + (f"; {failed} file(s) not analysed" if failed else ""))
    return 1 if failed else 0
