"""Dataset, chunk planning, batching and collation (engine/data/) on small synthetic §4.1 files."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import engine.data.dataset as dataset_module
from engine.config import TrainConfig
from engine.data.chunking import ChunkPlanner, crop_length
from engine.data.dataset import DatasetError, SampleKey, TensorDataset
from engine.data.loader import build_loader, build_planner, collate, steps_per_epoch
from engine.data.sampler import EpochBatchSampler

C, H, CC = 64, 8, 128  # latent channels, hidden size (2048 in the real model), context channels


def make_sample(T: int, L: int = 5, *, tag: float = 0.0) -> dict:
    """A §4.1 sample whose frame values encode the frame index, so crops can be checked."""
    frames = torch.arange(T, dtype=torch.float32)[:, None]
    return {
        "target_latents": (frames + tag).expand(T, C).to(torch.bfloat16).clone(),
        "attention_mask": torch.ones(T, dtype=torch.bfloat16),
        "encoder_hidden_states": torch.full((L, H), tag, dtype=torch.bfloat16),
        "encoder_attention_mask": torch.ones(L, dtype=torch.bool),
        "context_latents": (frames * 2).expand(T, CC).clone(),
        "metadata": {"filename": f"clip{tag}.wav", "caption": "test", "duration": T // 25, "bpm": None},
    }


def write(folder, name: str, sample) -> str:
    path = os.path.join(folder, name)
    torch.save(sample, path)
    return path


@pytest.fixture
def folder(tmp_path):
    lengths = [40, 100, 250, 60, 130, 90, 300, 45]
    for i, T in enumerate(lengths):
        write(tmp_path, f"s{i:02d}.pt", make_sample(T, L=3 + i % 3, tag=float(i)))
    return tmp_path


def config(**kw) -> TrainConfig:
    base = dict(dataset_dir="x", output_dir="y", checkpoint_dir="z", num_workers=0, seed=42)
    base.update(kw)
    return TrainConfig(**base)


def assert_one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


# --------------------------------------------------------------------------- discovery and validation


def test_loads_and_describes(folder):
    ds = TensorDataset(str(folder), repeats=2)
    assert ds.num_files == 8 and len(ds) == 16
    assert ds.lengths == (40, 100, 250, 60, 130, 90, 300, 45)
    assert ds.hidden_size == H
    assert ds.cached
    item = ds[3]
    assert item["target_latents"].shape == (60, C) and item["metadata"]["filename"] == "clip3.0.wav"
    assert ds[11]["file"] == ds[3]["file"]  # repeats wrap around


def test_tmp_files_are_ignored_and_manifest_is_honoured(tmp_path):
    write(tmp_path, "a.pt", make_sample(30))
    write(tmp_path, "b.pt", make_sample(40))
    torch.save({"target_latents": torch.zeros(1, 3, 4)}, tmp_path / "c.tmp.pt")
    assert TensorDataset(str(tmp_path)).num_files == 2
    samples = ["b.pt", "/elsewhere/machine/a.pt", "b.pt", "c.tmp.pt"]  # a repeat and an intermediate
    manifest = {"metadata": {"name": "x"}, "samples": samples, "num_samples": 2, "extra": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ds = TensorDataset(str(tmp_path))
    assert ds.lengths == (40, 30)  # manifest order; foreign absolute path resolved by file name


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(missing))
    assert_one_line(exc, str(missing), "does not exist", "preprocess")


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, str(tmp_path), "no training tensors", "preprocess")


def test_corrupt_file(tmp_path):
    write(tmp_path, "good.pt", make_sample(30))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a torch file" * 10)
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, str(bad), "not a readable", "preprocess its audio again")


def test_truncated_file(tmp_path):
    path = write(tmp_path, "cut.pt", make_sample(30))
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, path)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda s: s.update(target_latents=torch.zeros(1, 30, C)), "target_latents has shape [1, 30, 64], expected [T, 64]"),
        (lambda s: s.update(context_latents=torch.zeros(30, 65)), "context_latents has shape [30, 65], expected [T, 128]"),
        (lambda s: s.update(encoder_hidden_states=torch.zeros(0, H)), "encoder_hidden_states is empty"),
        (
            lambda s: s.update(context_latents=torch.zeros(29, CC)),
            "T differs: target_latents 30, attention_mask 30, context_latents 29",
        ),
        (
            lambda s: s.update(encoder_attention_mask=torch.ones(9, dtype=torch.bool)),
            "L differs: encoder_hidden_states 5, encoder_attention_mask 9",
        ),
        (lambda s: s.pop("encoder_hidden_states"), "missing key(s): encoder_hidden_states"),
        (lambda s: s.update(attention_mask=[1, 1, 1]), "attention_mask is not a tensor (list)"),
        (lambda s: s.update(target_latents=torch.zeros(30, C, dtype=torch.long)), "expected a floating type"),
    ],
)
def test_wrong_shapes_and_keys(tmp_path, mutate, needle):
    write(tmp_path, "a.pt", make_sample(30))
    sample = make_sample(30)
    mutate(sample)
    path = write(tmp_path, "b.pt", sample)
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, path, needle, "preprocess its audio again")


def test_inconsistent_hidden_size_across_files(tmp_path):
    write(tmp_path, "a.pt", make_sample(30))
    sample = make_sample(30)
    sample["encoder_hidden_states"] = torch.zeros(5, H + 1)
    path = write(tmp_path, "b.pt", sample)
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, path, "hidden size 9 differs from 8 in a.pt", "same model")


@pytest.mark.parametrize("key", ["target_latents", "encoder_hidden_states", "context_latents"])
def test_nan_or_inf_is_an_error_not_zeroed(tmp_path, key):
    sample = make_sample(30)
    sample[key] = sample[key].float()
    sample[key][2, 1] = float("nan") if key != "context_latents" else float("inf")
    path = write(tmp_path, "x.pt", sample)
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, path, f"{key} contains NaN/Inf")


def test_manifest_problems(tmp_path):
    write(tmp_path, "a.pt", make_sample(30))
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, str(manifest), "unreadable")
    manifest.write_text(json.dumps({"samples": ["a.pt", "gone.pt"]}))
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, str(manifest), "'gone.pt'")
    manifest.write_text(json.dumps({"files": []}))
    with pytest.raises(DatasetError) as exc:
        TensorDataset(str(tmp_path))
    assert_one_line(exc, "no 'samples' list")


def test_uncached_dataset_reads_from_disk(folder, monkeypatch):
    monkeypatch.setattr(dataset_module, "CACHE_LIMIT_BYTES", 0)
    ds = TensorDataset(str(folder))
    assert not ds.cached
    monkeypatch.undo()
    reference = TensorDataset(str(folder))
    for key in (SampleKey(2, 17, 50), SampleKey(0)):
        a, b = ds[key], reference[key]
        for name in ("target_latents", "context_latents", "encoder_hidden_states"):
            assert torch.equal(a[name], b[name])


# --------------------------------------------------------------------------- cropping


def test_crop_window_is_the_same_for_all_frame_tensors(folder):
    ds = TensorDataset(str(folder))
    item = ds[SampleKey(2, 17, 50)]
    expected_frames = torch.arange(17, 67, dtype=torch.float32)
    assert item["crop"] == (17, 67)
    assert torch.equal(item["target_latents"][:, 0].float() - 2.0, expected_frames)
    assert torch.equal(item["context_latents"][:, 0], expected_frames * 2)
    assert item["attention_mask"].shape == (50,)
    assert item["encoder_hidden_states"].shape == (5, H)  # encoder side untouched
    # a window that would run past the end is pulled back; a short clip is not cropped
    assert ds[SampleKey(2, 240, 50)]["crop"] == (200, 250)
    assert ds[SampleKey(0, 5, 50)]["crop"] == (0, 40)


def test_crop_length_from_config():
    assert crop_length(config()) is None
    assert crop_length(config(chunk_duration=60)) == 1500
    assert crop_length(config(chunk_duration=60, max_latent_length=700)) == 700


def test_planner_offsets_are_valid_and_cover_the_clip():
    planner = ChunkPlanner(["a", "b"], [1000, 20], 100, decay_every=10)
    seen: set[int] = set()
    for epoch in range(400):
        starts = planner.plan_epoch(epoch, [0, 1], torch.Generator().manual_seed(epoch))
        assert 0 <= starts[0] <= 900 and starts[1] == 0
        seen.add(starts[0])
    bins = {s * 32 // 901 for s in seen}
    assert bins == set(range(32))  # every coverage bin was visited
    assert min(seen) < 15 and max(seen) > 885
    assert planner.coverage(1) == ()
    assert sum(planner.coverage(0)) < 400  # decay halved the counts along the way


def test_coverage_weighting_prefers_unvisited_bins():
    planner = ChunkPlanner(["a"], [3300], 100, decay_every=1000)
    state = planner.state_dict()
    state["hits"]["a"] = [50] * 16 + [0] * 16  # first half heavily covered
    planner.load_state_dict(state)
    starts = planner.plan_epoch(1, [0] * 64, torch.Generator().manual_seed(0))
    late = sum(s >= 1600 for s in starts)  # bins 16..31 (weight 1/(k+1) with k <= ~4) vs 1/51
    assert late >= 56


def test_planner_state_round_trips_and_is_plain():
    planner = ChunkPlanner(["a", "b", "c"], [500, 700, 30], 64, decay_every=2)
    for epoch in range(5):
        planner.plan_epoch(epoch, [0, 1, 2, 1], torch.Generator().manual_seed(epoch))
    state = planner.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain data only
    other = ChunkPlanner(["a", "b", "c"], [500, 700, 30], 64, decay_every=2)
    other.load_state_dict(state)
    assert other.state_dict() == state
    nxt = planner.plan_epoch(5, [0, 1, 2], torch.Generator().manual_seed(9))
    assert other.plan_epoch(5, [0, 1, 2], torch.Generator().manual_seed(9)) == nxt
    with pytest.raises(ValueError, match="crop"):
        ChunkPlanner(["a"], [500], 32).load_state_dict(state)


def test_replanning_an_epoch_is_idempotent():
    planner = ChunkPlanner(["a"], [900], 100)
    first = planner.plan_epoch(3, [0] * 10, torch.Generator().manual_seed(1))
    again = planner.plan_epoch(3, [0] * 10, torch.Generator().manual_seed(1))
    assert first == again


# --------------------------------------------------------------------------- batching


def _sampler(ds: TensorDataset, cfg: TrainConfig) -> EpochBatchSampler:
    return EpochBatchSampler(build_planner(ds, cfg), batch_size=cfg.batch_size, seed=cfg.seed, repeats=ds.repeats)


def test_order_is_deterministic_per_seed_and_epoch_and_skip_works(folder):
    ds = TensorDataset(str(folder), repeats=3)
    cfg = config(batch_size=2, chunk_duration=None, max_latent_length=80)
    a, b = _sampler(ds, cfg), _sampler(ds, cfg)
    for epoch in range(3):
        assert a.batches(epoch) == b.batches(epoch)
    assert a.batches(3) != a.batches(4)
    other_seed = _sampler(ds, dataclasses.replace(cfg, seed=7))
    assert other_seed.batches(0) != _sampler(ds, cfg).batches(0)
    full = a.batches(5)
    assert a.batches(5, skip=4) == full[4:]
    assert len(full) == a.num_batches == 12
    flat = sorted(k.index for batch in full for k in batch)
    assert flat == sorted(list(range(8)) * 3)  # every file `repeats` times per epoch


def test_resume_mid_epoch_reproduces_the_remaining_batches(folder):
    ds = TensorDataset(str(folder))
    cfg = config(batch_size=1, max_latent_length=50, chunk_decay_every=2)
    live = _sampler(ds, cfg)
    for epoch in range(4):
        live.batches(epoch)
    state = live.planner.state_dict()  # checkpoint taken during epoch 3
    expected_rest = live.batches(3)[5:]
    expected_next = live.batches(4)

    resumed = _sampler(ds, cfg)
    resumed.planner.load_state_dict(state)
    assert resumed.batches(3, skip=5) == expected_rest
    assert resumed.batches(4) == expected_next


def _padding(batches, lengths, crop=None) -> int:
    total = 0
    for batch in batches:
        sizes = [lengths[k.index] if crop is None else min(lengths[k.index], crop) for k in batch]
        total += sum(max(sizes) - s for s in sizes)
    return total


def test_length_bucketing_reduces_padding(tmp_path):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 400, (40,), generator=gen).tolist()
    for i, T in enumerate(lengths):
        write(tmp_path, f"{i:03d}.pt", make_sample(T, L=2))
    ds = TensorDataset(str(tmp_path))
    sampler = _sampler(ds, config(batch_size=4))
    bucketed = sampler.batches(0)
    keys = [k for batch in bucketed for k in batch]
    unbucketed = [[k] for k in torch.randperm(len(keys), generator=gen).tolist()]
    random_batches = [[keys[j[0]] for j in unbucketed[i : i + 4]] for i in range(0, len(keys), 4)]
    assert _padding(bucketed, lengths) * 5 < _padding(random_batches, lengths)
    assert sorted(k.index for k in keys) == list(range(40))
    # the batches themselves come in a shuffled order, not sorted by length
    firsts = [lengths[b[0].index] for b in bucketed]
    assert firsts != sorted(firsts)


# --------------------------------------------------------------------------- collate and loader


def test_collate_pads_and_masks(folder):
    ds = TensorDataset(str(folder))
    batch = collate([ds[SampleKey(0)], ds[SampleKey(1, 10, 70)]])
    assert batch["target_latents"].shape == (2, 70, C) and batch["target_latents"].dtype == torch.bfloat16
    assert batch["context_latents"].shape == (2, 70, CC)
    assert batch["encoder_hidden_states"].shape == (2, 4, H)
    assert batch["encoder_attention_mask"].dtype == torch.bool
    assert batch["encoder_attention_mask"][0].tolist() == [True, True, True, False]
    assert batch["frame_mask"].dtype == torch.float32
    assert batch["frame_mask"].sum(dim=1).tolist() == [40.0, 70.0]
    assert torch.count_nonzero(batch["target_latents"][0, 40:]) == 0
    assert torch.count_nonzero(batch["attention_mask"][0, 40:]) == 0
    assert batch["lengths"].tolist() == [40, 70]
    assert batch["crops"] == [(0, 40), (10, 80)]
    assert batch["metadata"][1]["filename"] == "clip1.0.wav"


def test_steps_per_epoch():
    assert steps_per_epoch(8, 4) == 2
    assert steps_per_epoch(9, 4) == 3
    assert steps_per_epoch(1, 4) == 1


def test_loader_settings_and_global_rng(folder):
    ds = TensorDataset(str(folder))
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    loader = build_loader(ds, config(batch_size=2, pin_memory=True), device_type="cpu")
    batches = list(loader)
    assert torch.equal(state, torch.random.get_rng_state())  # the loader never drew from the global RNG
    assert not loader.pin_memory and loader.num_workers == 0 and not loader.persistent_workers
    assert len(loader) == len(batches) == 4
    loader.batch_sampler.set_epoch(1, skip=3)
    assert len(list(loader)) == len(loader) == 1


@pytest.mark.slow
@pytest.mark.integration  # loader workers are processes
def test_workers_see_the_same_crops_as_the_main_process(folder):
    ds = TensorDataset(str(folder), repeats=2)
    cfg = config(batch_size=2, max_latent_length=64)
    serial = build_loader(ds, cfg, epoch=2, device_type="cpu")
    parallel = build_loader(ds, dataclasses.replace(cfg, num_workers=2, persistent_workers=True), epoch=2, device_type="cpu")
    a, b = list(serial), list(parallel)
    assert [x["crops"] for x in a] == [x["crops"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["target_latents"], y["target_latents"])
    # cropped frames match their windows
    for x in a:
        for row, (start, stop), file in zip(x["target_latents"], x["crops"], x["files"], strict=True):
            tag = float(os.path.basename(file)[1:3])
            assert torch.equal(row[: stop - start, 0].float() - tag, torch.arange(start, stop, dtype=torch.float32))
    # the planner state lives in the main process and moved on
    assert parallel.batch_sampler.planner.state_dict()["epoch"] == 2
    parallel.batch_sampler.set_epoch(3)
    assert len(list(parallel)) == parallel.batch_sampler.num_batches
