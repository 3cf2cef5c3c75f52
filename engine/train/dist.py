"""Several training processes on Lightning Fabric's own DDP strategy (DESIGN §9): nothing here moves
gradients; Fabric's ``DDPStrategy`` (torch DDP over gloo on the CPU, NCCL on CUDA) does.

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
        raise ValueError(
            "strategy fsdp: sharded adapter checkpoints are not written yet in this build; use --strategy ddp "
            "(the frozen base is replicated, only the adapter's gradients travel)"
        )
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    from engine.models.loader import resolve_dtype
    from engine.train.build import fabric_precision

    accelerator = _accelerator(config)
    device = torch.device(accelerator)
    precision = fabric_precision(device, resolve_dtype(config.precision, device))
    strategy = DDPStrategy(
        process_group_backend="nccl" if accelerator == "cuda" else "gloo",
        timeout=timedelta(seconds=config.collective_timeout),
    )
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=nodes, strategy=strategy, precision=precision)
    fabric.launch()
    return Group(fabric=fabric, rank=fabric.global_rank, world=fabric.world_size, device=fabric.device)


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
