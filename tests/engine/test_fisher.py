"""PP++ on the session demo, in this process: ``sidestep analyze`` writes a schema-2 fisher_map.json with
different ranks for different modules, the engine job streams progress and stops without writing, and a
LoRA run on the dataset trains exactly those per-module ranks (``--ignore-fisher-map`` restores the
uniform rank; a map from another model warns). One run x 2 batches keeps each analysis to seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil

import pytest
from safetensors.torch import load_file

from engine import config as cfgmod
from engine import fishermap, protocol
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus
from engine.cli.main import main as cli_main
from engine.train.trainer import Trainer


def _copy_dataset(demo_paths: dict, dest) -> str:
    out = os.path.join(str(dest), "tensors")
    shutil.copytree(demo_paths["dataset_dir"], out)
    return out


@pytest.fixture(scope="module")
def analysed(demo_paths, tmp_path_factory) -> tuple[str, str]:
    """(dataset folder with the fisher_map.json `sidestep analyze` wrote, its stdout)."""
    dataset = _copy_dataset(demo_paths, tmp_path_factory.mktemp("pp"))
    out = io.StringIO()
    argv = [
        "analyze",
        "--checkpoint-dir", demo_paths["checkpoint_dir"],
        "--model", demo_paths["model_variant"],
        "--dataset-dir", dataset,
        "--rank", "16", "--rank-min", "8", "--rank-max", "32",
        "--runs", "1", "--batches", "2",
        "--device", "cpu", "--yes",
    ]  # fmt: skip
    with contextlib.redirect_stdout(out):
        rc = cli_main(argv)
    assert rc == 0, out.getvalue()
    return dataset, out.getvalue()


def test_analyze_writes_a_side_step_schema_2_map(analysed):
    dataset, stdout = analysed
    with open(os.path.join(dataset, "fisher_map.json"), encoding="utf-8") as fh:
        data = json.load(fh)
    assert fishermap.schema_problems(data) == []  # every §10.2 field, with its type
    assert data["version"] == 2 and data["num_hidden_layers"] == 4 and data["dataset_hash"] == fishermap.dataset_hash(dataset)
    assert (data["num_runs"], data["batches_per_run"], data["total_batches"]) == (1, 2, 2)
    assert data["timestep_range"] == [0.0, 1.0] and data["rank_budget"] == {"min": 8, "max": 32}
    ranks = data["rank_pattern"]
    assert len(set(ranks.values())) > 1, "the analysis must tell modules apart"
    assert all(8 <= r <= 32 for r in ranks.values()) and data["alpha_pattern"] == {k: 2 * r for k, r in ranks.items()}
    assert len(ranks) + len(data["excluded_modules"]) == 44  # 4 layers x 11 projections
    scores = [m["fisher_score"] for m in data["modules"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert all(m["effective_rank"] >= 1 for m in data["modules"])
    assert len(data["sample_coverage"]) == 1 and len(data["sample_coverage"][0]["selected_files"]) == 2
    passes = [line for line in stdout.splitlines() if line.startswith("run 1/1  pass ")]
    assert len(passes) == 3 and "self_attn" in passes[0] and "mlp" in passes[2]
    assert "layers 0-3: [" in stdout and "wrote " in stdout


def test_engine_job_streams_progress_and_a_stop_writes_nothing(demo_paths, tmp_path):
    from engine.analysis.fisher import AnalyzeOptions
    from engine.process.entry import run_analysis_job

    dataset = _copy_dataset(demo_paths, tmp_path)
    events: list = []
    inbox = CommandInbox(None)

    def collect(event):
        events.append(event)
        if isinstance(event, protocol.AnalysisProgress) and event.done == 2:
            inbox.state.stop_requested = True  # what StopRun sets

    options = AnalyzeOptions(
        checkpoint_dir=demo_paths["checkpoint_dir"],
        model_variant=demo_paths["model_variant"],
        dataset_dir=dataset,
        rank=16,
        rank_min=8,
        rank_max=32,
        runs=1,
        batches=2,
        device="cpu",
    )
    final = run_analysis_job(options.to_json(), EventBus([CallbackSink(collect)]), inbox, run_id="pp")
    progress = [e for e in events if isinstance(e, protocol.AnalysisProgress)]
    assert [(e.group, e.batch, e.done, e.total) for e in progress] == [("self_attn", 1, 1, 6), ("self_attn", 2, 2, 6)]
    assert isinstance(final, protocol.AnalysisDone) and final.status == "stopped" and final.path == ""
    assert not os.path.exists(os.path.join(dataset, "fisher_map.json"))
    assert not [n for n in os.listdir(dataset) if "fisher" in n]


def _train(values: dict) -> tuple[list, object]:
    events: list = []
    final = Trainer(
        cfgmod.parse(values), EventBus([CallbackSink(events.append)]), CommandInbox(None), run_id="t", metrics_hz=math.inf
    ).fit()
    assert isinstance(final, protocol.RunFinished), final
    return events, final


def _lora_a_ranks(adapter_dir: str) -> dict[str, int]:
    """Module path (``layers.N.group.proj``) -> the rank of its trained lora_A tensor."""
    weights = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    out = {}
    for key, tensor in weights.items():
        if key.endswith("lora_A.weight"):
            module = key.removesuffix(".lora_A.weight").split("layers.", 1)[1]
            out["layers." + module] = tensor.shape[0]
    return out


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _logs(events: list, level: str) -> list[str]:
    return [e.message for e in events if isinstance(e, protocol.LogRecord) and e.level == level]


def test_lora_run_trains_the_maps_ranks_and_ignore_restores_uniform(analysed, demo_config_values, tmp_path):
    dataset, _ = analysed
    with open(os.path.join(dataset, "fisher_map.json"), encoding="utf-8") as fh:
        ranks = json.load(fh)["rank_pattern"]
    base = {**demo_config_values, "dataset_dir": dataset, "rank": 16, "alpha": 32, "max_steps": 2, "learning_rate": 5e-5}

    events, final = _train({**base, "output_dir": str(tmp_path / "mapped")})
    adapter_config = _read_json(os.path.join(final.adapter_path, "adapter_config.json"))
    assert adapter_config["rank_pattern"] == ranks
    assert adapter_config["alpha_pattern"] == {k: 2 * r for k, r in ranks.items()}
    assert _lora_a_ranks(final.adapter_path) == ranks  # the trained tensors: these modules, these ranks, no others
    announced = [m for m in _logs(events, "info") if m.startswith("Fisher rank map ")]
    assert len(announced) == 1 and "--ignore-fisher-map" in announced[0]
    assert _logs(events, "warning") == []  # made for this model, layers and tensors

    events, final = _train({**base, "output_dir": str(tmp_path / "uniform"), "ignore_fisher_map": True, "save_every_n_steps": 2})
    adapter_config = _read_json(os.path.join(final.adapter_path, "adapter_config.json"))
    assert not adapter_config.get("rank_pattern") and adapter_config["r"] == 16
    uniform = _lora_a_ranks(final.adapter_path)
    assert len(uniform) == 44 and set(uniform.values()) == {16}
    assert any("ignored (--ignore-fisher-map)" in m for m in _logs(events, "info"))

    # Resumed without the flag, the map's ranks no longer fit the checkpoint: one line naming the map and the fixes.
    resumed = {**base, "output_dir": str(tmp_path / "uniform"), "resume_from": "auto", "max_steps": 3}
    failed = Trainer(cfgmod.parse(resumed), EventBus([]), CommandInbox(None), run_id="t2").fit()
    assert isinstance(failed, protocol.RunFailed), failed
    assert failed.message.startswith(f"cannot resume: {os.path.join(dataset, 'fisher_map.json')} gives other ranks")
    assert "restore the map" in failed.message and "--ignore-fisher-map" in failed.message and "\n" not in failed.message


def test_a_map_from_another_model_warns_one_line_each(analysed, demo_paths, demo_config_values, tmp_path):
    """What a run says about a hand-written map for another model (the lines ``build_run`` logs first)."""
    from engine.train.build import fisher_map_for_run

    dataset, _ = analysed
    other = str(tmp_path / "tensors")
    shutil.copytree(dataset, other)
    with open(os.path.join(other, "fisher_map.json"), encoding="utf-8") as fh:
        hand = json.load(fh)
    hand.update(model_variant="turbo", num_hidden_layers=24)  # written by hand for another model
    with open(os.path.join(other, "fisher_map.json"), "w", encoding="utf-8") as fh:
        json.dump(hand, fh)
    said: list[tuple[str, str]] = []
    config = cfgmod.parse({**demo_config_values, "dataset_dir": other, "learning_rate": 5e-5})
    model_dir = os.path.join(demo_paths["checkpoint_dir"], demo_paths["model_variant"])
    fmap = fisher_map_for_run(config, model_dir, lambda level, line: said.append((level, line)))
    assert fmap is not None and fmap.rank_pattern == hand["rank_pattern"]
    warnings = [line for level, line in said if level == "warning"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert "'turbo'" in warnings[0] and "24-layer" in warnings[1]
    said.clear()
    assert fisher_map_for_run(dataclasses.replace(config, ignore_fisher_map=True), model_dir, lambda *a: said.append(a)) is None
    assert [level for level, _ in said] == ["info"]  # refused: no mismatch warnings either


def test_the_uis_options_json_is_what_the_analysis_takes():
    from engine.analysis.fisher import AnalyzeOptions

    text = fishermap.analyze_options_json("/ckpt", "base", "/data", rank=32)
    options = AnalyzeOptions.from_json(text)
    assert (options.rank, options.rank_min, options.rank_max, options.timestep_focus) == (32, 16, 128, "balanced")
    assert set(json.loads(text)) == {f.name for f in dataclasses.fields(AnalyzeOptions)}
