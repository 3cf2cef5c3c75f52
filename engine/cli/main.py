"""Headless command line: ``sidestep train|demo|presets|runs|attach --plain|preprocess|dataset``.

Nothing heavy is imported at module level: ``sidestep --help`` and ``sidestep train --help`` build
their parsers from the stdlib schema and answer in well under a second. ``train`` flags are generated
from ``engine.config`` (never a hand-kept copy); precedence is defaults < ``--preset`` < ``--config``
file < flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from engine import config as cfgmod

DEMO_ROOT_ENV = "SIDESTEP_DEMO_ROOT"


def default_demo_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(DEMO_ROOT_ENV) or os.path.join(base, "sidestep", "demo")


# --------------------------------------------------------------------------- parser


def add_schema_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per schema field, grouped like the TUI form. Defaults are SUPPRESSed so only the flags
    a user typed override a preset or a config file."""
    groups = {name: parser.add_argument_group(name) for name in cfgmod.GROUPS}
    for f in cfgmod.FIELDS:
        meta = f.metadata
        names = [meta["flag"], *meta.get("aliases", ())]
        default = f.default
        shown = "auto" if default is None else (" ".join(default) if isinstance(default, tuple) else default)
        help_text = f"{meta['help']} (default: {shown})".replace("%", "%%")
        group = groups[meta["group"]]
        base, _ = cfgmod._type_of(f)
        if base == "bool":
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif base.startswith("tuple"):
            group.add_argument(*names, dest=f.name, nargs="*", default=argparse.SUPPRESS, metavar="NAME", help=help_text)
        else:
            metavar = "{" + ",".join(meta["choices"]) + "}" if meta.get("choices") else f.name.upper()
            group.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidestep", description="Train LoRA/LoKR adapters for ACE-Step 1.5. Without a command: the TUI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train headless (plain text or --json events)")
    train.add_argument("--config", dest="config_file", metavar="FILE", help="a JSON config (from a run's config.json or the TUI's review panel)")
    train.add_argument("--preset", metavar="NAME", help="start from a preset (see `sidestep presets list`)")
    out = train.add_mutually_exclusive_group()
    out.add_argument("--plain", action="store_true", help="human-readable lines (the default without a terminal)")
    out.add_argument("--json", action="store_true", help="every event as one JSON line on stdout")
    add_schema_flags(train)
    from engine.cli import preprocess as pre_cli

    pre_cli.add_train_preprocess_arguments(train)

    demo = sub.add_parser("demo", help="set up the built-in demo model and data, then train on it")
    demo.add_argument("--root", default=None, help=f"where the demo lives (default {default_demo_root()})")
    demo.add_argument("--plain", action="store_true", help="plain output even on a terminal")
    demo.add_argument("--adapter", choices=cfgmod.ADAPTER_TYPES, default="lora")
    demo.add_argument("--max-steps", type=int, default=300)
    demo.add_argument("--setup-only", action="store_true", help="write the demo model and data, print their paths as JSON, and exit")
    demo.add_argument("--from-tensors", action="store_true", help="skip the audio -> tensors step: train on synthetic demo tensors")

    presets = sub.add_parser("presets", help="list, show, export or import presets")
    psub = presets.add_subparsers(dest="action", metavar="ACTION", required=True)
    psub.add_parser("list")
    show = psub.add_parser("show")
    show.add_argument("name")
    export = psub.add_parser("export")
    export.add_argument("name")
    export.add_argument("path")
    imp = psub.add_parser("import")
    imp.add_argument("path")

    runs = sub.add_parser("runs", help="list run folders with status, steps, best loss and adapter path")
    runs.add_argument("root", nargs="?", default=".")

    attach = sub.add_parser("attach", help="follow a run (the TUI monitor; --plain for lines)")
    attach.add_argument("run_dir")
    attach.add_argument("--plain", action="store_true")
    attach.add_argument("--stop", action="store_true", help="ask the run's engine to stop and save (SIGTERM)")

    _add_data_commands(sub)
    return parser


def _add_data_commands(sub: Any) -> None:
    from engine.audio import builder as dataset_builder
    from engine.cli import preprocess as pre_cli

    dataset_builder.add_dataset_arguments(sub.add_parser("dataset", help="build dataset.json from audio files and sidecar text"))
    pre_cli.add_preprocess_arguments(sub.add_parser("preprocess", help="turn audio into training tensors"))


# --------------------------------------------------------------------------- train


def config_from_args(ns: argparse.Namespace) -> cfgmod.TrainConfig:
    values: dict[str, Any] = {}
    if getattr(ns, "preset", None):
        from engine import presets

        values.update(presets.load_preset(ns.preset))
    if getattr(ns, "config_file", None):
        try:
            with open(ns.config_file, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise cfgmod.ConfigError([cfgmod.FieldError("config", f"{ns.config_file}: {exc}")]) from None
        if not isinstance(data, dict):
            raise cfgmod.ConfigError([cfgmod.FieldError("config", f"{ns.config_file}: expected a JSON object")])
        values.update(data)
    values.update({f.name: getattr(ns, f.name) for f in cfgmod.FIELDS if hasattr(ns, f.name)})
    return cfgmod.parse(values)


def run_headless(config: cfgmod.TrainConfig, *, json_events: bool) -> int:
    """Train in this process (no UI to outlive); SIGINT/SIGTERM stop and save."""
    from engine.process.control import CommandInbox
    from engine.process.events import EventBus, StreamJsonSink
    from engine.cli.plain import PlainPrinter

    if json_events:
        # Libraries print (Prodigy, bitsandbytes); keep stdout pure JSONL by sending fd 1 to stderr.
        out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)
        sink: Any = StreamJsonSink(out)
    else:
        sink = PlainPrinter()
    from engine.train.trainer import run_training

    from engine.process.monitor import ResourceMonitor

    bus = EventBus([sink])
    inbox = CommandInbox(None)
    inbox.install_signal_handlers()
    run_id = time.strftime("%Y%m%d-%H%M%S")
    # Heartbeats and memory readings land in events.jsonl too, so `sidestep attach` shows them.
    monitor = ResourceMonitor(bus.emit, phase=lambda: "loading_model", last_step=lambda: 0)
    monitor.start()
    try:
        final = run_training(cfgmod.to_json(config), bus, inbox, run_id=run_id, monitor=monitor)
    finally:
        monitor.stop()
        bus.close()
    from engine import protocol

    return 0 if isinstance(final, protocol.RunFinished) else 1


def cmd_train(ns: argparse.Namespace) -> int:
    try:
        config = config_from_args(ns)
    except cfgmod.ConfigError as exc:
        for err in exc.errors:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a preset that does not load
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from engine.cli import preprocess as pre_cli

    try:
        pre_config = pre_cli.preprocess_config_from_train(ns, config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if pre_config is not None:
        from engine.cli.plain import render
        from engine.audio.preprocess.pipeline import run_preprocess

        summary = run_preprocess(pre_config, lambda e: print(render(e), flush=True))
        if summary.failed or summary.stopped:
            print(f"error: preprocessing did not finish ({len(summary.failed)} failed); training not started", file=sys.stderr)
            return 1
        if ns.preprocess_only:
            return 0
    return run_headless(config, json_events=ns.json)


# --------------------------------------------------------------------------- demo


def demo_config(paths: dict[str, str], *, adapter: str = "lora", max_steps: int = 300) -> cfgmod.TrainConfig:
    """A run that shows the whole product on a laptop CPU in well under a minute."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cfgmod.parse(
        {
            "checkpoint_dir": paths["checkpoint_dir"],
            "model_variant": paths["model_variant"],
            "dataset_dir": paths["dataset_dir"],
            "output_dir": os.path.join(paths["output_root"], f"demo-{adapter}-{stamp}"),
            "run_name": f"demo {adapter}",
            "adapter_type": adapter,
            "rank": 8,
            "alpha": 16,
            "lokr_linear_dim": 8,
            "lokr_linear_alpha": 8,
            "learning_rate": 2e-3,
            "batch_size": 1,
            "gradient_accumulation": 1,
            "epochs": 1000,
            "max_steps": max_steps,
            "warmup_steps": 20,
            "num_workers": 0,
            "save_every": 10,
            "save_best_after": 1,
            "log_every": 5,
            "log_heavy_every": 25,
            "device": "cpu",
        }
    )


def setup_demo(root: str, *, audio: bool = False, progress: Any = None) -> dict[str, str]:
    """Write (or reuse) the demo model and data under ``root``; imports torch.

    ``audio=False``: synthetic training tensors (seconds; what the tests use). ``audio=True``: the
    whole user path: a demo VAE and text encoder beside the model, synthesised songs with sidecars,
    then the real two-pass preprocessing into ``<root>/tensors`` (finished files are reused)."""
    from engine.models.demo.build import setup_demo as write_demo

    paths = dict(write_demo(root))
    paths["output_root"] = os.path.join(os.path.abspath(root), "runs")
    if audio:
        from engine.models.demo.audio import synthesize_demo_audio, write_demo_audio_components
        from engine import prepconfig as pcfg
        from engine.audio.preprocess.pipeline import run_preprocess

        write_demo_audio_components(paths["checkpoint_dir"])
        audio_dir = os.path.join(os.path.abspath(root), "audio")
        if not os.path.isdir(audio_dir):
            synthesize_demo_audio(audio_dir)
        tensors = os.path.join(os.path.abspath(root), "tensors")
        config = pcfg.parse(
            {"checkpoint_dir": paths["checkpoint_dir"], "model_variant": paths["model_variant"], "audio_dir": audio_dir, "output_dir": tensors, "device": "cpu"}
        )
        summary = run_preprocess(config, progress or (lambda event: None))
        if summary.failed:
            raise RuntimeError(f"demo preprocessing failed for {summary.failed[0][0]}: {summary.failed[0][1]}")
        paths["audio_dir"] = audio_dir
        paths["dataset_dir"] = tensors
    return paths


def prepare_demo(root: str | None = None, *, audio: bool = True) -> dict[str, str]:
    """Stdlib-only (for the UI process): run the torch part of the demo setup in a subprocess."""
    root = root or default_demo_root()
    argv = [sys.executable, "-m", "engine.cli", "demo", "--setup-only", "--root", root] + ([] if audio else ["--from-tensors"])
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"demo setup in {root} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cmd_demo(ns: argparse.Namespace) -> int:
    root = ns.root or default_demo_root()
    if ns.setup_only:
        print(json.dumps(setup_demo(root, audio=not ns.from_tensors)))
        return 0
    from engine.cli.plain import render

    print(f"setting up the demo model{'' if ns.from_tensors else ', synthesising songs and preprocessing them'} in {root} ...", flush=True)
    paths = setup_demo(root, audio=not ns.from_tensors, progress=lambda e: print(render(e), flush=True) if e.status != "ok" or e.stage == "done" else None)
    config = demo_config(paths, adapter=ns.adapter, max_steps=ns.max_steps)
    return run_headless(config, json_events=False)


# --------------------------------------------------------------------------- presets, runs, attach


def cmd_presets(ns: argparse.Namespace) -> int:
    from engine import presets

    try:
        if ns.action == "list":
            for info in presets.list_presets():
                print(f"{info.name:18} {info.source:8} {info.description}")
        elif ns.action == "show":
            print(json.dumps(presets.load_preset(ns.name), indent=2))
        elif ns.action == "export":
            presets.export_preset(ns.name, ns.path)
            print(f"exported {ns.name} to {ns.path}")
        elif ns.action == "import":
            info = presets.import_preset(ns.path)
            print(f"imported {info.name} into {info.path}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_runs(ns: argparse.Namespace) -> int:
    from engine import runs

    found = runs.scan_runs(ns.root)
    if not found:
        print(f"no runs under {os.path.abspath(ns.root)}")
        return 0
    print(f"{'status':10} {'adapter':7} {'steps':>11} {'best':>8} {'final':>8}  path / adapter")
    for r in found:
        steps = f"{r.steps}/{r.total_steps}" if r.total_steps else str(r.steps)
        best = f"{r.best_loss:.4f}" if r.best_loss is not None else "-"
        final = f"{r.final_loss:.4f}" if r.final_loss is not None else "-"
        print(f"{r.status:10} {r.adapter_type or '-':7} {steps:>11} {best:>8} {final:>8}  {r.path}")
        if r.adapter_path:
            print(f"{'':50}-> {r.adapter_path}")
    return 0


def cmd_attach_plain(ns: argparse.Namespace) -> int:
    """Follow events.jsonl and print it; Ctrl-C detaches (the run goes on), --stop asks it to save and stop."""
    import signal as sig

    from engine import protocol
    from engine.train import rundir
    from engine import layout
    from engine.cli.plain import render

    path = layout.events_path(ns.run_dir)
    if not os.path.isfile(path):
        print(f"error: {path} not found; is {ns.run_dir} a run folder?", file=sys.stderr)
        return 2
    if ns.stop:
        info = rundir.live_engine(ns.run_dir)
        if info is None or info.get("host") != socket.gethostname():
            print(f"error: no live engine for {ns.run_dir}", file=sys.stderr)
            return 1
        os.kill(info["pid"], sig.SIGTERM)
        print(f"asked engine {info['pid']} to stop and save")
    with open(path, encoding="utf-8") as fh:
        buf = ""
        while True:
            chunk = fh.readline()
            if chunk:
                buf += chunk
                if not buf.endswith("\n"):
                    continue
                event = protocol.loads(buf)
                buf = ""
                line = render(event)
                if line:
                    print(line, flush=True)
                if isinstance(event, (protocol.RunFinished, protocol.RunFailed)):
                    return 0 if isinstance(event, protocol.RunFinished) else 1
                continue
            if rundir.live_engine(ns.run_dir) is None:
                print("the run's engine is not running (no live engine.json)")
                return 1
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    import logging

    # bitsandbytes warns on import that an optional 4-bit CPU kernel (fetched from a hub) is absent;
    # we never use 4-bit layers and never download, so the line is only noise in a headless log.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    parser = build_parser()
    ns = parser.parse_args(argv)
    handlers = {
        "train": cmd_train,
        "demo": cmd_demo,
        "presets": cmd_presets,
        "runs": cmd_runs,
        "attach": cmd_attach_plain,
    }
    if ns.command == "dataset":
        from engine.audio import builder as dataset_builder

        return dataset_builder.run_dataset_command(ns)
    if ns.command == "preprocess":
        from engine.cli import preprocess as pre_cli

        return pre_cli.run_preprocess_command(ns)
    if ns.command is None:
        parser.print_help()
        return 0
    return handlers[ns.command](ns)


if __name__ == "__main__":
    sys.exit(main())
