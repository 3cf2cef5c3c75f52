"""Module-config files (stdlib only): what ``sidestep estimate`` writes, what ``sidestep train
--module-config`` trains, what ``sidestep compare-configs`` compares.

The file is Side-Step's estimate output, unchanged (ACE_STEP.md §10.1): a JSON list of
``{"module": "decoder.layers.22.self_attn.q_proj", "sensitivity": 1.2e-05}`` sorted by sensitivity,
highest first. A ``layer``-granularity estimate lists ``decoder.layers.N`` instead (the whole layer).
Read here as well: a plain JSON list of names, an object with a ``modules`` list (of names or of such
entries), and PP++'s ``fisher_map.json`` (its ``modules`` ranked by ``fisher_score``; for training the
modules it gives a rank, ``rank_pattern``).

Names are kept as the decoder knows them, without the ``decoder.`` prefix (``layers.22.self_attn.q_proj``:
what PEFT and LyCORIS see on the bare decoder); ``display`` puts the prefix back. Every problem is one
``ModuleConfigError`` line naming the file and what to change.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

GRANULARITIES = ("module", "layer")
ATTENTIONS = ("self_attn", "cross_attn")
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# The modules an estimate ranks and a module config may name, per decoder layer (ACE_STEP.md §3.5).
LAYER_MODULES = tuple(f"{a}.{p}" for a in ATTENTIONS for p in ATTN_PROJECTIONS) + tuple(f"mlp.{p}" for p in MLP_PROJECTIONS)
DEFAULT_OUTPUT = "estimate_results.json"  # Side-Step's default --estimate-output
TUI_OUTPUT = "module_config.json"  # what the TUI's estimate writes into the dataset folder unless told otherwise
# ``sidestep estimate``'s settings (its flags, the TUI's job): each the training schema's own field.
ESTIMATE_FIELDS = (
    "checkpoint_dir",
    "model_variant",
    "base_model",
    "device",
    "precision",
    "attention_backend",
    "dataset_dir",
    "batch_size",
    "num_workers",
    "seed",
    "chunk_duration",
    "max_latent_length",
    "gradient_checkpointing",
    "estimate_batches",
    "top_k",
    "granularity",
)

_NAME = re.compile(r"(?:^|\.)(layers\.(\d+)(?:\.((?:self_attn|cross_attn)\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))?)$")
EXAMPLE = "decoder.layers.0.self_attn.q_proj"


class ModuleConfigError(ValueError):
    """A module config that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Entry:
    name: str  # layers.N.<kind>.<proj>, or layers.N for a whole layer
    score: float | None

    @property
    def display(self) -> str:
        return display(self.name)

    @property
    def layer(self) -> int:
        return int(self.name.split(".")[1])


@dataclass(frozen=True)
class ModuleConfig:
    path: str
    kind: str  # estimate | list | fisher_map
    entries: tuple[Entry, ...]  # in rank order (best first)
    selected: tuple[str, ...]  # what training on this file adapts (names or layers), in rank order

    @property
    def granularity(self) -> str:
        return "layer" if self.entries and all(e.name.count(".") == 1 for e in self.entries) else "module"

    def modules(self) -> tuple[str, ...]:
        """Every decoder module training on this file adapts (layers expanded), in rank order."""
        return expand(self.selected)


def display(name: str) -> str:
    return "decoder." + name


def canonical(name: str) -> str | None:
    """``layers.N[.kind.proj]`` for any spelling of an adaptable decoder module (with or without a
    ``decoder.`` / ``base_model.model.`` prefix), else None."""
    match = _NAME.search(name.strip()) if isinstance(name, str) else None
    if match is None:
        return None
    # Anything before ``layers.`` must be a plain dotted prefix (``decoder.``), never part of another word.
    prefix = name.strip()[: match.start(1)]
    if prefix and not re.fullmatch(r"(?:[A-Za-z_]\w*\.)+", prefix):
        return None
    return match.group(1)


def expand(names: Iterable[str]) -> tuple[str, ...]:
    """Whole layers (``layers.N``) become their modules; order kept, duplicates dropped."""
    out: dict[str, None] = {}
    for name in names:
        if name.count(".") == 1:
            for kind in LAYER_MODULES:
                out.setdefault(f"{name}.{kind}", None)
        else:
            out.setdefault(name, None)
    return tuple(out)


def _score(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModuleConfigError(f"{where}: score {value!r} is not a finite number")
    return float(value)


def _entry(item: Any, where: str, score_keys: Sequence[str] = ("sensitivity", "score")) -> Entry:
    raw: Any = item
    score: float | None = None
    if isinstance(item, dict):
        raw = item.get("module", item.get("name"))
        if not isinstance(raw, str):
            raise ModuleConfigError(f'{where}: an entry has no "module" name ({json.dumps(item)[:80]})')
        score = next((_score(item[k], where) for k in score_keys if k in item), None)
    elif not isinstance(item, str):
        raise ModuleConfigError(
            f'{where}: an entry is {type(item).__name__}, expected a name or {{"module": ..., "sensitivity": ...}}'
        )
    name = canonical(raw)
    if name is None:
        raise ModuleConfigError(
            f"{where}: {raw!r} is not an adaptable decoder module; names look like {EXAMPLE} "
            f"(q/k/v/o_proj of self_attn or cross_attn, mlp.gate/up/down_proj) or decoder.layers.N for a whole layer"
        )
    return Entry(name, score)


def _dedupe(entries: list[Entry], where: str) -> tuple[Entry, ...]:
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ModuleConfigError(f"{where}: {e.display} is listed twice; keep one entry per module")
        seen.add(e.name)
    return tuple(entries)


def parse(data: Any, where: str) -> ModuleConfig:
    """A module config from decoded JSON (``where`` names it in errors)."""
    if isinstance(data, dict) and "rank_pattern" in data and isinstance(data.get("modules"), list):  # PP++ fisher_map.json
        entries = [_entry(m, where, ("fisher_score",)) for m in data["modules"]]
        ranked = sorted(entries, key=lambda e: -(e.score if e.score is not None else -math.inf))
        pattern = data.get("rank_pattern")
        selected_raw = list(pattern) if isinstance(pattern, dict) and pattern else [e.name for e in ranked]
        selected = [_entry(n, where).name for n in selected_raw]
        order = {e.name: i for i, e in enumerate(ranked)}
        selected.sort(key=lambda n: order.get(n, len(order)))
        return ModuleConfig(where, "fisher_map", _dedupe(ranked, where), tuple(dict.fromkeys(selected)))
    if isinstance(data, dict):
        if not isinstance(data.get("modules"), list):
            raise ModuleConfigError(
                f'{where}: expected a JSON list of {{"module": ..., "sensitivity": ...}} (what `sidestep estimate` writes) '
                'or an object with a "modules" list'
            )
        data = data["modules"]
    if not isinstance(data, list):
        raise ModuleConfigError(
            f'{where}: expected a JSON list of {{"module": ..., "sensitivity": ...}} (what `sidestep estimate` writes)'
        )
    if not data:
        raise ModuleConfigError(f"{where}: lists no modules; run `sidestep estimate` again or add module names")
    listed = _dedupe([_entry(item, where) for item in data], where)
    kind = "estimate" if all(e.score is not None for e in listed) else "list"
    return ModuleConfig(where, kind, listed, tuple(e.name for e in listed))


def load(path: str) -> ModuleConfig:
    """Read ``path`` (``ModuleConfigError`` for a missing, unreadable or malformed file)."""
    shown = os.path.expanduser(path)
    if not os.path.exists(shown):
        raise ModuleConfigError(f"module config {path} does not exist; write one with `sidestep estimate --output {path}`")
    if os.path.isdir(shown):
        raise ModuleConfigError(f"module config {path} is a folder; point at the JSON file `sidestep estimate` wrote")
    try:
        with open(shown, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModuleConfigError(f"module config {path} cannot be read ({exc.__class__.__name__}: {exc})") from None
    except ValueError as exc:
        raise ModuleConfigError(f"module config {path} is not valid JSON ({exc})") from None
    return parse(data, path)


def check_layers(names: Iterable[str], num_layers: int, *, where: str, model: str) -> None:
    """``ModuleConfigError`` when a name points past the model's last decoder layer."""
    beyond = [n for n in names if int(n.split(".")[1]) >= num_layers]
    if beyond:
        more = f" (+{len(beyond) - 1} more)" if len(beyond) > 1 else ""
        raise ModuleConfigError(
            f"{where}: {display(beyond[0])}{more} matches no decoder module: model {model} has {num_layers} layers "
            f"(layers.0 to layers.{num_layers - 1}); estimate again on this model"
        )


def resolve(config: Any) -> Any:
    """``config`` (a ``TrainConfig``) with ``selected_modules`` made concrete and checked, before a run
    starts: the names given, else those of ``module_config`` (read now); whole layers expanded; each one
    checked against the model's layer count. Unchanged without a selection. ``ModuleConfigError`` (one
    line) for a missing or bad file, a name past the last layer, or an auto-estimate that has not run."""
    import dataclasses

    from engine import discovery

    if config.selected_modules:
        names, where = [canonical(n) or n for n in config.selected_modules], "selected_modules"
    elif config.module_config:
        names, where = list(load(config.module_config).selected), config.module_config
    elif config.auto_estimate:
        raise ModuleConfigError(
            "auto_estimate: no estimate has run for this config; start it with `sidestep train` (or the TUI), "
            "or pass --module-config FILE from `sidestep estimate`"
        )
    else:
        return config
    modules = expand(names)
    info = discovery.find_model(config.checkpoint_dir, config.model_variant)
    if info is not None and info.num_hidden_layers:
        check_layers(modules, info.num_hidden_layers, where=where, model=config.model_variant)
    return dataclasses.replace(config, selected_modules=modules)


def to_json_list(ranking: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    """Side-Step's estimate file: ``[{"module": "decoder.layers...", "sensitivity": float}, ...]``."""
    return [{"module": display(name), "sensitivity": float(score)} for name, score in ranking]


RANKING_COLUMNS = ("#", "module", "sensitivity", "top-k")


def ranking_rows(ranking: Sequence[tuple[str, float]], top_k: int) -> list[tuple[str, str, str, str]]:
    """An estimate's ranking as table rows: place, module, score, and ✓ for the ``top_k`` it selects."""
    return [
        (str(i), display(name), f"{score:.3e}", "✓ selected" if i <= top_k else "") for i, (name, score) in enumerate(ranking, 1)
    ]


# --------------------------------------------------------------------------- compare-configs


@dataclass(frozen=True)
class Comparison:
    configs: tuple[ModuleConfig, ...]
    labels: tuple[str, ...]
    pairs: tuple[tuple[str, str, int, float], ...]  # (label a, label b, overlap, Jaccard)
    common: tuple[str, ...]  # in every file
    rows: tuple[tuple[str, tuple[int | None, ...], tuple[float | None, ...]], ...]  # name, 1-based ranks, scores


def compare(configs: Sequence[ModuleConfig]) -> Comparison:
    """Overlap and Jaccard of every pair, the modules common to all, and one row per module (the union)
    with its rank and score in each file; rows ordered by mean rank (absent = after the file's last)."""
    labels = tuple(chr(ord("A") + i) if i < 26 else f"F{i + 1}" for i in range(len(configs)))
    sets = [{e.name for e in c.entries} for c in configs]
    pairs = []
    for i in range(len(configs)):
        for j in range(i + 1, len(configs)):
            inter, union = sets[i] & sets[j], sets[i] | sets[j]
            pairs.append((labels[i], labels[j], len(inter), len(inter) / len(union) if union else 0.0))
    ranks = [{e.name: (k + 1, e.score) for k, e in enumerate(c.entries)} for c in configs]
    union_names: dict[str, None] = {}
    for c in configs:
        for e in c.entries:
            union_names.setdefault(e.name, None)

    def mean_rank(name: str) -> float:
        return sum(r[name][0] if name in r else len(r) + 1 for r in ranks) / len(ranks)

    rows = tuple(
        (
            name,
            tuple(r[name][0] if name in r else None for r in ranks),
            tuple(r[name][1] if name in r else None for r in ranks),
        )
        for name in sorted(union_names, key=lambda n: (mean_rank(n), n))
    )
    common = tuple(n for n in union_names if all(n in s for s in sets))
    return Comparison(tuple(configs), labels, tuple(pairs), common, rows)


def comparison_dict(cmp: Comparison) -> dict[str, Any]:
    return {
        "files": [
            {"label": lab, "path": c.path, "kind": c.kind, "granularity": c.granularity, "count": len(c.entries)}
            for lab, c in zip(cmp.labels, cmp.configs, strict=True)
        ],
        "pairs": [{"a": a, "b": b, "overlap": n, "jaccard": round(jac, 6)} for a, b, n, jac in cmp.pairs],
        "common_to_all": [display(n) for n in cmp.common],
        "rows": [
            {
                "module": display(name),
                "ranks": dict(zip(cmp.labels, ranks, strict=True)),
                "scores": dict(zip(cmp.labels, scores, strict=True)),
            }
            for name, ranks, scores in cmp.rows
        ],
    }


def _cell(rank: int | None, score: float | None) -> str:
    if rank is None:
        return "-"
    return f"#{rank}" + (f" {score:.3e}" if score is not None else "")


def comparison_table(cmp: Comparison) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The rank-by-rank part of the comparison as (header, rows): module, then ``#rank score`` (or ``-``)
    per file, the cells ``comparison_text`` prints."""
    header = ("module", *cmp.labels)
    rows = [(display(n), *(_cell(r, s) for r, s in zip(ranks, scores, strict=True))) for n, ranks, scores in cmp.rows]
    return header, rows


def comparison_text(cmp: Comparison) -> list[str]:
    """The plain-text report: the files, pairwise overlap, then the rank-by-rank table."""
    lines = [
        f"{lab}: {c.path} ({c.kind}, {len(c.entries)} {c.granularity}s)" for lab, c in zip(cmp.labels, cmp.configs, strict=True)
    ]
    if len({c.granularity for c in cmp.configs}) > 1:
        lines.append("note: the files rank at different granularities (module vs layer); they cannot overlap")
    lines.append("")
    for a, b, n, jac in cmp.pairs:
        sizes = "/".join(str(len(c.entries)) for lab, c in zip(cmp.labels, cmp.configs, strict=True) if lab in (a, b))
        lines.append(f"overlap {a}-{b}: {n} of {sizes} (Jaccard {jac:.2f})")
    if len(cmp.configs) > 2:
        lines.append(f"in all {len(cmp.configs)}: {len(cmp.common)}")
    lines.append("")
    width = max([len("module")] + [len(display(n)) for n, _, _ in cmp.rows])
    cells = [[_cell(r, s) for r, s in zip(ranks, scores, strict=True)] for _, ranks, scores in cmp.rows]
    col = max([len(lab) for lab in cmp.labels] + [len(x) for row in cells for x in row])
    lines.append(f"{'module':<{width}}  " + "  ".join(f"{lab:<{col}}" for lab in cmp.labels).rstrip())
    for (name, _, _), row in zip(cmp.rows, cells, strict=True):
        lines.append(f"{display(name):<{width}}  " + "  ".join(f"{x:<{col}}" for x in row).rstrip())
    return lines
