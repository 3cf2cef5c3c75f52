"""Edits of a dataset's sidecar files that change only what they mean to change (stdlib only, so the UI
imports it): trigger tags in captions (``sidestep tags``), conversion between the ``key: value`` sidecar
and the ``.caption.txt`` / ``.lyrics.txt`` pair (``sidestep convert-sidecars``), and the metadata fields
that ``sidestep audio-analyze`` fills in.

Every operation first builds a ``Plan`` (the old and new text of each file it would touch, and a note for
each song it leaves alone) without writing anything; ``Plan.diff()`` shows it and ``Plan.apply()`` writes
each file atomically (``engine.fsutil``). Edits are made on the file's own text: the line of the field that
changes is rewritten, every other byte (other keys, their order and spelling, the lyrics, a byte-order
mark, CRLF line ends) stays as it was. The rules for reading sidecars are ``engine.sidecars``'.

Trigger tags live in the caption, comma-separated, where ``--position`` puts them: ``prepend`` writes
``TAG, caption``, ``append`` writes ``caption, TAG`` and ``replace`` makes the caption ``TAG`` (the same
rule as preprocessing's dataset-level tag). A song without a caption (no sidecar, a lyrics-only ``.txt``)
gets one built from its file-name caption, which is what training would have used.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from engine import fsutil
from engine.sidecars import (
    CLI_MODULE,
    TAG_POSITIONS,
    _key_of,
    default_caption,
    find_audio_files,
    load_sidecar,
    parse_sidecar_text,
)

BOM = "\ufeff"
# The key each field is written under when this module adds it (Side-Step's names).
WRITE_KEYS = {"caption": "caption", "bpm": "bpm", "keyscale": "key", "timesignature": "signature", "lyrics": "lyrics"}
CONVERT_TARGETS = ("kv", "txt")  # kv: song.txt with key: value lines; txt: song.caption.txt + song.lyrics.txt
_VALUE_LINE = re.compile(r"^([^:]*:[ \t]*)(.*?)([ \t]*)$", re.DOTALL)
_SEPARATOR = re.compile(r"(\s*,\s*)")


class EditError(ValueError):
    """A dataset that cannot be edited as asked; ``str()`` is one line saying what and how to fix it."""


# --------------------------------------------------------------------------- plans


@dataclass
class FileEdit:
    path: str
    old: str | None  # None: the file does not exist yet
    new: str | None  # None: the file is removed


@dataclass
class Plan:
    """What an operation would write. ``notes``: songs left alone and why; ``errors``: refusals (a plan
    with errors writes nothing)."""

    root: str
    edits: list[FileEdit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def diff(self) -> str:
        """A unified diff of every edit (``/dev/null`` for a new or removed file)."""
        out: list[str] = []
        for edit in self.edits:
            name = self.rel(edit.path)
            old = [] if edit.old is None else _strip_bom(edit.old).splitlines(keepends=True)
            new = [] if edit.new is None else _strip_bom(edit.new).splitlines(keepends=True)
            a = "/dev/null" if edit.old is None else f"a/{name}"
            b = "/dev/null" if edit.new is None else f"b/{name}"
            for line in difflib.unified_diff(old, new, a, b, lineterm="\n"):
                out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
        return "".join(out)

    def summary(self) -> str:
        files = len(self.edits)
        return f"{files} file{'s' * (files != 1)} to change" if files else "nothing to change"

    def apply(self) -> list[str]:
        """Write every edit (each file atomically; removals last, after the files that take their text
        are written). Raises ``EditError`` when the plan has errors or a file changed since it was read."""
        if self.errors:
            raise EditError(self.errors[0])
        for edit in self.edits:
            if _read(edit.path) != edit.old:
                raise EditError(f"{self.rel(edit.path)} changed since it was read; nothing more written, run the command again")
        done = []
        for edit in sorted(self.edits, key=lambda e: e.new is None):
            if edit.new is None:
                os.unlink(edit.path)
            else:
                fsutil.write_bytes(edit.path, edit.new.encode("utf-8"))
            done.append(edit.path)
        return done


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith(BOM) else text


def _read(path: str) -> str | None:
    """The exact text of ``path`` (UTF-8, BOM and line ends kept), or None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EditError(f"{path}: not UTF-8 text; save it as UTF-8 first") from None


def _paths(audio: str) -> tuple[str, str, str]:
    stem = os.path.splitext(audio)[0]
    return stem + ".txt", stem + ".caption.txt", stem + ".lyrics.txt"


def _songs(dataset_dir: str) -> list[str]:
    if not os.path.isdir(dataset_dir):
        raise EditError(f"{dataset_dir}: no such folder; point at the folder that holds the audio files and their sidecars")
    songs = find_audio_files(dataset_dir)
    if not songs:
        raise EditError(f"{dataset_dir}: no audio files in it (looked for .wav, .flac, .mp3, .ogg, .opus, .m4a, .aac)")
    return songs


# --------------------------------------------------------------------------- key: value text, edited in place


class KVText:
    """A ``key: value`` sidecar as its lines (line ends kept), with the line span of each field."""

    def __init__(self, text: str) -> None:
        self._parse(text)

    def _parse(self, text: str) -> None:
        self.bom = text.startswith(BOM)
        self.lines = _strip_bom(text).splitlines(keepends=True)
        self.spans: dict[str, tuple[int, int]] = {}
        current: str | None = None
        for i, line in enumerate(self.lines):
            started = None if current == "lyrics" else _key_of(line.rstrip("\r\n"))
            if started:
                current = started[0]
                self.spans[current] = (i, i + 1)  # a repeated key: its last value counts (as when parsing)
            elif current:
                self.spans[current] = (self.spans[current][0], i + 1)

    @property
    def eol(self) -> str:
        return "\r\n" if self.lines and self.lines[0].endswith("\r\n") else "\n"

    def text(self) -> str:
        return (BOM if self.bom else "") + "".join(self.lines)

    def set(self, name: str, value: str) -> None:
        """Set a one-line field: its key line keeps its key, colon and spacing; continuation lines of the
        old value go. A new field goes first (caption) or before the lyrics (others)."""
        if name in self.spans:
            start, end = self.spans[name]
            line = self.lines[start]
            body = line.rstrip("\r\n")
            match = _VALUE_LINE.match(body)
            prefix = match.group(1) if match else body + " "
            if not prefix.endswith((" ", "\t")) and value:
                prefix += " "
            self.lines[start:end] = [prefix + value + (line[len(body) :] or self.eol)]
            self._parse(self.text())  # the spans after the change
            return
        new = f"{WRITE_KEYS.get(name, name)}: {value}{self.eol}"
        at = 0 if name == "caption" else self.spans.get("lyrics", (len(self.lines), 0))[0]
        if at == len(self.lines) and self.lines and not self.lines[-1].endswith("\n"):
            self.lines[-1] += self.eol
        self.lines.insert(at, new)
        self._parse(self.text())

    def remove(self, name: str) -> str:
        """Take a field's lines out; returns the text of those lines."""
        start, end = self.spans[name]
        taken = "".join(self.lines[start:end])
        del self.lines[start:end]
        self._parse(self.text())
        return taken


def _only_field_lines(text: str, names: Iterable[str]) -> bool:
    """True when ``text`` holds nothing but the fields ``names`` (blank lines aside)."""
    kv = KVText(text)
    covered: set[int] = set()
    for name in names:
        if name in kv.spans:
            covered.update(range(*kv.spans[name]))
    return all(i in covered or not line.strip() for i, line in enumerate(kv.lines))


# --------------------------------------------------------------------------- captions and tags


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def add_tag(caption: str, tag: str, position: str) -> str:
    """``caption`` with ``tag`` at ``position``; unchanged when the tag is already one of its parts
    (or, for replace, when the caption already is the tag)."""
    if position not in TAG_POSITIONS:
        raise EditError(f"tag position {position!r} is not one of {', '.join(TAG_POSITIONS)}")
    if position == "replace":
        return tag
    if any(_same(t, tag) for t in split_tags(caption)):
        return caption
    if not caption.strip():
        return tag
    return f"{tag}, {caption}" if position == "prepend" else f"{caption}, {tag}"


def remove_tag(caption: str, tag: str) -> str:
    """``caption`` without the comma-separated part equal to ``tag`` (case-insensitive), taking one
    separator with it; every other character stays."""
    parts = _SEPARATOR.split(caption)  # token, sep, token, sep, ..., token
    tokens = parts[0::2]
    for i, token in enumerate(tokens):
        if _same(token, tag) and token.strip():
            t = 2 * i
            if t + 1 < len(parts):
                del parts[t : t + 2]  # the token and the separator after it
            elif t >= 2:
                del parts[t - 1 : t + 1]  # the last token and the separator before it
            else:
                parts[t] = ""
            return remove_tag("".join(parts), tag)
    return caption


@dataclass
class Song:
    """One audio file's sidecar, as files and texts."""

    audio: str
    kind: str  # engine.sidecars.Sidecar.kind
    caption: str
    txt: str | None  # the texts of song.txt, song.caption.txt, song.lyrics.txt (None: absent)
    cap: str | None
    lyr: str | None


def read_song(audio: str) -> Song:
    txt_path, cap_path, lyr_path = _paths(audio)
    sidecar = load_sidecar(audio)
    return Song(audio, sidecar.kind, sidecar.fields.get("caption", ""), _read(txt_path), _read(cap_path), _read(lyr_path))


def _with_caption(song: Song, caption: str) -> list[FileEdit]:
    """The edits that make ``caption`` the song's caption, changing nothing else."""
    txt_path, cap_path, _ = _paths(song.audio)
    if song.kind == "key_value" and song.txt is not None:
        kv = KVText(song.txt)
        kv.set("caption", caption)
        return [FileEdit(txt_path, song.txt, kv.text())] if kv.text() != song.txt else []
    if song.kind == "caption_lyrics":
        if song.cap is None:
            return [FileEdit(cap_path, None, caption)]
        body = _strip_bom(song.cap)
        lead = body[: len(body) - len(body.lstrip())]
        trail = body[len(body.rstrip()) :]
        new = (BOM if song.cap.startswith(BOM) else "") + lead + caption + trail
        return [FileEdit(cap_path, song.cap, new)] if new != song.cap else []
    if song.kind == "lyrics_txt" and song.txt is not None:
        bom = BOM if song.txt.startswith(BOM) else ""
        eol = "\r\n" if "\r\n" in song.txt else "\n"
        return [FileEdit(txt_path, song.txt, f"{bom}caption: {caption}{eol}lyrics:{eol}{_strip_bom(song.txt)}")]
    # No sidecar (or an empty one): a key: value sidecar with the caption.
    return [FileEdit(txt_path, song.txt, f"caption: {caption}\n")]


def _caption_plan(dataset_dir: str, change: Callable[[Song], str | None]) -> Plan:
    plan = Plan(os.path.abspath(dataset_dir))
    for audio in _songs(dataset_dir):
        try:
            song = read_song(audio)
        except EditError as exc:
            plan.notes.append(f"{plan.rel(audio)}: left alone: {exc}")
            continue
        new = change(song)
        if new is None or new == song.caption:
            continue
        plan.edits += _with_caption(song, new)
    return plan


def plan_add(dataset_dir: str, tag: str, position: str = "prepend") -> Plan:
    tag = _check_tag(tag)
    if position not in TAG_POSITIONS:
        raise EditError(f"--position {position!r} is not one of {', '.join(TAG_POSITIONS)}")

    def change(song: Song) -> str:
        current = song.caption if song.kind in ("key_value", "caption_lyrics") and song.caption else default_caption(song.audio)
        return add_tag(current, tag, position)

    return _caption_plan(dataset_dir, change)


def plan_remove(dataset_dir: str, tag: str) -> Plan:
    tag = _check_tag(tag)
    return _caption_plan(dataset_dir, lambda song: remove_tag(song.caption, tag) if song.caption else None)


def _check_tag(tag: str) -> str:
    tag = tag.strip()
    if not tag:
        raise EditError("the tag is empty; pass --tag TEXT")
    if "," in tag or "\n" in tag or "\r" in tag:
        raise EditError(f"tag {tag!r} holds a comma or a line break; a trigger tag is one caption part, e.g. --tag mystyle")
    return tag


@dataclass
class TagCount:
    tag: str
    songs: int  # captions that hold it
    total: int  # captions in the dataset


def shared_tags(captions: Iterable[str]) -> list[TagCount]:
    """Caption parts that more than one caption shares (the trigger tags a dataset can have), most
    common first. With a single caption: all of its parts."""
    captions = [c for c in captions if c.strip()]
    counts: Counter[str] = Counter()
    spelled: dict[str, str] = {}
    for caption in captions:
        for part in dict.fromkeys(t.casefold() for t in split_tags(caption)):
            counts[part] += 1
        for t in split_tags(caption):
            spelled.setdefault(t.casefold(), t)
    floor = 1 if len(captions) == 1 else 2
    return [
        TagCount(spelled[k], n, len(captions)) for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= floor
    ]


def list_tags(dataset_dir: str) -> list[TagCount]:
    """``shared_tags`` of the captions of the songs in ``dataset_dir``."""
    return shared_tags(read_song(a).caption for a in _songs(dataset_dir))


def plan_clear(dataset_dir: str) -> Plan:
    """Remove every caption part that all captioned songs share (what ``tags add`` wrote)."""
    found = list_tags(dataset_dir)
    if found and found[0].total < 2:
        raise EditError("only one song has a caption, so no tag is shared; name the tag: sidestep tags remove DIR --tag TEXT")
    shared = [t.tag for t in found if t.songs == t.total]

    def change(song: Song) -> str | None:
        if not song.caption:
            return None
        caption = song.caption
        for tag in shared:
            caption = remove_tag(caption, tag)
        return caption

    plan = _caption_plan(dataset_dir, change)
    if not shared:
        plan.notes.append("no caption part is shared by every song: no trigger tag to clear")
    return plan


# --------------------------------------------------------------------------- the two conventions


def plan_convert(dataset_dir: str, to: str) -> Plan:
    """``to="txt"``: caption and lyrics of each ``key: value`` sidecar go to ``song.caption.txt`` and
    ``song.lyrics.txt``; its other keys stay in ``song.txt`` (removed when nothing else is left).
    ``to="kv"``: the reverse, caption first and lyrics last. A song whose two sidecars disagree is refused."""
    if to not in CONVERT_TARGETS:
        raise EditError(f"--to {to!r} is not one of {', '.join(CONVERT_TARGETS)}")
    plan = Plan(os.path.abspath(dataset_dir))
    for audio in _songs(dataset_dir):
        try:
            song = read_song(audio)
            edits = _to_txt(song) if to == "txt" else _to_kv(song)
        except EditError as exc:
            plan.errors.append(f"{plan.rel(audio)}: {exc}")
            continue
        if isinstance(edits, str):
            plan.notes.append(f"{plan.rel(audio)}: {edits}")
        else:
            plan.edits += edits
    return plan


def _agree(a: str | None, b: str | None, what: str, names: tuple[str, str]) -> None:
    if a is not None and b is not None and a.strip() != b.strip():
        raise EditError(f"{names[0]} and {names[1]} disagree on the {what}; make them agree or delete one, then convert again")


def _to_txt(song: Song) -> list[FileEdit] | str:
    txt_path, cap_path, lyr_path = _paths(song.audio)
    names = (os.path.basename(txt_path), os.path.basename(cap_path))
    if song.txt is None or song.kind == "lyrics_txt" or (song.kind == "none"):
        return "no key: value sidecar; left as is"
    kv = KVText(song.txt)
    if "caption" not in kv.spans and "lyrics" not in kv.spans:
        return "its key: value sidecar has no caption or lyrics; left as is"
    bom = BOM if kv.bom else ""
    edits: list[FileEdit] = []
    if "caption" in kv.spans:
        caption = parse_sidecar_text(song.txt).get("caption", "")
        _agree(caption, song.cap, "caption", names)
        kv.remove("caption")
        if song.cap is None:
            edits.append(FileEdit(cap_path, None, bom + caption))  # no final newline, as `_to_kv` reads it back
    if "lyrics" in kv.spans:
        raw = kv.remove("lyrics")
        first, newline, rest = raw.partition("\n")
        value = first.split(":", 1)[1].strip()  # text on the `lyrics:` line itself
        lyrics = (value + newline + rest) if value else rest
        _agree(lyrics, song.lyr, "lyrics", (names[0], os.path.basename(lyr_path)))
        if song.lyr is None:
            edits.append(FileEdit(lyr_path, None, lyrics if lyrics.strip() else "\n"))
    left = kv.text()
    edits.append(FileEdit(txt_path, song.txt, left if _strip_bom(left).strip() else None))
    return edits


def _to_kv(song: Song) -> list[FileEdit] | str:
    txt_path, cap_path, lyr_path = _paths(song.audio)
    if song.cap is None and song.lyr is None:
        return "no .caption.txt or .lyrics.txt; left as is"
    if song.txt is not None and song.kind == "lyrics_txt":
        raise EditError(
            f"{os.path.basename(txt_path)} is plain lyrics beside the .caption.txt/.lyrics.txt pair; move its text into one of them first"
        )
    base = song.txt or ""
    kv = KVText(base)
    names = (os.path.basename(txt_path), os.path.basename(cap_path))
    fields = parse_sidecar_text(base) if base else {}
    _agree(fields.get("caption"), song.cap and _strip_bom(song.cap), "caption", names)
    _agree(fields.get("lyrics"), song.lyr and _strip_bom(song.lyr), "lyrics", (names[0], os.path.basename(lyr_path)))
    bom = kv.bom or bool(song.cap and song.cap.startswith(BOM))
    eol = kv.eol if kv.lines else "\n"
    lines = list(kv.lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += eol
    if song.cap is not None and "caption" not in kv.spans:
        caption = " ".join(_strip_bom(song.cap).split("\n")).strip()
        lines.insert(0, f"caption: {caption}{eol}")
    if song.lyr is not None and "lyrics" not in kv.spans:
        lyrics = _strip_bom(song.lyr)
        body = lyrics.rstrip("\r\n")
        if "\n" in body or not body.strip():
            lines.append(f"lyrics:{eol}{lyrics}")
        else:
            lines.append(f"lyrics: {lyrics}")
    new = (BOM if bom else "") + "".join(lines)
    edits = [FileEdit(txt_path, song.txt, new)]
    edits += [FileEdit(p, t, None) for p, t in ((cap_path, song.cap), (lyr_path, song.lyr)) if t is not None]
    return edits


# --------------------------------------------------------------------------- metadata fields (audio analysis)


FILL_MISSING, OVERWRITE = "fill_missing", "overwrite_all"
POLICIES = (FILL_MISSING, OVERWRITE)
ANALYSIS_FIELDS = ("bpm", "keyscale", "timesignature")


def plan_fields(root: str, values: dict[str, dict[str, str]], policy: str = FILL_MISSING) -> Plan:
    """Write metadata fields (bpm, keyscale, timesignature) into the sidecars of the audio files in
    ``values`` ({audio path: {field: value}}). ``fill_missing`` keeps a value a sidecar already has;
    ``overwrite_all`` replaces it. Captions and lyrics are never touched: a ``key: value`` sidecar gets
    the lines (before its lyrics), a song with the ``.caption.txt`` pair or no sidecar gets them in
    ``song.txt``, and a plain-lyrics ``song.txt`` keeps its text after a ``lyrics:`` line."""
    if policy not in POLICIES:
        raise EditError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
    plan = Plan(os.path.abspath(root))
    for audio, fields in values.items():
        bad = set(fields) - set(ANALYSIS_FIELDS)
        if bad:
            raise EditError(f"cannot write {', '.join(sorted(bad))}: only {', '.join(ANALYSIS_FIELDS)}")
        txt_path = _paths(audio)[0]
        try:
            song = read_song(audio)
        except EditError as exc:
            plan.notes.append(f"{plan.rel(audio)}: left alone: {exc}")
            continue
        have = load_sidecar(audio).fields
        kept = [f"{n} {have[n]!r}" for n in ANALYSIS_FIELDS if n in fields and policy == FILL_MISSING and have.get(n, "").strip()]
        if kept:
            plan.notes.append(f"{plan.rel(audio)}: kept {', '.join(kept)} (fill_missing; --overwrite replaces)")
        wanted = {n: v for n, v in fields.items() if not (policy == FILL_MISSING and have.get(n, "").strip())}
        if not wanted:
            continue
        text = song.txt or ""
        if song.kind == "lyrics_txt" and song.txt is not None:
            bom = BOM if song.txt.startswith(BOM) else ""
            eol = "\r\n" if "\r\n" in song.txt else "\n"
            text = f"{bom}lyrics:{eol}{_strip_bom(song.txt)}"
        kv = KVText(text)
        for name in ANALYSIS_FIELDS:
            if name in wanted:
                kv.set(name, wanted[name])
        if kv.text() != (song.txt or ""):
            plan.edits.append(FileEdit(txt_path, song.txt, kv.text()))
    return plan


def analyze_in_subprocess(audio_dir: str, *, overwrite: bool = False, timeout: float = 3600.0) -> str:
    """``sidestep audio-analyze`` in a child interpreter, for the UI process (numpy stays out of it).
    Returns the command's last line ("wrote N sidecars"); raises ``EditError`` with its one-line error
    (no such folder, no audio, ...)."""
    from engine.sidecars import error_line

    argv = [sys.executable, "-m", CLI_MODULE, "audio-analyze", audio_dir] + (["--overwrite"] if overwrite else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    lines = done.stdout.strip().splitlines()
    if done.returncode == 2 or not lines:
        message = error_line(done.stderr).removeprefix("sidestep audio-analyze: error: ")
        raise EditError(message or f"audio-analyze failed (exit {done.returncode})")
    return lines[-1]
