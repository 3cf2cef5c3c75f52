"""``sidestep dataset``: audio + sidecars -> dataset.json (ACE_STEP.md §5.8). Audio is generated here."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from engine import sidecars
from engine.audio import builder as db

RATE = 48_000


def tone(path, seconds=1.0, freq=440.0, rate=RATE, channels=2):
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.2 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), np.stack([mono] * channels, axis=1) if channels > 1 else mono, rate)


@pytest.fixture
def audio_dir(tmp_path):
    root = tmp_path / "songs"
    (root / "album").mkdir(parents=True)
    tone(root / "kv_song.wav", 1.2, 220)
    (root / "kv_song.txt").write_text(
        "caption: dreamy synth pop\nwith a long tail\ngenre: synthpop\nbpm: 118\nkey: F# minor\nsignature: 4\n"
        "custom_tag: mytag\nlyrics:\n[Verse]\nfirst line\nkey: this line is lyrics, not a key\n\n[Chorus]\nsecond line\n",
        encoding="utf-8-sig",  # with a byte-order mark
    )
    tone(root / "album" / "caption_only.flac", 1.0, 330)
    (root / "album" / "caption_only.caption.txt").write_text("a warm pad", encoding="utf-8")
    tone(root / "lyrics_only.wav", 1.0, 440, rate=44_100, channels=1)
    (root / "lyrics_only.txt").write_text("[Chorus]\nla la la\noh oh\n", encoding="utf-8")
    tone(root / "ünïcödé_名前.flac", 1.5, 550)
    (root / "ünïcödé_名前.txt").write_text("caption: café au lait\nlyrics: [Instrumental]\n", encoding="utf-8")
    tone(root / "no_sidecar-take_2.wav", 1.0, 660)
    shutil.copy(root / "kv_song.wav", root / "album" / "copy_of_kv.wav")  # duplicate bytes
    (root / "empty.wav").write_bytes(b"")
    (root / "broken.ogg").write_bytes(b"OggS not really")
    (root / "notes.txt").write_text("not audio", encoding="utf-8")
    (root / ".hidden.wav").write_bytes(b"")  # hidden files are skipped
    return root


def by_name(doc):
    return {s["filename"]: s for s in doc["samples"]}


def test_builder_reads_every_sidecar_convention(audio_dir):
    report = db.build_dataset(str(audio_dir), tag="trig", tag_position="append", genre_ratio=25, name="mine")
    assert report.output == str(audio_dir / "dataset.json")
    doc = json.loads((audio_dir / "dataset.json").read_text(encoding="utf-8"))
    samples = by_name(doc)
    assert set(samples) == {"kv_song.wav", "caption_only.flac", "lyrics_only.wav", "ünïcödé_名前.flac", "no_sidecar-take_2.wav"}

    kv = samples["kv_song.wav"]
    assert kv["caption"] == "dreamy synth pop with a long tail"
    assert kv["genre"] == "synthpop" and kv["bpm"] == 118 and kv["keyscale"] == "F# minor" and kv["timesignature"] == "4"
    assert kv["lyrics"] == "[Verse]\nfirst line\nkey: this line is lyrics, not a key\n\n[Chorus]\nsecond line"
    assert kv["raw_lyrics"] == kv["lyrics"] and kv["is_instrumental"] is False and kv["custom_tag"] == "mytag"
    assert kv["labeled"] is True and kv["duration"] == 1 and kv["audio_path"] == str(audio_dir / "kv_song.wav")

    cap = samples["caption_only.flac"]
    assert cap["caption"] == "a warm pad" and cap["lyrics"] == "[Instrumental]" and cap["raw_lyrics"] == ""
    assert cap["is_instrumental"] is True and cap["bpm"] is None

    lyr = samples["lyrics_only.wav"]
    assert lyr["caption"] == "lyrics only" and lyr["lyrics"] == "[Chorus]\nla la la\noh oh" and lyr["is_instrumental"] is False

    uni = samples["ünïcödé_名前.flac"]
    assert uni["caption"] == "café au lait" and uni["is_instrumental"] is True and uni["duration"] == 2

    bare = samples["no_sidecar-take_2.wav"]
    assert bare["caption"] == "no sidecar take 2" and bare["labeled"] is False

    for sample in doc["samples"]:
        assert len(sample["id"]) == 8 and int(sample["id"], 16) >= 0
        assert sample["language"] == "unknown" and sample["formatted_lyrics"] == "" and sample["repeat"] == 1
    meta = doc["metadata"]
    assert meta["name"] == "mine" and meta["custom_tag"] == "trig" and meta["tag_position"] == "append"
    assert meta["genre_ratio"] == 25 and meta["num_samples"] == 5 and meta["all_instrumental"] is False


def test_builder_reports_problems(audio_dir):
    report = db.build_dataset(str(audio_dir))
    assert report.missing_sidecars == ["no_sidecar-take_2.wav"]
    unreadable = dict(report.unreadable)
    assert set(unreadable) == {"empty.wav", "broken.ogg"}
    assert "empty" in unreadable["empty.wav"]
    # the copy has no sidecar, so the original (with one) is the one kept
    assert report.duplicates == [(os.path.join("album", "copy_of_kv.wav"), "kv_song.wav")]
    lines = "\n".join(report.summary_lines())
    assert "broken.ogg" in lines and "copy_of_kv.wav" in lines and "no_sidecar-take_2.wav" in lines
    assert str(audio_dir) not in unreadable["broken.ogg"], "reasons are one short line, without the full path"


def test_key_value_without_caption_and_plain_lyrics_heuristics():
    assert sidecars.parse_sidecar_text("\ufeffBPM: 90\nTime Signature: 3\nLyrics:\nhello\n") == {
        "bpm": "90",
        "timesignature": "3",
        "lyrics": "hello",
    }
    # a line starting with [ never starts a key, unknown keys continue the previous value
    parsed = sidecars.parse_sidecar_text("caption: one\nmood: calm\n[tags: x]\nlyrics: a\nb")
    assert parsed == {"caption": "one mood: calm [tags: x]", "lyrics": "a\nb"}


def test_m4a_without_ffmpeg_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(db.shutil, "which", lambda name: None)
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(db.AudioReadError) as info:
        db.audio_duration(str(path))
    assert "m4a" in str(info.value) and "ffmpeg" in str(info.value) and "song.m4a" in str(info.value)


def test_output_is_written_atomically_and_cli_summarises(audio_dir, tmp_path, capsys):
    """``sidestep dataset``, parsed by the one parser."""
    from engine.cli.parser import build_parser

    parser = build_parser()
    out = tmp_path / "elsewhere" / "ds.json"
    args = parser.parse_args(["dataset", "-i", str(audio_dir), "--tag", "zz", "--tag-position", "replace", "--output", str(out)])
    assert db.run_dataset_command(args) == 0
    printed = capsys.readouterr().out
    assert "5 audio files" in printed and str(out) in printed
    assert json.loads(out.read_text(encoding="utf-8"))["metadata"]["tag_position"] == "replace"
    assert not list(out.parent.glob("*__writing__"))

    args = parser.parse_args(["dataset", "-i", str(tmp_path / "missing")])
    assert db.run_dataset_command(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.integration  # a child interpreter, as the UI uses
def test_scan_for_the_ui_process_keeps_numpy_out(audio_dir):
    """The UI may not import numpy (soundfile does): it scans through a child interpreter and gets the
    same report; dry runs write nothing."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from engine.sidecars import scan_in_subprocess\n"
        f"report = scan_in_subprocess({str(audio_dir)!r})\n"
        "print(json.dumps({'heavy': sorted(m for m in ('numpy', 'soundfile') if m in sys.modules), 'report': report.to_dict()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert sidecars.BuildReport.from_dict(result["report"]) == db.scan_audio_dir(str(audio_dir))
    assert not (audio_dir / "dataset.json").exists()
    with pytest.raises(ValueError, match="does not exist"):
        sidecars.scan_in_subprocess(str(audio_dir / "missing"))
