"""Command-palette providers (one class per domain). Each hit calls the same action a key does."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from engine.protocol import PauseRun, ResumeRun, SaveCheckpoint, StopRun

from . import messages as m
from .appref import as_sidestep


class RunCommands(Provider):
    """Run controls: stop (saves), save now, pause, resume; only those valid right now."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app = as_sidestep(self.app)
        session = app.session
        state = session.state
        out: list[tuple[str, str, Callable[[], Any]]] = []
        if state.active and session.can_send(StopRun):
            out.append(
                (
                    "Stop run (saves a checkpoint)",
                    "Finish the current step, save, stop",
                    partial(app.post_message, m.StopRequested()),
                )
            )
        if state.active and session.can_send(SaveCheckpoint):
            out.append(
                (
                    "Save checkpoint now",
                    "Save after the current step and keep training",
                    partial(app.post_message, m.SaveRequested()),
                )
            )
        if state.active and not state.paused and session.can_send(PauseRun):
            out.append(("Pause run", "Hold before the next optimizer step", partial(app.post_message, m.PauseRequested())))
        if state.active and state.paused and session.can_send(ResumeRun):
            out.append(("Resume run", "Continue the paused run", partial(app.post_message, m.ResumeRequested())))
        return out

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
