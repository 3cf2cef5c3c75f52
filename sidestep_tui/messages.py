"""App-level Textual messages. Screens post intents *up*; the App alone talks to the engine.

Widget-specific messages live nested in their widget (``ConfigForm.Submitted``); these are the ones
that cross screens (the App routes the engine ones to its ``EngineSession``):

- ``DraftUpdated``: a screen changed part of the run draft (Models: checkpoint_dir / model_variant,
  Dataset: dataset_dir, Setup: anything). The App merges it into ``app.draft``.
- ``StartRequested`` / ``PreprocessRequested``: start work in a freshly spawned engine.
- ``StopRequested`` / ``SaveRequested`` / ``PauseRequested`` / ``ResumeRequested``: run controls.
- ``SettingsChanged``: new ``Settings`` to save and apply (theme, keymap, paths).
- ``EngineEventsReceived``: one batch drained by the pump worker (order preserved, never coalesced).
- ``EngineDied``: the engine process exited (from the client's sentinel), with the mapped reason.
- ``EngineStartFailed``: spawning or the handshake failed (timeout, protocol version mismatch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from engine.protocol import Event

from .settings import Settings


@dataclass
class DraftUpdated(Message):
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class StartRequested(Message):
    config_json: str


@dataclass
class PreprocessRequested(Message):
    config_json: str


@dataclass
class StopRequested(Message):
    """Stop the run; a stop always saves a checkpoint first."""


@dataclass
class SaveRequested(Message):
    pass


@dataclass
class PauseRequested(Message):
    pass


@dataclass
class ResumeRequested(Message):
    pass


@dataclass
class SettingsChanged(Message):
    settings: Settings


@dataclass
class EngineEventsReceived(Message):
    events: tuple[Event, ...]


@dataclass
class EngineDied(Message):
    exit_code: int | None
    reason: str


@dataclass
class EngineStartFailed(Message):
    """The engine could not be started or failed the handshake (timeout, protocol mismatch)."""

    reason: str
