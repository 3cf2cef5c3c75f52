"""The one ``sidestep`` argument parser: every subcommand, its flags and its usage errors.

Stdlib only (it reads the stdlib schemas in ``engine.config`` and ``engine.prepconfig``), so
``sidestep --help`` and ``sidestep train --help`` answer without importing torch or textual; the
entry point (``sidestep_tui.__main__``) parses with it and then chooses the TUI or a headless
handler (``engine.cli.main``). ``train`` flags are generated from ``engine.config`` (never a
hand-kept copy); defaults are SUPPRESSed so only the flags a user typed override a preset or a
``--config`` file. Usage errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from engine import config as cfgmod
from engine import moduleconfig
from engine import prepconfig as pcfg
from engine.demo import default_demo_root

# ``sidestep train --preprocess``: the model, device and precision come from the training config; the
# preprocessing flags that training lacks are stored under this prefix (read by ``engine.cli.preprocess``).
TRAIN_PREPROCESS_FROM_TRAIN = ("checkpoint_dir", "model_variant", "device", "precision")
TRAIN_PREPROCESS_PREFIX = "preprocess_"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (what is wrong, where to read more), exit 2.
    ``commands`` maps each subcommand to its parser (so a caller can report an error against it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add_schema_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per ``TrainConfig`` field (or per field named in ``only``), grouped like the TUI form."""
    groups = {name: parser.add_argument_group(name) for name in cfgmod.GROUPS}
    for f in cfgmod.FIELDS:
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        names = [meta["flag"], *meta.get("aliases", ())]
        default = f.default
        shown = "auto" if default is None else (" ".join(default) if isinstance(default, tuple) else default)
        # An empty default says what it means instead of "(default: )".
        empty = " (required)" if meta.get("required") else " (default: none)"
        suffix = f" (default: {shown})" if shown != "" else empty
        help_text = f"{meta['help']}{suffix}".replace("%", "%%")
        group = groups[meta["group"]]
        base, _ = cfgmod._type_of(f)
        if base == "bool":
            group.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif base.startswith("tuple"):
            group.add_argument(*names, dest=f.name, nargs="*", default=argparse.SUPPRESS, metavar="NAME", help=help_text)
        else:
            metavar = "{" + ",".join(meta["choices"]) + "}" if meta.get("choices") else f.name.upper()
            group.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``PreprocessConfig`` field (Side-Step's names and aliases). Values are left as
    strings and coerced by ``prepconfig.parse`` so the CLI, the TUI and JSON share one validation."""
    for f in pcfg.FIELDS:
        meta = f.metadata
        help_text = meta["help"]
        if meta.get("choices"):
            help_text += f" ({'|'.join(meta['choices'])})"
        if f.default not in (None, ""):
            help_text += f" [default: {f.default}]"
        parser.add_argument(
            meta["flag"], *meta.get("aliases", ()), dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text
        )


def add_train_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preprocess``, ``--preprocess-only`` and the preprocessing flags that ``sidestep train``
    does not already have (long names only, so they cannot clash with training's short flags)."""
    group = parser.add_argument_group("preprocess audio first")
    group.add_argument(
        "--preprocess", action="store_true", help="turn --audio-dir / --dataset-json into tensors, then train on them"
    )
    group.add_argument("--preprocess-only", action="store_true", help="like --preprocess, but stop before training")
    for f in pcfg.FIELDS:
        if f.name in TRAIN_PREPROCESS_FROM_TRAIN:
            continue
        flag = "--tensor-output" if f.name == "output_dir" else f.metadata["flag"]
        help_text = f.metadata["help"] + (" [default: the training --dataset-dir]" if f.name == "output_dir" else "")
        group.add_argument(
            flag, dest=TRAIN_PREPROCESS_PREFIX + f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text
        )


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sidestep dataset`` (Side-Step's names, plus --dry-run and --json)."""
    tag_positions = next(f for f in pcfg.FIELDS if f.name == "tag_position").metadata["choices"]  # the same setting
    parser.add_argument(
        "-i", "--input", dest="input", required=True, metavar="AUDIO_DIR", help="folder of audio files (scanned recursively)"
    )
    parser.add_argument("--tag", default="", help="trigger tag added to every caption")
    parser.add_argument("--tag-position", default="prepend", choices=tag_positions, help="where the tag goes (default prepend)")
    parser.add_argument(
        "--genre-ratio", type=int, default=0, metavar="N", help="percent of samples prompted by genre instead of caption (0-100)"
    )
    parser.add_argument("--name", default="local_dataset", help="dataset name")
    parser.add_argument(
        "-o", "--output", default=None, metavar="PATH", help="where to write dataset.json (default AUDIO_DIR/dataset.json)"
    )
    parser.add_argument("--dry-run", action="store_true", help="scan and report only; write nothing")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a summary")


def add_config_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--preset NAME``: where a training config starts (``train``, ``queue add``)."""
    parser.add_argument(
        "--config", dest="config_file", metavar="FILE", help="a JSON config (from a run's config.json or the TUI's review panel)"
    )
    parser.add_argument("--preset", metavar="NAME", help="start from a preset (see `sidestep presets list`)")


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    """``sidestep queue [list|add|remove|move|clear|pause|run]``: ``add`` takes the flags of ``train``."""
    qsub = parser.add_subparsers(dest="action", metavar="ACTION", title="actions")
    qsub.add_parser("list", help="every entry with its state, run folder and error (the default)")
    add = qsub.add_parser(
        "add",
        help="queue a run: a config file or preset, and/or the flags of `sidestep train` (checked now)",
        description="Queue a training run. The config is resolved and checked now (defaults < --preset < "
        "--config / CONFIG < flags) and stored with absolute paths.",
    )
    add.add_argument(
        "source", nargs="?", metavar="CONFIG", help="a JSON config file (like --config) or a preset name (like --preset)"
    )
    add_config_source_arguments(add)
    add.add_argument("--name", dest="queue_name", metavar="TEXT", help="a label in the list (default: the run folder's name)")
    add_schema_flags(add)
    remove = qsub.add_parser("remove", help="take a waiting or finished entry off the queue")
    remove.add_argument("id", type=int, metavar="ID", help="the entry's id (see `sidestep queue list`)")
    move = qsub.add_parser("move", help="move a queued entry to another position (1 = next)")
    move.add_argument("id", type=int, metavar="ID", help="the entry's id")
    move.add_argument("position", type=int, metavar="POS", help="its new 1-based position in the list")
    clear = qsub.add_parser("clear", help="remove every entry that is not running")
    clear.add_argument("--finished", action="store_true", help="only the done, failed and stopped entries")
    qsub.add_parser("pause", help="let the worker finish its current run, then stop (`queue run` goes on)")
    run = qsub.add_parser("run", help="start the one worker: it trains the queued runs back to back, detached from this terminal")
    run.add_argument("--stop-on-failure", action="store_true", help="stop the queue when a run fails (default: go on)")
    run.add_argument(
        "--foreground", action="store_true", help="work in this terminal (plain lines) instead of detaching, e.g. in a SLURM job"
    )


def _add_model_arguments(parser: argparse.ArgumentParser, root_help: str) -> None:
    """``-c ROOT`` and ``--model VARIANT``, as ``generate`` and ``analyze`` spell them."""
    parser.add_argument("-c", "--checkpoint-dir", required=True, metavar="ROOT", help=root_help)
    parser.add_argument(
        "--model",
        "--model-variant",
        "-M",
        dest="model_variant",
        default="base",
        metavar="VARIANT",
        help="turbo, base, sft, xl-*, or a model folder's name under ROOT (default base)",
    )


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sidestep generate`` (the model flags share training's names)."""
    _add_model_arguments(parser, "the checkpoint root (holds the model folders, vae/, ...)")
    parser.add_argument(
        "--adapter", metavar="DIR", help="an adapter folder: a run's final/, best/ or checkpoints/<name>/, or a PEFT folder"
    )
    parser.add_argument(
        "--adapter-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="adapter strength: 0 = the base model, 1 = as trained (default 1)",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", metavar="TEXT", help="the caption, e.g. 'warm ambient pad, slow attack'")
    what.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="a batch: one prompt per line, plain text (the caption) or a JSON object with prompt, lyrics, duration, "
        "seed, bpm, keyscale, timesignature; '#' lines are comments. Files: OUT_<n>.flac per line",
    )
    parser.add_argument("--lyrics", metavar="FILE", help="a lyrics text file (default [Instrumental])")
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds of audio (default 10)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="the noise seed: one seed, one sound (default 0)")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="sampling steps (default: turbo 8, base/sft 50)")
    parser.add_argument("--shift", type=float, default=None, metavar="X", help="timestep shift (default: turbo 3, base/sft 1)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="X",
        help="APG guidance scale for base/sft (default 7; 1 = off; turbo: off)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="also render without the adapter at the same seed: OUT_base.flac beside OUT.flac"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--precision", default="auto", choices=cfgmod.PRECISIONS, help="default auto (bf16 on GPUs, fp32 on CPU)")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT.flac", help="the FLAC file to write (a JSON sidecar goes beside it)"
    )


def _add_dir_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The folder as a positional argument; ``--input/-i`` (Side-Step's spelling) also works."""
    parser.add_argument("directory", nargs="?", default=None, metavar="DATASET_DIR", help=help_text)
    parser.add_argument("--input", "-i", dest="input_compat", default=None, help=argparse.SUPPRESS)


def add_sidecar_tool_arguments(tags: argparse.ArgumentParser, convert: argparse.ArgumentParser) -> None:
    """``sidestep tags add|remove|list|clear`` and ``sidestep convert-sidecars`` (Side-Step's names)."""
    from engine.sidecar_edit import CONVERT_TARGETS
    from engine.sidecars import TAG_POSITIONS

    folder = "the folder of audio files and their sidecars (scanned recursively)"
    apply_help = "write the changes (each file atomically); without it: print the diff and write nothing"
    tsub = tags.add_subparsers(dest="tags_action", metavar="ACTION", required=True, title="actions")
    add = tsub.add_parser("add", help="add a trigger tag to every caption (a dry run with a diff unless --apply)")
    _add_dir_argument(add, folder)
    add.add_argument("--tag", "-t", required=True, help="the trigger tag, e.g. mystyle")
    add.add_argument("--position", default="prepend", choices=TAG_POSITIONS, help="prepend ('tag, caption'), append or replace")
    add.add_argument("--apply", action="store_true", help=apply_help)
    remove = tsub.add_parser("remove", help="remove a trigger tag from every caption")
    _add_dir_argument(remove, folder)
    remove.add_argument("--tag", "-t", required=True, help="the trigger tag to remove")
    remove.add_argument("--apply", action="store_true", help=apply_help)
    clear = tsub.add_parser("clear", help="remove the tags every caption shares (what `tags add` wrote)")
    _add_dir_argument(clear, folder)
    clear.add_argument("--apply", action="store_true", help=apply_help)
    listing = tsub.add_parser("list", help="the caption parts shared by more than one song, with counts")
    _add_dir_argument(listing, folder)

    _add_dir_argument(convert, folder)
    convert.add_argument(
        "--to",
        required=True,
        choices=CONVERT_TARGETS,
        help="kv: song.txt with key: value lines (Side-Step's); txt: song.caption.txt + song.lyrics.txt (ACE-Step's)",
    )
    convert.add_argument("--apply", action="store_true", help=apply_help)


def add_audio_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sidestep audio-analyze`` (Side-Step's ``--input`` and ``--policy`` names)."""
    from engine.sidecar_edit import FILL_MISSING, POLICIES

    _add_dir_argument(parser, "the folder of audio files (scanned recursively)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument(
        "--policy",
        default=FILL_MISSING,
        choices=POLICIES,
        help="fill_missing keeps values a sidecar has (default); overwrite_all replaces them",
    )
    policy.add_argument(
        "--overwrite", dest="policy", action="store_const", const="overwrite_all", help="same as --policy overwrite_all"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the estimates and the diff; write nothing")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        metavar="S",
        help="analyse at most this much of each file, from its start (default 120)",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.5,
        metavar="X",
        help="write only estimates at least this sure, 0..1 (default 0.5); the others are printed, not written",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of a table")


# ``sidestep estimate``: Side-Step's flags, each the training schema's own (names, help, checks).
ESTIMATE_FIELDS = moduleconfig.ESTIMATE_FIELDS


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sidestep estimate`` (Side-Step's names; the settings are the training schema's)."""
    add_schema_flags(parser, ESTIMATE_FIELDS)
    parser.add_argument(
        "-o",
        "--output",
        "--estimate-output",
        dest="output",
        default="estimate_results.json",
        metavar="FILE",
        help="where to write the module config (Side-Step's JSON list; default estimate_results.json)",
    )
    parser.add_argument("--json", action="store_true", help="print the whole ranking as JSON instead of a table")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """``sidestep compare-configs A B [...]`` (Side-Step's ``--configs A B`` works too)."""
    parser.add_argument("files", nargs="*", metavar="FILE", help="module configs, estimate results or fisher_map.json files")
    parser.add_argument("--configs", nargs="+", default=[], metavar="FILE", help="the same files (Side-Step's flag)")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON object")


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sidestep analyze`` (PP++): Side-Step's names and defaults, the model flags training has."""
    _add_model_arguments(parser, "the checkpoint root (holds the model folders)")
    parser.add_argument(
        "-d", "--dataset-dir", required=True, metavar="DIR", help="the preprocessed tensors; fisher_map.json is written here"
    )
    parser.add_argument("-r", "--rank", type=int, default=64, metavar="N", help="the median rank to aim at (default 64)")
    parser.add_argument("--rank-min", type=int, default=16, metavar="N", help="the lowest rank a module gets (default 16)")
    parser.add_argument("--rank-max", type=int, default=128, metavar="N", help="the highest rank a module gets (default 128)")
    parser.add_argument(
        "--timestep-focus",
        default="balanced",
        metavar="FOCUS",
        help="balanced (the model's own timestep distribution), texture (t in 0-0.4), structure (t in 0.6-1) or "
        "'lo,hi' (default balanced)",
    )
    parser.add_argument(
        "--runs", type=int, default=None, metavar="N", help="seeded runs for the spread (default 2 up to 10 samples, else 3)"
    )
    parser.add_argument("--batches", type=int, default=None, metavar="N", help="samples per run (default all, at most 50)")
    parser.add_argument(
        "--convergence-patience",
        type=int,
        default=5,
        metavar="N",
        help="accepted for Side-Step compatibility; every pass measures all its batches",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--precision", default="auto", choices=cfgmod.PRECISIONS, help="default auto (bf16 on GPUs, fp32 on CPU)")
    parser.add_argument(
        "--attention-backend", default="auto", choices=cfgmod.ATTENTION_BACKENDS, help="attention implementation (default auto)"
    )
    parser.add_argument(
        "-y", "--yes", action="store_true", help="write fisher_map.json without asking (asked only on a terminal)"
    )


def build_parser() -> Parser:
    parser = Parser(prog="sidestep", description="Train LoRA/LoKR adapters for ACE-Step 1.5. Without a command: the TUI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> Parser:
        parser.commands[name] = sub.add_parser(name, **kwargs)
        return parser.commands[name]

    train = command("train", help="train headless (plain text or --json events)")
    add_config_source_arguments(train)
    out = train.add_mutually_exclusive_group()
    out.add_argument("--plain", action="store_true", help="human-readable lines (the default without a terminal)")
    out.add_argument("--json", action="store_true", help="every event as one JSON line on stdout")
    add_schema_flags(train)
    add_train_preprocess_arguments(train)
    train.add_argument(
        "--estimate-only",
        action="store_true",
        help="print the peak-VRAM estimate (breakdown, each GPU's free memory) and exit: 0 = fits or no GPU to compare, "
        "1 = does not fit (with the one change that would make it fit)",
    )

    demo = command("demo", help="set up the built-in demo model and data, then train on it (the TUI on a terminal)")
    demo.add_argument("--root", default=None, help=f"where the demo lives (default {default_demo_root()})")
    demo.add_argument("--plain", action="store_true", help="plain output even on a terminal")
    demo.add_argument("--adapter", choices=cfgmod.ADAPTER_TYPES, default="lora", help="the adapter to train (default lora)")
    demo.add_argument(
        "--max-steps", type=int, default=200, metavar="N", help="optimizer steps to train, then stop and save (default 200)"
    )
    demo.add_argument(
        "--setup-only", action="store_true", help="write the demo model and data, print their paths as JSON, and exit"
    )
    demo.add_argument(
        "--from-tensors",
        action="store_true",
        help="skip the audio -> tensors step: train on synthetic demo tensors (needs --plain on a terminal)",
    )

    serve = command(
        "serve",
        help="the TUI in a browser tab (textual-serve): localhost only, unless --host is given (then the URL carries a token)",
    )
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    serve.add_argument(
        "--host",
        default=None,
        help="the address to listen on (default 127.0.0.1, no token; any --host, 0.0.0.0 for every interface, needs the printed token)",
    )

    presets = command("presets", help="list, show, export or import presets")
    psub = presets.add_subparsers(dest="action", metavar="ACTION", required=True, title="actions")
    psub.add_parser("list", help="every preset (built-in and your own) with its description")
    show = psub.add_parser("show", help="print a preset's settings as JSON")
    show.add_argument("name", help="the preset's name (see `sidestep presets list`)")
    export = psub.add_parser("export", help="write a preset to a file or folder (to share it)")
    export.add_argument("name", help="the preset's name")
    export.add_argument("path", help="a .json file, or a folder to write NAME.json into")
    imp = psub.add_parser("import", help="copy a preset file into your presets (checked first)")
    imp.add_argument("path", help="the preset .json file")
    imp.add_argument("--overwrite", action="store_true", help="replace a user preset of the same name")

    runs = command("runs", help="list run folders with status, steps, best loss and adapter path")
    runs.add_argument("root", nargs="?", default=".", help="the folder holding the run folders (default: the current folder)")

    attach = command("attach", help="follow a run (the TUI monitor; --plain for lines)")
    attach.add_argument("run_dir")
    attach.add_argument("--plain", action="store_true", help="follow the run as plain lines instead of the TUI monitor")
    attach.add_argument("--stop", action="store_true", help="ask the run's engine to stop and save (SIGTERM); needs --plain")

    exp = command("export", help="write an adapter folder as one ComfyUI file (or a ComfyUI LoRA file as a PEFT folder)")
    exp.add_argument(
        "source",
        metavar="ADAPTER_OR_RUN_DIR",
        help="an adapter folder (PEFT or LyCORIS), a run folder (its final/ adapter, else the newest), or for --target peft a LoRA file",
    )
    exp.add_argument("--target", choices=("comfyui", "peft"), default="comfyui", help="what to write (default comfyui)")
    exp.add_argument(
        "--normalize-alpha", action="store_true", help="write alpha = rank and fold the scale into the weights (same delta)"
    )
    exp.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="the file (comfyui) or folder (peft) to write (default: <run>_comfyui.safetensors in the adapter folder)",
    )
    exp.add_argument(
        "--checkpoint-dir", metavar="DIR", help="the base model root, needed for DoRA (default: the one in the run's config.json)"
    )
    exp.add_argument("--model-variant", metavar="NAME", help="the model folder under --checkpoint-dir (default: the run's)")

    add_queue_arguments(command("queue", help="queue training runs and work through them unattended (default: list)"))
    add_generate_arguments(
        command("generate", help="render audio with a model and an optional adapter (the path training samples use)")
    )
    add_dataset_arguments(command("dataset", help="build dataset.json from audio files and sidecar text"))
    add_preprocess_arguments(command("preprocess", help="turn audio into training tensors"))
    add_sidecar_tool_arguments(
        command("tags", help="add, remove, list or clear trigger tags in a dataset's captions"),
        command("convert-sidecars", help="convert sidecars between key: value song.txt and song.caption.txt/.lyrics.txt"),
    )
    add_audio_analyze_arguments(
        command("audio-analyze", help="estimate BPM, key and time signature of audio files into their sidecars")
    )
    add_estimate_arguments(
        command(
            "estimate",
            help="rank the decoder's modules by gradient sensitivity on a dataset; write a module config for --module-config",
        )
    )
    add_compare_arguments(
        command("compare-configs", help="compare module configs / estimate results / fisher maps side by side (overlap, ranks)")
    )
    add_analyze_arguments(
        command("analyze", help="PP++: measure which modules matter for this dataset; writes fisher_map.json for LoRA ranks")
    )
    return parser
