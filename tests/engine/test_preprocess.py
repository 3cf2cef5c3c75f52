"""Two-pass preprocessing end to end on the CPU with the demo components and audio made here:
exact tensor format, resume after a stop or a kill, bad files skipped, the result trains."""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine import prepconfig as pcfg
from engine import protocol
from engine.audio.preprocess.pipeline import run_preprocess
from engine.models.demo.audio import synthesize_demo_audio, write_demo_audio_components
from engine.models.demo.build import DEMO_FOLDER, demo_config, write_demo_checkpoint
from engine.ptinspect import TENSOR_FORMAT, format_warnings

FINAL_KEYS = {
    "target_latents",
    "attention_mask",
    "encoder_hidden_states",
    "encoder_attention_mask",
    "context_latents",
    "metadata",
}
METADATA_KEYS = {
    "audio_path", "filename", "caption", "lyrics", "duration", "bpm", "keyscale", "timesignature",
    "genre", "is_instrumental", "custom_tag", "prompt_override", "repeat",
}  # fmt: skip
SECONDS = (1.2, 1.0, 1.4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ckpt")
    write_demo_checkpoint(root)
    write_demo_audio_components(root)
    return str(root)


def make_config(checkpoint: str, out, **values) -> pcfg.PreprocessConfig:
    base = {"checkpoint_dir": checkpoint, "model_variant": DEMO_FOLDER, "output_dir": str(out), "device": "cpu"}
    return pcfg.parse({**base, **values})


def run(config, *, stop_when=None):
    events: list = []

    def should_stop():
        return bool(stop_when and stop_when(events))

    summary = run_preprocess(config, events.append, should_stop)
    return summary, events


@pytest.fixture(scope="module")
def processed(checkpoint, tmp_path_factory):
    songs = tmp_path_factory.mktemp("songs")
    synthesize_demo_audio(songs, 6, seconds=SECONDS)
    out = tmp_path_factory.mktemp("tensors")
    config = make_config(checkpoint, out, audio_dir=str(songs), normalize="lufs", tag="trig")
    summary, events = run(config)
    return {"songs": str(songs), "out": str(out), "summary": summary, "events": events, "config": config}


def test_tensors_have_the_exact_format(processed, checkpoint):
    summary, out = processed["summary"], processed["out"]
    assert summary.failed == [] and summary.processed == 6 and not summary.stopped
    hidden = demo_config("tiny").hidden_size
    silence = torch.load(os.path.join(checkpoint, "silence_latent.pt"), weights_only=True)[0].T.float()
    files = sorted(glob.glob(os.path.join(out, "*.pt")))
    assert len(files) == 6 and not glob.glob(os.path.join(out, "*.tmp.pt")) and not glob.glob(os.path.join(out, "*__writing__"))
    assert any("mélodie_douce" in f for f in files)
    for path in files:
        data = torch.load(path, weights_only=True)
        assert set(data) == FINAL_KEYS
        meta = data["metadata"]
        assert set(meta) == METADATA_KEYS
        samples = sf.info(meta["audio_path"]).frames * 48_000 // sf.info(meta["audio_path"]).samplerate
        T = samples // 1920
        assert data["target_latents"].shape == (T, 64) and data["target_latents"].dtype == torch.bfloat16
        assert data["attention_mask"].shape == (T,) and data["attention_mask"].dtype == torch.bfloat16
        assert bool((data["attention_mask"] == 1).all())
        states, mask = data["encoder_hidden_states"], data["encoder_attention_mask"]
        L = states.shape[0]  # inference conditioning (the default): valid tokens only, no padding
        assert states.shape == (L, hidden) and states.dtype == torch.bfloat16 and 2 < L < 769
        assert mask.shape == (L,) and mask.dtype == torch.bool and bool(mask.all())
        context = data["context_latents"]
        assert context.shape == (T, 128) and context.dtype == torch.bfloat16
        assert bool((context[:, 64:] == 1).all())
        assert torch.equal(context[:, :64], silence[:T].to(torch.bfloat16))
        assert all(torch.isfinite(data[k].float()).all() for k in FINAL_KEYS - {"metadata"})
        assert meta["custom_tag"] == "trig" and meta["duration"] == round(samples / 48_000)
    # L = prompt tokens + tokens of the lyrics in ACE-Step's inference template + 1 timbre token
    from transformers import AutoTokenizer

    from engine.audio.preprocess.samples import collect_jobs, format_lyrics, job_language, job_prompt

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(checkpoint, "Qwen3-Embedding-0.6B"))
    jobs = collect_jobs(processed["config"])
    for job in jobs.jobs:
        data = torch.load(os.path.join(out, job.stem + ".pt"), weights_only=True)
        prompt = job_prompt(job, jobs, data["metadata"]["duration"])
        wrapped = format_lyrics(data["metadata"]["lyrics"], job_language(job))
        expected = len(tokenizer(prompt)["input_ids"]) + len(tokenizer(wrapped)["input_ids"]) + 1
        assert data["encoder_hidden_states"].shape[0] == expected, job.stem
    lyrics = {os.path.basename(f): torch.load(f, weights_only=True)["metadata"]["lyrics"] for f in files}
    assert lyrics["tone_a440.pt"].startswith("[Verse]\nthe night is long") and lyrics["chord_c_major.pt"] == "[Instrumental]"


def test_index_files_and_events(processed):
    out, events = processed["out"], processed["events"]
    manifest = json.loads(Path(out, "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_samples"] == 6 and len(manifest["samples"]) == 6
    assert all(os.path.isfile(os.path.join(out, name)) for name in manifest["samples"])
    assert [i["path"] for i in manifest["sample_info"]] == manifest["samples"]
    assert all(i["shapes"]["context_latents"][1] == 128 for i in manifest["sample_info"])
    meta = json.loads(Path(out, "preprocess_meta.json").read_text(encoding="utf-8"))
    assert meta["model_variant"] == DEMO_FOLDER and meta["normalize"] == "lufs" and meta["target_lufs"] == -14.0
    assert meta["custom_tag"] == "trig" and meta["processed"] == 6 and meta["failed"] == 0
    assert meta["storage_dtype"] == "bfloat16" and meta["config"]["audio_dir"] == processed["songs"]
    assert meta["tensor_format"] == TENSOR_FORMAT and meta["conditioning"] == "inference"
    assert meta["file_conditioning"] == {name: "inference" for name in manifest["samples"]}
    assert format_warnings(out, DEMO_FOLDER) == []  # current format, same model: training says nothing
    for name, md5 in meta["checksums"].items():
        assert hashlib.md5(Path(out, name).read_bytes()).hexdigest() == md5

    assert all(isinstance(e, protocol.PreprocessProgress) for e in events)
    stages = [e.stage for e in events]
    assert stages[0] == "scan" and stages[-1] == "done"
    assert (
        stages.count("pass1") == 6
        and stages.count("pass2") == 6
        and stages.index("pass2") > max(i for i, s in enumerate(stages) if s == "pass1")
    )
    pass1 = [e for e in events if e.stage == "pass1"]
    assert [e.index for e in pass1] == [1, 2, 3, 4, 5, 6] and all(e.total == 6 and e.status == "ok" for e in pass1)
    assert sum(e.audio_seconds for e in pass1) == pytest.approx(sum(SECONDS * 2), abs=0.01)
    assert [e.elapsed_s for e in events] == sorted(e.elapsed_s for e in events)
    for event in events:  # every event crosses the process boundary as JSON
        assert protocol.loads(protocol.dumps(event)) == event


def test_produced_folder_trains(processed, checkpoint, tmp_path):
    from engine.channel.control import CommandInbox
    from engine.channel.events import CallbackSink, EventBus
    from engine.config import parse
    from engine.data.dataset import TensorDataset
    from engine.train.trainer import Trainer

    assert len(TensorDataset(processed["out"])) == 6
    events: list = []
    config = parse(
        {
            "checkpoint_dir": checkpoint,
            "model_variant": DEMO_FOLDER,
            "dataset_dir": processed["out"],
            "output_dir": str(tmp_path / "run"),
            "rank": 4,
            "alpha": 8,
            "max_steps": 3,
            "warmup_steps": 1,
            "gradient_accumulation": 1,
            "num_workers": 0,
            "device": "cpu",
        }
    )
    final = Trainer(config, EventBus([CallbackSink(events.append)]), CommandInbox(None), run_id="pp", metrics_hz=math.inf).fit()
    assert isinstance(final, protocol.RunFinished) and final.status == "completed", getattr(final, "traceback", final)
    losses = [e.loss for e in events if isinstance(e, protocol.StepMetrics)]
    assert losses and all(math.isfinite(x) for x in losses)
    assert not [e for e in events if isinstance(e, protocol.LogRecord) and "conditioning" in e.message]


def test_vae_tiling_matches_one_call(checkpoint, monkeypatch):
    """Windows keep their core and drop the overlap, so with an overlap wider than the VAE's receptive
    field the tiled latents equal the one-call latents (the posterior mean, to compare exactly)."""
    from engine.audio.preprocess import encode

    models = encode.load_pass1(checkpoint, torch.device("cpu"), torch.float32)
    audio = (0.1 * np.random.default_rng(0).standard_normal((2, int(2.2 * 48_000) + 777))).astype(np.float32)
    whole = encode.vae_encode(models, audio, sample=False)
    monkeypatch.setattr(encode, "TILE_OVERLAP_SECONDS", 0.4)  # small sizes keep the test fast on a CPU
    models.tile_seconds = 1.6  # windows of 1.6 s keep 0.8 s each: 3 windows, 2 seams
    tiled = encode.vae_encode(models, audio, sample=False)
    assert whole.shape == tiled.shape == (55, 64)
    assert torch.allclose(whole, tiled, atol=1e-4), (whole - tiled).abs().max()


def test_conditioning_as_at_inference_and_legacy(checkpoint):
    """``inference`` (the default, ACE_STEP.md §19): the prompt and the language-wrapped lyrics keep only their
    true tokens (lyrics up to 2048), the timbre token comes from the silence latent's first 750 frames,
    and the stored states are cut to their valid tokens. ``legacy``: text padded to 256, raw lyrics to
    512, a zero timbre reference, all 769 positions kept."""
    from engine.audio.preprocess import encode
    from engine.audio.preprocess.samples import format_lyrics, format_prompt

    cpu = torch.device("cpu")
    m1 = encode.load_pass1(checkpoint, cpu, torch.float32)

    def count(text: str) -> int:
        return len(m1.tokenizer(text)["input_ids"])

    prompt, lyrics = format_prompt("calm piano", bpm=90, duration=12), "[Verse]\nthe night is long"
    wrapped = format_lyrics(lyrics, "en")
    n_text, n_lyric, n_raw = count(prompt), count(wrapped), count(lyrics)
    text, text_mask = encode.encode_text(m1, prompt)
    lyric, lyric_mask = encode.encode_lyrics(m1, wrapped)
    assert text.shape[:2] == text_mask.shape == (1, n_text) and bool((text_mask == 1).all())  # no padding token
    assert lyric.shape[:2] == lyric_mask.shape == (1, n_lyric) and bool((lyric_mask == 1).all())
    ids = m1.tokenizer(wrapped, return_tensors="pt")["input_ids"]
    assert torch.equal(lyric, m1.text_encoder.get_input_embeddings()(ids))  # the embedding of exactly the template
    old_text, old_text_mask = encode.encode_text(m1, prompt, "legacy")
    old_lyric, old_lyric_mask = encode.encode_lyrics(m1, lyrics, "legacy")
    assert old_text.shape[1] == 256 and int(old_text_mask.sum()) == n_text
    assert old_lyric.shape[1] == 512 and int(old_lyric_mask.sum()) == n_raw
    assert torch.allclose(text, old_text[:, :n_text], atol=1e-5)  # causal encoder: the pads only add states after
    long = format_lyrics(" ".join(f"la{i % 97}" for i in range(250)), "en")
    assert 512 < count(long) < 2048 and encode.encode_lyrics(m1, long)[0].shape[1] == count(long)  # 2048, not 512
    longer = long * 4  # truncated where inference truncates
    assert count(longer) > 2048 and encode.encode_lyrics(m1, longer)[0].shape[1] == 2048

    m2 = encode.load_pass2(checkpoint, os.path.join(checkpoint, DEMO_FOLDER), cpu, torch.float32)
    order = torch.zeros(1, dtype=torch.long)
    silence_timbre = m2.encoder.timbre_encoder(m2.silence[:750][None], order)[0][0, 0]
    zero_timbre = m2.encoder.timbre_encoder(torch.zeros(1, 1, 64), order)[0][0, 0]
    assert not torch.allclose(silence_timbre, zero_timbre)
    tmp = {
        "text_hidden_states": text,
        "text_attention_mask": text_mask,
        "lyric_hidden_states": lyric,
        "lyric_attention_mask": lyric_mask,
    }
    states, mask = encode.condition(m2, tmp)
    assert states.shape[0] == mask.shape[0] == n_lyric + 1 + n_text and bool(mask.all())
    assert torch.allclose(states[n_lyric], silence_timbre, atol=1e-5)  # packed: lyrics, timbre, text
    padded = {
        "text_hidden_states": old_text,
        "text_attention_mask": old_text_mask,
        "lyric_hidden_states": old_lyric,
        "lyric_attention_mask": old_lyric_mask,
    }
    cut, cut_mask = encode.condition(m2, padded)  # padded inputs: the padding is cut off too
    assert cut.shape[0] == cut_mask.shape[0] == n_raw + 1 + n_text and bool(cut_mask.all())
    full, full_mask = encode.condition(m2, padded, "legacy")
    assert full.shape[0] == full_mask.shape[0] == 769 and int(full_mask.sum()) == n_raw + 1 + n_text
    assert torch.allclose(full[n_raw], zero_timbre, atol=1e-5) and not bool(full_mask[n_raw + 1 + n_text :].any())


def _stop_after(stage: str, count: int):
    return lambda events: sum(1 for e in events if e.stage == stage and e.status == "ok") >= count


def test_stopped_runs_resume_without_redoing_work(checkpoint, tmp_path):
    songs, out = tmp_path / "songs", tmp_path / "out"
    synthesize_demo_audio(songs, 4, seconds=(1.0,))
    config = make_config(checkpoint, out, audio_dir=str(songs))

    summary, events = run(config, stop_when=_stop_after("pass1", 2))  # stop inside pass 1
    assert summary.stopped and summary.processed == 0
    assert len(glob.glob(str(out / "*.tmp.pt"))) == 2 and not glob.glob(str(out / "[!m]*[!p].pt"))
    assert events[-1].stage == "done" and events[-1].status == "skipped"

    summary, events = run(config, stop_when=_stop_after("pass2", 1))  # resume, stop inside pass 2
    pass1 = [e for e in events if e.stage == "pass1"]
    assert [e.status for e in pass1] == ["skipped", "skipped", "ok", "ok"]  # the two intermediates were reused
    assert [e.audio_seconds for e in pass1[:2]] == pytest.approx([1.0, 1.0], abs=0.01)  # so a UI's ETA leaves them out
    assert summary.stopped and summary.processed == 1
    finals = [p for p in glob.glob(str(out / "*.pt")) if not p.endswith(".tmp.pt")]
    assert len(finals) == 1 and len(glob.glob(str(out / "*.tmp.pt"))) == 3
    first_mtime = os.stat(finals[0]).st_mtime_ns

    time.sleep(0.01)
    summary, events = run(config)  # finish
    assert not summary.stopped and summary.processed == 3 and summary.skipped == 1 and summary.failed == []
    assert [e.status for e in events if e.stage == "pass1"] == ["skipped"] * 4  # no VAE work at all
    assert os.stat(finals[0]).st_mtime_ns == first_mtime
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 4 and not glob.glob(str(out / "*.tmp.pt"))

    summary, events = run(config)  # a finished folder: nothing to do, nothing rewritten
    assert summary.processed == 0 and summary.skipped == 4 and os.stat(finals[0]).st_mtime_ns == first_mtime


@pytest.mark.slow
@pytest.mark.integration  # the CLI in a child process
def test_a_killed_run_resumes(checkpoint, tmp_path):
    """SIGKILL the CLI in a subprocess after its first encoded file, then finish in-process."""
    songs, out = tmp_path / "songs", tmp_path / "out"
    synthesize_demo_audio(songs, 3, seconds=(1.0,))
    args = ["-c", checkpoint, "--model", DEMO_FOLDER, "-i", str(songs), "-o", str(out), "--device", "cpu"]
    code = (
        "import argparse, sys\n"
        "from engine.cli.parser import add_preprocess_arguments\n"
        "from engine.cli.preprocess import run_preprocess_command\n"
        "p = argparse.ArgumentParser(); add_preprocess_arguments(p)\n"
        "sys.exit(run_preprocess_command(p.parse_args(sys.argv[1:])))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[pass1 1/3] ok"):
                proc.kill()
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert any(line.startswith("[pass1 1/3] ok") for line in lines), "".join(lines)
    assert len(glob.glob(str(out / "*.tmp.pt"))) >= 1

    summary, events = run(make_config(checkpoint, out, audio_dir=str(songs)))
    assert summary.failed == [] and summary.processed == 3
    assert next(e.status for e in events if e.stage == "pass1") == "skipped"
    assert not glob.glob(str(out / "*__writing__")) and not glob.glob(str(out / "*.tmp.pt"))


def test_bad_files_are_reported_by_name_and_skipped(checkpoint, tmp_path, capsys):
    from engine.cli.parser import add_preprocess_arguments
    from engine.cli.preprocess import run_preprocess_command

    songs, out = tmp_path / "songs", tmp_path / "out"
    songs.mkdir()
    good = (0.1 * np.random.default_rng(0).standard_normal((int(1.2 * 48_000), 2))).astype(np.float32)
    sf.write(songs / "good.wav", good, 48_000)
    sf.write(songs / "truncated.flac", good, 48_000)
    data = (songs / "truncated.flac").read_bytes()
    (songs / "truncated.flac").write_bytes(data[: len(data) // 2])
    (songs / "zero.wav").write_bytes(b"")

    parser = argparse.ArgumentParser()
    add_preprocess_arguments(parser)
    argv = ["-c", checkpoint, "-M", DEMO_FOLDER, "-i", str(songs), "-o", str(out), "--device", "cpu", "--conditioning", "legacy"]
    assert run_preprocess_command(parser.parse_args(argv)) == 1  # some files failed, the rest is done
    printed = capsys.readouterr().out
    failed_lines = [line for line in printed.splitlines() if "FAILED" in line]
    assert any("zero.wav" in line and "empty" in line for line in failed_lines), printed
    assert any("truncated.flac" in line and "flac" in line for line in failed_lines), printed
    assert [os.path.basename(p) for p in glob.glob(str(out / "*.pt"))] == ["good.pt"]
    meta = json.loads((out / "preprocess_meta.json").read_text())
    assert {f["file"] for f in meta["failures"]} == {"zero.wav", "truncated.flac"}
    # --conditioning legacy: the upstream trainer's 769 padded positions, recorded, and training is warned
    mask = torch.load(out / "good.pt", weights_only=True)["encoder_attention_mask"]
    assert mask.shape == (769,) and 2 < int(mask.sum()) < 769
    assert meta["conditioning"] == "legacy" and meta["tensor_format"] == TENSOR_FORMAT
    (line,) = format_warnings(str(out), DEMO_FOLDER)
    assert "--conditioning legacy" in line and f"sidestep preprocess -i {songs} -o NEW_FOLDER" in line


def test_missing_components_fail_with_one_line(tmp_path, capsys):
    from engine.cli.parser import add_preprocess_arguments
    from engine.cli.preprocess import run_preprocess_command

    songs = tmp_path / "songs"
    synthesize_demo_audio(songs, 1, seconds=(1.0,))
    write_demo_checkpoint(tmp_path / "ck")  # a DiT but no vae/ or text encoder
    parser = argparse.ArgumentParser()
    add_preprocess_arguments(parser)
    args = parser.parse_args(
        ["-c", str(tmp_path / "ck"), "-M", DEMO_FOLDER, "-i", str(songs), "-o", str(tmp_path / "o"), "--device", "cpu"]
    )
    assert run_preprocess_command(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "VAE" in err and "vae" in err


def test_demo_components_are_local_idempotent_and_loadable(checkpoint, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from engine.audio.builder import scan_audio_dir

    stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(checkpoint, "*", "*.safetensors"))}
    state = torch.random.get_rng_state()
    write_demo_audio_components(checkpoint)  # current: nothing is rewritten, the caller's RNG is untouched
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps and torch.equal(state, torch.random.get_rng_state())

    text_dir = os.path.join(checkpoint, "Qwen3-Embedding-0.6B")
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    model = AutoModel.from_pretrained(text_dir)
    assert model.config.hidden_size == demo_config("tiny").text_hidden_dim and model.config.vocab_size >= len(tokenizer)
    ids = tokenizer("mélodie 名前 <|endoftext|>", padding="max_length", max_length=16, return_tensors="pt")
    assert ids["input_ids"].shape == (1, 16) and int(ids["attention_mask"].sum()) < 16
    assert tokenizer.convert_ids_to_tokens(int(ids["input_ids"][0, int(ids["attention_mask"].sum()) - 1])) == "<|endoftext|>"
    assert tokenizer.decode(tokenizer("café 名前")["input_ids"]) == "café 名前"  # byte-level: any text round-trips

    paths = synthesize_demo_audio(tmp_path / "songs", 6)
    assert [os.path.getsize(p) for p in paths] == [os.path.getsize(p) for p in synthesize_demo_audio(tmp_path / "again", 6)]
    report = scan_audio_dir(str(tmp_path / "songs"))
    assert len(report.samples) == 6 and not report.missing_sidecars and not report.unreadable
    kinds = {f.relpath: f.sidecar for f in report.files}
    assert kinds["tone_a440.wav"] == "key_value" and kinds["chord_c_major.flac"] == "caption_lyrics"
    assert kinds["noise_bursts.wav"] == "lyrics_txt" and kinds["mélodie_douce.flac"] == "key_value"
    assert sf.info(os.path.join(tmp_path, "songs", "mono_arp.wav")).channels == 1


def test_missing_condition_encoder_weights_are_an_error(checkpoint, tmp_path):
    """Random encoder weights would condition every tensor on noise; loading must refuse instead."""
    import shutil

    from safetensors.torch import load_file, save_file

    from engine.audio.preprocess import encode

    root = tmp_path / "ck"
    shutil.copytree(os.path.join(checkpoint, DEMO_FOLDER), root / DEMO_FOLDER)
    shutil.copy(os.path.join(checkpoint, "silence_latent.pt"), root / "silence_latent.pt")
    weights = root / DEMO_FOLDER / "model.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("encoder.text_projector")}
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(encode.PreprocessModelError, match=r"condition-encoder weights.*encoder\.text_projector"):
        encode.load_pass2(str(root), str(root / DEMO_FOLDER), torch.device("cpu"), torch.float32)


def test_model_ready_lets_pass_1_run_before_the_dit_checkpoint_exists(checkpoint, tmp_path):
    """The demo writes its DiT while pass 1 encodes: with ``model_ready`` the model folder is needed only
    after pass 1; a hook that fails stops before pass 2 and keeps the intermediates for the next run."""
    root = tmp_path / "ck"
    root.mkdir()
    for name in ("vae", "Qwen3-Embedding-0.6B"):  # pass 1's models; the DiT and silence latent come later
        (root / name).symlink_to(Path(checkpoint, name))
    songs, out = tmp_path / "songs", tmp_path / "out"
    synthesize_demo_audio(songs, 1, seconds=(1.0,))
    config = make_config(str(root), out, audio_dir=str(songs))

    def broken() -> None:
        raise RuntimeError("the model writer failed")

    with pytest.raises(RuntimeError, match="the model writer failed"):
        run_preprocess(config, lambda event: None, model_ready=broken)
    written = glob.glob(str(out / "*.pt"))
    assert len(written) == 1 and written[0].endswith(".tmp.pt")  # pass 1's intermediate, no final file

    def ready() -> None:
        shutil.copytree(Path(checkpoint, DEMO_FOLDER), root / DEMO_FOLDER)
        shutil.copy2(Path(checkpoint, "silence_latent.pt"), root / "silence_latent.pt")

    events: list = []
    summary = run_preprocess(config, events.append, model_ready=ready)
    assert summary.processed == 1 and not summary.failed, summary.failed
    assert [e.status for e in events if e.stage == "pass1"] == ["skipped"]  # encoded by the first call
    assert not glob.glob(str(out / "*.tmp.pt"))
