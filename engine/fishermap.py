"""``fisher_map.json``: the per-module LoRA rank map that ``sidestep analyze`` (PP++) writes into a dataset
folder and LoRA/DoRA training reads from it (stdlib only: the UI, the CLI and the trainer share it).

The file is Side-Step's schema version 2 (ACE_STEP.md §10.2), field for field, so Side-Step's maps load
here and ours load there. ``rank_pattern`` / ``alpha_pattern`` keys are module paths without the
``decoder.`` prefix (``layers.3.self_attn.q_proj``), which PEFT matches as path suffixes; ``modules``
lists the ranked modules (full ``decoder.`` names) best first, ``excluded_modules`` those given no rank.

The rank allocation itself (§10.2 step 8) is plain arithmetic on the measured scores and lives here
(``assign_ranks``), so it is testable without torch; ``engine.analysis.fisher`` measures the scores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine import fsutil

FILE_NAME = "fisher_map.json"
SCHEMA_VERSION = 2
GROUPS = ("self_attn", "cross_attn", "mlp")
TARGET_LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FOCUS_RANGES = {"balanced": (0.0, 1.0), "texture": (0.0, 0.4), "structure": (0.6, 1.0)}
INCLUDE_FRACTION = 0.55  # the top share of modules by Fisher score that get a rank
GROUP_FLOOR = 0.10  # ... then at least this share (and at least one) of each group
ENERGY = 0.95  # spectral effective rank: singular values needed for this share of sum(sigma^2)
DECODER_PREFIX = "decoder."
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")

# field -> (JSON type(s), required for training to use the map)
_NUM = (int, float)
SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "version": ((int,), False),
    "model_variant": ((str,), False),
    "timestep_focus": ((str,), False),
    "timestep_range": ((list,), False),
    "timestep_params": ((dict,), False),
    "num_runs": ((int,), False),
    "batches_per_run": ((int,), False),
    "total_batches": ((int,), False),
    "base_rank": ((int,), False),
    "rank_budget": ((dict,), False),
    "dataset_hash": ((str,), False),
    "target_modules": ((list,), True),
    "rank_pattern": ((dict,), True),
    "alpha_pattern": ((dict,), True),
    "modules": ((list,), False),
    "excluded_modules": ((list,), False),
    "sample_coverage": ((list,), False),
    "num_hidden_layers": ((int,), False),
}
MODULE_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "fisher_score": _NUM,
    "fisher_cross_run_std": _NUM,
    "effective_rank": (int,),
    "assigned_rank": (int,),
}
COVERAGE_FIELDS: dict[str, tuple[type, ...]] = {
    "run": (int,),
    "selected_count": (int,),
    "total_count": (int,),
    "coverage_ratio": _NUM,
    "selected_files": (list,),
}


class FisherMapError(ValueError):
    """A fisher_map.json that cannot be used: one line naming the file, the problem and the fix."""


def path_in(dataset_dir: str | os.PathLike) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(os.fspath(dataset_dir))), FILE_NAME)


def dataset_hash(dataset_dir: str | os.PathLike) -> str:
    """Side-Step's staleness fingerprint: the first 12 hex of the md5 of ``"name:size"`` of the folder's
    ``*.pt`` files, sorted, joined by ``|`` (so a map from Side-Step matches the same tensors here)."""
    root = os.fspath(dataset_dir)
    entries = sorted(
        (e.name, e.stat().st_size) for e in os.scandir(root) if e.name.endswith(".pt") and e.is_file(follow_symlinks=True)
    )
    payload = "|".join(f"{name}:{size}" for name, size in entries)
    return hashlib.md5(payload.encode()).hexdigest()[:12]


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def schema_problems(data: Any, *, complete: bool = True) -> list[str]:
    """Every way ``data`` departs from schema version 2 (empty = valid). ``complete=False`` checks only the
    fields training needs plus the types of the others that are present (a hand-written map may be terse)."""
    if not isinstance(data, dict):
        return [f"holds a {type(data).__name__}, not a JSON object"]
    problems: list[str] = []
    for name, (types, required) in SCHEMA.items():
        if name not in data:
            if required or complete:
                problems.append(f"lacks {name!r}")
            continue
        if not _is(data[name], types):
            problems.append(f"{name!r} is a {type(data[name]).__name__}, not a {'/'.join(t.__name__ for t in types)}")
    if problems:
        return problems
    version = data.get("version", SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        problems.append(f"is schema version {version}; this program reads up to {SCHEMA_VERSION}")
    targets = data["target_modules"]
    if not targets or not all(isinstance(t, str) and t for t in targets):
        problems.append("'target_modules' must be a non-empty list of module-name suffixes")
    ranks, alphas = data["rank_pattern"], data["alpha_pattern"]
    if not ranks:
        problems.append("'rank_pattern' is empty")
    bad = [k for k, v in ranks.items() if not _is(v, (int,)) or v < 1]
    if bad:
        problems.append(f"'rank_pattern' has a rank that is not a positive integer ({bad[0]}: {ranks[bad[0]]!r})")
    bad = [k for k, v in alphas.items() if not _is(v, _NUM) or v <= 0]
    if bad:
        problems.append(f"'alpha_pattern' has an alpha that is not a positive number ({bad[0]}: {alphas[bad[0]]!r})")
    extra = sorted(set(alphas) - set(ranks))
    if extra:
        problems.append(f"'alpha_pattern' names {extra[0]}, which 'rank_pattern' does not")
    for i, entry in enumerate(data.get("modules", [])):
        if not isinstance(entry, dict):
            problems.append(f"'modules'[{i}] is not an object")
            break
        wrong = [k for k, t in MODULE_FIELDS.items() if not _is(entry.get(k), t)]
        if wrong:
            problems.append(f"'modules'[{i}] lacks or mistypes {wrong[0]!r}")
            break
    for i, entry in enumerate(data.get("sample_coverage", [])):
        wrong = [k for k, t in COVERAGE_FIELDS.items() if not isinstance(entry, dict) or not _is(entry.get(k), t)]
        if wrong:
            problems.append(f"'sample_coverage'[{i}] lacks or mistypes {wrong[0]!r}")
            break
    if complete:
        tr = data["timestep_range"]
        if len(tr) != 2 or not all(_is(x, _NUM) for x in tr):
            problems.append("'timestep_range' must be [lo, hi]")
        if not all(_is(data["timestep_params"].get(k), _NUM) for k in ("mu", "sigma", "data_proportion")):
            problems.append("'timestep_params' must hold mu, sigma and data_proportion")
        if not all(_is(data["rank_budget"].get(k), (int,)) for k in ("min", "max")):
            problems.append("'rank_budget' must hold integer min and max")
    return problems


@dataclass(frozen=True)
class FisherMap:
    """A loaded, validated map. ``data`` is the file's JSON object as read."""

    path: str
    data: dict[str, Any]

    @property
    def rank_pattern(self) -> dict[str, int]:
        return dict(self.data["rank_pattern"])

    @property
    def alpha_pattern(self) -> dict[str, float]:
        return dict(self.data["alpha_pattern"])

    @property
    def target_modules(self) -> list[str]:
        return list(self.data["target_modules"])

    @property
    def modules(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.data.get("modules", [])]

    def summary(self) -> str:
        """One line: how many modules get which ranks, and from what."""
        ranks = sorted(self.rank_pattern.values())
        median = statistics.median(ranks)
        excluded = len(self.data.get("excluded_modules", []))
        focus = self.data.get("timestep_focus", "?")
        runs = self.data.get("num_runs", "?")
        return (
            f"{len(ranks)} modules at rank {ranks[0]}-{ranks[-1]} (median {median:g}), {excluded} excluded; "
            f"focus {focus}, {runs} run(s)"
        )


def load(path: str | os.PathLike) -> FisherMap:
    """Read and validate ``path``; a file training cannot use raises ``FisherMapError`` (one line)."""
    path = os.fspath(path)
    fix = f"run `sidestep analyze --dataset-dir {os.path.dirname(os.path.abspath(path))}` again, or delete it"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise FisherMapError(f"{path}: cannot be read ({exc.strerror or exc}); {fix}") from None
    except ValueError as exc:
        raise FisherMapError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); {fix}") from None
    problems = schema_problems(data, complete=False)
    if problems:
        raise FisherMapError(f"{path}: {problems[0]}; {fix}")
    return FisherMap(path=path, data=data)


def find(dataset_dir: str | os.PathLike) -> FisherMap | None:
    """The dataset folder's map, None when it has none; a broken one raises ``FisherMapError``."""
    path = path_in(dataset_dir)
    return load(path) if os.path.isfile(path) else None


def write(dataset_dir: str | os.PathLike, data: dict[str, Any]) -> str:
    """Validate ``data`` against the full schema and write it atomically as the folder's map."""
    problems = schema_problems(data)
    if problems:
        raise FisherMapError(f"refusing to write an invalid {FILE_NAME}: {problems[0]}")
    path = path_in(dataset_dir)
    fsutil.write_json(path, data, indent=2)
    return path


def _canonical_variant(name: str) -> str:
    from engine.config import VARIANT_ALIASES  # stdlib contract module

    return VARIANT_ALIASES.get(name, name).rstrip("/").lower()


def mismatch_warnings(
    fmap: FisherMap, *, model_variant: str | None = None, num_hidden_layers: int | None = None, dataset_dir: str | None = None
) -> list[str]:
    """One line per way the map may not fit this run: another model variant, another layer count, or
    tensors that changed since the analysis (Side-Step's three checks)."""
    data, name = fmap.data, os.path.basename(fmap.path) or FILE_NAME
    redo = "run `sidestep analyze` again or pass --ignore-fisher-map"
    lines = []
    made_for = data.get("model_variant")
    if (
        model_variant
        and isinstance(made_for, str)
        and made_for
        and _canonical_variant(made_for) != _canonical_variant(model_variant)
    ):
        lines.append(f"{name} was computed for model {made_for!r}, this run uses {model_variant!r}; {redo}")
    layers = data.get("num_hidden_layers")
    if num_hidden_layers is not None and isinstance(layers, int) and layers != num_hidden_layers:
        lines.append(
            f"{name} was computed for a {layers}-layer model, this model has {num_hidden_layers}: its per-layer ranks "
            f"do not line up; {redo}"
        )
    recorded = data.get("dataset_hash")
    if dataset_dir and isinstance(recorded, str) and recorded and os.path.isdir(dataset_dir):
        current = dataset_hash(dataset_dir)
        if current != recorded:
            lines.append(f"{name}: the dataset's tensors changed since the analysis (hash {recorded} -> {current}); {redo}")
    return lines


# --------------------------------------------------------------------------- building a map


def group_of(name: str) -> str | None:
    """``self_attn``, ``cross_attn`` or ``mlp`` for a target module name, else None."""
    parts = name.split(".")
    if len(parts) < 2 or parts[-1] not in TARGET_LEAVES:
        return None
    return parts[-2] if parts[-2] in GROUPS else None


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def peft_key(name: str) -> str:
    return name[len(DECODER_PREFIX) :] if name.startswith(DECODER_PREFIX) else name


def focus_range(focus: str) -> tuple[float, float]:
    """``balanced``/``texture``/``structure`` or ``"lo,hi"`` (0 <= lo < hi <= 1) as its t range; bad text raises."""
    if focus in FOCUS_RANGES:
        return FOCUS_RANGES[focus]
    parts = focus.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"timestep focus {focus!r} is not balanced, texture, structure or 'lo,hi' (two numbers in [0, 1], e.g. 0.2,0.6)"
        ) from None
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"timestep focus {focus!r}: need 0 <= lo < hi <= 1, e.g. 0.2,0.6")
    return lo, hi


def effective_rank(singular_values: Sequence[float], energy: float = ENERGY) -> int:
    """How many of the (descending) singular values hold ``energy`` of sum(sigma^2); at least 1."""
    squares = sorted((float(s) ** 2 for s in singular_values), reverse=True)
    total = sum(squares)
    if total <= 0:
        return 1
    running = 0.0
    for i, sq in enumerate(squares, start=1):
        running += sq
        if running >= energy * total:
            return i
    return len(squares)


def _sig(x: float) -> float:
    """Six significant digits (Side-Step rounds to 8 decimals, which zeroes a large model's tiny scores)."""
    return float(f"{float(x):.6g}")


def _round8(x: float) -> int:
    return math.floor(x / 8.0 + 0.5) * 8


def assign_ranks(
    scores: Mapping[str, float],
    effective_ranks: Mapping[str, int],
    *,
    base_rank: int,
    rank_min: int,
    rank_max: int,
) -> tuple[list[str], dict[str, int], dict[str, int], list[str]]:
    """§10.2 step 8: the top 55 % of modules by Fisher score, then at least max(1, 10 %) of each group;
    rank = round-to-8(base_rank * sqrt(F / median F * S / median S)) clamped to [rank_min, rank_max]
    (medians over the included modules), alpha = 2 * rank. Returns ``(target_modules, rank_pattern,
    alpha_pattern, excluded)``; pattern keys drop the ``decoder.`` prefix."""
    if not 1 <= rank_min <= base_rank <= rank_max:
        raise ValueError(f"need 1 <= rank-min ({rank_min}) <= rank ({base_rank}) <= rank-max ({rank_max})")
    ordered = sorted(scores, key=lambda n: (-scores[n], n))
    if not ordered:
        raise ValueError("no modules were measured")
    keep = max(1, math.ceil(len(ordered) * INCLUDE_FRACTION))
    included = set(ordered[:keep])
    for group in GROUPS:
        members = [n for n in ordered if group_of(n) == group]
        floor = max(1, math.ceil(len(members) * GROUP_FLOOR)) if members else 0
        for n in members[:floor]:
            included.add(n)
    chosen = [n for n in ordered if n in included]
    median_f = statistics.median(scores[n] for n in chosen)
    median_s = statistics.median(effective_ranks.get(n, 1) for n in chosen)
    rank_pattern: dict[str, int] = {}
    for n in chosen:
        f_ratio = scores[n] / median_f if median_f > 0 else 1.0
        s_ratio = effective_ranks.get(n, 1) / median_s if median_s > 0 else 1.0
        raw = base_rank * math.sqrt(max(f_ratio, 0.0) * max(s_ratio, 0.0))
        rank_pattern[peft_key(n)] = min(rank_max, max(rank_min, _round8(raw)))
    alpha_pattern = {k: 2 * r for k, r in rank_pattern.items()}
    targets = sorted({".".join(k.split(".")[-2:]) for k in rank_pattern})
    excluded = [n for n in ordered if n not in included]
    return targets, rank_pattern, alpha_pattern, excluded


def build(
    *,
    model_variant: str,
    timestep_focus: str,
    timestep_params: Mapping[str, float],
    num_runs: int,
    batches_per_run: int,
    total_batches: int,
    base_rank: int,
    rank_min: int,
    rank_max: int,
    dataset_dir: str,
    scores: Mapping[str, float],
    stds: Mapping[str, float],
    effective_ranks: Mapping[str, int],
    sample_coverage: Sequence[Mapping[str, Any]],
    num_hidden_layers: int | None,
) -> dict[str, Any]:
    """The schema-2 map for measured ``scores`` (full ``decoder.`` names), ready for ``write``."""
    targets, rank_pattern, alpha_pattern, excluded = assign_ranks(
        scores, effective_ranks, base_rank=base_rank, rank_min=rank_min, rank_max=rank_max
    )
    modules = [
        {
            "name": n,
            "fisher_score": _sig(scores[n]),
            "fisher_cross_run_std": _sig(stds.get(n, 0.0)),
            "effective_rank": int(effective_ranks.get(n, -1)),
            "assigned_rank": rank_pattern[peft_key(n)],
        }
        for n in sorted(scores, key=lambda n: (-scores[n], n))
        if peft_key(n) in rank_pattern
    ]
    data: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "model_variant": model_variant,
        "timestep_focus": timestep_focus,
        "timestep_range": list(focus_range(timestep_focus)),
        "timestep_params": {k: float(timestep_params[k]) for k in ("mu", "sigma", "data_proportion")},
        "num_runs": num_runs,
        "batches_per_run": batches_per_run,
        "total_batches": total_batches,
        "base_rank": base_rank,
        "rank_budget": {"min": rank_min, "max": rank_max},
        "dataset_hash": dataset_hash(dataset_dir),
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules": modules,
        "excluded_modules": excluded,
        "sample_coverage": [dict(c) for c in sample_coverage],
    }
    if num_hidden_layers is not None:
        data["num_hidden_layers"] = num_hidden_layers
    return data


def layer_heat(fmap: FisherMap) -> list[float]:
    """Per decoder layer, the mean Fisher score of its ranked modules scaled to [0, 1] (the hottest
    layer is 1; a layer with none ranked is 0): the TUI's heat strip."""
    sums: dict[int, list[float]] = {}
    for m in fmap.modules:
        layer = layer_of(str(m.get("name", "")))
        if layer is not None:
            sums.setdefault(layer, []).append(float(m.get("fisher_score", 0.0)))
    if not sums:
        return []
    depth = max(fmap.data.get("num_hidden_layers") or 0, max(sums) + 1)
    means = [statistics.fmean(sums[i]) if i in sums else 0.0 for i in range(depth)]
    top = max(means)
    return [m / top if top > 0 else 0.0 for m in means]


def table_rows(fmap: FisherMap) -> list[tuple[str, str, str, str]]:
    """``(module, score ± spread, effective rank, assigned rank)`` per ranked module, best first."""
    rows = []
    for m in fmap.modules:
        rows.append(
            (
                peft_key(str(m["name"])),
                f"{float(m['fisher_score']):.3e} ± {float(m['fisher_cross_run_std']):.1e}",
                str(m["effective_rank"]),
                str(m["assigned_rank"]),
            )
        )
    return rows


HEAT = " ▁▂▃▄▅▆▇█"


def heat_strip(values: Sequence[float]) -> str:
    """One character per layer, taller = higher mean Fisher score (``layer_heat``)."""
    return "".join(HEAT[min(len(HEAT) - 1, max(0, round(v * (len(HEAT) - 1))))] for v in values)


# ``sidestep analyze``'s options as the engine job takes them (``StartAnalysis.options_json``); the keys
# are ``engine.analysis.fisher.AnalyzeOptions``'s fields, its defaults Side-Step's.
ANALYZE_DEFAULTS: dict[str, Any] = {
    "rank": 64,
    "rank_min": 16,
    "rank_max": 128,
    "timestep_focus": "balanced",
    "runs": None,
    "batches": None,
    "device": "auto",
    "precision": "auto",
    "attention_backend": "auto",
}


def analyze_options_json(checkpoint_dir: str, model_variant: str, dataset_dir: str, **options: Any) -> str:
    """The JSON a ``StartAnalysis`` carries (the UI builds it without importing the analysis)."""
    unknown = sorted(set(options) - set(ANALYZE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown analyze option {unknown[0]!r}")
    values = {**ANALYZE_DEFAULTS, **options, "checkpoint_dir": checkpoint_dir, "model_variant": model_variant}
    values["dataset_dir"] = dataset_dir
    return json.dumps(values, sort_keys=True)


def run_note(dataset_dir: str, *, adapter_type: str, ignore: bool, rank: int) -> str | None:
    """What a run on ``dataset_dir`` will do with its fisher_map.json (None: there is none), one line:
    for the Setup review, before the run says it again in its first lines."""
    if not dataset_dir or not os.path.isfile(path_in(dataset_dir)):
        return None
    if adapter_type != "lora":
        return f"Fisher rank map: {FILE_NAME} is for LoRA/DoRA; this {adapter_type} run does not use it"
    if ignore:
        return f"Fisher rank map: {FILE_NAME} ignored (--ignore-fisher-map): every module at rank {rank}"
    try:
        fmap = find(dataset_dir)
    except FisherMapError as exc:
        return f"Fisher rank map: ✗ {exc}"
    return f"Fisher rank map: {fmap.summary() if fmap else ''} (--ignore-fisher-map for rank {rank} everywhere)"
