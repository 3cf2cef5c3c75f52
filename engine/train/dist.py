"""Several training processes on Lightning Fabric's own strategies (DESIGN §9): nothing here moves
gradients or shards weights; Fabric's ``DDPStrategy`` (torch DDP over gloo on the CPU, NCCL on CUDA)
does, and for ``--strategy fsdp`` Fabric's ``ModelParallelStrategy`` with torch's FSDP2
(``fully_shard``: each decoder layer, then the root), the frozen base sharded across the ranks.
Why not Fabric's ``FSDPStrategy``: it wraps torch's FSDP1, which refuses the CPU ("FSDP needs a
non-CPU accelerator device"; Fabric refuses ``accelerator="cpu"`` before that), so it could never be
tested on gloo; FSDP2 runs on both and is what torch develops.

Who starts the processes: ``torchrun`` or ``srun`` (Fabric reads rank and world size from their
environment through its cluster environments), Fabric's own launcher for a plain ``sidestep train
--devices N`` (it runs the same command line again with ``LOCAL_RANK`` set), or the engine process
for the TUI (``engine.process.group``), which sets the same variables torchrun does.

What this module adds on top, and why:
- ``Group``: the launched Fabric with this process's rank; rank 0 alone writes the run folder.
- ``sync_step``: the one small collective of each optimizer-step boundary. Every rank sends its
  stop/save flags (signals reach every rank), rank 0 also the UI's pause, plus its own step time and
  memory; all ranks leave with the same commands, so they act at the same step, and rank 0 with
  every rank's figures for the step metrics.
- ``gather_adapter`` / ``load_sharded``: under fsdp the adapter and its optimizer state exist only as
  shards; a save gathers the full adapter (and, for a resumable checkpoint, the full optimizer state)
  onto rank 0's CPU with torch's ``get_state_dict(full_state_dict=True, cpu_offload=True)``, the frozen
  base left out, so rank 0 writes the same files a one-process run writes; a resume hands every rank
  that full state and torch re-shards it.
- ``agree``: a collective "did everyone get here?", so a rank that fails before training (the run
  folder refused, a bad dataset) fails the others at once instead of leaving them in a collective.
A collective against a dead rank fails within ``collective_timeout`` (gloo notices a closed socket
at once; NCCL relies on the timeout)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from engine import config as cfgmod


@dataclass
class Group:
    fabric: Any
    rank: int
    world: int
    device: torch.device
    sharded: bool = False  # --strategy fsdp: parameters are DTensor shards (gather before saving)

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def env_rank_is_zero() -> bool:
    """Whether the launcher's environment names this process rank 0 (before Fabric is up): torchrun's
    ``RANK``, SLURM's ``SLURM_PROCID``, Fabric's own launcher's ``NODE_RANK``/``LOCAL_RANK``."""
    for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        value = os.environ.get(key, "0")
        if value.strip() not in ("", "0"):
            return False
    return True


def processes(config: cfgmod.TrainConfig) -> tuple[int, int]:
    """(devices per machine, machines) of a config, ``auto`` resolved against the visible GPUs."""
    devices = cfgmod.parse_devices(config.devices)
    if devices == "auto":
        devices = torch.cuda.device_count() if _accelerator(config) == "cuda" else 1
    assert isinstance(devices, int)  # parse() checked it
    return max(devices, 1), config.num_nodes


def _accelerator(config: cfgmod.TrainConfig) -> str:
    if config.device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def launch(config: cfgmod.TrainConfig) -> Group | None:
    """Start (or join) the process group of a several-process config; None for one process, which
    keeps the single-device path exactly as it was."""
    devices, nodes = processes(config)
    if devices * nodes == 1:
        return None
    if config.strategy == "fsdp":
        problem = fsdp_refusal(config)
        if problem:
            raise ValueError(problem)
    fabric = fabric_for(config, devices, nodes)
    fabric.launch()
    return Group(
        fabric=fabric,
        rank=fabric.global_rank,
        world=fabric.world_size,
        device=fabric.device,
        sharded=config.strategy == "fsdp",
    )


def fabric_for(config: cfgmod.TrainConfig, devices: int, nodes: int) -> Any:
    """The (not yet launched) Fabric of a group: its accelerator, precision and strategy."""
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy, ModelParallelStrategy, Strategy

    from engine.models.loader import resolve_dtype
    from engine.train.build import fabric_precision

    accelerator = _accelerator(config)
    device = torch.device(accelerator)
    precision = fabric_precision(device, resolve_dtype(config.precision, device))
    backend = "nccl" if accelerator == "cuda" else "gloo"
    timeout = timedelta(seconds=config.collective_timeout)
    strategy: Strategy
    if config.strategy == "fsdp":
        if precision == "16-mixed":
            raise ValueError(
                "strategy fsdp with fp16: Fabric's sharded strategy has no fp16 loss scaling; use --precision bf16 or fp32"
            )
        strategy = ModelParallelStrategy(
            parallelize_fn=shard_decoder,
            data_parallel_size=devices * nodes,
            tensor_parallel_size=1,
            process_group_backend=backend,
            timeout=timeout,
        )
    else:
        strategy = DDPStrategy(process_group_backend=backend, timeout=timeout)
    return Fabric(accelerator=accelerator, devices=devices, num_nodes=nodes, strategy=strategy, precision=precision)


def fsdp_refusal(config: cfgmod.TrainConfig) -> str:
    """Why this config cannot train sharded (one line naming the fix), or ""."""
    what = ""
    if config.adapter_type != "lora":
        what = f"a {config.adapter_type} adapter (LyCORIS networks are not written from shards here)"
    elif config.use_dora:
        what = "DoRA (its ComfyUI export and magnitudes need the full base weights on rank 0)"
    elif config.base_quantization != "none":
        what = f"a {config.base_quantization} base (bitsandbytes weights are not sharded by FSDP)"
    elif config.use_ema:
        what = "EMA (its weights are kept per parameter, not per shard)"
    elif config.sample_every:
        what = "samples during training (rank 0 alone cannot run the sharded model)"
    if not what:
        return ""
    return f"strategy fsdp does not support {what}; use --strategy ddp, or train LoRA without it"


def shard_decoder(module: torch.nn.Module, mesh: Any) -> torch.nn.Module:
    """Fabric's ``parallelize_fn`` for fsdp: torch's ``fully_shard`` on each decoder layer (one
    all-gather per layer in forward and backward), then on the root for the rest. The adapter's
    parameters sit inside the layers and are sharded with them; the optimizer is built afterwards,
    over the sharded parameters."""
    from torch.distributed.fsdp import fully_shard

    from engine.models.loader import unwrap_decoder

    data_parallel = mesh["data_parallel"]
    bare: Any = unwrap_decoder(module)
    if getattr(bare, "is_gradient_checkpointing", False):
        # transformers' checkpointing calls each layer inside torch's checkpoint, FSDP's all-gather hooks
        # included, and the recomputation then differs ("Recomputed values ... different metadata"):
        # each layer's own forward is checkpointed instead (as --gradient-checkpointing-ratio < 1 does),
        # inside the hooks, and the module names the adapter files use stay as they are.
        bare.gradient_checkpointing_disable()
        for layer in bare.layers:
            layer.forward = _checkpointed(layer)
    for layer in bare.layers:
        fully_shard(layer, mesh=data_parallel)
    fully_shard(module, mesh=data_parallel)
    return module


def held_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(elements this rank stores, elements of the whole model): a sharded parameter counts its shard."""
    held = whole = 0
    for param in module.parameters():
        whole += param.numel()
        held += param.to_local().numel() if hasattr(param, "to_local") else param.numel()
    return held, whole


def _checkpointed(layer: torch.nn.Module) -> Any:
    from torch.utils.checkpoint import checkpoint

    inner = layer.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if layer.training and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    return forward


def gather_adapter(module: torch.nn.Module, optimizer: Any, *, with_optimizer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full adapter (and optimizer state) of a sharded run, keyed by parameter name; a collective:
    every rank calls it at the same save point, rank 0 gets the tensors on its CPU, the others ``{}``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    model_state = get_model_state_dict(module, options=options)
    optim_state = get_optimizer_state_dict(module, _bare(optimizer), options=options) if with_optimizer else {}
    return model_state, optim_state


def load_sharded(module: torch.nn.Module, optimizer: Any, model_state: dict[str, Any], optim_state: dict[str, Any]) -> int:
    """Give every rank the full adapter and optimizer state of a checkpoint; torch shards it (the
    inverse of ``gather_adapter``). Returns how many adapter tensors were restored; a checkpoint whose
    adapter names or shapes differ raises ValueError naming them."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    live_state: dict[str, Any] = get_model_state_dict(module, options=StateDictOptions(ignore_frozen_params=True))
    live = {k: tuple(v.shape) for k, v in live_state.items()}
    saved = {k: tuple(v.shape) for k, v in model_state.items()}
    if live != saved:
        differ = sorted(set(live) ^ set(saved)) or [k for k in live if live[k] != saved[k]]
        raise ValueError(f"the saved adapter does not fit this one ({len(differ)} tensors differ, e.g. {differ[0]})")
    set_model_state_dict(module, model_state, options=StateDictOptions(full_state_dict=True, strict=False))
    set_optimizer_state_dict(module, _bare(optimizer), optim_state, options=StateDictOptions(full_state_dict=True))
    return len(model_state)


class GatheredAdapter:
    """Stands in for a sharded run's adapter when rank 0 writes a checkpoint folder: the adapter's own
    ``write`` (the same PEFT files, metadata and ComfyUI export as one process) fed the gathered
    full tensors instead of this rank's shards."""

    def __init__(self, adapter: Any, full_state: dict[str, Any]) -> None:
        self.adapter = adapter
        self.full_state = full_state

    @property
    def module(self) -> torch.nn.Module:
        module: torch.nn.Module = self.adapter.module
        return module

    def write(self, directory: Any, metadata: dict[str, str] | None = None) -> None:
        self.adapter.full_state = self.full_state
        try:
            self.adapter.write(directory, metadata)
        finally:
            self.adapter.full_state = None


def _bare(optimizer: Any) -> Any:
    """The torch optimizer under Fabric's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def agree(group: Group, ok: bool) -> bool:
    """True when every rank passes ``ok``; every rank must call it at the same point."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=group.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item()) == 0


def max_lengths(group: Group, *lengths: int) -> list[int]:
    """The largest of each length over the ranks: a micro-batch is padded to its global batch's."""
    out = torch.tensor(lengths, dtype=torch.int64, device=group.device)
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
    return [int(v) for v in out.tolist()]


@dataclass(frozen=True)
class RankFigures:
    mean_loss: float
    step_time_s: tuple[float, ...]
    memory_mb: tuple[float, ...]


def sync_step(group: Group, inbox: Any, *, step_time_s: float, memory_mb: float, loss: float = 0.0) -> RankFigures:
    """The step boundary's collective: commands become the same on every rank (stop and save if any
    rank was asked, pause as rank 0's UI says); returns the mean of the ranks' ``loss`` and every
    rank's step time and memory. (The losses are float64 on the wire: the mean is the same number
    everywhere, so every rank takes the same skip-or-step decision.)"""
    state = inbox.state
    mine = [
        float(state.stop_requested),
        float(state.save_requested),
        float(state.paused and group.is_zero),
        float(step_time_s),
        float(memory_mb),
        float(loss),
    ]
    gathered = [torch.zeros(len(mine), dtype=torch.float64, device=group.device) for _ in range(group.world)]
    torch.distributed.all_gather(gathered, torch.tensor(mine, dtype=torch.float64, device=group.device))
    rows = [g.tolist() for g in gathered]
    state.stop_requested = any(row[0] for row in rows)
    state.save_requested = any(row[1] for row in rows)
    state.paused = bool(rows[0][2])
    if state.stop_requested:
        state.paused = False
    return RankFigures(
        mean_loss=sum(row[5] for row in rows) / group.world,
        step_time_s=tuple(row[3] for row in rows),
        memory_mb=tuple(row[4] for row in rows),
    )


def wait_while_paused(group: Group, inbox: Any, tick: float = 0.2) -> None:
    """Paused: rank 0 waits for the UI while every rank meets it once per tick (never near the
    collective timeout), until it resumes or anyone is told to stop."""
    while inbox.state.paused and not inbox.state.stop_requested:
        if group.is_zero:
            inbox._wake.wait(tick)
            inbox._wake.clear()
        inbox.poll()
        sync_step(group, inbox, step_time_s=-1.0, memory_mb=-1.0)


def memory_mb(device: torch.device) -> float:
    """This process's memory for the step metrics: peak allocated on CUDA, resident set elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return -1.0
