"""``sidestep tags``, ``sidestep convert-sidecars`` and the sidecar side of ``audio-analyze`` on the demo's
songs (every sidecar convention the builder reads: key: value with and without a byte-order mark,
.caption.txt alone, .caption.txt + .lyrics.txt, plain lyrics .txt)."""

from __future__ import annotations

import os
import shutil

import pytest

from engine import sidecar_edit as edit
from engine.cli.main import main as cli
from engine.models.demo.audio import synthesize_demo_audio
from engine.sidecars import find_audio_files, load_sidecar, parse_sidecar_text

TAG = "zq-style"


@pytest.fixture(scope="module")
def songs_master(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("songs")
    synthesize_demo_audio(folder, 6, seconds=(0.5,))
    return str(folder)


@pytest.fixture
def songs(songs_master, tmp_path) -> str:
    folder = tmp_path / "songs"
    shutil.copytree(songs_master, folder)
    return str(folder)


def sidecar_bytes(folder: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".txt"):
            with open(os.path.join(folder, name), "rb") as fh:
                out[name] = fh.read()
    return out


def fields(folder: str) -> dict[str, dict[str, str]]:
    return {os.path.basename(a): dict(load_sidecar(a).fields) for a in find_audio_files(folder)}


def with_caption(name: str, old: bytes, caption_before: str, caption_after: str) -> bytes:
    """What a sidecar file must be after its song's caption changed and nothing else did."""
    text = old.decode("utf-8")
    if name.endswith(".lyrics.txt") or caption_before == caption_after:
        return old
    if name.endswith(".caption.txt"):
        assert text == caption_before
        return caption_after.encode()
    if f"caption: {caption_before}\n" in text:
        return text.replace(f"caption: {caption_before}\n", f"caption: {caption_after}\n", 1).encode()
    return f"caption: {caption_after}\nlyrics:\n".encode() + old  # plain lyrics: a caption put in front


@pytest.mark.parametrize("position", ["prepend", "append"])
def test_tags_add_then_remove_changes_only_captions_and_restores_every_byte(songs, position, capsys) -> None:
    before, meaning = sidecar_bytes(songs), fields(songs)

    assert cli(["tags", "add", songs, "--tag", TAG, "--position", position]) == 0  # a dry run
    out = capsys.readouterr().out
    assert f"+caption: {TAG}, " in out or f", {TAG}" in out
    assert "add --apply to write them" in out
    assert sidecar_bytes(songs) == before, "a dry run wrote something"

    assert cli(["tags", "add", songs, "--tag", TAG, "--position", position, "--apply"]) == 0
    tagged = sidecar_bytes(songs)
    new_files = set(tagged) - set(before)
    assert not new_files, new_files
    after = fields(songs)
    for name, old in before.items():
        song = next(s for s in after if os.path.splitext(s)[0] == name.split(".")[0])
        caption_before = meaning[song].get("caption", "")
        assert tagged[name] == with_caption(name, old, caption_before, after[song]["caption"]), name
    for song, f in after.items():
        caption = f["caption"]
        assert caption.startswith(f"{TAG}, ") if position == "prepend" else caption.endswith(f", {TAG}"), caption
        assert {k: v for k, v in f.items() if k != "caption"} == {k: v for k, v in meaning[song].items() if k != "caption"}
    assert [(t.tag, t.songs, t.total) for t in edit.list_tags(songs)] == [(TAG, 6, 6)]

    assert cli(["tags", "add", songs, "--tag", TAG, "--position", position, "--apply"]) == 0  # twice: no change
    assert sidecar_bytes(songs) == tagged

    assert cli(["tags", "remove", songs, "--tag", TAG.upper(), "--apply"]) == 0
    restored = sidecar_bytes(songs)
    for name, old in before.items():
        if name == "noise_bursts.txt":  # plain lyrics had no caption: it keeps the file-name one it was given
            assert restored[name] == b"caption: noise bursts\nlyrics:\n" + old
        else:
            assert restored[name] == old, name
    assert fields(songs) == {**meaning, "noise_bursts.wav": {**meaning["noise_bursts.wav"], "caption": "noise bursts"}}


def test_tags_clear_removes_the_shared_tag_and_replace_sets_the_caption(songs, capsys) -> None:
    before = sidecar_bytes(songs)
    edit.plan_add(songs, TAG, "append").apply()
    assert cli(["tags", "list", songs]) == 0
    assert f"{TAG}\t6 of 6 captions" in capsys.readouterr().out
    assert cli(["tags", "clear", songs, "--apply"]) == 0
    assert {k: v for k, v in sidecar_bytes(songs).items() if k != "noise_bursts.txt"} == {
        k: v for k, v in before.items() if k != "noise_bursts.txt"
    }
    edit.plan_add(songs, TAG, "replace").apply()
    assert {f["caption"] for f in fields(songs).values()} == {TAG}


def test_tag_errors_are_one_line_and_write_nothing(songs, tmp_path, capsys) -> None:
    before = sidecar_bytes(songs)
    assert cli(["tags", "add", songs, "--tag", "a, b", "--apply"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "comma" in err[0]
    assert cli(["tags", "add", str(tmp_path / "missing"), "--tag", "x"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert sidecar_bytes(songs) == before


def test_convert_sidecars_round_trips_byte_for_byte_both_ways(songs, capsys) -> None:
    before, meaning = sidecar_bytes(songs), fields(songs)

    assert cli(["convert-sidecars", songs, "--to", "txt"]) == 0  # dry run
    assert sidecar_bytes(songs) == before
    assert cli(["convert-sidecars", songs, "--to", "txt", "--apply"]) == 0
    as_txt = sidecar_bytes(songs)
    assert "tone_a440.caption.txt" in as_txt and "tone_a440.lyrics.txt" in as_txt
    assert as_txt["tone_a440.txt"] == b"genre: ambient\nbpm: 90\nkey: A major\nsignature: 4\n"  # the other keys stay
    assert fields(songs) == meaning  # the builder reads the same song either way

    assert cli(["convert-sidecars", songs, "--to", "kv", "--apply"]) == 0
    as_kv = sidecar_bytes(songs)
    assert not [n for n in as_kv if n.endswith((".caption.txt", ".lyrics.txt"))]
    assert fields(songs) == meaning
    for name, old in before.items():  # the songs that started as key: value are back, byte for byte
        if not name.endswith((".caption.txt", ".lyrics.txt")):
            assert as_kv[name] == old, name

    assert cli(["convert-sidecars", songs, "--to", "txt", "--apply"]) == 0
    assert sidecar_bytes(songs) == as_txt  # and the .caption.txt/.lyrics.txt songs are back too
    capsys.readouterr()


def test_convert_refuses_sidecars_that_disagree_and_writes_nothing(songs, capsys) -> None:
    with open(os.path.join(songs, "tone_a440.caption.txt"), "w", encoding="utf-8") as fh:
        fh.write("a different caption")
    before = sidecar_bytes(songs)
    assert cli(["convert-sidecars", songs, "--to", "txt", "--apply"]) == 2
    err = capsys.readouterr().err
    assert "tone_a440.wav: tone_a440.txt and tone_a440.caption.txt disagree on the caption" in err
    assert sidecar_bytes(songs) == before


def test_analysis_fields_fill_missing_or_overwrite_and_never_touch_captions_or_lyrics(songs) -> None:
    audio = {os.path.basename(a): a for a in find_audio_files(songs)}
    estimates = {a: {"bpm": "128", "keyscale": "F# minor", "timesignature": "3"} for a in audio.values()}
    before, meaning = sidecar_bytes(songs), fields(songs)
    assert not edit.plan_fields(songs, {a: {} for a in audio.values()}).edits  # nothing sure enough: no file touched

    plan = edit.plan_fields(songs, estimates)  # fill_missing
    assert any("tone_a440.wav: kept bpm '90', keyscale 'A major', timesignature '4'" in n for n in plan.notes)
    plan.apply()
    after = fields(songs)
    for song, f in after.items():
        assert f.get("caption") == meaning[song].get("caption") and f.get("lyrics") == meaning[song].get("lyrics"), song
        for name in ("bpm", "keyscale", "timesignature"):
            assert f[name] == (meaning[song].get(name) or estimates[audio[song]][name]), (song, name)
    # The .caption.txt songs keep their files; the estimates go to a song.txt the builder reads beside them.
    assert sidecar_bytes(songs)["chord_c_major.caption.txt"] == before["chord_c_major.caption.txt"]
    assert sidecar_bytes(songs)["chord_c_major.txt"] == b"bpm: 128\nkey: F# minor\nsignature: 3\n"
    text = sidecar_bytes(songs)["tone_a440.txt"]
    assert text == before["tone_a440.txt"]  # all three were there already

    edit.plan_fields(songs, estimates, edit.OVERWRITE).apply()
    text = sidecar_bytes(songs)["tone_a440.txt"].decode()
    assert parse_sidecar_text(text)["bpm"] == "128"
    old = before["tone_a440.txt"].decode()
    assert text == old.replace("bpm: 90", "bpm: 128").replace("key: A major", "key: F# minor").replace(
        "signature: 4", "signature: 3"
    )
    melodie = sidecar_bytes(songs)["mélodie_douce.txt"].decode("utf-8")
    assert melodie.startswith("\ufeffcaption: mélodie douce") and melodie.endswith(
        "key: F# minor\nsignature: 3\nlyrics: [Instrumental]\n"
    )


def test_audio_analyze_on_the_demo_songs_finds_what_their_sidecars_state(tmp_path, capsys) -> None:
    # 6 s each: noise bursts over an A minor chord at 130 BPM (the sidecar says so), an arpeggio at 120 BPM,
    # noise bursts at 110 BPM, and steady tones with a 5 Hz vibrato, which have no tempo to write.
    folder = str(tmp_path)
    synthesize_demo_audio(folder, 6, seconds=(6.0,))
    before = fields(folder)
    assert cli(["audio-analyze", folder, "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 sidecars" in out, out  # pulse_minor.txt held the same values already
    after = fields(folder)
    assert (before["pulse_minor.wav"]["bpm"], before["pulse_minor.wav"]["keyscale"]) == ("130", "A minor")
    assert (after["pulse_minor.wav"]["bpm"], after["pulse_minor.wav"]["keyscale"]) == ("130", "A minor")
    assert after["mélodie_douce.flac"]["bpm"] == before["mélodie_douce.flac"]["bpm"] == "120"
    assert after["noise_bursts.wav"]["bpm"] == "110"  # 90 + 10 * (2 % 5), the demo's tempo for it
    assert after["mono_arp.wav"]["keyscale"] == "D minor"  # D F A
    assert after["tone_a440.wav"] == before["tone_a440.wav"]  # a held tone: nothing sure enough to overwrite with
    assert "bpm" not in after["chord_c_major.flac"]
    for song, f in after.items():
        assert f.get("caption") == before[song].get("caption") and f.get("lyrics") == before[song].get("lyrics"), song
