"""Find ACE-Step 1.5 model folders under a checkpoint root, and the GPUs (stdlib only, plus NVML).

Only ``config.json`` files are read, never weights: the UI calls this on every visit to the Models
screen, so it must stay fast on a root holding 100 GB of safetensors. Detection follows Side-Step
(ACE_STEP.md §1.4): a child folder is a model when its ``config.json`` has ``auto_map`` or
``model_type``; ``vae``, ``.git``, ``__pycache__``, ``Qwen*`` and ``acestep-5Hz*`` (planner LMs) are
skipped; names starting with ``acestep-v15-`` / ``acestep-v1-`` are official; the variant comes from
``is_turbo``, then from the folder name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine import codehash
from engine.config import VARIANT_ALIASES, quantizable_params

SKIP_NAMES = frozenset({"vae", ".git", "__pycache__"})
SKIP_PREFIXES = ("Qwen", "acestep-5Hz")
OFFICIAL_PREFIXES = ("acestep-v15-", "acestep-v1-")
TEXT_ENCODER_DIR = "Qwen3-Embedding-0.6B"
VAE_DIR = "vae"
SILENCE_LATENT = "silence_latent.pt"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
XL_HIDDEN_SIZE = 2560
_LFS_MAGIC = b"version https://git-lfs"
REFETCH = "an interrupted download? fetch this model again"


class DiscoveryError(ValueError):
    """A model that cannot be found; one line naming what exists."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str  # folder name
    path: str
    official: bool
    variant: str  # "turbo" | "base" | "sft" | "unknown": the family (the base model of a fine-tune)
    xl: bool
    alias: str  # what to put in model_variant: "turbo", "xl-base", ... or the folder name
    size_bytes: int  # every file in the folder (not recursive into sub-folders)
    weights_bytes: int  # the weight files among them
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    timestep_mu: float | None = None
    timestep_sigma: float | None = None
    is_turbo: bool | None = None
    has_silence_latent: bool = False
    problems: tuple[str, ...] = ()
    quantizable_params: int | None = None  # the decoder's transformer Linear weights (config.quantizable_params)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def base_model(self) -> str | None:
        """The family a fine-tune was trained from, when it could be detected."""
        return self.variant if self.variant != "unknown" else None


@dataclass(frozen=True, slots=True)
class ScanResult:
    root: str
    models: tuple[ModelInfo, ...] = ()
    shared: dict[str, bool] = field(default_factory=dict)  # vae, text_encoder, silence_latent
    problems: tuple[str, ...] = ()

    def by_alias(self) -> dict[str, ModelInfo]:
        return {m.alias: m for m in self.models}


class GpuInfo(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose; NVML index (CUDA may number GPUs differently unless CUDA_DEVICE_ORDER=PCI_BUS_ID)
    name: str
    used_mb: float
    total_mb: float


# --------------------------------------------------------------------------- detection


def detect_variant(config: dict[str, Any], dir_name: str) -> str:
    """turbo / base / sft / unknown: ``is_turbo`` first, then the folder name (Side-Step's rule)."""
    if config.get("is_turbo") is True:
        return "turbo"
    name = dir_name.lower()
    for family in ("turbo", "base", "sft"):
        if f"xl-{family}" in name:
            return family
    for family in ("turbo", "base", "sft"):
        if family in name:
            return family
    return "unknown"


def is_xl(config: dict[str, Any], dir_name: str) -> bool:
    name = dir_name.lower()
    tokens = name.replace("_", "-").split("-")
    return "xl" in tokens or config.get("hidden_size") == XL_HIDDEN_SIZE


def is_official(dir_name: str) -> bool:
    return dir_name.startswith(OFFICIAL_PREFIXES)


def _alias(dir_name: str) -> str:
    for alias, folder in VARIANT_ALIASES.items():
        if folder == dir_name:
            return alias
    return dir_name


def _skipped(name: str) -> bool:
    return name in SKIP_NAMES or name.startswith(SKIP_PREFIXES)


def _read_json(path: str) -> tuple[Any, str | None]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), None
    except json.JSONDecodeError as exc:
        return None, f"line {exc.lineno}: {exc.msg}"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except OSError as exc:
        return None, exc.strerror or str(exc)


def _is_lfs_pointer(path: str, size: int) -> bool:
    if size > 1024:
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_LFS_MAGIC)) == _LFS_MAGIC
    except OSError:
        return False


def _files(directory: str) -> dict[str, int]:
    """name -> size of the plain files directly inside ``directory``."""
    out: dict[str, int] = {}
    try:
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    if entry.is_file():
                        out[entry.name] = entry.stat().st_size
                except OSError:
                    continue
    except OSError:
        pass
    return out


def _auto_map_modules(auto_map: Any) -> list[str]:
    """Module file names referenced by ``auto_map`` values like ``"modeling_x.Class"``,
    ``"repo--modeling_x.Class"`` or ``["tok_slow.Cls", "tok_fast.Cls"]``."""
    values: list[Any] = []
    if isinstance(auto_map, dict):
        for value in auto_map.values():
            values.extend(value if isinstance(value, (list, tuple)) else [value])
    modules: list[str] = []
    for value in values:
        if not isinstance(value, str) or "." not in value:
            continue
        reference = value.split("--", 1)[1] if "--" in value else value
        module = reference.rsplit(".", 1)[0]
        if module and f"{module}.py" not in modules:
            modules.append(f"{module}.py")
    return modules


def _weight_problems(directory: str, files: dict[str, int]) -> list[str]:
    problems: list[str] = []
    if "model.safetensors" in files:
        if _is_lfs_pointer(os.path.join(directory, "model.safetensors"), files["model.safetensors"]):
            problems.append("model.safetensors is a Git LFS pointer, not the weights (run `git lfs pull`)")
        elif files["model.safetensors"] == 0:
            problems.append("model.safetensors is empty")
        return problems
    if "model.safetensors.index.json" in files:
        index, error = _read_json(os.path.join(directory, "model.safetensors.index.json"))
        if error or not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            problems.append(f"model.safetensors.index.json is unreadable ({error or 'no weight_map'})")
            return problems
        shards = sorted({s for s in index["weight_map"].values() if isinstance(s, str)})
        missing = [s for s in shards if s not in files]
        if missing:
            problems.append(f"missing weight shard(s) listed in model.safetensors.index.json: {', '.join(missing)}")
        return problems
    problems.append("no weights (model.safetensors or model.safetensors.index.json)")
    return problems


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


def inspect_model_dir(path: str) -> ModelInfo | None:
    """Describe one folder, or ``None`` when it is not a model (no config.json, or one without
    ``auto_map``/``model_type``). A broken model is shown, not hidden: a config.json that does not
    parse still yields a ModelInfo with the problem, and so does a folder with an official name
    (``acestep-v15-*``) whatever is wrong with it (no config.json, an empty one, ``{}``): that name
    says it was meant to be a model, and an interrupted download must not just vanish from the list."""
    name = os.path.basename(os.path.normpath(path))
    config_path = os.path.join(path, "config.json")
    official = is_official(name)
    if not official and not os.path.isfile(config_path):
        return None
    files = _files(path)
    size = sum(files.values())
    weights = sum(s for f, s in files.items() if f.endswith(WEIGHT_SUFFIXES) and f != SILENCE_LATENT)
    common: dict[str, Any] = dict(
        name=name,
        path=path,
        official=official,
        alias=_alias(name),
        size_bytes=size,
        weights_bytes=weights,
        has_silence_latent=SILENCE_LATENT in files,
    )

    def broken(problem: str) -> ModelInfo:
        problems = (problem, *_weight_problems(path, files))
        return ModelInfo(variant=detect_variant({}, name), xl=is_xl({}, name), problems=problems, **common)

    if "config.json" not in files:
        return broken(f"no config.json ({REFETCH})")
    if files["config.json"] == 0:
        return broken(f"config.json is empty ({REFETCH})")
    config, error = _read_json(config_path)
    if error is not None or not isinstance(config, dict):
        return broken(f"config.json is unreadable ({error})" if error else "config.json is not a JSON object")
    if "auto_map" not in config and "model_type" not in config:
        if not official:
            return None
        return broken(f"config.json has neither auto_map nor model_type ({REFETCH})")
    problems = _weight_problems(path, files)
    missing_code = [m for m in _auto_map_modules(config.get("auto_map")) if m not in files]
    if missing_code:
        problems.append(f"missing modeling file(s) named in auto_map: {', '.join(missing_code)}")
    is_turbo = config.get("is_turbo")
    return ModelInfo(
        variant=detect_variant(config, name),
        xl=is_xl(config, name),
        num_hidden_layers=_number(config.get("num_hidden_layers"), int),
        hidden_size=_number(config.get("hidden_size"), int),
        timestep_mu=_number(config.get("timestep_mu"), float),
        timestep_sigma=_number(config.get("timestep_sigma"), float),
        is_turbo=is_turbo if isinstance(is_turbo, bool) else None,
        problems=tuple(problems),
        quantizable_params=quantizable_params(config),
        **common,
    )


def scan_checkpoints(root: str) -> ScanResult:
    """Every model folder directly under ``root`` (officials first, then by name), which shared
    components are present, and what is wrong (per model in ``ModelInfo.problems``, root-level here)."""
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        return ScanResult(
            root=root,
            shared={"vae": False, "text_encoder": False, "silence_latent": False},
            problems=(f"checkpoint root {root} does not exist or is not a folder",),
        )
    models: list[ModelInfo] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        return ScanResult(root=root, problems=(f"cannot list {root}: {exc.strerror or exc}",))
    for entry in entries:
        if _skipped(entry.name):
            continue
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        info = inspect_model_dir(entry.path)
        if info is not None:
            escape = codehash.outside_root(root, entry.path)
            if escape:  # a link out of the root: its code would run from a folder the user never chose
                info = dataclasses.replace(info, problems=(*info.problems, f"{escape}: refused (move the folder itself here)"))
            models.append(info)
    models.sort(key=lambda m: (not m.official, m.name))

    vae = os.path.isfile(os.path.join(root, VAE_DIR, "config.json"))
    text_encoder = os.path.isdir(os.path.join(root, TEXT_ENCODER_DIR))
    silence = os.path.isfile(os.path.join(root, SILENCE_LATENT)) or any(m.has_silence_latent for m in models)
    problems: list[str] = []
    if not models:
        problems.append(f"no model folders under {root} (expected acestep-v15-turbo/, acestep-v15-base/, ...)")
    if not vae:
        problems.append(f"{VAE_DIR}/ (with config.json) is missing: needed to preprocess audio")
    if not text_encoder:
        problems.append(f"{TEXT_ENCODER_DIR}/ is missing: needed to preprocess audio")
    if not silence:
        problems.append(f"{SILENCE_LATENT} is missing (looked in the root and every model folder)")
    return ScanResult(
        root=root,
        models=tuple(models),
        shared={"vae": vae, "text_encoder": text_encoder, "silence_latent": silence},
        problems=tuple(problems),
    )


def is_path(variant: str) -> bool:
    """``variant`` names a folder elsewhere (absolute, ``~``, ``..`` or with a separator), not a model name."""
    return os.path.isabs(variant) or "/" in variant or "\\" in variant or variant.startswith("~") or variant in (".", "..")


def model_folder(root: str, variant: str) -> str:
    """Where the model ``variant`` (an alias such as ``turbo`` / ``xl-sft``, or a fine-tune's folder
    name) lives under the checkpoint root ``root``: the one mapping of root + variant to a folder
    (whether it exists or not)."""
    return os.path.join(os.path.expanduser(root), VARIANT_ALIASES.get(variant, variant))


def find_model(root: str, variant: str) -> ModelInfo | None:
    """The ``ModelInfo`` of ``variant`` under ``root``, or None without a root, a variant or a model
    folder there (the screens' quiet lookup; ``resolve_model_dir`` is the one that explains)."""
    if not root or not variant:
        return None
    path = model_folder(root, variant)
    return inspect_model_dir(path) if os.path.isdir(path) else None


def check_model_name(root: str, variant: str) -> str:
    """``model_folder(root, variant)``, or ``DiscoveryError`` (one line) when its code would run from
    outside the checkpoint root: ``variant`` is a path, or the folder or one of its ``.py`` files is a
    link out of the root. A folder that does not exist passes (``resolve_model_dir`` names it)."""
    if is_path(variant):
        raise DiscoveryError(
            f"model {variant!r} is a path; --model takes the name of a model folder under the checkpoint root {root} "
            "(e.g. turbo, or a fine-tune's folder name): put the folder there"
        )
    path = model_folder(root, variant)
    escape = codehash.outside_root(root, path) if os.path.isdir(path) else None
    if escape:  # its code would run from a folder the user never chose as the checkpoint root
        raise DiscoveryError(
            f"model {variant!r}: {escape}; model code only runs from the checkpoint root you chose: "
            "move the folder (not a link) under it, or set --checkpoint-dir"
        )
    return path


def resolve_model_dir(root: str, variant: str) -> str:
    """The folder of ``variant`` under ``root`` (``model_folder``); ``DiscoveryError`` listing the
    available variants when it is missing."""
    folder = VARIANT_ALIASES.get(variant, variant)
    path = check_model_name(root, variant)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    scan = scan_checkpoints(root)
    available = ", ".join(m.alias for m in scan.models) or "none"
    if os.path.isdir(path):
        raise DiscoveryError(f"model {variant!r}: {path} has no config.json (available: {available})")
    raise DiscoveryError(f"model {variant!r}: no folder {folder} under {root} (available: {available})")


# --------------------------------------------------------------------------- GPUs


def gpus() -> list[GpuInfo]:
    """The NVIDIA GPUs NVML sees, with memory in MiB; ``[]`` without the NVML package, library or
    driver. Cheap (device-level queries only, no per-process queries)."""
    try:
        import pynvml  # from nvidia-ml-py; light, no CUDA context
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # NVMLError_LibraryNotFound / _DriverNotLoaded / ...
        return []
    try:
        out: list[GpuInfo] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError:  # one lost or inaccessible GPU must not hide the others
                continue
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            out.append(GpuInfo(index, name, memory.used / 2**20, memory.total / 2**20))
        return out
    except pynvml.NVMLError:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
