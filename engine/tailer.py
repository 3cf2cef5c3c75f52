"""The one reader of a run's ``events.jsonl`` while it grows (stdlib only; imports only ``engine.protocol``).

``sidestep attach --plain``, the TUI's ``AttachClient``, the Runs screen's replay and ``engine.runs``
read the file through ``EventTailer``, so a line that is not an event means the same everywhere:

- a last line without its newline is incomplete (the engine is writing it, or died mid-write): it is
  held back until its newline arrives, never reported;
- a complete line that does not decode (not UTF-8, not JSON, not a protocol message) is skipped:
  ``skipped`` counts such lines and ``problem`` names the first (``path:line: why``), so a reader
  reports it once and goes on with the rest.
"""

from __future__ import annotations

from typing import Any

from engine import protocol

CHUNK_BYTES = 1 << 20


class EventTailer:
    """Follows ``path`` from its first byte; ``read()`` returns the events completed since the last call.
    The file may not exist yet (an engine still loading): ``read()`` returns nothing until it does."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.skipped = 0
        self.problem: str | None = None
        self._fh: Any = None
        self._partial = b""
        self._line = 0  # complete lines consumed
        self.caught_up = False  # the last read reached the end of what is written

    @property
    def pending(self) -> bool:
        """An incomplete last line is waiting for its newline."""
        return bool(self._partial.strip())

    def read(self, max_bytes: int = CHUNK_BYTES) -> list[Any]:
        """The events of the complete lines appended since the last call (at most ``max_bytes`` read;
        ``caught_up`` says whether it reached the end of what is written)."""
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 (kept open to follow the file)
            except FileNotFoundError:
                return []
        chunk = self._fh.read(max_bytes)
        self.caught_up = len(chunk) < max_bytes
        if not chunk:
            return []
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        events: list[Any] = []
        for raw in lines:
            self._line += 1
            if not raw.strip():
                continue
            try:
                events.append(protocol.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, ValueError) as exc:  # ProtocolError and JSONDecodeError are ValueErrors
                self.skipped += 1
                if self.problem is None:
                    self.problem = f"{self.path}:{self._line}: not an event ({str(exc).splitlines()[0][:120]})"
        return events

    def read_to_end(self) -> list[Any]:
        """Every complete event up to the current end of the file."""
        events: list[Any] = self.read()
        while self._fh is not None and not self.caught_up:
            events.extend(self.read())
        return events

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_run_events(path: str) -> tuple[list[Any], EventTailer]:
    """The whole file, once, under the tailer's rule (the tailer says what was skipped)."""
    tailer = EventTailer(path)
    try:
        return tailer.read_to_end(), tailer
    finally:
        tailer.close()
