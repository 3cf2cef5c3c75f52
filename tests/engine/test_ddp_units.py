"""The pieces of a several-process run that need no second process: each rank's share of the data
and of the random draws is its rows of what one process with the global batch gets; the schema's
fields; the figures the Monitor and ``sidestep attach`` show; where ``--strategy fsdp`` places the
frozen base before it is sharded."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch

from engine import config as cfgmod
from engine import protocol
from engine.cli.plain import render
from engine.data.chunking import ChunkPlanner
from engine.data.sampler import EpochBatchSampler
from engine.train import recipe


def _sampler(batch_size: int, *, rank: int = 0, world: int = 1, files: int, repeats: int = 2) -> EpochBatchSampler:
    lengths = [40 + 13 * i for i in range(files)]
    planner = ChunkPlanner([f"f{i}" for i in range(files)], lengths, 50, decay_every=10)
    return EpochBatchSampler(planner, batch_size=batch_size, seed=3, repeats=repeats, rank=rank, world=world)


@pytest.mark.parametrize(("world", "files"), [(2, 7), (3, 6), (3, 7)])
def test_each_rank_takes_its_slice_of_the_batches_one_process_would_train(world, files):
    # 2 repeats of `files` clips, cut to a multiple of world (7 files, 3 ranks: 12 of 14 items)
    whole = _sampler(2 * world, world=1, files=files)
    shards = [_sampler(2, rank=r, world=world, files=files) for r in range(world)]
    assert len({s.num_batches for s in shards}) == 1
    items = 2 * files
    kept = items - items % world
    for epoch in (0, 1):
        ranks = [s.batches(epoch) for s in shards]
        if kept == items:  # rank by rank, the rows of what one process with the global batch trains
            assert [[key for r in ranks for key in r[i]] for i in range(len(ranks[0]))] == whole.batches(epoch)
        for i in range(len(ranks[0])):
            assert len({len(r[i]) for r in ranks}) == 1 and len(ranks[0][i]) > 0  # equal, never empty
        assert sum(len(b) for r in ranks for b in r) == kept
        # resume: skipping k batches is the same cut on every rank
        assert [s.batches(epoch, 2) for s in shards] == [r[2:] for r in ranks]


def test_shared_draws_are_rows_of_the_global_batch():
    gen = torch.Generator().manual_seed(0)
    whole = recipe.sample_timesteps(4, mode="continuous", mu=-0.4, sigma=1.0, generator=gen)
    emb = torch.randn(4, 3, 5)
    null = torch.zeros(5)
    drops_whole = recipe.apply_cfg_dropout(emb, null, 0.5, generator=gen)[1]
    for rank in range(2):
        gen = torch.Generator().manual_seed(0)
        share = (rank, 2)
        t = recipe.sample_timesteps(2, mode="continuous", mu=-0.4, sigma=1.0, generator=gen, share=share)
        torch.testing.assert_close(t, whole[2 * rank : 2 * rank + 2], rtol=0, atol=0)
        dropped = recipe.apply_cfg_dropout(emb[2 * rank : 2 * rank + 2], null, 0.5, generator=gen, share=share)[1]
        assert torch.equal(dropped, drops_whole[2 * rank : 2 * rank + 2])


def test_scale_fields_in_the_schema():
    base = {"checkpoint_dir": "c", "dataset_dir": "d", "output_dir": "o"}
    config = cfgmod.parse(base | {"devices": 2, "num_nodes": "3", "strategy": "ddp", "collective_timeout": "60"})
    assert (config.devices, config.num_nodes, config.strategy, config.collective_timeout) == ("2", 3, "ddp", 60)
    assert cfgmod.parse(base | {"devices": "auto"}).devices == "auto"
    for bad, field in (({"devices": "0"}, "devices"), ({"devices": "two"}, "devices"), ({"strategy": "deepspeed"}, "strategy")):
        with pytest.raises(cfgmod.ConfigError) as err:
            cfgmod.parse(base | bad)
        assert set(err.value.by_field()) == {field}
    with pytest.raises(cfgmod.ConfigError, match="CUDA_VISIBLE_DEVICES"):
        cfgmod.parse(base | {"devices": "2", "device": "cuda:1"})
    flags = {f.metadata["flag"] for f in cfgmod.FIELDS}
    assert {"--devices", "--num-nodes", "--strategy", "--collective-timeout"} <= flags


def test_the_slowest_rank_reaches_the_monitor_and_attach():
    from sidestep_tui.state import RunState, apply

    event = protocol.StepMetrics(
        step=3,
        epoch=1,
        total_steps=9,
        loss=1.0,
        loss_min=1.0,
        loss_max=1.0,
        steps_covered=1,
        lr=1e-3,
        grad_norm=0.5,
        samples_per_s=2.0,
        eta_s=3.0,
        rank_step_time_s=(0.5, 0.75, 0.25),
        rank_memory_mb=(900.0, 2048.0, 10.0),
    )
    state = apply(RunState(), event)
    assert state.slowest_rank == (1, 3, 0.75, 2048.0)
    assert "ranks: 0 0.50s 900 MiB, 1 0.75s 2.00 GiB, 2 0.25s 10 MiB (slowest 1)" in render(event)
    one = dataclasses.replace(event, rank_step_time_s=(), rank_memory_mb=())
    assert "ranks" not in render(one) and apply(RunState(), one).slowest_rank is None


def test_fsdp_stages_the_base_on_the_cpu_not_on_the_ranks_gpu(demo_config_values, demo_paths):
    """--strategy fsdp never puts the whole frozen base on a rank's accelerator: build_run loads it and
    attaches the adapter on the CPU, for the GPU it will run on (fully_shard moves each shard there).
    The GPU here is only named, never touched (fp32: no flash-attn probe), so this runs on any machine;
    without the staging the load moves the decoder to CUDA and fails (or, with a GPU, lands there)."""
    from engine.adapters import attach_adapter
    from engine.models.loader import load_decoder
    from engine.train.build import load_placement, misplaced

    gpu = torch.device("cuda", 0)
    assert load_placement(gpu, sharded=False) is None  # one process or ddp: straight onto the device
    stage_on = load_placement(gpu, sharded=True)
    assert stage_on == torch.device("cpu")
    model_dir = os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"])
    lines: list[str] = []
    loaded = load_decoder(model_dir, device=gpu, dtype=torch.float32, stage_on=stage_on, log=lines.append)
    adapter = attach_adapter(loaded.decoder, cfgmod.parse(dict(demo_config_values, strategy="fsdp")))
    placed = [*adapter.module.parameters(), *adapter.module.buffers(), loaded.null_condition_emb]
    assert {t.device.type for t in placed} == {"cpu"} and adapter.trainable_params > 0
    assert loaded.device == stage_on and lines[-1].endswith("cpu (staged for cuda:0)"), lines[-1]
    # what build_run checks after sharding: everything on the run's device type, else the first stray named
    assert misplaced(adapter.module, gpu).endswith(" on cpu") and misplaced(adapter.module, stage_on) == ""
    with pytest.raises(ValueError, match="quantised base"):  # bitsandbytes places as it quantises (fsdp refuses it)
        load_decoder(model_dir, device=gpu, dtype=torch.float32, stage_on=stage_on, base_quantization="int8")


@pytest.mark.gpu
def test_fsdp_on_cuda_holds_no_base_on_the_gpu_until_it_is_sharded(demo_config_values, tmp_path):
    """build_run's real path with a one-process fsdp group on CUDA: right after the load (and the
    adapter) almost nothing is allocated on the GPU; after setup the module's shards (here: all of it)
    and no more. Memory is read at build_run's own log lines, as they are emitted."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (on the CPU the staging device is the run's device: nothing to measure)")
    from engine.channel.events import CallbackSink, EventBus
    from engine.train import dist
    from engine.train.build import build_run, misplaced

    values = dict(demo_config_values, device="cuda", precision="bf16", strategy="fsdp", output_dir=str(tmp_path / "run"))
    config = cfgmod.parse(values)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saved_env = dict(os.environ)
    # torchrun's variables for one rank: Fabric joins them instead of starting processes
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", NODE_RANK="0")
    base = 0
    at: dict[str, int] = {}

    def measure(event: object) -> None:
        if isinstance(event, protocol.LogRecord):  # build_run's own lines, as it emits them
            for prefix in ("model: ", "adapter: ", "fsdp: each rank holds"):
                if event.message.startswith(prefix):
                    at[prefix] = torch.cuda.memory_allocated() - base

    try:
        fabric = dist.fabric_for(config, 1, 1)
        fabric.launch()
        group = dist.Group(fabric=fabric, rank=0, world=1, device=fabric.device, sharded=True)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()  # after the process group and its mesh are up
        parts = build_run(config, str(tmp_path), EventBus([CallbackSink(measure)]), set_phase=lambda *_: None, group=group)
        module = parts.adapter.module
        size = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        assert at["model: "] < 2**16 and at["adapter: "] < 2**16, (at, size)  # the null embedding, never the base
        assert size // 2 < at["fsdp: each rank holds"] <= size + 2**20, (at, size)  # the shards moved, nothing more
        assert misplaced(module, parts.device) == "" and parts.null_condition_emb.device == parts.device
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved_env)
        torch.cuda.empty_cache()
