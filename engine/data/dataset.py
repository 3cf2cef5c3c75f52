"""Preprocessed-tensor dataset (ACE_STEP.md §4.1–4.3), validated loudly up front.

Each sample is one ``.pt`` dict of the tensors ``engine.ptinspect.SAMPLE_SCHEMA`` defines
(``target_latents [T, 64]``, ``attention_mask [T]``, ``encoder_hidden_states [L, H]``,
``encoder_attention_mask [L]``, ``context_latents [T, 128]``) and an optional ``metadata`` dict. Every
file is loaded once at construction and checked (the schema's ``sample_problems``, one H across files,
finite values); the first problem raises a
one-line ``DatasetError`` naming the file and the fix. Side-Step silently dropped missing files and
zeroed NaNs; here both are errors. When the files total less than 4 GB they stay cached in RAM.

Items are addressed by ``SampleKey(index, start, length)``: the crop window is decided by the
``ChunkPlanner`` in the main process, so DataLoader workers hold no sampling state (§12.2-12).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

from engine.ptinspect import (
    FRAME_KEYS,
    INTERMEDIATE_SUFFIX,
    MANIFEST_FILE,
    REQUIRED_KEYS,
    TensorInfo,
    folder_samples,
    resolve_manifest_entry,
    sample_problems,
)

CACHE_LIMIT_BYTES = 4 * 1024**3
REPREPROCESS = "delete it and preprocess its audio again"


class DatasetError(ValueError):
    """A dataset problem, one line: which file or folder, what is wrong, how to fix it."""


class SampleKey(NamedTuple):
    """What the batch sampler hands the dataset: file ``index`` and the crop window
    ``[start, start + length)`` along T (``length`` None = the whole clip)."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index on purpose
    start: int = 0
    length: int | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _resolve(entry: Any, root: str) -> str:
    """A manifest entry as an existing path (``ptinspect.resolve_manifest_entry``), or a one-line error."""
    if not isinstance(entry, str) or not entry.strip():
        raise DatasetError(
            f"{os.path.join(root, MANIFEST_FILE)}: sample entry {entry!r} is not a path; fix or delete {MANIFEST_FILE}"
        )
    found = resolve_manifest_entry(entry, root)
    if found is None:
        raise DatasetError(
            f"{os.path.join(root, MANIFEST_FILE)}: lists {entry!r}, which is not in {root}; "
            f"preprocess again or delete {MANIFEST_FILE} to use the folder's .pt files"
        )
    return found


def discover_files(dataset_dir: str) -> list[str]:
    """The sample files of a dataset folder: ``manifest.json``'s list if present, else ``*.pt``
    (without pass-1 ``*.tmp.pt`` intermediates), sorted."""
    root = os.path.abspath(os.path.expanduser(dataset_dir))
    if os.path.exists(root) and not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root} is a file, not a folder; choose the folder holding the .pt files")
    if not os.path.isdir(root):
        raise DatasetError(
            f"dataset folder {root} does not exist; preprocess audio into it or choose the folder holding the .pt files"
        )
    manifest = os.path.join(root, MANIFEST_FILE)
    if os.path.isfile(manifest):
        try:
            with open(manifest, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"{manifest}: unreadable ({_first_line(exc)}); fix or delete it to use the folder's .pt files"
            ) from None
        samples = data.get("samples") if isinstance(data, dict) else None
        if not isinstance(samples, list):
            raise DatasetError(f"{manifest}: has no 'samples' list; fix or delete it to use the folder's .pt files")
        resolved = (_resolve(entry, root) for entry in samples)
        # like engine/ptinspect.py: pass-1 intermediates skipped, a file listed twice read once
        files = list(dict.fromkeys(p for p in resolved if not p.endswith(INTERMEDIATE_SUFFIX)))
    else:
        files = folder_samples(root)
    if not files:
        raise DatasetError(f"dataset folder {root} holds no training tensors (*.pt); preprocess audio into it first")
    return files


def load_sample(path: str) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise DatasetError(
            f"{path}: cannot be read (permission denied); fix its permissions (chmod u+r) or run as its owner"
        ) from None
    except Exception as exc:  # truncated zip, pickle refused by weights_only, not a torch file, ...
        raise DatasetError(f"{path}: not a readable training tensor file ({_first_line(exc)}); {REPREPROCESS}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: holds a {type(data).__name__}, not a dict of tensors; {REPREPROCESS}")
    return data


def check_sample(path: str, data: dict[str, Any]) -> tuple[int, int, int]:
    """Validate one loaded sample against the schema, then its values; returns ``(T, L, H)``."""
    described = {
        k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch.")) if isinstance(v, Tensor) else v
        for k, v in data.items()
    }
    problems = sample_problems(described)
    if problems:
        raise DatasetError(f"{path}: {problems[0]}; {REPREPROCESS}")
    for key in REQUIRED_KEYS:
        value = data[key]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DatasetError(f"{path}: {key} contains NaN/Inf values; check the source audio, then {REPREPROCESS}")
    if not bool(data["attention_mask"].bool().any()):
        raise DatasetError(
            f"{path}: attention_mask is all zero (no frame would train); check the source audio, then {REPREPROCESS}"
        )
    T = data["target_latents"].shape[0]
    L, H = data["encoder_hidden_states"].shape
    return T, L, H


class TensorDataset(torch.utils.data.Dataset):
    """All samples of a preprocessed folder. ``len()`` counts ``repeats`` passes; item ``i`` and
    ``i + n_files`` are the same file. ``dataset[SampleKey(...)]`` (or a plain int) returns one
    sample dict, cropped along T when the key says so."""

    def __init__(self, dataset_dir: str, *, repeats: int = 1) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.root = os.path.abspath(os.path.expanduser(dataset_dir))
        self.repeats = repeats
        self.paths: tuple[str, ...] = tuple(discover_files(self.root))
        self.total_bytes = sum(os.path.getsize(p) for p in self.paths)
        self.cached = self.total_bytes < CACHE_LIMIT_BYTES
        self._cache: list[dict[str, Any]] = []
        lengths: list[int] = []
        enc_lengths: list[int] = []
        for path in self.paths:
            data = load_sample(path)
            T, L, H = check_sample(path, data)
            if not lengths:
                self.hidden_size = H
            elif self.hidden_size != H:
                raise DatasetError(
                    f"{path}: hidden size {H} differs from {self.hidden_size} in {os.path.basename(self.paths[0])}; "
                    "the files come from different models: preprocess all audio with the same model"
                )
            lengths.append(T)
            enc_lengths.append(L)
            if self.cached:
                self._cache.append(data)
        self.lengths: tuple[int, ...] = tuple(lengths)
        self.encoder_lengths: tuple[int, ...] = tuple(enc_lengths)

    @property
    def num_files(self) -> int:
        return len(self.paths)

    def __len__(self) -> int:
        return self.num_files * self.repeats

    def name(self, index: int) -> str:
        """A stable name for file ``index`` (its path relative to the dataset folder)."""
        return os.path.relpath(self.paths[index % self.num_files], self.root).replace("\\", "/")

    def __getitem__(self, key: SampleKey | int) -> dict[str, Any]:
        if not isinstance(key, SampleKey):
            key = SampleKey(int(key))
        index = key.index % self.num_files
        data = self._cache[index] if self.cached else load_sample(self.paths[index])
        T = self.lengths[index]
        start, stop = 0, T
        if key.length is not None and key.length < T:
            start = min(max(key.start, 0), T - key.length)
            stop = start + key.length
        item = {k: data[k] for k in REQUIRED_KEYS}
        if (start, stop) != (0, T):
            for k in FRAME_KEYS:
                item[k] = item[k][start:stop]
        metadata = data.get("metadata")
        item["metadata"] = dict(metadata) if isinstance(metadata, dict) else {}
        item["file"] = self.paths[index]
        item["crop"] = (start, stop)
        return item
