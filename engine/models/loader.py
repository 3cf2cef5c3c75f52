"""Load the DiT decoder (+ the CFG null embedding) from an ACE-Step 1.5 style checkpoint folder.

One path for real checkpoints and the demo: ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
with the attention backends tried in ACE_STEP.md §2.1 order. Only ``decoder`` and
``null_condition_emb`` are kept (frozen, eval, on the device, dtype checked); the condition encoder,
tokenizer and detokenizer are dropped before anything moves to the GPU. Every failure is a
``ModelLoadError`` whose one-line message names the folder or file and the fix.

Preprocessing loads the same checkpoints for their condition encoder through the public helpers
``read_model_config``, ``check_weights``, ``from_pretrained`` and ``dtype_kwarg``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import acesrc

# Nothing downloads at run time: every from_pretrained below also passes local_files_only=True, and
# this keeps huggingface_hub itself offline (read when it is first imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

Log = Callable[[str], None]
_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_WRAPPER_ATTRS = ("_forward_module", "_orig_mod", "base_model", "model", "module")


class ModelLoadError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says which file and what to do."""


class DeviceError(ValueError):
    """A device spec that does not exist on this machine."""


@dataclass
class LoadedModel:
    decoder: nn.Module  # frozen, eval, on ``device``, every floating tensor in ``dtype``
    null_condition_emb: torch.Tensor  # [1, 1, hidden], frozen, on ``device``, ``dtype``
    model_config: dict[str, Any]  # config.json as read
    model_dir: str
    attention_backend: str  # what the decoder actually runs
    dtype: torch.dtype
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the tensors are (``stage_on`` if given)
    base_quantization: str = "none"  # none, int8 or nf4 (engine/models/quant.py)
    param_count: int = 0  # decoder parameters as the unquantised model counts them


def _noop(_: str) -> None:
    pass


# --------------------------------------------------------------------------- device / dtype


def resolve_device(spec: str = "auto") -> torch.device:
    """auto = the CUDA GPU with the most free memory, else MPS, else CPU; or cpu, mps, cuda, cuda:N."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
            return torch.device("cuda", max(range(len(free)), key=free.__getitem__))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device 'mps' is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} requested but CUDA is not available; use --device cpu or auto")
        index = torch.cuda.current_device() if spec == "cuda" else int(spec[5:]) if spec[5:].isdigit() else -1
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(f"device {spec!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return torch.device("cuda", index)
    raise DeviceError(f"device {spec!r} is not auto, cpu, mps, cuda or cuda:N")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on MPS, fp32 on CPU."""
    precision = (precision or "auto").lower()
    if precision in _PRECISIONS:
        return _PRECISIONS[precision]
    if precision != "auto":
        raise ValueError(f"precision {precision!r} is not auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


# --------------------------------------------------------------------------- folder checks


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model folder's config.json; ``ModelLoadError`` (one line) when it is missing or not a model's."""
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model folder {model_dir} does not exist; check --checkpoint-dir and --model (folder names must not be renamed)"
        )
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path} is missing; {model_dir.name} is not a model folder (re-download it)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}); re-download the model folder") from None
    if not isinstance(config, dict) or not ("auto_map" in config or "model_type" in config):
        raise ModelLoadError(f"{config_path} has neither auto_map nor model_type; this is not an ACE-Step model folder")
    auto_map = config.get("auto_map")
    for key, value in auto_map.items() if isinstance(auto_map, dict) else ():
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, str) and "--" in ref:
                raise ModelLoadError(
                    f"{config_path}: auto_map {key} = {ref!r} names code in a model hub repository; only code inside the "
                    "model folder runs: use an official model folder or fix its config.json"
                )
            if isinstance(ref, str) and "." in ref:
                code = model_dir / (ref.rsplit(".", 1)[0].replace(".", "/") + ".py")
                if not code.is_file():
                    # transformers would name a made-up hub URL, once per attention backend tried
                    raise ModelLoadError(
                        f"{code} is missing (config.json's auto_map {key} needs it); re-download the model folder"
                    )
    return config


def check_weights(model_dir: Path) -> None:
    """Open every safetensors header (cheap) so a truncated or corrupt file is named precisely."""
    from safetensors import safe_open

    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index} is unreadable ({exc}); re-download the model folder") from None
        files = sorted({model_dir / name for name in weight_map.values()})
        for path in files:
            if not path.is_file():
                raise ModelLoadError(f"{path} (listed in {index.name}) is missing; re-download the model folder")
    else:
        raise ModelLoadError(f"no weights in {model_dir}: model.safetensors is missing; re-download the model folder")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types
            if isinstance(exc, PermissionError) or "permission denied" in str(exc).lower() or not os.access(path, os.R_OK):
                raise ModelLoadError(
                    f"{path} cannot be read (permission denied); fix its permissions (chmod u+r) or run as its owner"
                ) from None
            raise ModelLoadError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]}); re-download it") from None


def _flash_attn_usable(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cuda" or dtype == torch.float32:
        return False
    if torch.cuda.get_device_capability(device)[0] < 8:
        return False
    return importlib.util.find_spec("flash_attn") is not None


def attention_candidates(requested: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """ACE_STEP.md §2.1: flash_attention_2 (CUDA, bf16/fp16, Ampere+, installed), then sdpa, then eager."""
    if requested == "auto":
        return (["flash_attention_2"] if _flash_attn_usable(device, dtype) else []) + ["sdpa", "eager"]
    if requested == "flash_attention_2":
        if dtype == torch.float32:
            raise ModelLoadError("flash_attention_2 needs bf16 or fp16; set --precision bf16 or --attention-backend auto")
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelLoadError(
                "flash_attention_2 requested but flash-attn is not installed; pip install 'sidestep-tui[flash]' or use --attention-backend auto"
            )
    if requested not in ("flash_attention_2", "sdpa", "eager"):
        raise ModelLoadError(f"attention backend {requested!r} is not auto, flash_attention_2, sdpa or eager")
    return [requested]


def dtype_kwarg() -> str:
    """transformers 4.56 renamed ``torch_dtype`` to ``dtype`` (the old name still works, with a warning)."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _missing_package(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, ImportError)
        and ("requires the following packages" in text or "No module named" in text)
        and "flash_attn" not in text
    )


def _drop_foreign_acestep(root: str) -> None:
    """Forget ``acestep`` modules imported from another root, so this load uses ``root``'s."""
    loaded = sys.modules.get(acesrc.PACKAGE)
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if origin and Path(root).resolve() in Path(origin).resolve().parents:
        return
    for name in [n for n in sys.modules if n == acesrc.PACKAGE or n.startswith(acesrc.PACKAGE + ".")]:
        del sys.modules[name]


def prepare_acestep(model_dir: Path, log: Log = _noop) -> acesrc.AceSource | None:
    """Make the ``acestep`` package the folder's remote code imports importable (engine/acesrc.py order);
    ``ModelLoadError`` (one line) when no source provides it. None when the code does not need it."""
    try:
        source = acesrc.resolve(model_dir)
    except acesrc.AceSourceError as exc:
        raise ModelLoadError(str(exc)) from None
    if source is None:
        return None
    # Stays on sys.path after the load: the package imports its own modules lazily (e.g. in forward).
    if source.how != "installed package":
        _drop_foreign_acestep(source.root)
        if source.root not in sys.path:
            sys.path.insert(0, source.root)
    log(f"{model_dir.name}: acestep from {source.describe()}")
    return source


def from_pretrained(model_dir: Path, backend: str, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """The whole checkpoint through its own remote code: ``(model, loading_info)``."""
    from transformers import AutoModel

    prepare_acestep(model_dir)

    return AutoModel.from_pretrained(
        str(model_dir),
        trust_remote_code=True,
        local_files_only=True,
        attn_implementation=backend,
        output_loading_info=True,
        **{dtype_kwarg(): dtype},
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _find_shape_mismatch(model_dir: Path) -> str | None:
    """Name the first tensor whose stored shape differs from what config.json builds (meta device,
    so free even at full size). Only on the error path: transformers' message lacks the key."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=True, local_files_only=True)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModel.from_config(config, trust_remote_code=True).state_dict().items()}
        files = (
            [model_dir / "model.safetensors"]
            if (model_dir / "model.safetensors").is_file()
            else sorted(model_dir.glob("*.safetensors"))
        )
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safetensors' handle is not a dict: no __iter__ or __contains__
                    stored = tuple(handle.get_slice(key).get_shape())
                    if key in expected and expected[key] != stored:
                        return f"{key} is {list(stored)}, the config needs {list(expected[key])}"
    except Exception:  # best effort: fall back to transformers' own line
        return None
    return None


def _size_mismatch_line(exc: BaseException) -> str | None:
    for line in str(exc).splitlines():
        if "size mismatch for" in line:
            return line.strip().rstrip(".")
    return None


def load_decoder(
    model_dir: str | os.PathLike,
    *,
    device: torch.device,
    dtype: torch.dtype,
    attention_backend: str = "auto",
    log: Log = _noop,
    base_quantization: str = "none",
    stage_on: torch.device | None = None,
) -> LoadedModel:
    """Load ``decoder`` + ``null_condition_emb`` from ``model_dir`` (the variant folder, not the root).
    ``base_quantization`` int8/nf4 holds the transformer Linear layers in bitsandbytes form
    (``engine.models.quant``; call its ``check_available`` first for a one-line refusal).
    ``stage_on``: where the tensors are placed when that is not ``device`` (``--strategy fsdp`` loads on
    the CPU and FSDP moves each shard to ``device``, engine/train/build.py ``load_placement``); the
    attention backend is still chosen for ``device``, where the model will run."""
    if stage_on is not None and base_quantization != "none":
        raise ValueError("a quantised base is placed on its device as it is quantised: it cannot be staged elsewhere")
    place = device if stage_on is None else stage_on
    path = Path(model_dir).expanduser()
    config = read_model_config(path)
    check_weights(path)

    prepare_acestep(path, log)

    model = info = None
    errors: list[str] = []
    candidates = attention_candidates(attention_backend, device, dtype)
    for backend in candidates:
        try:
            model, info = from_pretrained(path, backend, dtype)
            break
        except ModelLoadError:
            raise
        except Exception as exc:
            if _missing_package(exc):
                raise ModelLoadError(f"{path.name}'s model code needs a missing package: {_first_line(exc)}") from exc
            mismatch = _size_mismatch_line(exc)
            if mismatch:
                detail = _find_shape_mismatch(path) or mismatch
                raise ModelLoadError(
                    f"{path / 'model.safetensors'} does not match {path / 'config.json'} ({detail}); re-download the folder"
                ) from exc
            errors.append(f"{backend}: {_first_line(exc)}")
            log(f"attention backend {backend} failed: {_first_line(exc)}")
    if model is None or info is None:
        raise ModelLoadError(f"could not load {path}: " + "; ".join(errors))

    bad = [k for k in info.get("mismatched_keys", []) if str(k[0] if isinstance(k, tuple) else k).startswith("decoder.")]
    missing = [k for k in info.get("missing_keys", []) if k.startswith("decoder.") or k == "null_condition_emb"]
    if bad or missing:
        first = (bad or missing)[0]
        raise ModelLoadError(
            f"{path / 'model.safetensors'} lacks or mis-shapes decoder weights ({len(bad) + len(missing)} keys, e.g. {first}); re-download the folder"
        )
    for name in ("decoder", "null_condition_emb"):
        if not hasattr(model, name):
            raise ModelLoadError(f"{path.name} has no `{name}`: not an ACE-Step 1.5 DiT checkpoint")

    decoder = model.decoder
    null_emb = model.null_condition_emb.detach().clone()
    del model  # frees encoder / tokenizer / detokenizer
    decoder.requires_grad_(False)
    decoder.eval()
    decoder.config.use_cache = False
    param_count = sum(p.numel() for p in decoder.parameters())
    if base_quantization != "none":
        from engine.models import quant

        before = sum(p.numel() * p.element_size() for p in decoder.parameters())
        count = quant.quantize_decoder(decoder, base_quantization, device=device, dtype=dtype)  # layer by layer
        decoder.to(device=device, dtype=dtype)
        log(
            f"base quantised to {base_quantization} (bitsandbytes): {count} Linear layers, decoder weights "
            f"{quant.weight_bytes(decoder) / 2**20:.1f} MiB instead of {before / 2**20:.1f} MiB"
        )
    else:
        decoder.to(device=place, dtype=dtype)
    null_emb = null_emb.to(device=place, dtype=dtype).requires_grad_(False)

    on_meta = [n for n, t in [*decoder.named_parameters(), *decoder.named_buffers()] if t.is_meta]
    if on_meta:
        raise ModelLoadError(
            f"{path.name}: tensors left uninitialised after loading ({on_meta[0]}, ...); check the model code version"
        )
    wrong = [n for n, p in decoder.named_parameters() if p.is_floating_point() and p.dtype != dtype]
    assert not wrong, f"decoder parameter {wrong[0]} is not {dtype}"

    backend = getattr(decoder.config, "_attn_implementation", None) or candidates[0]
    where = str(device) if place == device else f"{place} (staged for {device})"
    log(f"loaded {path.name}: decoder {param_count / 1e6:.1f}M params, {dtype}, {backend}, {where}")
    return LoadedModel(
        decoder=decoder,
        null_condition_emb=null_emb,
        model_config=config,
        model_dir=str(path),
        attention_backend=backend,
        dtype=dtype,
        device=place,
        base_quantization=base_quantization,
        param_count=param_count,
    )


# --------------------------------------------------------------------------- gradient checkpointing


def unwrap_decoder(module: nn.Module) -> nn.Module:
    """The bare decoder (the module owning ``layers``) under PEFT / Fabric / compile wrappers."""
    seen = set()
    while id(module) not in seen:
        seen.add(id(module))
        # Own submodules only: PEFT forwards unknown attributes to the wrapped model.
        if isinstance(module._modules.get("layers"), nn.ModuleList) and "proj_in" in module._modules:
            return module
        for attr in _WRAPPER_ATTRS:
            inner = getattr(module, attr, None)
            if isinstance(inner, nn.Module):
                module = inner
                break
        else:
            break
    raise TypeError(f"{type(module).__name__} does not wrap an ACE-Step decoder (no .layers / .proj_in)")


def enable_gradient_checkpointing(decoder: nn.Module, ratio: float) -> int:
    """Checkpoint DiT layers; returns how many. ratio >= 1: every layer via transformers
    (non-reentrant, so no input needs ``requires_grad``); 0 < ratio < 1: ``round(n * ratio)`` evenly
    spaced layers wrapped in ``torch.utils.checkpoint`` (non-reentrant); ratio <= 0: none."""
    import functools

    from torch.utils.checkpoint import checkpoint

    bare: Any = unwrap_decoder(decoder)  # the transformers model: config, layers, gradient_checkpointing_enable
    layers = bare.layers
    bare.config.use_cache = False
    if ratio <= 0:
        return 0
    if ratio >= 1:
        bare.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return len(layers)
    count = max(1, min(len(layers), round(len(layers) * ratio)))
    chosen = sorted({int(i * len(layers) / count) for i in range(count)})
    for index in chosen:
        layer = layers[index]
        if getattr(layer, "_sidestep_checkpointed", False):
            continue
        inner = layer.forward

        @functools.wraps(inner)
        def forward(*args: Any, _inner: Callable[..., Any] = inner, _layer: nn.Module = layer, **kwargs: Any) -> Any:
            if _layer.training and torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = forward
        layer._sidestep_checkpointed = True
    return len(chosen)
