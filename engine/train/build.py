"""Everything a run needs before its first step, built in one place (litgpt's setup / fit split):
resolved config, device and precision, the frozen decoder, the adapter, data, optimizer, scheduler,
Fabric. ``Trainer`` only loops over what this returns."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from engine import codehash, discovery, fishermap, fsutil, layout, protocol
from engine import config as cfgmod
from engine.ptinspect import format_warnings
from engine.train import recipe

log = logging.getLogger("sidestep.engine")


@dataclass
class RunParts:
    config: cfgmod.TrainConfig
    run_dir: str
    device: torch.device
    fabric: Any
    module: Any
    optimizer: Any
    scheduler: Any
    adapter: Any
    null_condition_emb: torch.Tensor
    generator: torch.Generator
    tracker: recipe.TimestepTracker
    dataset: Any
    loader: Any
    planner: Any
    batches_per_epoch: int
    total_steps: int
    compute_input_dtype: torch.dtype
    model_dir: str
    attention_backend: str
    precision: str
    total_params: int
    distributed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def current_lr(self) -> float:
        from engine.train.optim import effective_lr

        return effective_lr(self.optimizer)

    def loader_for_epoch(self, epoch: int, *, skip: int) -> Any:
        """The run's one DataLoader, moved to ``epoch`` (persistent workers survive epochs)."""
        self.loader.batch_sampler.set_epoch(epoch, skip)
        return self.loader

    def data_state_dict(self) -> dict[str, Any]:
        return self.planner.state_dict()

    def load_data_state_dict(self, state: dict[str, Any]) -> None:
        self.planner.load_state_dict(state)

    def adapter_metadata(self, step: int) -> dict[str, str]:
        c = self.config
        return {
            "sidestep_tui": "0.1.0",
            "adapter_type": c.adapter_type,
            "model_variant": c.model_variant,
            "base_model": c.base_model or "",
            "shift": str(c.shift),
            "num_inference_steps": str(c.num_inference_steps),
            "step": str(step),
        }

    def run_started_event(self, *, start_step: int, start_epoch: int) -> protocol.RunStarted:
        c = self.config
        mu, sigma = timestep_mu_sigma(c)
        return protocol.RunStarted(
            run_dir=self.run_dir,
            config_json=cfgmod.to_json(c),
            adapter_type=c.adapter_type,
            model_dir=self.model_dir,
            model_variant=c.model_variant,
            device=str(self.device),
            precision=self.precision,
            attention_backend=self.attention_backend,
            adapted_modules=self.adapter.adapted_modules,
            trainable_params=self.adapter.trainable_params,
            total_params=self.total_params,
            num_samples=len(self.dataset),
            steps_per_epoch=math.ceil(self.batches_per_epoch / c.gradient_accumulation),
            total_steps=self.total_steps,
            start_step=start_step,
            start_epoch=start_epoch,
            timestep_mu=float(mu),
            timestep_sigma=float(sigma),
            timestep_mode=c.timestep_mode,
        )


def timestep_mu_sigma(config: cfgmod.TrainConfig) -> tuple[float, float]:
    """The logit-normal timestep mean and std of a config that ``resolve_variant_defaults`` completed."""
    mu, sigma = config.timestep_mu, config.timestep_sigma
    if mu is None or sigma is None:
        raise ValueError("timestep_mu/timestep_sigma are unset: resolve the config with resolve_variant_defaults first")
    return mu, sigma


def fisher_map_for_run(
    config: cfgmod.TrainConfig, model_dir: str, say: Callable[[protocol.LogLevel, str], None]
) -> fishermap.FisherMap | None:
    """The dataset folder's PP++ rank map when this run uses it (LoRA/DoRA, not refused with
    ``--ignore-fisher-map``), announced in one line, with one warning line per mismatch (another model,
    layer count or changed tensors). A map that cannot be read fails the run (one line, with the fix)."""
    path = fishermap.path_in(config.dataset_dir)
    if not os.path.isfile(path):
        return None
    if config.adapter_type != "lora":
        say("info", f"{path}: per-module ranks are for LoRA/DoRA; this {config.adapter_type} run does not use them")
        return None
    if config.ignore_fisher_map:
        say("info", f"{path} ignored (--ignore-fisher-map): every module trains at rank {config.rank}")
        return None
    try:
        fmap = fishermap.load(path)
    except fishermap.FisherMapError as exc:
        raise fishermap.FisherMapError(f"{exc} (or pass --ignore-fisher-map)") from None
    say("info", f"Fisher rank map {path}: {fmap.summary()} (--ignore-fisher-map for rank {config.rank} everywhere)")
    from engine.models.loader import read_model_config

    layers = read_model_config(Path(model_dir)).get("num_hidden_layers")
    for line in fishermap.mismatch_warnings(
        fmap,
        model_variant=config.model_variant,
        num_hidden_layers=layers if isinstance(layers, int) else None,
        dataset_dir=config.dataset_dir,
    ):
        say("warning", line)
    lr = config.resolved_learning_rate()
    if config.optimizer_type != "prodigy" and lr > 1e-4:
        say("warning", f"learning rate {lr:g} with Fisher ranks: Side-Step suggests about 5e-5 (--learning-rate)")
    return fmap


def resume_mismatch(problem: str, *, dataset_dir: str, adapter_type: str, ignore: bool, saved_ranks: Iterable[int]) -> str:
    """The one line for a resume whose checkpoint does not fit the adapter built now (``problem``: the
    shape check's line), naming the fisher map when it is the likely cause: the map in the dataset folder
    changed since the run started (its ranks are what the new adapter got), or the run trained with a map
    (its saved LoRA ranks differ by module) that is gone or ignored now."""
    if adapter_type != "lora":
        return problem
    path = fishermap.path_in(dataset_dir)
    used_now = os.path.isfile(path) and not ignore
    if used_now:
        return (
            f"cannot resume: {path} gives other ranks or modules than this run's checkpoint was trained with (the fisher map changed "
            "since the run started): restore the map the run started with, or start a new run "
            "(--ignore-fisher-map if the run started without a map)"
        )
    if len(set(saved_ranks)) > 1:
        why = "is ignored now (--ignore-fisher-map)" if os.path.isfile(path) else "is gone"
        return (
            f"cannot resume: this run's checkpoint was trained with per-module ranks from a {fishermap.FILE_NAME} that {why}: "
            f"restore {path} (and drop --ignore-fisher-map), or start a new run"
        )
    return problem


FabricPrecision = Literal["32-true", "bf16-mixed", "16-mixed"]


def fabric_precision(device: torch.device, dtype: torch.dtype) -> FabricPrecision:
    """Mixed precision keeps the trainable adapter (and optimizer state) in fp32 while the frozen base
    runs in bf16/fp16 under autocast; ``*-true`` would make the adapter itself half precision."""
    if device.type == "cpu" or dtype == torch.float32:
        return "32-true"
    return "bf16-mixed" if dtype == torch.bfloat16 else "16-mixed"


def load_placement(device: torch.device, *, sharded: bool) -> torch.device | None:
    """Where the frozen base is loaded and the adapter attached, when not on the run's ``device``
    itself (None). Under ``--strategy fsdp`` that is the CPU ("staging"): the base is the thing that
    does not fit one accelerator, so no rank ever holds all of it there. torch's ``fully_shard`` then
    moves what it manages to its mesh's device, layer by layer as ``shard_decoder`` calls it (torch
    2.13 ``torch/distributed/fsdp/_fully_shard/_fsdp_init.py``: ``_get_modules_and_states`` calls
    ``_move_states_to_device(params, buffers, device)``, which does ``tensor.data = tensor.to(device)``
    for every managed parameter and buffer not already there, ``device`` being the mesh's, i.e.
    ``torch.device("cuda", torch.cuda.current_device())``, which Fabric set to this rank's GPU), and
    ``FSDPParam`` keeps only this rank's chunk (``_init_sharded_param``: "Let ``param_data`` be freed
    normally when its ref count reaches 0"). Fabric itself never moves the module:
    ``ModelParallelStrategy.module_to_device`` is a no-op (lightning_fabric 2.6
    ``strategies/model_parallel.py``) and its ``setup_module`` only calls our ``parallelize_fn`` (and
    materialises meta tensors, of which a loaded model has none). Peak accelerator memory while
    sharding: the shards so far plus one full layer (or the decoder's non-layer rest, for the root)."""
    return torch.device("cpu") if sharded else None


def misplaced(module: torch.nn.Module, device: torch.device) -> str:
    """The first parameter or buffer of ``module`` on another device type than ``device``, as
    "NAME on DEVICE", or "" when everything is where the run computes."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.device.type != device.type:
            return f"{name} on {tensor.device}"
    return ""


def build_run(
    config: cfgmod.TrainConfig,
    run_dir: str,
    bus: Any,
    *,
    set_phase: Callable[[protocol.Phase, str], None],
    write_config: bool = True,
    group: Any = None,
) -> RunParts:
    """Everything a run needs. ``write_config=False`` (a resume) leaves config.json to the trainer,
    which rewrites it only once the resume has been restored. ``group`` (``engine.train.dist.Group``):
    one of several processes; its launched Fabric, device and share of the data are used."""
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import SingleDeviceStrategy

    from engine.adapters import attach_adapter
    from engine.data.dataset import DatasetError, TensorDataset
    from engine.data.loader import build_loader, build_planner
    from engine.data.sampler import EpochBatchSampler
    from engine.models.loader import enable_gradient_checkpointing, load_decoder, read_model_config, resolve_device, resolve_dtype
    from engine.train.optim import build_optimizer, build_scheduler

    model_dir = discovery.resolve_model_dir(config.checkpoint_dir, config.model_variant)
    # First thing a run says: which Python files of the model folder will run, with their full hashes,
    # and which of them differ from what was first seen there (engine/codehash.py).
    code = codehash.check(model_dir)
    bus.log("info", code.log_line())
    for line in ([code.problem] if code.problem else []) + [f"custom code: {w}" for w in code.warnings()]:
        bus.log("warning", line)
    config = cfgmod.resolve_variant_defaults(config, read_model_config(Path(model_dir)))
    if write_config:
        fsutil.write_text(layout.config_path(run_dir), cfgmod.to_json(config))

    # Validate the data before spending time on the model: a bad file should fail in seconds.
    set_phase("preparing_data", config.dataset_dir)
    dataset = TensorDataset(config.dataset_dir, repeats=config.dataset_repeats)
    model_hidden = read_model_config(Path(model_dir)).get("hidden_size")
    if isinstance(model_hidden, int) and dataset.hidden_size != model_hidden:
        raise DatasetError(
            f"{dataset.root}: tensors were made for hidden size {dataset.hidden_size}, the model {config.model_variant} has "
            f"{model_hidden}: preprocess again with this model"
        )
    for note in format_warnings(dataset.root, model_dir):  # legacy conditioning, another model's encoder
        bus.log("warning", note)
    planner = build_planner(dataset, config)
    device = resolve_device(config.device) if group is None else group.device
    rank, world = (0, 1) if group is None else (group.rank, group.world)
    if config.base_quantization != "none":  # a one-line refusal before the model loads, never a fallback
        from engine.models.quant import check_available

        check_available(config.base_quantization, device)
    loader = build_loader(
        dataset, config, epoch=0, skip_batches=0, device_type=device.type, planner=planner, rank=rank, world=world
    )
    sampler = loader.batch_sampler
    assert isinstance(sampler, EpochBatchSampler)  # build_loader's own
    batches_per_epoch = sampler.num_batches
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    if world > 1:
        how = "fsdp, the base sharded" if group.sharded else "ddp"
        bus.log(
            "info", f"{world} processes ({how}): each trains {config.batch_size} of every batch of {config.batch_size * world}"
        )
    bus.log(
        "info",
        f"dataset: {len(dataset)} samples, {batches_per_epoch} batches and {steps_per_epoch} optimizer steps per epoch, {total_steps} steps in all",
    )

    fisher = fisher_map_for_run(config, model_dir, lambda level, line: bus.log(level, line))

    dtype = resolve_dtype(config.precision, device)
    sharded = group is not None and group.sharded  # fsdp: the optimizer is built over the sharded parameters
    stage_on = load_placement(device, sharded=sharded)
    if stage_on is not None:
        bus.log(
            "info",
            f"fsdp: the base loads on the {stage_on.type.upper()}, a full copy in each rank's host memory until it is "
            f"sharded; each layer's shard moves to {device} as it is sharded",
        )
    torch.manual_seed(config.seed)
    set_phase("loading_model", model_dir)
    loaded = load_decoder(
        model_dir,
        device=device,
        dtype=dtype,
        attention_backend=config.attention_backend,
        log=lambda m: bus.log("info", m),
        base_quantization=config.base_quantization,
        stage_on=stage_on,
    )
    null_condition_emb = loaded.null_condition_emb.to(device)  # the trainer's, outside the module: on the run's device
    where = f"{loaded.device} for {device}" if stage_on is not None else str(device)
    bus.log("info", f"model: {model_dir} on {where} ({str(dtype).removeprefix('torch.')}, attention {loaded.attention_backend})")
    total_params = loaded.param_count

    torch.manual_seed(config.seed)  # adapter init is part of the seeded state
    adapter = attach_adapter(loaded.decoder, config, fisher=fisher)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(adapter.module, config.gradient_checkpointing_ratio)
    bus.log(
        "info",
        f"adapter: {config.adapter_type}, {adapter.adapted_modules} modules, {adapter.trainable_params:,} trainable parameters",
    )
    note = getattr(adapter, "precision_note", "")  # LyCORIS: which adapter path (fp32 bypass or rebuild) runs
    if note:
        bus.log("info", note)

    precision = fabric_precision(device, dtype)
    if group is None:
        fabric = Fabric(
            accelerator=device.type if device.type != "mps" else "mps",
            devices=1,
            strategy=SingleDeviceStrategy(device=device),
            precision=precision,
        )
    else:
        fabric = group.fabric  # launched before the run folder was claimed
    module = fabric.setup_module(adapter.module) if sharded else None
    if sharded:
        from engine.train.dist import held_parameters

        stray = misplaced(adapter.module, device)
        if stray:
            raise RuntimeError(
                f"fsdp: {stray} after sharding, but the run computes on {device} (the model keeps a tensor FSDP did not "
                "move): train it with --strategy ddp"
            )

        held, whole = held_parameters(adapter.module)
        bus.log("info", f"fsdp: each rank holds about {held:,} of the model's {whole:,} parameters (the frozen base sharded)")
    optimizer = build_optimizer(adapter.parameters(), config, device_type=device.type, log=lambda m: bus.log("info", m))
    scheduler = build_scheduler(optimizer, config, total_steps)
    if sharded:
        optimizer = fabric.setup_optimizers(optimizer)  # type: ignore[assignment]  # (one optimizer in, one out)
    else:
        module, optimizer = fabric.setup(adapter.module, optimizer)
    adapter.module.train()

    generator = torch.Generator(device="cpu")
    generator.manual_seed(config.seed)
    mu, sigma = timestep_mu_sigma(config)
    tracker = recipe.TimestepTracker(mode=config.timestep_mode, mu=float(mu), sigma=float(sigma))
    return RunParts(
        config=config,
        run_dir=run_dir,
        device=device,
        fabric=fabric,
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        adapter=adapter,
        null_condition_emb=null_condition_emb,
        generator=generator,
        tracker=tracker,
        dataset=dataset,
        loader=loader,
        planner=planner,
        batches_per_epoch=batches_per_epoch,
        total_steps=total_steps,
        compute_input_dtype=dtype,
        model_dir=model_dir,
        attention_backend=loaded.attention_backend,
        precision=precision,
        total_params=total_params,
        distributed=group is not None,
    )
