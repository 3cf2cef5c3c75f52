"""Read the structure of ``torch.save`` files without torch, and check a preprocessed dataset.

A ``.pt`` written by torch >= 1.6 is a zip: ``<name>/data.pkl`` (the pickled object graph) plus one
member per storage (``<name>/data/<key>``). Tensors appear in the pickle as calls to
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storage is a persistent
id ``("storage", torch.BFloat16Storage, key, location, numel)``. A restricted unpickler maps those
names to stubs, so only ``data.pkl`` is read (never the storages) and nothing from the file is ever
imported or executed: unknown classes become inert ``Opaque`` placeholders.

``scan_dataset`` uses this to check every sample of a dataset folder (ACE_STEP.md §4.1-4.2) in
milliseconds per file.
"""

from __future__ import annotations

import codecs
import collections
import io
import json
import os
import pickle
import re
import shlex
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

LATENT_FPS = 25.0  # 48 kHz / hop 1920 (ACE_STEP.md §4.4)
LATENT_CHANNELS = 64  # VAE latent
CONTEXT_CHANNELS = 128  # silence latent + chunk mask (§4.1)
# The sample tensor schema (ACE_STEP.md §4.1), defined here once: this module checks files without
# torch, ``engine.data.dataset`` checks loaded tensors, both with ``sample_problems``. Each key maps to
# its dimensions: T = latent frames, L = encoder tokens, H = encoder width, a number = a fixed size.
SAMPLE_SCHEMA: dict[str, tuple[str | int, ...]] = {
    "target_latents": ("T", LATENT_CHANNELS),
    "attention_mask": ("T",),
    "encoder_hidden_states": ("L", "H"),
    "encoder_attention_mask": ("L",),
    "context_latents": ("T", CONTEXT_CHANNELS),
}
REQUIRED_KEYS = tuple(SAMPLE_SCHEMA)
FLOAT_KEYS = ("target_latents", "encoder_hidden_states", "context_latents")
FRAME_KEYS = tuple(k for k, dims in SAMPLE_SCHEMA.items() if dims[0] == "T")  # cropped together along T
MANIFEST_FILE = "manifest.json"
PREPROCESS_META_FILE = "preprocess_meta.json"
SAMPLE_SUFFIX = ".pt"
INTERMEDIATE_SUFFIX = ".tmp.pt"  # preprocessing's pass-1 output: never a sample
# How the encoder states were conditioned (ACE_STEP.md §19, issue 9), recorded in preprocess_meta.json:
# "inference" encodes prompt and lyrics as ACE-Step's inference does (lyrics wrapped in the language
# header, no padding tokens, the silence latent as the timbre reference, states trimmed to their valid
# tokens); "legacy" reproduces the upstream trainer (raw lyrics padded to 512, text padded to 256, zero
# timbre). TENSOR_FORMAT versions the tensors: a meta without ``tensor_format`` (or no meta at all) is
# format 1, always legacy conditioning.
CONDITIONING_MODES = ("inference", "legacy")
MIXED_CONDITIONING = "mixed"  # a folder holding files of both modes (see file_conditioning in the meta)
SYNTHETIC_CONDITIONING = "synthetic"  # the demo's generated states: no text was encoded, nothing to redo
TENSOR_FORMAT = 2
LEGACY_TENSOR_FORMAT = 1

_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}
_DTYPE_NAME = re.compile(
    r"^(u?int\d*|float\d+(_\w+)?|bfloat16|complex\d+|c?half|c?float|c?double|chalf|long|short|bool|q(u)?int\w*|bits\d\w*|bit)$"
)
_FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})


class PtError(ValueError):
    """A file that is not a readable torch zip archive; the message names the file."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # torch's name without the "torch." prefix: "bfloat16", "float32", "bool", ...

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Opaque:
    """An object of a class this reader does not know (kept inert, never imported)."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True, slots=True)
class _DType:
    name: str


@dataclass(frozen=True, slots=True)
class _StorageRef:
    dtype: str
    key: str
    location: str
    numel: int


def _dtype_of(value: Any) -> str:
    if isinstance(value, _DType):
        return value.name
    if isinstance(value, _StorageRef):
        return value.dtype
    return "unknown"


def _shape(size: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in size) if isinstance(size, (tuple, list)) else ()


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> TensorInfo:
    return TensorInfo(_shape(size), _dtype_of(storage))


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *rest: Any
) -> TensorInfo:
    return TensorInfo(_shape(size), _dtype_of(dtype))


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _rebuild_meta(dtype: Any, size: Any, *rest: Any) -> TensorInfo:
    return TensorInfo(_shape(size), _dtype_of(dtype))


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args) if callable(func) else Opaque()


def _safe_codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``."""
    return codecs.encode(text, encoding, errors)


_TORCH_UTILS = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
    "_rebuild_device_tensor_from_cpu_tensor": _rebuild_parameter,
    "_rebuild_meta_tensor_no_storage": _rebuild_meta,
}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _safe_codecs_encode,
}
_OPAQUE_TYPES: dict[str, type] = {}


def _opaque(module: str, name: str) -> type:
    qualname = f"{module}.{name}"
    if qualname not in _OPAQUE_TYPES:
        _OPAQUE_TYPES[qualname] = type(name, (Opaque,), {"qualname": qualname, "__module__": __name__})
    return _OPAQUE_TYPES[qualname]


class _Unpickler(pickle.Unpickler):
    """Resolves no global from the file: torch names map to stubs, the rest to ``Opaque``."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol-2 pickles (torch's default) use Python 2 module names
            module = "builtins"
        if module == "torch._utils" and name in _TORCH_UTILS:
            return _TORCH_UTILS[name]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch":
            if name in _STORAGE_DTYPES:
                return _StorageType(_STORAGE_DTYPES[name])
            if _DTYPE_NAME.match(name):  # dtypes are pickled as bare globals: torch.float32, torch.bool
                return _DType(name)
        return _opaque(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            _, storage_type, key, location, numel = pid
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else "unknown"
            return _StorageRef(dtype, str(key), str(location), int(numel) if isinstance(numel, int) else -1)
        raise pickle.UnpicklingError(f"unsupported persistent id {type(pid).__name__}")


def _data_pkl_name(names: list[str]) -> str | None:
    candidates = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not candidates and "data.pkl" in names:
        candidates = ["data.pkl"]
    return candidates[0] if candidates else None


def read_structure(path: str) -> Any:
    """The object graph of a torch.save file with tensors replaced by ``TensorInfo``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise PtError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise PtError(f"{path}: empty file")
    if head[:2] != b"PK":
        if head[:1] == b"\x80":
            raise PtError(f"{path}: legacy (pre-1.6, non-zip) torch.save format; load and re-save it with a current torch")
        raise PtError(f"{path}: not a torch.save zip archive")
    try:
        with zipfile.ZipFile(path) as archive:
            member = _data_pkl_name(archive.namelist())
            if member is None:
                raise PtError(f"{path}: zip archive without data.pkl (not written by torch.save)")
            payload = archive.read(member)
    except zipfile.BadZipFile as exc:
        raise PtError(f"{path}: corrupt or truncated ({exc})") from None
    except (OSError, EOFError) as exc:
        raise PtError(f"{path}: unreadable ({exc})") from None
    try:
        return _Unpickler(io.BytesIO(payload)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError) as exc:
        raise PtError(f"{path}: data.pkl does not unpickle ({type(exc).__name__}: {exc})") from None


def inspect_pt(path: str) -> dict[str, Any]:
    """``{key: TensorInfo | plain value}`` for a file holding a dict (the sample format)."""
    data = read_structure(path)
    if not isinstance(data, dict):
        raise PtError(f"{path}: holds a {type(data).__name__}, not a dict")
    return dict(data)


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True, slots=True)
class DatasetReport:
    directory: str
    samples: int  # files that pass every check
    total_seconds: float  # over the good samples, from T / 25 fps
    longest_seconds: float
    files: tuple[str, ...]  # the sample files examined, relative to ``directory`` where possible
    problems: tuple[tuple[str, str], ...]  # (file, message); "." for the folder itself
    variant: str | None  # model_variant from preprocess_meta.json
    hidden_size: int | None = None  # encoder_hidden_states width shared by the samples
    used_manifest: bool = False
    tensor_format: TensorFormat | None = None  # from preprocess_meta.json (None only when the folder is missing)

    @property
    def ok(self) -> bool:
        return self.samples > 0 and not self.problems


@dataclass(frozen=True, slots=True)
class _Sample:
    name: str
    frames: int = 0
    hidden: int | None = None
    problems: tuple[str, ...] = ()


def expected_shape(key: str) -> str:
    return "[" + ", ".join(str(d) for d in SAMPLE_SCHEMA[key]) + "]"


def sample_problems(data: dict[str, Any]) -> list[str]:
    """Everything that keeps one sample from fitting ``SAMPLE_SCHEMA`` (keys, tensor ranks and fixed
    sizes, emptiness, float dtypes, equal T and equal L inside the file), one line each; ``[]`` when it
    fits. Tensors are described by ``TensorInfo`` (shape and dtype name)."""
    problems: list[str] = []
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        problems.append(f"missing key(s): {', '.join(missing)}")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, dims in SAMPLE_SCHEMA.items():
        if key not in data:
            continue
        info = data[key]
        if not isinstance(info, TensorInfo):
            problems.append(f"{key} is not a tensor ({type(info).__name__})")
            continue
        if info.ndim != len(dims) or any(isinstance(d, int) and info.shape[i] != d for i, d in enumerate(dims)):
            problems.append(f"{key} has shape {list(info.shape)}, expected {expected_shape(key)}")
        elif info.numel == 0:
            problems.append(f"{key} is empty (shape {list(info.shape)})")
        else:
            shapes[key] = info.shape
        if key in FLOAT_KEYS and info.dtype not in _FLOAT_DTYPES:
            problems.append(f"{key} has dtype {info.dtype}, expected a floating type")
    for dim in ("T", "L"):
        sizes = {k: shape[0] for k, shape in shapes.items() if SAMPLE_SCHEMA[k][0] == dim}
        if len(set(sizes.values())) > 1:
            problems.append(f"{dim} differs: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return problems


def is_sample_name(name: str) -> bool:
    """A file name that holds a training sample (``*.pt``, not a pass-1 ``*.tmp.pt``)."""
    return name.endswith(SAMPLE_SUFFIX) and not name.endswith(INTERMEDIATE_SUFFIX)


def folder_samples(directory: str) -> list[str]:
    """The sample files directly inside ``directory`` (without a manifest), sorted."""
    return sorted(
        os.path.join(directory, n)
        for n in os.listdir(directory)
        if is_sample_name(n) and os.path.isfile(os.path.join(directory, n))
    )


def resolve_manifest_entry(entry: str, directory: str) -> str | None:
    """A ``manifest.json`` sample entry as an existing file: as written (when absolute), then relative
    to the dataset folder, then by file name in it (manifests written on another machine hold foreign
    paths); None when none exists."""
    norm = entry.strip().replace("\\", "/")
    candidates = [norm] if os.path.isabs(norm) else []
    candidates += [os.path.join(directory, norm), os.path.join(directory, os.path.basename(norm))]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    return os.path.normpath(found) if found is not None else None


def _check_sample(path: str, name: str) -> _Sample:
    try:
        data = inspect_pt(path)
    except PtError as exc:
        return _Sample(name, problems=(str(exc).removeprefix(f"{path}: "),))
    problems = sample_problems(data)
    target, states = data.get("target_latents"), data.get("encoder_hidden_states")
    frames = target.shape[0] if isinstance(target, TensorInfo) and target.ndim == 2 else 0
    hidden = states.shape[1] if isinstance(states, TensorInfo) and states.ndim == 2 else None
    return _Sample(name, frames=frames, hidden=hidden, problems=tuple(problems))


def _manifest_files(directory: str, problems: list[tuple[str, str]]) -> list[str] | None:
    """Sample paths from ``manifest.json`` (upstream format; extra keys tolerated), or None to scan."""
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append((MANIFEST_FILE, f"unreadable, scanning *.pt instead ({exc})"))
        return None
    samples = manifest.get("samples") if isinstance(manifest, dict) else None
    if not isinstance(samples, list):
        problems.append((MANIFEST_FILE, "has no 'samples' list, scanning *.pt instead"))
        return None
    out: list[str] = []
    for entry in samples:
        if not isinstance(entry, str):
            problems.append((MANIFEST_FILE, f"sample entry {entry!r} is not a path"))
            continue
        found = resolve_manifest_entry(entry, directory)
        if found is None:
            problems.append((entry, f"listed in {MANIFEST_FILE} but missing"))
        elif found.endswith(INTERMEDIATE_SUFFIX):
            continue
        elif found not in out:
            out.append(found)
    return out


def _read_meta(directory: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    path = os.path.join(directory, PREPROCESS_META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append((PREPROCESS_META_FILE, f"unreadable ({exc})"))
        return None
    return meta if isinstance(meta, dict) else None


def read_preprocess_meta(directory: str) -> dict[str, Any] | None:
    """``preprocess_meta.json`` of a dataset folder as a dict; None when absent or unreadable."""
    return _read_meta(os.path.expanduser(directory), [])


@dataclass(frozen=True, slots=True)
class TensorFormat:
    """How a dataset folder's tensors were made, from its ``preprocess_meta.json``."""

    version: int  # TENSOR_FORMAT, or LEGACY_TENSOR_FORMAT for folders made before versions existed
    conditioning: str  # one of CONDITIONING_MODES, or the unknown value a newer version wrote
    recorded: bool  # False: no preprocess_meta.json (another tool, or the synthetic demo tensors)
    model_folder: str | None = None  # the model folder whose condition encoder made the states
    source: str | None = None  # the audio folder or dataset.json they came from

    @property
    def current(self) -> bool:
        return self.version == TENSOR_FORMAT and self.conditioning in ("inference", SYNTHETIC_CONDITIONING)

    def label(self) -> str:
        """``inference conditioning (format 2)``, ``legacy conditioning (format 1, before formats were recorded)``, ..."""
        if not self.recorded:
            return f"legacy conditioning assumed (no {PREPROCESS_META_FILE})"
        if self.version == LEGACY_TENSOR_FORMAT:
            return f"legacy conditioning (format {LEGACY_TENSOR_FORMAT}, before formats were recorded)"
        return f"{self.conditioning} conditioning (format {self.version})"


def _folder_name(path: str) -> str:
    """The last component of a path written on any OS."""
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def tensor_format(meta: dict[str, Any] | None) -> TensorFormat:
    """The ``TensorFormat`` a ``preprocess_meta.json`` dict records (None = no meta file)."""
    if meta is None:
        return TensorFormat(LEGACY_TENSOR_FORMAT, "legacy", recorded=False)
    version = meta.get("tensor_format")
    version = version if isinstance(version, int) and not isinstance(version, bool) else LEGACY_TENSOR_FORMAT
    conditioning = meta.get("conditioning") if version != LEGACY_TENSOR_FORMAT else "legacy"
    model_dir = meta.get("model_dir")
    source = meta.get("source_audio_dir") or meta.get("dataset_json")
    return TensorFormat(
        version,
        str(conditioning) if conditioning else "legacy",
        recorded=True,
        model_folder=_folder_name(str(model_dir)) if model_dir else None,
        source=str(source) if source else None,
    )


LEGACY_WHAT = "raw lyrics, padding tokens in cross-attention, zero timbre: not what ACE-Step feeds at inference"


def format_warnings(directory: str, model_folder: str | None = None) -> list[str]:
    """One line per way a dataset folder's tensors differ from what training on ``model_folder``
    should see: an old or legacy conditioning format, another model's condition encoder, a format
    newer than this version. Each line names the fix. ``[]`` for current inference-format tensors."""
    directory = os.path.expanduser(directory)
    fmt = tensor_format(read_preprocess_meta(directory))
    source = shlex.quote(fmt.source) if fmt.source else "AUDIO_FOLDER"
    again = f"sidestep preprocess -i {source} -o NEW_FOLDER (--conditioning inference is the default)"
    lines = []
    if fmt.version > TENSOR_FORMAT or fmt.conditioning not in (*CONDITIONING_MODES, MIXED_CONDITIONING, SYNTHETIC_CONDITIONING):
        lines.append(
            f"{directory}: tensor format {fmt.version} with {fmt.conditioning!r} conditioning comes from a newer Side-Step; "
            f"update Side-Step or preprocess again: {again}"
        )
    elif not fmt.current:
        if not fmt.recorded:
            why = f"no {PREPROCESS_META_FILE}, so taken as the legacy conditioning format"
        elif fmt.version == LEGACY_TENSOR_FORMAT:
            why = "made by an older preprocessing in the legacy conditioning format"
        elif fmt.conditioning == MIXED_CONDITIONING:
            why = f"some files are in the legacy conditioning format (file_conditioning in {PREPROCESS_META_FILE})"
        else:
            why = "preprocessed with --conditioning legacy"
        lines.append(f"{directory}: {why} ({LEGACY_WHAT}); to train as you will generate, preprocess again: {again}")
    trained = _folder_name(model_folder) if model_folder else None
    if trained and fmt.model_folder and fmt.model_folder != trained:
        lines.append(
            f"{directory}: tensors were made by the condition encoder of {fmt.model_folder}, but this run trains "
            f"{trained}; preprocess again with --model {trained}"
        )
    return lines


def scan_dataset(directory: str, *, workers: int = 8) -> DatasetReport:
    """Check every sample of a preprocessed dataset folder (reads each file's data.pkl only)."""
    directory = os.path.expanduser(directory)
    problems: list[tuple[str, str]] = []
    if not os.path.isdir(directory):
        return DatasetReport(directory, 0, 0.0, 0.0, (), ((".", "dataset folder does not exist"),), None)
    meta = _read_meta(directory, problems)
    variant = meta.get("model_variant") if meta is not None else None
    variant = variant if isinstance(variant, str) and variant else None
    paths = _manifest_files(directory, problems)
    used_manifest = paths is not None
    if paths is None:
        paths = folder_samples(directory)
    if not paths:
        pending = [n for n in os.listdir(directory) if n.endswith(INTERMEDIATE_SUFFIX)]
        message = f"no sample {SAMPLE_SUFFIX} files"
        if pending:
            message += f" ({len(pending)} *{INTERMEDIATE_SUFFIX} intermediates: preprocessing did not finish)"
        problems.append((".", message))

    def name_of(path: str) -> str:
        rel = os.path.relpath(path, directory)
        return path if rel.startswith("..") else rel

    names = [name_of(p) for p in paths]
    if len(paths) > 16 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_check_sample, paths, names))
    else:
        results = [_check_sample(p, n) for p, n in zip(paths, names, strict=True)]

    widths = collections.Counter(r.hidden for r in results if r.hidden is not None and not r.problems)
    common_width = widths.most_common(1)[0][0] if widths else None
    good: list[_Sample] = []
    for result in results:
        issues = list(result.problems)
        if result.hidden is not None and common_width is not None and result.hidden != common_width:
            issues.append(f"encoder_hidden_states width {result.hidden} differs from the other files ({common_width})")
        problems.extend((result.name, issue) for issue in issues)
        if not issues:
            good.append(result)
    seconds = [r.frames / LATENT_FPS for r in good]
    return DatasetReport(
        directory=directory,
        samples=len(good),
        total_seconds=sum(seconds),
        longest_seconds=max(seconds, default=0.0),
        files=tuple(names),
        problems=tuple(problems),
        variant=variant,
        hidden_size=common_width,
        used_manifest=used_manifest,
        tensor_format=tensor_format(meta),
    )
