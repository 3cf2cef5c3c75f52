"""``torch.save`` files written with the standard library, for the UI tests and snapshots (their process
never loads torch, and starting one to write a few samples would make them integration tests).

The layout is torch's own (>= 1.6): a zip with ``<name>/data.pkl`` (protocol 2, tensors as calls to
``torch._utils._rebuild_tensor_v2`` on a persistent storage id), one zeroed ``<name>/data/<key>`` per
tensor, ``version`` and ``byteorder``. ``tests/unit/test_ptinspect.py`` checks that torch loads these
files and that ``engine.ptinspect`` reads them as it reads torch's own.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STORAGES = {
    "bfloat16": ("BFloat16Storage", 2),
    "float16": ("HalfStorage", 2),
    "float32": ("FloatStorage", 4),
    "int64": ("LongStorage", 8),
    "bool": ("BoolStorage", 1),
}


@dataclass(frozen=True)
class Zeros:
    """A contiguous tensor of zeros of ``shape`` and ``dtype`` (one of ``_STORAGES``)."""

    shape: tuple[int, ...]
    dtype: str = "bfloat16"


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its ``save`` can be extended per object
    def __init__(self, fh: io.BytesIO) -> None:
        super().__init__(fh, protocol=2)
        self.storages: list[tuple[str, bytes]] = []

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if not isinstance(obj, Zeros):
            return super().save(obj, save_persistent_id)
        storage, itemsize = _STORAGES[obj.dtype]
        numel = math.prod(obj.shape)
        key = str(len(self.storages))
        self.storages.append((key, bytes(numel * itemsize)))
        stride = tuple(math.prod(obj.shape[i + 1 :]) for i in range(len(obj.shape)))
        self.write(_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK)
        self.write(pickle.MARK)  # the persistent id: ("storage", torch.<Storage>, key, "cpu", numel)
        super().save("storage")
        self.write(_global("torch", storage))
        for part in (key, "cpu", numel):
            super().save(part)
        self.write(pickle.TUPLE + pickle.BINPERSID)
        for part in (0, obj.shape, stride, False):
            super().save(part)
        self.write(_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE)  # backward hooks
        self.write(pickle.TUPLE + pickle.REDUCE)


def save(obj: Any, path: Path) -> Path:
    """Write ``obj`` (dicts, lists, tuples, plain values and ``Zeros``) as ``torch.save`` would."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(obj)
    name = path.stem
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", buffer.getvalue())
        archive.writestr(f"{name}/byteorder", "little")
        for key, data in pickler.storages:
            archive.writestr(f"{name}/data/{key}", data)
        archive.writestr(f"{name}/version", "3\n")
    return path


def sample(frames: int, *, tokens: int = 16, hidden: int = 2048, **metadata: Any) -> dict[str, Any]:
    """One preprocessed sample in the ACE-Step tensor format (25 latent frames per second)."""
    return {
        "target_latents": Zeros((frames, 64)),
        "attention_mask": Zeros((frames,)),
        "encoder_hidden_states": Zeros((tokens, hidden)),
        "encoder_attention_mask": Zeros((tokens,), "bool"),
        "context_latents": Zeros((frames, 128)),
        "metadata": {"duration": frames // 25, **metadata},
    }


def write_dataset(folder: Path, frames: tuple[int, ...] = (250, 500, 125, 375), **kwargs: Any) -> Path:
    """``song_0.pt`` ... one sample per entry of ``frames`` (defaults: 10 s, 20 s, 5 s and 15 s)."""
    for i, count in enumerate(frames):
        save(sample(count, filename=f"song_{i}.wav", **kwargs), folder / f"song_{i}.pt")
    return folder
