"""The headless commands: ``sidestep train|demo|presets|runs|attach --plain|preprocess|dataset|export|queue|generate|
estimate|compare-configs|analyze`` and the sidecar tools ``tags|convert-sidecars|audio-analyze``.

The flags are parsed by ``engine.cli.parser`` (the one parser, stdlib only); ``run_command`` runs the
handler of a parsed command line. Nothing heavy is imported at module level: each handler imports the
torch side when it runs. ``train`` precedence: defaults < ``--preset`` < ``--config`` file < flags
given on the command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import time
from typing import Any

from engine import config as cfgmod
from engine import layout
from engine.cli.parser import build_parser
from engine.demo import default_demo_root, demo_config

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
    _keep_file_log_dir_inside_output(ns, values)
    return cfgmod.parse(values)


def _keep_file_log_dir_inside_output(ns: argparse.Namespace, values: dict[str, Any]) -> None:
    """A ``log_dir`` read from a file (not typed as ``--log-dir``) may not write outside the run folder."""
    log_dir, output_dir = values.get("log_dir"), values.get("output_dir")
    if not log_dir or hasattr(ns, "log_dir") or not isinstance(log_dir, str) or not isinstance(output_dir, str):
        return
    out = os.path.realpath(output_dir)
    if os.path.commonpath([out, os.path.realpath(log_dir)]) == out:
        return
    values["log_dir"] = None
    print(
        f"note: {ns.config_file}: log_dir {log_dir} is outside the output folder; TensorBoard logs go to "
        f"{layout.tensorboard_dir(output_dir)} instead (pass --log-dir on the command line to write elsewhere)",
        file=sys.stderr,
    )


def run_headless(config: cfgmod.TrainConfig, *, json_events: bool) -> int:
    """Train in this process (no UI to outlive); SIGINT/SIGTERM stop and save."""
    from engine.channel.control import CommandInbox
    from engine.channel.events import EventBus, StreamJsonSink
    from engine.cli.plain import PlainPrinter
    from engine.train.dist import env_rank_is_zero

    if not env_rank_is_zero():
        sink: Any = None  # one of several processes, not rank 0: rank 0 alone reports (and writes the run folder)
    elif json_events:
        # Libraries print (Prodigy, bitsandbytes); keep stdout pure JSONL by sending fd 1 to stderr.
        out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)
        sink = StreamJsonSink(out)
    else:
        sink = PlainPrinter(seed_from_run_dir=True)
    from engine.analysis.sensitivity import run_training  # runs --auto-estimate first
    from engine.process.monitor import ResourceMonitor

    bus = EventBus([sink] if sink is not None else [])
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
    if getattr(ns, "estimate_only", False):  # the estimate reads no data and writes nothing: those folders may be left out
        for name in ("dataset_dir", "output_dir"):
            if not getattr(ns, name, None):
                setattr(ns, name, "(not needed for --estimate-only)")
    try:
        config = config_from_args(ns)
    except cfgmod.ConfigError as exc:
        for err in exc.errors:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a preset that does not load
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(ns, "estimate_only", False):
        return cmd_estimate_only(config)
    if config.module_config or config.selected_modules:  # read and checked now, before any preprocessing or loading
        from engine import moduleconfig

        try:
            config = moduleconfig.resolve(config)
        except moduleconfig.ModuleConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from engine.cli import preprocess as pre_cli

    try:
        pre_config = pre_cli.preprocess_config_from_train(ns, config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if pre_config is not None:
        from engine.audio.preprocess.pipeline import run_preprocess
        from engine.cli.plain import render

        summary = run_preprocess(pre_config, lambda e: print(render(e), flush=True))
        if summary.failed or summary.stopped:
            print(f"error: preprocessing did not finish ({len(summary.failed)} failed); training not started", file=sys.stderr)
            return 1
        if ns.preprocess_only:
            return 0
    return run_headless(config, json_events=ns.json)


def cmd_estimate_only(config: cfgmod.TrainConfig) -> int:
    """``train --estimate-only``: the VRAM breakdown; exit 1 when it fits no target GPU (stdlib + NVML only)."""
    from engine import discovery, vram

    lines, fits = vram.report(config, discovery.gpus())
    print("\n".join(lines))
    return 1 if fits is False else 0


# --------------------------------------------------------------------------- estimate, compare-configs


def cmd_estimate(ns: argparse.Namespace) -> int:
    """Rank the modules by gradient sensitivity; write the top-k as Side-Step's estimate JSON."""
    from engine import fsutil, moduleconfig
    from engine.cli.parser import ESTIMATE_FIELDS

    output = os.path.abspath(os.path.expanduser(ns.output))
    values: dict[str, Any] = {f: getattr(ns, f) for f in ESTIMATE_FIELDS if hasattr(ns, f)}
    values["output_dir"] = os.path.dirname(output)  # required by the schema; the estimate writes no run folder
    try:
        config = cfgmod.parse(values)
    except cfgmod.ConfigError as exc:
        for err in exc.errors:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if not os.path.isdir(os.path.dirname(output)) or os.path.isdir(output):
        print(
            f"error: --output {ns.output}: {'is a folder' if os.path.isdir(output) else 'its folder does not exist'}",
            file=sys.stderr,
        )
        return 2
    from engine.analysis.sensitivity import EstimateCancelled, estimate, top

    out = sys.stderr if ns.json else sys.stdout

    def progress(done: int, total: int) -> None:
        print(f"estimate: batch {done}/{total}", file=out, flush=True)

    try:
        ranking = estimate(config, progress=progress, log=lambda m: print(m, file=out, flush=True))
    except (ValueError, OSError, EstimateCancelled) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: the estimate was interrupted; nothing was written", file=sys.stderr)
        return 130
    chosen = top(ranking, config.top_k)
    fsutil.write_json(output, moduleconfig.to_json_list(chosen))
    if ns.json:
        _print_piped(json.dumps(moduleconfig.to_json_list(ranking), indent=2))
        return 0
    width = max(len(moduleconfig.display(n)) for n, _ in chosen)
    print(
        f"top {len(chosen)} of {len(ranking)} {config.granularity}s by gradient sensitivity ({config.estimate_batches} batches):"
    )
    for i, (name, score) in enumerate(chosen, 1):
        print(f"{i:4d}. {moduleconfig.display(name):<{width}}  {score:.6e}")
    print(f"wrote {output}; train only these with: sidestep train --module-config {output} ...")
    return 0


def cmd_compare_configs(ns: argparse.Namespace) -> int:
    from engine import moduleconfig

    files = [*ns.files, *ns.configs]
    if len(files) < 2:
        print("error: compare-configs needs at least two files, e.g. `sidestep compare-configs a.json b.json`", file=sys.stderr)
        return 2
    try:
        configs = [moduleconfig.load(f) for f in files]
    except moduleconfig.ModuleConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cmp = moduleconfig.compare(configs)
    if ns.json:
        _print_piped(json.dumps(moduleconfig.comparison_dict(cmp), indent=2))
    else:
        _print_piped("\n".join(moduleconfig.comparison_text(cmp)))
    return 0


# --------------------------------------------------------------------------- demo


def setup_demo(root: str, *, audio: bool = False, progress: Any = None, one_shot: bool = False) -> dict[str, str]:
    """Write (or reuse) the demo model and data under ``root``; imports torch.

    ``audio=False``: synthetic training tensors (seconds; what the tests use). ``audio=True``: the
    whole user path: a demo VAE and text encoder beside the model, synthesised songs with sidecars,
    their ``dataset.json`` (the dataset builder's, beside the songs: the file a user edits next), then
    the real two-pass preprocessing of it into ``<root>/tensors`` (finished files are reused).
    ``one_shot``: this process does nothing else (the CLI), so it may tune the interpreter for it."""
    if not audio:
        from engine.models.demo.build import setup_demo as write_demo

        paths = dict(write_demo(root))
        paths["output_root"] = os.path.join(os.path.abspath(root), "runs")
        return paths
    from engine.models.demo.build import DEMO_FOLDER, start_demo_checkpoint

    # The demo model is built and pre-trained meanwhile (a forked child on Linux); pass 2 waits for it.
    # The synthetic training tensors of the path above are not written: the songs' tensors replace them.
    job = start_demo_checkpoint(root)
    try:
        from engine import prepconfig as pcfg
        from engine.audio.builder import build_dataset
        from engine.audio.preprocess.pipeline import run_preprocess
        from engine.models.demo.audio import synthesize_demo_audio, write_demo_audio_components

        checkpoint_dir = os.path.join(os.path.abspath(root), "checkpoints")
        write_demo_audio_components(checkpoint_dir)
        audio_dir = os.path.join(os.path.abspath(root), "audio")
        if not os.path.isdir(audio_dir):
            synthesize_demo_audio(audio_dir)
        dataset_json = os.path.join(audio_dir, "dataset.json")
        if not os.path.isfile(dataset_json):
            build_dataset(audio_dir, name="sidestep-demo", output=dataset_json)
        tensors = os.path.join(os.path.abspath(root), "tensors")
        config = pcfg.parse(
            {
                "checkpoint_dir": checkpoint_dir,
                "model_variant": DEMO_FOLDER,
                "dataset_json": dataset_json,
                "output_dir": tensors,
                "device": "cpu",
            }
        )
        if one_shot:
            # Everything imported so far (torch, transformers, diffusers) lives as long as the process: frozen,
            # the full collections preprocessing runs between its passes skip it (1 s of the demo's setup).
            gc.freeze()
        summary = run_preprocess(config, progress or (lambda event: None), model_ready=job.wait)
    finally:
        job.cancel()  # only an unfinished one: after an error above
    if summary.failed:
        raise RuntimeError(f"demo preprocessing failed for {summary.failed[0][0]}: {summary.failed[0][1]}")
    return {
        "checkpoint_dir": checkpoint_dir,
        "model_variant": DEMO_FOLDER,
        "dataset_dir": tensors,
        "output_root": os.path.join(os.path.abspath(root), "runs"),
        "audio_dir": audio_dir,
    }


def cmd_demo(ns: argparse.Namespace) -> int:
    root = ns.root or default_demo_root()
    # Before torch loads OpenMP: an idle OpenMP thread sleeps instead of spinning. The demo runs two
    # threads beside its one-thread model builder, often on a busy 2-core machine, where spinning threads
    # made the VAE pass 2.5x slower than one thread; on an idle machine two threads still halve it.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The demo never quantises nor uses an 8-bit optimizer (``demo_config``), but diffusers and PEFT import
    # bitsandbytes whenever it is installed, and its import compiles torch's inductor stack: about 2 s of the
    # demo's critical path. Marked absent for this process only; both libraries then skip their bnb parts.
    sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]  # None: "not importable" to importlib
    if ns.setup_only:
        print(json.dumps(setup_demo(root, audio=not ns.from_tensors, one_shot=True)))
        return 0
    from engine.cli.plain import render

    print(
        f"setting up the demo model{'' if ns.from_tensors else ', songs, their dataset.json and tensors'} in {root} ...",
        flush=True,
    )
    paths = setup_demo(
        root,
        audio=not ns.from_tensors,
        one_shot=True,
        progress=lambda e: print(render(e), flush=True) if e.status != "ok" or e.stage == "done" else None,
    )
    config = demo_config(paths, adapter=ns.adapter, max_steps=ns.max_steps)
    import torch

    # The demo model's ops are too small to split: one thread trains as fast as two on an idle machine
    # (the same losses, bit for bit), and on a busy one a second OpenMP thread spinning at every op made
    # the 200 steps take minutes instead of seconds.
    torch.set_num_threads(1)
    return run_headless(config, json_events=False)


# --------------------------------------------------------------------------- presets, runs, attach


def _print_piped(text: str) -> None:
    """Print to a stdout that may be a pipe whose reader has gone (``| head``): stop quietly then."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def cmd_presets(ns: argparse.Namespace) -> int:
    from engine import presets

    try:
        if ns.action == "list":
            for info in presets.list_presets():
                print(f"{info.name:18} {info.source:8} {info.description}")
        elif ns.action == "show":
            _print_piped(json.dumps(presets.load_preset(ns.name), indent=2))
        elif ns.action == "export":
            presets.export_preset(ns.name, ns.path)
            print(f"exported {ns.name} to {ns.path}")
        elif ns.action == "import":
            info = presets.import_preset(ns.path, overwrite=ns.overwrite)
            print(f"imported {info.name} into {info.path}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_runs(ns: argparse.Namespace) -> int:
    from engine import runs
    from engine.summary import loss_text, segment_text

    found = runs.scan_runs(ns.root)
    if not found:
        print(f"no runs under {os.path.abspath(ns.root)}")
        return 0
    one_run = runs.is_run_dir(os.path.abspath(os.path.expanduser(ns.root)))  # `sidestep runs RUN_DIR`: its detail
    print(f"{'status':10} {'adapter':7} {'steps':>11} {'best':>8} {'final':>8}  path / adapter")
    for r in found:
        steps = f"{r.steps}/{r.total_steps}" if r.total_steps else str(r.steps)
        best, final = loss_text(r.best_loss), loss_text(r.final_loss)
        print(f"{r.status:10} {r.adapter_type or '-':7} {steps:>11} {best:>8} {final:>8}  {r.path}")
        if r.adapter_path:
            print(f"{'':50}-> {r.adapter_path}")
        if r.comfyui_path:
            print(f"{'':50}-> {r.comfyui_path} (ComfyUI)")
        if r.chosen_path:
            print(f"{'':50}-> {r.chosen_path} (chosen by ear: step {r.chosen_step}, from {r.chosen_source})")
        if one_run or len(r.history) > 1:  # each engine's go at the run: how it ended, and at which step
            redone = (
                f", {r.redone_steps} step(s) trained again after resuming from an earlier checkpoint" if r.redone_steps else ""
            )
            print(f"{'':11}segments: {len(r.history)}{redone}")
            for seg in r.history:
                print(f"{'':13}{segment_text(seg, r.total_steps)}")
    return 0


def cmd_attach_plain(ns: argparse.Namespace) -> int:
    """Follow events.jsonl and print it; Ctrl-C detaches (the run goes on), --stop asks it to save and stop.

    The whole file is read (every segment of a resumed run); the run has ended when the end of what is
    written leaves its last segment finished or failed (``engine.summary``), or when its engine is gone."""
    import signal as sig

    from engine import layout
    from engine.cli.plain import PlainPrinter
    from engine.tailer import EventTailer
    from engine.train import rundir

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
    tailer = EventTailer(path)
    printer = PlainPrinter()
    reported = False
    try:
        while True:
            for event in tailer.read():
                printer.emit(event)
            if tailer.problem is not None and not reported:
                reported = True
                print(f"warning: {tailer.problem}; skipped (later bad lines are only counted)", file=sys.stderr, flush=True)
            if not tailer.caught_up:
                continue
            if printer.summary.finished:
                return 1 if printer.summary.status == "failed" else 0
            if rundir.live_engine(ns.run_dir) is None:
                print("the run's engine is not running (no live engine.json)")
                return 1
            time.sleep(0.5)
    finally:
        tailer.close()
        if tailer.skipped > 1:
            print(f"warning: {tailer.skipped} lines of {path} were not events and were skipped", file=sys.stderr)


# --------------------------------------------------------------------------- export


def _pick_adapter_folder(source: str) -> tuple[str, str]:
    """``(adapter folder, why it was picked)``: the folder itself when it holds an adapter, else a run's
    final/, else the newest of its best/ and checkpoints."""
    from engine import layout

    def holds_adapter(path: str) -> bool:
        return os.path.isfile(os.path.join(path, "adapter_config.json")) or any(
            n.endswith("_weights.safetensors") for n in (os.listdir(path) if os.path.isdir(path) else [])
        )

    if holds_adapter(source):
        return source, "adapter folder"
    final = layout.final_dir(source)
    if holds_adapter(final):
        return final, "the run's final adapter"
    candidates = [p for p in (layout.best_dir(source), *(p for _, p in layout.list_checkpoints(source))) if holds_adapter(p)]
    if candidates:
        newest = max(candidates, key=os.path.getmtime)
        return newest, "the run has no final/; its newest adapter"
    raise ValueError(f"{source}: no adapter in it (no adapter_config.json or LyCORIS file, no final/, best/ or checkpoints/)")


def _run_name(folder: str) -> str:
    """The run folder's name for an adapter inside a run (final/, best/, checkpoints/<name>/), else the folder's."""
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    if os.path.basename(parent) == "checkpoints":
        return os.path.basename(os.path.dirname(parent))
    if os.path.basename(folder) in ("final", "best") and os.path.isfile(os.path.join(parent, "config.json")):
        return os.path.basename(parent)
    return os.path.basename(folder)


def _base_weights(ns: argparse.Namespace, folder: str) -> Any:
    """The base decoder's weights for DoRA: from --checkpoint-dir/--model-variant, else the run config in ``folder``."""
    checkpoint_dir, variant = ns.checkpoint_dir, ns.model_variant
    config_path = os.path.join(folder, "config.json")
    if (not checkpoint_dir or not variant) and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
        checkpoint_dir = checkpoint_dir or config.get("checkpoint_dir")
        variant = variant or config.get("model_variant")
    if not checkpoint_dir or not variant:
        return None
    import torch

    from engine.adapters.export import BaseWeights
    from engine.discovery import resolve_model_dir  # a name under the checkpoint root, never a folder elsewhere
    from engine.models.loader import load_decoder

    model_dir = resolve_model_dir(checkpoint_dir, variant)
    loaded = load_decoder(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    return BaseWeights.from_module(loaded.decoder)


def cmd_export(ns: argparse.Namespace) -> int:
    from engine.adapters import export
    from engine.models.loader import ModelLoadError

    source = os.path.abspath(os.path.expanduser(ns.source))
    try:
        if ns.target == "peft":
            if not os.path.isfile(source):
                raise ValueError(f"{source}: --target peft converts a LoRA .safetensors file; point at the file")
            out = ns.output or os.path.splitext(source)[0] + "_peft"
            try:
                export.comfyui_to_peft(source, out)
            except export.NeedsBaseModel:
                base = _base_weights(ns, os.path.dirname(source))
                if base is None:
                    raise
                export.comfyui_to_peft(source, out, base=base)
            print(f"wrote PEFT folder {out}")
            return 0
        if os.path.isfile(source):
            raise ValueError(f"{source}: a file; point at the adapter folder (or the run folder) that holds it")
        if not os.path.isdir(source):
            raise ValueError(f"{source}: no such folder")
        folder, why = _pick_adapter_folder(source)
        print(f"exporting {folder} ({why})", flush=True)
        out = ns.output or os.path.join(folder, export.comfyui_file_name(_run_name(folder)))
        try:
            export.export_comfyui(folder, out, normalize_alpha=ns.normalize_alpha)
        except export.NeedsBaseModel:
            base = _base_weights(ns, folder)
            if base is None:
                raise
            export.export_comfyui(folder, out, normalize_alpha=ns.normalize_alpha, base=base)
    except (export.ExportError, ModelLoadError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def cmd_queue(ns: argparse.Namespace) -> int:
    from engine.cli.queue import cmd_queue as run_queue_command

    return run_queue_command(ns)


def run_command(ns: argparse.Namespace) -> int:
    """Run the headless handler of a parsed command line (``engine.cli.parser``)."""
    import logging

    # bitsandbytes warns on import that an optional 4-bit CPU kernel (fetched from a hub) is absent;
    # we never use 4-bit layers and never download, so the line is only noise in a headless log.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if ns.command == "dataset":
        from engine.audio import builder as dataset_builder

        return dataset_builder.run_dataset_command(ns)
    if ns.command == "preprocess":
        from engine.cli import preprocess as pre_cli

        return pre_cli.run_preprocess_command(ns)
    if ns.command in ("tags", "convert-sidecars", "audio-analyze"):
        from engine.cli import sidecar_tools

        return {
            "tags": sidecar_tools.run_tags_command,
            "convert-sidecars": sidecar_tools.run_convert_command,
            "audio-analyze": sidecar_tools.run_audio_analyze_command,
        }[ns.command](ns)
    if ns.command == "generate":
        from engine.cli.generate import run_generate_command

        return run_generate_command(ns)
    if ns.command == "analyze":
        from engine.cli.analyze import run_analyze_command

        return run_analyze_command(ns)
    handlers = {
        "train": cmd_train,
        "demo": cmd_demo,
        "presets": cmd_presets,
        "runs": cmd_runs,
        "attach": cmd_attach_plain,
        "export": cmd_export,
        "queue": cmd_queue,
        "estimate": cmd_estimate,
        "compare-configs": cmd_compare_configs,
    }
    return handlers[ns.command](ns)


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.cli``: the headless command line (no TUI; ``attach`` and ``demo`` are plain)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 0
    return run_command(ns)


if __name__ == "__main__":
    sys.exit(main())
