"""Audio folder -> training tensors, inside the Dataset screen.

The flow: pick an audio folder; the dataset builder scans it in a child interpreter
(``engine.sidecars.scan_in_subprocess``: soundfile pulls in numpy, which the UI never imports)
and every file becomes a table row with its length, sidecar and caption, unreadable files and
duplicates included; set the trigger tag, its position, the genre ratio and loudness normalisation
(rows generated from ``engine.prepconfig`` metadata, parsed by its ``parse``: the UI owns no
rule); start. The job runs in the engine process (``StartPreprocess``) and the table's status column
follows its ``PreprocessProgress`` events per file, with stage, speed, ETA and every failure by name.
When it is done, the new tensor folder goes straight to Setup.

This widget holds no engine logic: it asks the engine session to start (``session.start_preprocess``)
and reads the session's ``state`` on a timer, matching its own run id so another run can never be
mistaken for it. Whether the job ended well is read from typed values only: the run's
``finished_status`` and failure, and the session's ``link`` when the engine never took the job.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

from textual import events, on, work
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Select, Static

from engine import discovery, ptinspect
from engine import prepconfig as pcfg
from engine.config import ConfigError
from engine.sidecar_edit import shared_tags
from engine.sidecars import BuildReport, scan_in_subprocess

from ..appref import SidestepAppRef
from ..formatting import (
    NA,
    SIDECAR_LABELS,
    audio_length,
    audio_scan_summary,
    file_progress_text,
    plural,
    preprocess_progress_line,
)
from ..forms import field_spec, to_raw
from ..session import LINK_LOST
from ..state import PreprocessStatus, RunState
from .config_field import FieldRow
from .path_input import PathCheck, PathField, check_directory, creatable
from .sparklines import bar

OPTION_FIELDS = ("tag", "tag_position", "genre_ratio", "conditioning", "normalize", "target_lufs", "target_db", "max_duration")
"""The preprocessing settings a user picks here; paths, model and device come from elsewhere."""
TARGET_FOR = {"lufs": "target_lufs", "peak": "target_db"}
TENSOR_SUFFIX = "_tensors"
NO_AUDIO = "Enter a folder of songs (wav, flac, mp3, ogg, opus; m4a/aac with ffmpeg): every file is listed here."

PrepState = Literal["idle", "starting", "running", "done", "stopped", "failed"]
"""The pane's own states (not engine phases). "done" and "stopped" keep the finished folder until a
setting changes."""
IDLE: Final = "idle"
STARTING: Final = "starting"
RUNNING: Final = "running"
DONE: Final = "done"
STOPPED: Final = "stopped"
FAILED: Final = "failed"


def default_tensor_dir(audio_dir: str) -> str:
    """``songs/`` -> ``songs_tensors`` beside it (shown, editable; a relative path stays relative)."""
    return audio_dir.rstrip(os.sep) + TENSOR_SUFFIX if audio_dir.rstrip(os.sep) else ""


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else ""


def check_tensor_dir(path: str) -> PathCheck:
    """Where tensors go: new (created), empty, or already holding tensors (finished files are kept and
    skipped, so a stopped job resumes). A file, or a folder that cannot be written, is refused."""
    if not path.strip():
        return PathCheck(False, "enter a folder for the tensors")
    full = os.path.expanduser(path)
    if not os.path.isdir(full):
        return creatable(full) or PathCheck(True, "new folder (created when preprocessing starts)")
    if not os.access(full, os.W_OK):
        return PathCheck(False, "folder is not writable")
    done = finished_tensors(full)
    if done:
        return PathCheck(None, f"holds {plural(done, 'finished .pt file')}: they are kept and skipped (delete them to redo)")
    return PathCheck(True, "folder exists")


def finished_tensors(folder: str) -> int:
    """Final ``.pt`` files in ``folder`` (pass-1 intermediates ``*.tmp.pt`` are not finished)."""
    try:
        return sum(1 for name in os.listdir(folder) if ptinspect.is_sample_name(name))
    except OSError:
        return 0


def check_audio_dir(path: str) -> PathCheck:
    return check_directory(path, empty="enter the folder holding your songs")


def sample_meta(report: BuildReport) -> dict[str, str]:
    """File (relative path) -> its sidecar's BPM, key and time signature as one line ("" when none)."""
    out = {}
    for sample in report.samples:
        rel = os.path.relpath(str(sample.get("audio_path", "")), report.audio_dir)
        parts = [
            f"{label} {sample[key]}"
            for key, label in (("bpm", "bpm"), ("keyscale", "key"), ("timesignature", "signature"))
            if sample.get(key) not in (None, "")
        ]
        out[rel] = " · ".join(parts)
    return out


def missing_components(checkpoint_root: str) -> list[str]:
    """What preprocessing needs beside the model folder and the root lacks (stdlib check, no torch)."""
    shared = discovery.scan_checkpoints(os.path.expanduser(checkpoint_root)).shared
    labels = (("vae", "vae/"), ("text_encoder", "Qwen3-Embedding-0.6B/"), ("silence_latent", "silence_latent.pt"))
    return [label for key, label in labels if not shared.get(key)]


@dataclass
class AudioScanned(Message):
    path: str
    report: BuildReport | None
    error: str = ""


class AudioPrep(Vertical):
    """The audio -> tensors pane. The screen owns the keys; it calls ``start``, ``stop``, ``rescan``
    and reads ``state`` / ``output_dir``."""

    app = SidestepAppRef()

    DEFAULT_CSS = """
    AudioPrep { height: 1fr; }
    AudioPrep > PathField { padding: 0 1; }
    AudioPrep #prep-options { grid-size: 2; grid-gutter: 0 2; height: auto; padding: 0 1; }
    AudioPrep.-narrow #prep-options { grid-size: 1; }
    AudioPrep #prep-options FieldRow { layout: grid; grid-size: 2; grid-columns: 16 1fr; height: auto; }
    AudioPrep #prep-options .field-label { color: $text-muted; }
    AudioPrep #prep-options FieldRow > Input, AudioPrep #prep-options FieldRow > Select { max-width: 40; }
    AudioPrep #prep-options FieldRow.-invalid > .field-label { color: $error; text-style: bold; }
    AudioPrep #prep-options .field-error { display: none; column-span: 2; color: $error; height: auto; text-style: bold; }
    AudioPrep #prep-options FieldRow.-invalid > .field-error { display: block; }
    AudioPrep #prep-status { height: auto; padding: 0 1; border-top: solid $primary 40%; }
    AudioPrep.-failed #prep-status { color: $error; }
    AudioPrep.-done #prep-status { color: $success; }
    AudioPrep #prep-files { height: 1fr; }
    AudioPrep #prep-detail { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    """

    class StateChanged(Message):
        """The pane moved between idle / starting / running / done / stopped / failed."""

    def __init__(self, *, audio_dir: str = "", id: str | None = None) -> None:
        super().__init__(id=id)
        self._audio_dir = audio_dir
        self.report: BuildReport | None = None
        self._report_path = ""
        self.state: PrepState = IDLE
        self.job_id = ""
        self.output_dir = ""  # the folder of the job that ran last
        self.result_line = ""
        self._auto_output = ""  # the output path we filled in (replaced when the audio folder changes)
        self._rows: dict[str, str] = {}  # file (relative path) -> its caption (for the detail line)
        self._meta: dict[str, str] = {}  # file -> "bpm 120 · key A minor · signature 4" from its sidecar
        self._row_status: dict[str, str] = {}  # file -> the text in its status cell now
        self._highlighted = ""
        self._job_values: dict[str, Any] = {}  # the form as it was when the last job started
        self._shown: PreprocessStatus | None = None  # the progress last folded into the table
        self._specs = {name: field_spec(pcfg.FIELD_BY_NAME[name]) for name in OPTION_FIELDS}

    def compose(self) -> ComposeResult:
        yield PathField(
            "Audio folder: songs with sidecar .txt files (scanned recursively)",
            self._audio_dir,
            check=check_audio_dir,
            placeholder="/path/to/songs",
            id="audio-path",
            compact=True,
        )
        yield PathField(
            "Write tensors to",
            "",
            check=check_tensor_dir,
            placeholder="/path/to/songs_tensors",
            id="tensor-out",
            compact=True,
        )
        with Grid(id="prep-options"):
            for name in OPTION_FIELDS:
                spec = self._specs[name]
                yield FieldRow(spec, to_raw(spec, spec.default))
        yield Static(NO_AUDIO, id="prep-status", markup=False)
        table: DataTable[str] = DataTable(id="prep-files", cursor_type="row", zebra_stripes=True)
        table.add_column("File", key="file")
        table.add_column("Length", key="length")
        table.add_column("Text", key="text")
        table.add_column("Status", key="status")
        yield table
        yield Static("", id="prep-detail", markup=False)

    def on_mount(self) -> None:
        self._show_target()
        self.set_interval(0.25, self._follow, name="preprocess-follow")

    def on_resize(self) -> None:
        self.set_class(self.size.width < 76, "-narrow")

    # ------------------------------------------------------------------ fields

    @property
    def audio_field(self) -> PathField:
        return self.query_one("#audio-path", PathField)

    @property
    def output_field(self) -> PathField:
        return self.query_one("#tensor-out", PathField)

    def option_row(self, name: str) -> FieldRow:
        return self.query_one(f"#row-{name}", FieldRow)

    def _show_target(self) -> None:
        mode = str(self.option_row("normalize").raw)
        for mode_name, field_name in TARGET_FOR.items():
            self.option_row(field_name).display = mode == mode_name or self.option_row(field_name).has_class("-invalid")

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """The focused option's help (with its CLI flag and range) where the detail line is."""
        row = next((a for a in event.widget.ancestors_with_self if isinstance(a, FieldRow)), None)
        if row is not None:
            self.query_one("#prep-detail", Static).update(f"{row.spec.label}: {row.help_text}")

    @on(FieldRow.Edited)
    def _option_edited(self, event: FieldRow.Edited) -> None:
        event.stop()
        event.row.set_error(None)
        if event.row.spec.name == "normalize":
            self._show_target()
        self._settings_changed()

    def _form_values(self) -> dict[str, Any]:
        return {
            **{name: self.option_row(name).raw for name in OPTION_FIELDS},
            "audio": self.audio_field.value,
            "out": self.output_field.value,
        }

    def _settings_changed(self) -> None:
        """Once a setting differs from the finished (or failed) job's, its result no longer describes
        what the form says: back to idle. A recheck that changes nothing keeps the result."""
        if self.state in (DONE, STOPPED, FAILED) and self._form_values() != self._job_values:
            self._set_state(IDLE)
            if self.report is not None and self._report_path == self.audio_field.value:
                self._fill_table(self.report)  # the old job's statuses go with it
            self._render_idle()

    def values(self, draft: dict[str, Any]) -> dict[str, Any]:
        """The raw preprocessing config: the model from the draft, the two folders, the options."""
        raw: dict[str, Any] = {name: self.option_row(name).raw for name in OPTION_FIELDS}
        raw.update(
            checkpoint_dir=_absolute(str(draft.get("checkpoint_dir") or "")),
            model_variant=str(draft.get("model_variant") or ""),
            audio_dir=_absolute(self.audio_field.value) or None,
            output_dir=_absolute(self.output_field.value),
        )
        return raw

    # ------------------------------------------------------------------ scanning

    @on(PathField.Checked, "#audio-path")
    def _audio_checked(self, event: PathField.Checked) -> None:
        event.stop()
        self._settings_changed()
        if event.check.ok:
            output = self.output_field
            if not output.value or output.value == self._auto_output:
                self._auto_output = default_tensor_dir(event.path)
                output.value = self._auto_output
            self._scan(event.path)
        else:
            self.report = None
            self._fill_table(None)
            self._status(NO_AUDIO)

    @on(PathField.Checked, "#tensor-out")
    def _output_checked(self, event: PathField.Checked) -> None:
        event.stop()
        self._settings_changed()

    def rescan(self) -> None:
        self.audio_field.recheck()
        self.output_field.recheck()

    @work(thread=True, exclusive=True, group="audio-scan", name="audio-scan", exit_on_error=False)
    def _scan(self, path: str) -> None:
        try:
            self.post_message(AudioScanned(path, scan_in_subprocess(path)))
        except (ValueError, OSError) as exc:  # the child's one-line error, or it could not start
            self.post_message(AudioScanned(path, None, str(exc)))

    @on(AudioScanned)
    def _scanned(self, message: AudioScanned) -> None:
        if message.path != self.audio_field.value:
            return  # the user typed on; a newer scan is coming
        self.report, self._report_path = message.report, message.path
        if message.report is None:
            self._fill_table(None)
            self._status(f"✗ scan failed: {message.error}")
            return
        if self.state == IDLE:  # a finished job's statuses stay until a setting changes
            self._fill_table(message.report)
            self._render_idle()

    def _fill_table(self, report: BuildReport | None) -> None:
        table = self.query_one("#prep-files", DataTable)
        table.clear()
        self._rows.clear()
        self._row_status.clear()
        if report is None:
            return
        missing = set(report.missing_sidecars)
        self._meta = sample_meta(report)
        for found in report.files:
            status = "! no sidecar: captioned from the file name" if found.relpath in missing else "ready"
            self._add_row(
                found.relpath,
                audio_length(found.duration_s),
                SIDECAR_LABELS.get(found.sidecar, found.sidecar),
                status,
                found.caption,
            )
        for rel, reason in report.unreadable:
            self._add_row(rel, NA, "", f"✗ unreadable, left out: {reason}")
        for rel, kept in report.duplicates:
            self._add_row(rel, NA, "", f"= same audio as {kept}, left out")

    def _add_row(self, rel: str, length: str, text: str, status: str, caption: str = "") -> None:
        table = self.query_one("#prep-files", DataTable)
        self._rows[rel] = caption
        self._row_status[rel] = status
        table.add_row(rel, length, text, status, key=rel)

    def _render_idle(self) -> None:
        report = self.report
        if report is None or self._report_path != self.audio_field.value:
            self._status(NO_AUDIO if not self.audio_field.value else "scanning…")
            return
        if not report.files:
            self._status(
                f"✗ no readable audio in {report.audio_dir}"
                + (f" ({len(report.unreadable)} unreadable)" if report.unreadable else "")
            )
            return
        tags = shared_tags(f.caption for f in report.files)
        shared = [f"{t.tag} ({t.songs} of {t.total})" for t in tags if t.total > 1][:4]
        self._status(
            f"{audio_scan_summary(report)}\nCtrl+S: preprocess into {self.output_field.value or '(choose a folder)'}"
            + (f"\ntags: {', '.join(shared)}  (Ctrl+G: tags)" if shared else "")
        )

    def _status(self, text: str) -> None:
        self.query_one("#prep-status", Static).update(text)

    @on(DataTable.RowHighlighted, "#prep-files")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._highlighted = str(event.row_key.value or "")
        self._show_detail(self._highlighted)

    def _show_detail(self, rel: str) -> None:
        """The highlighted row in full (a long caption or error does not fit its cell)."""
        caption = self._rows.get(rel, "")
        status = self._row_status.get(rel, "")
        meta = self._meta.get(rel, "")
        detail = f"{rel}: {status}" + (f"\ncaption: {caption}" if caption else "") + (f"\n{meta}" if meta else "")
        self.query_one("#prep-detail", Static).update(detail)

    # ------------------------------------------------------------------ running

    def check_ready(self, draft: dict[str, Any]) -> tuple[str | None, str]:
        """(config_json, "") when a job can start, else (None, the one-line reason). Field errors
        are shown on their rows as well."""
        if not draft.get("checkpoint_dir") or not draft.get("model_variant"):
            return None, "Choose a model first (F1 Models): its condition encoder builds the tensors."
        raw = self.values(draft)
        try:
            config = pcfg.parse(raw)
        except ConfigError as exc:
            errors = exc.by_field()
            for name in OPTION_FIELDS:
                self.option_row(name).set_error(errors.get(name))
            self._show_target()
            more = len(exc.errors) - 1
            return None, str(exc.errors[0]) + (f" (and {more} more, marked above)" if more else "")
        report = self.report
        if report is None or self._report_path != self.audio_field.value:
            return None, "The audio folder has not been scanned yet (or does not exist)."
        if not report.files:
            return None, f"No readable audio in {report.audio_dir}: nothing to preprocess."
        out_check = check_tensor_dir(config.output_dir)
        if out_check.ok is False:
            return None, f"Tensor folder {config.output_dir}: {out_check.message}."
        if config.output_dir == report.audio_dir:
            return None, "Write the tensors to a folder of their own, not into the audio folder."
        missing = missing_components(config.checkpoint_dir)
        if missing:
            return None, f"The checkpoint root {config.checkpoint_dir} lacks {', '.join(missing)} (needed to preprocess audio)."
        return pcfg.to_json(config), ""

    def start(self, config_json: str) -> bool:
        """Ask the engine session to run the job; False (and the session says why) when it cannot start now."""
        job_id = f"pre-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if not self.app.session.start_preprocess(config_json, run_id=job_id):
            return False
        self.job_id = job_id
        self._job_values = self._form_values()
        self.output_dir = pcfg.from_json(config_json).output_dir  # absolute (``values``)
        self.result_line = ""
        if self.report is not None:
            self._fill_table(self.report)  # fresh statuses for the new job
        self._set_state(STARTING)
        self._status("starting the engine…")
        return True

    def _set_state(self, state: PrepState) -> None:
        if state == self.state:
            return
        self.state = state
        locked = state in (STARTING, RUNNING)
        for field in self.query(Input).results():
            field.disabled = locked
        for choice in self.query(Select).results():
            choice.disabled = locked
        if locked:
            self.query_one("#prep-files", DataTable).focus()
        self.set_class(state == FAILED, "-failed")
        self.set_class(state == DONE, "-done")
        self.post_message(self.StateChanged())

    def _follow(self) -> None:
        """Fold the session's run state into the table and status line while our job is on."""
        if self.state not in (STARTING, RUNNING):
            return
        session = self.app.session
        run = session.state
        ours = run.run_id == self.job_id
        if not ours:
            if session.link in LINK_LOST:
                self._finish(FAILED, f"✗ preprocessing did not start: {session.banner}")
            elif run.run_id:
                self._finish(FAILED, f"✗ another run took over the engine ({run.run_id})")
            return  # the engine is starting
        if self.state == STARTING:
            self._set_state(RUNNING)
        prep = run.preprocess
        if prep is not None and prep is not self._shown:  # states are values: same object, nothing new
            self._shown = prep
            self._update_rows(prep)
        if run.failure is not None:
            self._finish(FAILED, f"✗ failed: {run.failure.message}")
        elif run.engine_lost:
            self._finish(FAILED, f"✗ the engine died: {run.engine_lost}. Run again to resume: finished files are kept.")
        elif run.finished_status is not None:
            self._finished(run)
        elif prep is None:
            self._status(f"{run.phase_detail or 'loading'}…")
        else:
            self._render_progress(prep)

    def _update_rows(self, prep: PreprocessStatus) -> None:
        table = self.query_one("#prep-files", DataTable)
        for rel, progress in prep.files.items():
            text = file_progress_text(progress)
            if self._row_status.get(rel) == text:
                continue
            if rel not in self._rows:  # a file the engine found that the preview did not (folder changed)
                self._add_row(rel, audio_length(progress.audio_seconds) if progress.audio_seconds else NA, "", text)
                continue
            self._row_status[rel] = text
            table.update_cell(rel, "status", text, update_width=True)
            if rel == self._highlighted:
                self._show_detail(rel)

    def _render_progress(self, prep: PreprocessStatus) -> None:
        width = max(20, (self.size.width or 80) - 2)
        if prep.stage == "scan":
            loading = "loading the VAE and the text encoder for pass 1…"
            self._status(f"scan: {prep.last_message}"[:width] + f"\n{loading}")
            return
        fraction = prep.index / prep.total if prep.total else None
        gauge = bar(fraction, max(10, min(30, width // 3)))
        latest = f"  {prep.file}" if prep.file else ""
        self._status(f"{preprocess_progress_line(prep)}"[:width] + f"\n{gauge}{latest}"[:width])

    def _finished(self, run: RunState) -> None:
        prep = run.preprocess
        line = prep.last_message if prep is not None and prep.stage == "done" else f"{run.finished_status}"
        if run.finished_status == "stopped":
            self._finish(STOPPED, f"■ {line}\nCtrl+S: preprocess again (it resumes where it stopped)")
            return
        written = finished_tensors(self.output_dir)
        if written == 0:
            self._finish(FAILED, f"✗ {line}\nNo tensors were written: see the failures listed.")
            return
        self._finish(DONE, f"✓ {line}\nCtrl+S: train on these {plural(written, 'tensor file')} (opens Setup)")

    def _finish(self, state: PrepState, text: str) -> None:
        self.result_line = text
        self._status(text)
        self._set_state(state)
        self.output_field.recheck()  # it holds tensors now
