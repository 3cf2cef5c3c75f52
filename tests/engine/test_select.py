"""Side-Step's estimate / selective on the CPU demo, in-process: ``sidestep estimate`` writes a ranking
that ``--module-config`` trains exactly (the saved adapter's keys), ``--auto-estimate`` trains the top-k
the estimate finds, LyCORIS restricts to the same names, and a name that matches no decoder module is
a one-line error before any run folder exists."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from test_lycoris import fresh_decoder, make_config
from test_toolkit import train

from engine import config as cfgmod
from engine import moduleconfig, protocol
from engine.adapters import attach_adapter
from engine.analysis import sensitivity
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.cli.main import main as cli


def adapted_modules(final_dir: str) -> set[str]:
    """``layers.N.kind.proj`` of every module with LoRA tensors in the saved adapter."""
    keys = load_file(os.path.join(final_dir, "adapter_model.safetensors"))
    return {k.removeprefix("base_model.model.").split(".lora_")[0] for k in keys}


def test_estimate_writes_a_ranking_that_module_config_trains_exactly(demo_config_values, tmp_path, capsys):
    out = tmp_path / "est.json"
    v = demo_config_values
    model = ["-c", v["checkpoint_dir"], "-M", v["model_variant"], "-d", v["dataset_dir"], "--device", "cpu"]
    rc = cli(["estimate", *model, "--num-workers", "0", "--estimate-batches", "2", "--top-k", "3", "--output", str(out)])
    assert rc == 0
    ranking = json.loads(out.read_text())  # Side-Step's format: [{"module": "decoder.layers...", "sensitivity": x}]
    assert [set(e) for e in ranking] == [{"module", "sensitivity"}] * 3
    scores = [e["sensitivity"] for e in ranking]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert all(e["module"].startswith("decoder.layers.") for e in ranking)
    printed = capsys.readouterr().out
    assert all(e["module"] in printed for e in ranking)

    events, final = train(dict(v, max_steps=2, module_config=str(out)))
    assert isinstance(final, protocol.RunFinished), final
    listed = {e["module"].removeprefix("decoder.") for e in ranking}
    assert adapted_modules(os.path.join(v["output_dir"], "final")) == listed
    started = next(e for e in events if isinstance(e, protocol.RunStarted))
    assert started.adapted_modules == 3
    with open(os.path.join(v["output_dir"], "config.json"), encoding="utf-8") as fh:
        saved = json.load(fh)
    assert set(saved["selected_modules"]) == listed


def test_auto_estimate_trains_the_top_k_layers(demo_config_values):
    values = dict(demo_config_values, max_steps=2, auto_estimate=True, granularity="layer", top_k=1, estimate_batches=2)
    config = cfgmod.parse(values)
    ranking = sensitivity.estimate(config)  # the same seeded batches the run's estimate measures
    assert [name.count(".") for name, _ in ranking] == [1] * 4  # the demo's four layers, ranked as wholes
    best = ranking[0][0]

    events: list = []
    final = sensitivity.run_training(
        cfgmod.to_json(config), EventBus([CallbackSink(events.append)]), CommandInbox(None), run_id="t"
    )
    assert isinstance(final, protocol.RunFinished), final
    assert adapted_modules(os.path.join(values["output_dir"], "final")) == {f"{best}.{k}" for k in moduleconfig.LAYER_MODULES}
    said = [e.message for e in events if isinstance(e, protocol.LogRecord) and "auto-estimate: training" in e.message]
    assert said and f"decoder.{best} " in said[0]


def test_lokr_adapts_only_the_selected_modules(demo_paths):
    chosen = ("layers.1.mlp.down_proj", "layers.3.cross_attn.q_proj")
    adapter = attach_adapter(fresh_decoder(demo_paths), make_config(adapter_type="lokr", selected_modules=chosen))
    assert adapter.adapted_modules == 2
    assert sorted(lora.lora_name for lora in adapter.net.loras) == [
        "lycoris_layers_1_mlp_down_proj",
        "lycoris_layers_3_cross_attn_q_proj",
    ]
    assert adapter.trainable_params == sum(p.numel() for p in adapter.parameters()) > 0


def test_a_name_matching_no_module_is_one_line_before_anything_starts(demo_config_values, tmp_path, capsys):
    v = demo_config_values
    bad = tmp_path / "other-model.json"
    bad.write_text(json.dumps([{"module": "decoder.layers.23.self_attn.q_proj", "sensitivity": 1.0}]))
    common = ["train", "-c", v["checkpoint_dir"], "-M", v["model_variant"], "-d", v["dataset_dir"], "-o", v["output_dir"]]
    assert cli([*common, "--module-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoder.layers.23.self_attn.q_proj matches no decoder module" in err
    assert "has 4 layers" in err
    assert cli([*common, "--module-config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    # the same file through the engine (the TUI's and the queue's path): a failed start, no run folder
    _, final = train(dict(v, module_config=str(bad)))
    assert isinstance(final, protocol.RunFailed) and "matches no decoder module" in final.message
    assert "\n" not in final.message and not os.path.exists(v["output_dir"])
    with pytest.raises(ValueError, match=r"layers\.9\.self_attn\.q_proj matches no decoder module"):  # a module the model lacks
        attach_adapter(fresh_decoder_from(v), make_config(selected_modules=("layers.9.self_attn.q_proj",)))


def fresh_decoder_from(values: dict) -> torch.nn.Module:
    return fresh_decoder({"model_dir": os.path.join(values["checkpoint_dir"], values["model_variant"])})


def test_the_estimate_job_streams_progress_and_a_stop_writes_nothing(demo_config_values, tmp_path):
    """The TUI's estimate (``StartEstimate`` in the engine process): a stop between batches ends it with
    ``EstimateDone(stopped)`` and no file. (Completion, the file and the ranking: tests/ui/test_dataset_estimate.py.)"""
    config = cfgmod.parse(dict(demo_config_values, estimate_batches=3, top_k=2))
    output = tmp_path / "module_config.json"
    events: list = []
    inbox = CommandInbox(None)

    def collect(event):
        events.append(event)
        if isinstance(event, protocol.EstimateProgress) and event.done == 1:
            inbox.state.stop_requested = True  # what StopRun sets

    final = sensitivity.run_estimate_job(
        cfgmod.to_json(config), str(output), EventBus([CallbackSink(collect)]), inbox, run_id="e"
    )
    assert [(e.done, e.total) for e in events if isinstance(e, protocol.EstimateProgress)] == [(1, 3)]
    assert isinstance(final, protocol.EstimateDone) and (final.status, final.path, final.modules) == ("stopped", "", ())
    assert not [name for name in os.listdir(tmp_path) if "module_config" in name]  # no file, no temp left behind
    bad = sensitivity.run_estimate_job(cfgmod.to_json(config), str(tmp_path / "no" / "x.json"), EventBus([]), inbox, run_id="e")
    assert isinstance(bad, protocol.RunFailed) and "does not exist" in bad.message and "\n" not in bad.message


def test_a_stop_during_auto_estimate_is_a_stopped_run(demo_config_values):
    """Stopped while it estimates (the TUI's stop; SIGINT/SIGTERM headless set the same flag): a stopped
    run with no adapter, one line saying so, ``stopped`` in ``sidestep runs``, and the folder free for a new start."""
    from engine import runs
    from engine.cli.queue import _refuse_used_output
    from engine.train import rundir

    values = dict(demo_config_values, max_steps=2, auto_estimate=True, top_k=2, estimate_batches=3)
    events: list = []
    inbox = CommandInbox(None)

    def collect(event):
        events.append(event)
        if isinstance(event, protocol.LogRecord) and event.message.startswith("auto-estimate: batch 1/"):
            inbox.state.stop_requested = True

    final = sensitivity.run_training(cfgmod.to_json(cfgmod.parse(values)), EventBus([CallbackSink(collect)]), inbox, run_id="t")
    assert isinstance(final, protocol.RunFinished), final
    assert (final.status, final.steps, final.adapter_path) == ("stopped", 0, "")
    said = [e.message for e in events if isinstance(e, protocol.LogRecord) and e.level == "warning"]
    assert said == ["auto-estimate stopped: the estimate was stopped after 1 of 3 batches; nothing was written"]
    summary = runs.summarize_run(values["output_dir"])
    assert summary.status == "stopped" and summary.adapter_path is None
    rundir.claim(values["output_dir"], resuming=False, overwrite=False, run_id="next").release()  # trained nothing: reusable
    _refuse_used_output(cfgmod.parse(values))  # and `sidestep queue add` agrees (no error)
