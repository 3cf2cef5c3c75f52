"""Module-config files (Side-Step's estimate JSON, name lists, PP++ fisher maps) and ``sidestep
compare-configs`` (overlap, Jaccard, rank by rank), run in-process through the CLI's own handler."""

from __future__ import annotations

import json

import pytest

from engine import config as cfgmod
from engine import moduleconfig as mc
from engine.cli.main import main as cli


def write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def estimate_file(path, names_scores) -> str:
    return write(path, [{"module": n, "sensitivity": s} for n, s in names_scores])


def test_reads_side_steps_estimate_a_name_list_a_layer_list_and_a_fisher_map(tmp_path):
    est = mc.load(
        estimate_file(tmp_path / "e.json", [("decoder.layers.2.mlp.up_proj", 3.0), ("decoder.layers.0.self_attn.q_proj", 1.0)])
    )
    assert (est.kind, est.granularity, est.selected) == (
        "estimate",
        "module",
        ("layers.2.mlp.up_proj", "layers.0.self_attn.q_proj"),
    )
    names = mc.load(write(tmp_path / "n.json", ["layers.1.cross_attn.o_proj"]))
    assert (names.kind, names.selected, names.entries[0].score) == ("list", ("layers.1.cross_attn.o_proj",), None)
    layer = mc.load(estimate_file(tmp_path / "l.json", [("decoder.layers.3", 2.0)]))
    assert layer.granularity == "layer" and len(layer.modules()) == 11 and layer.modules()[0] == "layers.3.self_attn.q_proj"
    fisher = {
        "version": 2,
        "rank_pattern": {"layers.1.self_attn.v_proj": 64},
        "modules": [
            {"name": "decoder.layers.0.mlp.down_proj", "fisher_score": 0.5},
            {"name": "decoder.layers.1.self_attn.v_proj", "fisher_score": 2.0},
        ],
    }
    fm = mc.load(write(tmp_path / "fisher_map.json", fisher))
    assert fm.kind == "fisher_map" and [e.name for e in fm.entries] == ["layers.1.self_attn.v_proj", "layers.0.mlp.down_proj"]
    assert fm.selected == ("layers.1.self_attn.v_proj",)  # what PP++ gives a rank


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not valid JSON"),
        ("[]", "lists no modules"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"sensitivity": 1.0}]', 'has no "module" name'),
        ('["decoder.layers.0.self_attn.to_q"]', "'decoder.layers.0.self_attn.to_q' is not an adaptable decoder module"),
        ('["decoder.layers.1.mlp.up_proj", "layers.1.mlp.up_proj"]', "listed twice"),
        ('[{"module": "decoder.layers.1.mlp.up_proj", "sensitivity": "high"}]', "is not a finite number"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(mc.ModuleConfigError) as exc:
        mc.load(str(path))
    assert message in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_schema_fields_and_their_checks():
    base = {"checkpoint_dir": "c", "dataset_dir": "d", "output_dir": "o"}
    flags = {f.name: f.metadata["flag"] for f in cfgmod.FIELDS}
    assert [flags[n] for n in ("module_config", "auto_estimate", "top_k", "granularity", "estimate_batches")] == [
        "--module-config",
        "--auto-estimate",
        "--top-k",
        "--granularity",
        "--estimate-batches",
    ]  # Side-Step's selective flags
    defaults = cfgmod.parse(base)
    assert (defaults.top_k, defaults.granularity, defaults.estimate_batches) == (16, "module", 5)
    with pytest.raises(cfgmod.ConfigError) as exc:
        cfgmod.parse({**base, "module_config": "m.json", "auto_estimate": True, "granularity": "block"})
    assert set(exc.value.by_field()) == {"granularity"}  # per-field errors first
    with pytest.raises(cfgmod.ConfigError) as exc:
        cfgmod.parse({**base, "module_config": "m.json", "auto_estimate": True, "selected_modules": ["layers.0.attn.q"]})
    assert set(exc.value.by_field()) == {"auto_estimate", "selected_modules"}
    with pytest.raises(cfgmod.ConfigError, match="lokr_targets"):
        cfgmod.parse({**base, "adapter_type": "lokr", "lokr_targets": "all-linear", "auto_estimate": True})


def test_compare_configs_overlap_and_ranks(tmp_path, capsys):
    a = estimate_file(
        tmp_path / "a.json",
        [
            ("decoder.layers.0.self_attn.q_proj", 9.0),
            ("decoder.layers.1.mlp.up_proj", 5.0),
            ("decoder.layers.2.cross_attn.k_proj", 1.0),
        ],
    )
    b = estimate_file(
        tmp_path / "b.json",
        [
            ("decoder.layers.1.mlp.up_proj", 7.0),
            ("decoder.layers.0.self_attn.q_proj", 6.0),
            ("decoder.layers.3.mlp.down_proj", 2.0),
        ],
    )
    assert cli(["compare-configs", a, b]) == 0
    text = capsys.readouterr().out.splitlines()
    assert "overlap A-B: 2 of 3/3 (Jaccard 0.50)" in text
    rows = [line.split() for line in text if line.startswith("decoder.")]
    assert rows == [
        ["decoder.layers.0.self_attn.q_proj", "#1", "9.000e+00", "#2", "6.000e+00"],  # mean rank 1.5
        ["decoder.layers.1.mlp.up_proj", "#2", "5.000e+00", "#1", "7.000e+00"],  # 1.5, then by name
        ["decoder.layers.2.cross_attn.k_proj", "#3", "1.000e+00", "-"],  # 3 and absent (4)
        ["decoder.layers.3.mlp.down_proj", "-", "#3", "2.000e+00"],
    ]
    c = write(tmp_path / "c.json", ["decoder.layers.1.mlp.up_proj"])
    assert cli(["compare-configs", "--configs", a, b, c, "--json"]) == 0  # Side-Step's --configs spelling
    report = json.loads(capsys.readouterr().out)
    assert [(p["a"], p["b"], p["overlap"], p["jaccard"]) for p in report["pairs"]] == [
        ("A", "B", 2, 0.5),
        ("A", "C", 1, pytest.approx(1 / 3, abs=1e-6)),
        ("B", "C", 1, pytest.approx(1 / 3, abs=1e-6)),
    ]
    assert report["common_to_all"] == ["decoder.layers.1.mlp.up_proj"]
    first, second = report["rows"][:2]  # mean ranks 4/3 and 5/3 (absent from C's one entry = its 2nd place)
    assert (first["module"], first["ranks"]) == ("decoder.layers.1.mlp.up_proj", {"A": 2, "B": 1, "C": 1})
    assert (second["ranks"], second["scores"]) == ({"A": 1, "B": 2, "C": None}, {"A": 9.0, "B": 6.0, "C": None})


def test_compare_configs_refuses_one_file_and_a_bad_one(tmp_path, capsys):
    a = estimate_file(tmp_path / "a.json", [("decoder.layers.0.self_attn.q_proj", 1.0)])
    assert cli(["compare-configs", a]) == 2
    assert "at least two files" in capsys.readouterr().err
    assert cli(["compare-configs", a, str(tmp_path / "gone.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
