"""What preprocessing writes besides the tensors: atomic ``torch.save``, ``manifest.json`` and
``preprocess_meta.json`` (ACE_STEP.md §4.2)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime
from typing import Any

from engine import fsutil
from engine.ptinspect import MANIFEST_FILE


def save_tensors(obj: dict[str, Any], path: str) -> str:
    """``torch.save`` through ``fsutil`` (temp file, fsync, rename); returns the md5 of the bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    fsutil.write_bytes(path, data)
    return hashlib.md5(data).hexdigest()


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(
    out: str, names: list[str], metadata: dict[str, Any], *, rewritten: set[str], checksums: dict[str, str]
) -> None:
    """Upstream's ``{"metadata", "samples", "num_samples"}`` plus ``sample_info`` (shapes, frames,
    duration per file, so stdlib readers such as the UI need not open a tensor). Entries of files
    this run did not rewrite are carried over from the previous manifest."""
    path = os.path.join(out, MANIFEST_FILE)
    old = {i.get("path"): i for i in ((read_json(path) or {}).get("sample_info") or []) if isinstance(i, dict)}
    info = [old[n] if n in old and n not in rewritten else sample_info(os.path.join(out, n), checksums.get(n)) for n in names]
    metadata = dict(metadata, num_samples=len(names), created_at=now())
    fsutil.write_json(path, {"metadata": metadata, "samples": names, "num_samples": len(names), "sample_info": info})


def sample_info(path: str, md5: str | None) -> dict[str, Any]:
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {
        "path": os.path.basename(path),
        "duration": data["metadata"].get("duration"),
        "frames": int(data["target_latents"].shape[0]),
        "encoder_length": int(data["encoder_hidden_states"].shape[0]),
        "encoder_valid": int(data["encoder_attention_mask"].sum()),
        "shapes": {k: list(v.shape) for k, v in data.items() if isinstance(v, torch.Tensor)},
        "audio_path": data["metadata"].get("audio_path"),
        "md5": md5,
    }
