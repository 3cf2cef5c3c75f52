"""A path input that completes from the filesystem (no directory-tree widget), and a labelled field
around it that checks the path inline.

- ``complete_path(text)`` is the pure part: the candidates under the typed folder and the longest
  unambiguous completion. It is unit-tested on a temporary tree.
- ``PathInput`` shows that completion as ghost text while typing (Textual's suggester) and accepts it
  with Tab (or Right, as every Textual input does). When the path is complete, Tab moves focus as
  usual; when the typed name matches nothing, Tab stays and says "no match" (a second Tab moves on,
  so the key never gets stuck).
- ``PathField`` = label + ``PathInput`` + a status line. The screen gives it a ``check`` function
  (folder exists? looks like a checkpoint root?); the field runs it in a thread worker after each
  edit and shows the verdict with a glyph and words, never colour alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input, Label, Static

MAX_CANDIDATES = 200


@dataclass(frozen=True)
class Completion:
    suggestion: str | None
    """The typed text extended as it is unambiguous (a unique folder gets a trailing ``/``)."""
    candidates: tuple[str, ...]
    """Names (folders end in ``/``) in the typed folder that start with the typed name."""


def complete_path(text: str, *, dirs_only: bool = True) -> Completion:
    """Complete ``text`` like a shell does. ``~`` is expanded for listing but kept in the result;
    hidden entries only when the typed name starts with a dot; unreadable folders give nothing."""
    if not text:
        return Completion(None, ())
    head, partial = os.path.split(text)
    if text.endswith(os.sep):
        head, partial = text.rstrip(os.sep) or os.sep, ""
    listing_dir = os.path.expanduser(head) if head else "."
    try:
        entries = list(os.scandir(listing_dir))
    except OSError:
        return Completion(None, ())
    names: list[str] = []
    for entry in entries:
        if not entry.name.startswith(partial) or (entry.name.startswith(".") and not partial.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            names.append(entry.name + os.sep)
        elif not dirs_only:
            names.append(entry.name)
    names.sort()
    names = names[:MAX_CANDIDATES]
    if not names:
        return Completion(None, ())
    prefix = os.path.commonprefix(names)  # noqa: RUF071 - names in one folder: the character-wise prefix is the completion
    if len(prefix) <= len(partial):
        return Completion(None, tuple(names))
    base = text if text.endswith(os.sep) else text[: len(text) - len(partial)]
    return Completion(base + prefix, tuple(names))


class PathSuggester(Suggester):
    """Ghost-text completion from the filesystem (case-sensitive, not cached: folders change)."""

    def __init__(self, *, dirs_only: bool = True) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.dirs_only = dirs_only

    async def get_suggestion(self, value: str) -> str | None:
        return complete_path(value, dirs_only=self.dirs_only).suggestion


class PathInput(Input):
    """An ``Input`` for paths: ghost-text completion, Tab completes (or moves focus when there is
    nothing to complete)."""

    BINDINGS = [Binding("tab", "complete", "Complete path", show=False, id="path.complete")]

    def __init__(self, value: str = "", *, dirs_only: bool = True, **kwargs: object) -> None:
        # Focus arriving by Tab must not select the text: the next Backspace would delete the path.
        kwargs.setdefault("select_on_focus", False)
        super().__init__(value, suggester=PathSuggester(dirs_only=dirs_only), **kwargs)  # type: ignore[arg-type]
        self.dirs_only = dirs_only
        self._unmatched: str | None = None  # the text a Tab last found no match for

    def action_complete(self) -> None:
        done = complete_path(self.value, dirs_only=self.dirs_only)
        # Only a completion that adds a name completes: a bare trailing "/" would stop someone
        # tabbing through a form at every prefilled folder.
        suggestion = done.suggestion or ""
        adds_name = suggestion != "" and suggestion.rstrip(os.sep) != self.value.rstrip(os.sep)
        typed = os.path.expanduser(self.value.strip())
        if adds_name and self.cursor_at_end:
            self.value = suggestion
            self.cursor_position = len(self.value)
        elif typed and self.cursor_at_end and not done.candidates and not os.path.exists(typed) and self._unmatched != typed:
            # A name that matches nothing: stay (the text is not left behind half-typed) and say so;
            # a second Tab moves on (a folder that is yet to be created is a fine answer).
            self._unmatched = typed
            name = os.path.basename(typed.rstrip(os.sep)) or typed
            self.notify(f"no match for {name!r} (Tab again moves on)", title="Tab", timeout=3)
        else:
            self._unmatched = None
            self.screen.focus_next()


@dataclass(frozen=True)
class PathCheck:
    """A verdict on a path: ``ok`` True (good), False (unusable) or None (usable, with a warning)."""

    ok: bool | None
    message: str


def check_directory(path: str, *, empty: str = "enter a folder") -> PathCheck:
    """The default check: an existing folder (``empty``: what to ask for when nothing is typed)."""
    if not path.strip():
        return PathCheck(False, empty)
    full = os.path.expanduser(path)
    if not os.path.exists(full):
        return PathCheck(False, "no such folder")
    if not os.path.isdir(full):
        return PathCheck(False, "not a folder")
    return PathCheck(True, "folder exists")


def creatable(path: str) -> PathCheck | None:
    """For a folder that does not exist yet: a refusal when it cannot be created (not a folder in
    the way, nearest existing parent not writable), else None."""
    full = os.path.expanduser(path)
    if os.path.exists(full) and not os.path.isdir(full):
        return PathCheck(False, "not a folder")
    parent = os.path.dirname(os.path.abspath(full))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        return PathCheck(False, f"cannot create it: {parent} is not writable")
    return None


def check_text(check: PathCheck) -> str:
    glyph = {True: "✓", False: "✗", None: "!"}[check.ok]
    return f"{glyph} {check.message}"


class PathField(Vertical):
    """Label, completing path input, candidate list and an inline check."""

    DEFAULT_CSS = """
    PathField { height: auto; }
    PathField > .path-label { color: $text-muted; width: 100%; }
    PathField > .path-status { height: auto; padding: 0 1; }
    PathField > .path-status.-ok { color: $success; }
    PathField > .path-status.-bad { color: $error; }
    PathField > .path-status.-warn { color: $warning; }
    PathField > .path-candidates { height: auto; max-height: 2; color: $text-muted; padding: 0 1; }
    """

    class Checked(Message):
        """The path was checked (after an edit or ``recheck``)."""

        def __init__(self, field: PathField, path: str, check: PathCheck) -> None:
            super().__init__()
            self.field = field
            self.path = path
            self.check = check

        @property
        def control(self) -> PathField:
            return self.field

    def __init__(
        self,
        label: str,
        value: str = "",
        *,
        check: Callable[[str], PathCheck] = check_directory,
        placeholder: str = "",
        id: str | None = None,
        compact: bool = False,
    ) -> None:
        super().__init__(id=id)
        self._compact = compact
        self._label = label
        self._value = value
        self._placeholder = placeholder
        self.check_fn = check
        self.last_check: PathCheck | None = None

    def compose(self) -> ComposeResult:
        yield Label(self._label, classes="path-label")
        yield PathInput(self._value, placeholder=self._placeholder, classes="path-input", compact=self._compact)
        yield Static("", classes="path-candidates")
        yield Static("", classes="path-status")

    @property
    def input(self) -> PathInput:
        return self.query_one(PathInput)

    @property
    def value(self) -> str:
        return self.input.value.strip()

    @value.setter
    def value(self, text: str) -> None:
        self.input.value = text

    def on_mount(self) -> None:
        self.query_one(".path-candidates").display = False
        self.recheck()

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        done = complete_path(event.value, dirs_only=self.input.dirs_only)
        shown = "  ".join(done.candidates[:12]) + ("  …" if len(done.candidates) > 12 else "")
        candidates = self.query_one(".path-candidates", Static)
        candidates.update(shown if len(done.candidates) > 1 else "")
        candidates.display = len(done.candidates) > 1
        self.recheck()

    def recheck(self) -> None:
        self._run_check(self.input.value.strip())

    @work(exclusive=True, group="path-check", exit_on_error=False)
    async def _run_check(self, path: str) -> None:
        # Off the UI thread: a slow (network) filesystem must not freeze typing.
        self._show(path, await asyncio.to_thread(self.check_fn, path))

    def _show(self, path: str, check: PathCheck) -> None:
        if path != self.input.value.strip():
            return  # a newer edit is being checked
        self.last_check = check
        status = self.query_one(".path-status", Static)
        status.update(check_text(check))
        status.set_class(check.ok is True, "-ok")
        status.set_class(check.ok is False, "-bad")
        status.set_class(check.ok is None, "-warn")
        self.post_message(self.Checked(self, path, check))
