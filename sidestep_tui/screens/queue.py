"""Queue: the runs waiting in ``engine.queue`` (the file ``sidestep queue`` edits), their state, and the
one worker. Reorder and remove entries here; Start runs ``sidestep queue run`` in a child interpreter,
which starts the detached worker (the UI never imports torch, and the worker outlives the UI). Runs are
added with ``sidestep queue add``; each one's folder shows up in Runs like any other.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.queue import Entry, QueueError, RunQueue

from ..appref import SidestepAppRef
from ..widgets.footer import SidestepFooter
from .quick import QuickScreen

COLUMNS = ("#", "Id", "State", "Name", "Started", "Run folder")
REFRESH_S = 2.0


def entry_row(pos: int, e: Entry, worker: int | None) -> tuple[str, ...]:
    state = "running?" if e.state == "running" and worker is None else e.state
    started = time.strftime("%m-%d %H:%M", time.localtime(e.started)) if e.started else "-"
    return (str(pos), str(e.id), state, e.name, started, e.output_dir)


def start_worker(timeout: float = 90.0) -> tuple[bool, str]:
    """``sidestep queue run`` in a child interpreter: (ok, its one line)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "queue", "run"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"the queue did not start: {exc}"
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    text = lines[-1].removeprefix("error: ") if lines else f"exited with {done.returncode}"
    return done.returncode == 0, text


@dataclass
class WorkerStarted(Message):
    ok: bool
    text: str


class QueueScreen(QuickScreen):
    app = SidestepAppRef()
    CSS_PATH = "queue.tcss"
    BINDINGS = [
        Binding("s", "start", "Start", id="queue.start", tooltip="Start the worker: it trains the queued runs, detached"),
        Binding("u", "move(-1)", "Up", id="queue.up", tooltip="Move the entry one place earlier"),
        Binding("d", "move(1)", "Down", id="queue.down", tooltip="Move the entry one place later"),
        Binding("r", "remove", "Remove", id="queue.remove", tooltip="Take the entry off the queue (not a running one)"),
        Binding("p", "pause", "Pause", id="queue.pause", tooltip="The worker finishes its current run, then stops"),
        Binding("g", "refresh", "Refresh", id="queue.refresh", tooltip="Read the queue again"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.queue = RunQueue()
        self.entries: list[Entry] = []
        self.worker: int | None = None
        self.paused = False
        self.problem = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="queue-title", markup=False)
        yield DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="queue-detail", markup=False)
        yield SidestepFooter()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self.action_refresh()
        self.set_interval(REFRESH_S, self._refresh_shown)

    def _refresh_shown(self) -> None:
        if self.is_current:  # hidden (or built ahead), it reads the queue again when shown
            self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def action_refresh(self, select_id: int | None = None) -> None:
        selected = self.selected
        keep = select_id if select_id is not None else (selected.id if selected else None)
        try:
            self.entries, self.problem = self.queue.entries(), ""
            self.worker = self.queue.worker_pid()
            self.paused = self.queue.paused()
        except QueueError as exc:
            self.entries, self.problem = [], str(exc)
        table = self.query_one(DataTable)
        table.clear()
        for pos, e in enumerate(self.entries, 1):
            table.add_row(*entry_row(pos, e, self.worker), key=str(e.id))
            if e.id == keep:
                table.move_cursor(row=pos - 1)
        waiting = sum(e.state == "queued" for e in self.entries)
        who = f"worker pid {self.worker} working" if self.worker else "no worker"
        who += ", paused (it ends after the current run)" if self.paused else ""
        self.query_one("#queue-title", Static).update(f"Queue: {len(self.entries)} entries, {waiting} waiting; {who}")
        self._show_detail()

    @property
    def selected(self) -> Entry | None:
        table = self.query_one(DataTable)
        if not self.entries or not 0 <= table.cursor_row < len(self.entries):
            return None
        return self.entries[table.cursor_row]

    @on(DataTable.RowHighlighted)
    def _show_detail(self) -> None:
        e = self.selected
        if self.problem:
            text = self.problem
        elif e is None:
            text = f"The queue is empty ({self.queue.path}). Add runs with `sidestep queue add CONFIG` or the flags of `sidestep train`."
        else:
            text = f"entry {e.id} [{e.state}] {e.output_dir}" + (f"\nerror: {e.error}" if e.error else "")
        self.query_one("#queue-detail", Static).update(text)
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        e = self.selected
        if action == "move":
            return e is not None and e.state == "queued"
        if action == "remove":
            return e is not None and e.state != "running"
        if action == "start":  # also lifts a pause
            return (self.worker is None or self.paused) and any(x.state == "queued" for x in self.entries)
        if action == "pause":
            return self.worker is not None and not self.paused
        return True

    def action_move(self, step: int) -> None:
        e = self.selected
        if e is None:
            return
        pos = self.entries.index(e) + 1 + step
        try:
            self.queue.move(e.id, max(1, pos))
        except QueueError as exc:
            self.notify(str(exc), severity="error")
        self.action_refresh(select_id=e.id)

    def action_remove(self) -> None:
        e = self.selected
        if e is None:
            return
        try:
            self.queue.remove(e.id)
            self.notify(f"removed entry {e.id} ({e.name})")
        except QueueError as exc:
            self.notify(str(exc), severity="error")
        self.action_refresh()

    def action_pause(self) -> None:
        try:
            self.queue.set_paused(True)
            self.notify("paused: the worker ends after its current run; Start goes on")
        except QueueError as exc:
            self.notify(str(exc), severity="error")
        self.action_refresh()

    def action_start(self) -> None:
        self.notify("starting the queue worker…")
        self._start()

    @work(thread=True, exclusive=True, group="queue-start", name="queue-start", exit_on_error=False)
    def _start(self) -> None:
        self.post_message(WorkerStarted(*start_worker()))

    @on(WorkerStarted)
    def _started(self, message: WorkerStarted) -> None:
        self.notify(message.text, severity="information" if message.ok else "error")
        self.action_refresh()
