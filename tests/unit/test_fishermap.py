"""fisher_map.json (engine/fishermap.py, stdlib): Side-Step's schema v2, its dataset hash, the one-line
mismatch warnings and the §10.2 rank allocation, on hand-made numbers."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from engine import fishermap


def _names(layers: int = 4) -> list[str]:
    return [
        f"decoder.layers.{i}.{g}.{p}"
        for i in range(layers)
        for g, projs in (("self_attn", "qkvo"), ("cross_attn", "qkvo"), ("mlp", ("gate", "up", "down")))
        for p in (f"{x}_proj" for x in projs)
    ]


def _built(tmp_path, **overrides) -> dict:
    names = _names()
    (tmp_path / "a.pt").write_bytes(b"12345")
    (tmp_path / "b.pt").write_bytes(b"1")
    values = dict(
        model_variant="base",
        timestep_focus="balanced",
        timestep_params={"mu": -0.4, "sigma": 1.0, "data_proportion": 0.5},
        num_runs=2,
        batches_per_run=2,
        total_batches=4,
        base_rank=16,
        rank_min=8,
        rank_max=32,
        dataset_dir=str(tmp_path),
        scores={n: float(i + 1) for i, n in enumerate(names)},
        stds={n: 0.1 for n in names},
        effective_ranks={n: 10 + (i % 5) for i, n in enumerate(names)},
        sample_coverage=[{"run": 1, "selected_count": 2, "total_count": 2, "coverage_ratio": 1.0, "selected_files": ["a.pt"]}],
        num_hidden_layers=4,
    )
    values.update(overrides)
    return fishermap.build(**values)


def test_dataset_hash_is_side_steps():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for name, size in (("b.pt", 3), ("a.pt", 10), ("notes.txt", 4)):
            with open(os.path.join(d, name), "wb") as fh:
                fh.write(b"x" * size)
        expected = hashlib.md5(b"a.pt:10|b.pt:3").hexdigest()[:12]
        assert fishermap.dataset_hash(d) == expected


def test_built_map_is_schema_2_and_round_trips(tmp_path):
    data = _built(tmp_path)
    assert fishermap.schema_problems(data) == []
    path = fishermap.write(tmp_path, data)
    assert os.path.basename(path) == "fisher_map.json" and not [n for n in os.listdir(tmp_path) if "tmp" in n]
    fmap = fishermap.find(tmp_path)
    assert fmap is not None and fmap.data == json.loads(json.dumps(data))
    ranks = fmap.rank_pattern
    # the top 55 % (ceil 24.2 = 25 of 44) plus the group floors: cross_attn's best are in the top anyway
    assert len(ranks) + len(data["excluded_modules"]) == 44 and len(ranks) >= 25
    assert all(k.startswith("layers.") for k in ranks) and all(8 <= r <= 32 and r % 8 == 0 for r in ranks.values())
    assert len(set(ranks.values())) > 1
    assert fmap.alpha_pattern == {k: 2 * r for k, r in ranks.items()}
    assert data["target_modules"] == sorted({".".join(k.split(".")[-2:]) for k in ranks})
    assert [m["fisher_score"] for m in data["modules"]] == sorted((m["fisher_score"] for m in data["modules"]), reverse=True)
    assert (
        fishermap.mismatch_warnings(fmap, model_variant="acestep-v15-base", num_hidden_layers=4, dataset_dir=str(tmp_path)) == []
    )
    assert len(fishermap.layer_heat(fmap)) == 4 and max(fishermap.layer_heat(fmap)) == 1.0


def test_group_floor_keeps_one_of_each_group():
    names = _names(layers=10)
    # cross-attention scores lowest everywhere: without the floor none would be kept
    scores = {n: (0.001 if ".cross_attn." in n else 1.0 + i) for i, n in enumerate(names)}
    _, ranks, _, _ = fishermap.assign_ranks(scores, {n: 8 for n in names}, base_rank=16, rank_min=8, rank_max=64)
    kept_cross = [k for k in ranks if ".cross_attn." in k]
    assert len(kept_cross) == 4  # ceil(10 % of 40)
    assert all(r == 8 for k, r in ranks.items() if k in kept_cross)  # far below the median: clamped to rank-min


def test_rank_formula_by_hand():
    scores = {
        "decoder.layers.0.mlp.up_proj": 4.0,
        "decoder.layers.0.self_attn.q_proj": 1.0,
        "decoder.layers.0.cross_attn.q_proj": 1.0,
    }
    eff = {"decoder.layers.0.mlp.up_proj": 20, "decoder.layers.0.self_attn.q_proj": 10, "decoder.layers.0.cross_attn.q_proj": 10}
    _, ranks, alphas, _ = fishermap.assign_ranks(scores, eff, base_rank=16, rank_min=8, rank_max=64)
    # median F = 1, median S = 10: up_proj = round8(16 * sqrt(4 * 2)) = round8(45.25) = 48
    assert ranks == {"layers.0.mlp.up_proj": 48, "layers.0.self_attn.q_proj": 16, "layers.0.cross_attn.q_proj": 16}
    assert alphas["layers.0.mlp.up_proj"] == 96


def test_effective_rank_and_focus():
    assert fishermap.effective_rank([3.0, 0.0, 0.0]) == 1
    assert fishermap.effective_rank([1.0, 1.0, 1.0, 1.0]) == 4  # 95 % of equal energy needs all four
    assert fishermap.effective_rank([10.0, 1.0, 1.0]) == 1  # 100 of 102 >= 95 %
    assert fishermap.effective_rank([1.0, 3.0, 2.0]) == 3  # 9 + 4 of 14 < 95 %
    assert fishermap.focus_range("texture") == (0.0, 0.4) and fishermap.focus_range("0.2,0.6") == (0.2, 0.6)
    with pytest.raises(ValueError, match="lo < hi"):
        fishermap.focus_range("0.6,0.2")


def test_another_variant_layers_and_tensors_warn_one_line_each(tmp_path):
    data = _built(tmp_path, model_variant="turbo")
    fishermap.write(tmp_path, data)
    (tmp_path / "c.pt").write_bytes(b"new")
    fmap = fishermap.find(tmp_path)
    assert fmap is not None
    lines = fishermap.mismatch_warnings(fmap, model_variant="base", num_hidden_layers=24, dataset_dir=str(tmp_path))
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert "'turbo'" in lines[0] and "4-layer" in lines[1] and "changed" in lines[2]
    assert all("--ignore-fisher-map" in line for line in lines)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("rank_pattern"), "lacks 'rank_pattern'"),
        (lambda d: d["rank_pattern"].update({"layers.0.mlp.up_proj": 0}), "positive integer"),
        (lambda d: d.update(version=3), "schema version 3"),
        (lambda d: d.update(target_modules=[]), "non-empty"),
    ],
)
def test_broken_map_is_one_line_error(tmp_path, edit, message):
    data = _built(tmp_path)
    edit(data)
    (tmp_path / "fisher_map.json").write_text(json.dumps(data))
    with pytest.raises(fishermap.FisherMapError, match=message) as info:
        fishermap.find(tmp_path)
    assert "\n" not in str(info.value) and "sidestep analyze" in str(info.value)
    with pytest.raises(fishermap.FisherMapError):
        fishermap.write(tmp_path, data)


def test_setup_review_note_says_what_the_run_does_with_the_map(tmp_path):
    assert fishermap.run_note(str(tmp_path), adapter_type="lora", ignore=False, rank=64) is None  # no map
    fishermap.write(tmp_path, _built(tmp_path))
    used = fishermap.run_note(str(tmp_path), adapter_type="lora", ignore=False, rank=64)
    assert used is not None and "25 modules at rank 8-16" in used and "--ignore-fisher-map" in used
    assert "every module at rank 64" in (fishermap.run_note(str(tmp_path), adapter_type="lora", ignore=True, rank=64) or "")
    assert "does not use it" in (fishermap.run_note(str(tmp_path), adapter_type="lokr", ignore=False, rank=64) or "")
    (tmp_path / "fisher_map.json").write_text("[]")
    assert "✗" in (fishermap.run_note(str(tmp_path), adapter_type="lora", ignore=False, rank=64) or "")
