"""Two training processes (Fabric's DDP over gloo, on the CPU) started the way the TUI's engine starts
them (``engine.process.group``: torchrun's variables, rank 0's events and commands through pipes).

One process with batch 2b and two with batch b train the same adapter; a two-process resume
continues bit-exactly; a stop saves once, from rank 0, and both ranks exit 0; a rank killed with
SIGKILL ends the run as failed, naming it, within the collective timeout. Three group runs of a
few steps each: every check that can share a run does."""

from __future__ import annotations

import math
import os
import queue
import re
import signal
import threading
import time
import types

import pytest
import torch

from engine import config as cfgmod
from engine import layout, protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.process.group import run_group
from engine.train.trainer import Trainer

pytestmark = pytest.mark.integration

TIMEOUT_S = 15  # the runs' collective timeout


def _values(demo_config_values: dict, **changes: object) -> dict:
    base = dict(
        demo_config_values,
        max_steps=3,
        gradient_accumulation=1,
        cfg_ratio=0.5,  # the CFG draws are shared out too
        dropout=0.0,  # LoRA dropout draws from each rank's own torch RNG: the same run, not the same numbers
        save_every_n_steps=2,
        collective_timeout=TIMEOUT_S,
        batch_size=1,
        devices="2",
    )
    return base | changes


def one_process(values: dict) -> object:
    bus = EventBus([CallbackSink(lambda e: None)])
    return Trainer(cfgmod.parse(dict(values, devices="1")), bus, CommandInbox(None), run_id="one", metrics_hz=math.inf).fit()


class Group:
    """A group run in a thread of this process, as the engine process runs one for the UI."""

    def __init__(self, values: dict) -> None:
        self.events: list = []
        self.commands: queue.Queue = queue.Queue()
        self.final: object = None
        self.seen = threading.Condition()
        bus = EventBus([CallbackSink(self._collect)])
        inbox = CommandInbox(self.commands)
        monitor = types.SimpleNamespace(phase=None, last_step=None)
        config_json = cfgmod.to_json(cfgmod.parse(values))

        def run() -> None:
            self.final = run_group(config_json, bus, inbox, run_id="ddp", monitor=monitor, world=2)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def _collect(self, event: object) -> None:
        with self.seen:
            self.events.append(event)
            self.seen.notify_all()

    def wait_for(self, cond, timeout: float, what: str) -> object:
        with self.seen:
            ok = self.seen.wait_for(lambda: next((e for e in self.events if cond(e)), None), timeout)
        assert ok, f"no {what} within {timeout} s: {[type(e).__name__ for e in self.events]}"
        return ok

    def result(self, timeout: float = 300) -> object:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the group did not end"
        return self.final

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def adapter(run_dir: str, folder: str = "final") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, folder, "adapter_model.safetensors"))


def test_two_processes_train_what_one_does_with_twice_the_batch_and_resume_exactly(demo_config_values, tmp_path):
    straight, resumed = str(tmp_path / "two"), str(tmp_path / "resumed")
    group = Group(_values(demo_config_values, output_dir=straight))
    one = one_process(_values(demo_config_values, batch_size=2, output_dir=str(tmp_path / "one")))  # meanwhile, here
    final = group.result()
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "message", final)
    assert isinstance(one, protocol.RunFinished) and one.steps == final.steps == 3

    a, b = adapter(str(tmp_path / "one")), adapter(straight)
    assert a.keys() == b.keys() and a
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert any((b[k] - adapter(straight, "checkpoints/step_2")[k]).abs().max() > 1e-4 for k in b)  # it did train

    # rank 0 alone reported and wrote: one run in events.jsonl, every rank's figures in its step metrics
    on_disk = protocol.read_events(layout.events_path(straight))
    assert [type(e).__name__ for e in on_disk].count("RunStarted") == 1
    metrics = group.of(protocol.StepMetrics)
    assert metrics and all(len(m.rank_step_time_s) == len(m.rank_memory_mb) == 2 for m in metrics)
    assert all(t > 0 for m in metrics for t in m.rank_step_time_s)

    # the saved position holds for two processes only: one is refused with one line naming the fix
    step_2 = layout.checkpoint_dir(straight, "step_2")
    refused = one_process(_values(demo_config_values, output_dir=str(tmp_path / "refused"), resume_from=step_2))
    assert isinstance(refused, protocol.RunFailed) and "trained by 2 process(es), this run has 1" in refused.message
    assert "\n" not in refused.message

    # two processes resume from step 2; a stop sent before they start lands at the first step boundary
    # (step 3), is saved once, by rank 0, and both ranks end well: the same adapter, bit for bit
    group = Group(_values(demo_config_values, output_dir=resumed, resume_from=step_2, max_steps=50))
    group.commands.put(protocol.StopRun())
    final = group.result()
    assert isinstance(final, protocol.RunFinished) and final.status == "stopped", getattr(final, "message", final)
    (saved,) = group.of(protocol.CheckpointSaved)
    assert saved.kind == "stop" and saved.step == 3
    stopped = adapter(saved.path, ".")
    assert all(torch.equal(stopped[k], b[k]) for k in b)


def test_a_killed_rank_fails_the_run_naming_it_within_the_timeout(demo_config_values, tmp_path):
    group = Group(_values(demo_config_values, output_dir=str(tmp_path / "killed"), max_steps=1000, save_every_n_steps=0))
    started = group.wait_for(lambda e: isinstance(e, protocol.LogRecord) and "rank 1 pid" in e.message, 120, "rank list")
    pid = int(re.search(r"rank 1 pid (\d+)", started.message).group(1))
    group.wait_for(lambda e: isinstance(e, protocol.StepMetrics), 300, "training step")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    final = group.result()
    assert time.monotonic() - killed_at < TIMEOUT_S + 5
    assert isinstance(final, protocol.RunFailed)
    assert final.message.startswith("rank 1 of 2 died (killed by SIGKILL) at step"), final.message
    on_disk = protocol.read_events(layout.events_path(str(tmp_path / "killed")))
    assert isinstance(on_disk[-1], protocol.RunFailed) and on_disk[-1].message == final.message


def test_fsdp_shards_the_base_and_saves_the_adapter_one_process_trains(demo_config_values, demo_paths, tmp_path):
    """--strategy fsdp (Fabric's ModelParallelStrategy, torch's fully_shard over gloo): the base is
    sharded, yet rank 0 writes the ordinary full adapter: the one a one-process run with twice the
    batch writes, loadable by PEFT key for key; the resumable checkpoint holds the gathered adapter and
    optimizer state, a two-process resume from it goes on exactly, and SIGTERM to rank 0 (what `kill`
    of a headless run hits) stops it with one save, from rank 0, and both ranks exit 0."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    from engine.models.loader import load_decoder

    straight, resumed = str(tmp_path / "fsdp"), str(tmp_path / "resumed")
    group = Group(_values(demo_config_values, output_dir=straight, strategy="fsdp", max_steps=4))
    one = one_process(_values(demo_config_values, batch_size=2, output_dir=str(tmp_path / "one"), max_steps=4))
    final = group.result()
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "message", final)
    assert isinstance(one, protocol.RunFinished) and one.steps == final.steps == 4
    logs = [e.message for e in group.of(protocol.LogRecord)]
    held, whole = next(
        [int(n.replace(",", "")) for n in m.groups()]
        for line in logs
        if (m := re.search(r"holds about ([\d,]+) of the model's ([\d,]+)", line))
    )
    assert held <= whole * 0.6  # the base is sharded: rank 0 stores about half of it
    assert any(m.startswith("fsdp: the base loads on the CPU") for m in logs)  # staged, then each shard moved

    a, b = adapter(str(tmp_path / "one")), adapter(straight)
    assert a.keys() == b.keys() and a
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert any((b[k] - adapter(straight, "checkpoints/step_2")[k]).abs().max() > 1e-4 for k in b)  # it did train
    # the same files as one process writes, the ComfyUI export included (named after the run folder)
    files = {
        run: sorted(f.replace(run, "RUN") for f in os.listdir(os.path.join(str(tmp_path), run, "final")))
        for run in ("one", "fsdp")
    }
    assert files["one"] == files["fsdp"] and "RUN_comfyui.safetensors" in files["one"]
    ca, cb = (load_file(os.path.join(str(tmp_path), run, "final", f"{run}_comfyui.safetensors")) for run in ("one", "fsdp"))
    assert ca.keys() == cb.keys() and max((ca[k] - cb[k]).abs().max().item() for k in ca) < 1e-5

    loaded = load_decoder(
        os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"]), device=torch.device("cpu"), dtype=torch.float32
    )
    model = PeftModel.from_pretrained(loaded.decoder, os.path.join(straight, "final"))
    live = get_peft_model_state_dict(model)
    assert live.keys() == b.keys() and all(torch.equal(live[k], b[k]) for k in b)  # every key matched, and loaded

    step_2 = layout.checkpoint_dir(straight, "step_2")
    state = torch.load(layout.trainer_state_path(step_2), weights_only=True)
    assert state["sharded"] and state["world_size"] == 2
    assert len(state["optimizer"]["state"]) == len(state["adapter"]) == len(b)  # full moments of every adapter tensor

    group = Group(_values(demo_config_values, output_dir=resumed, resume_from=step_2, strategy="fsdp", max_steps=1000))
    started = group.wait_for(lambda e: isinstance(e, protocol.LogRecord) and "rank 0 pid" in e.message, 120, "rank list")
    group.wait_for(lambda e: isinstance(e, protocol.CheckpointSaved) and e.step == 4, 300, "the resumed run's step 4")
    os.kill(int(re.search(r"rank 0 pid (\d+)", started.message).group(1)), signal.SIGTERM)
    final = group.result()
    assert isinstance(final, protocol.RunFinished) and final.status == "stopped", getattr(final, "message", final)
    (saved,) = [e for e in group.of(protocol.CheckpointSaved) if e.kind == "stop"]
    assert saved.step > 4 and sorted(os.listdir(layout.checkpoints_dir(resumed))) == ["step_4", f"step_{saved.step}"]
    again = adapter(resumed, "checkpoints/step_4")
    assert all(torch.equal(again[k], b[k]) for k in b)  # resumed from step 2, at step 4 where the straight run ended


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"adapter_type": "lokr"}, "a lokr adapter"),
        ({"use_dora": True}, "DoRA"),
        ({"sample_every": 2}, "samples during training"),
    ],
)
def test_fsdp_refuses_what_it_cannot_shard_in_one_line_before_any_process_starts(
    demo_config_values, tmp_path, monkeypatch, change, named
):
    # (were the refusal gone, LOCAL_RANK keeps Fabric from re-running pytest's command line as rank 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    values = _values(demo_config_values, output_dir=str(tmp_path / "refused"), strategy="fsdp", **change)
    bus = EventBus([CallbackSink(lambda e: None)])
    final = Trainer(cfgmod.parse(values), bus, CommandInbox(None), run_id="refused").fit()
    assert isinstance(final, protocol.RunFailed) and "\n" not in final.message
    assert f"strategy fsdp does not support {named}" in final.message and "--strategy ddp" in final.message
    assert not os.path.exists(str(tmp_path / "refused"))  # refused before the run folder was claimed
