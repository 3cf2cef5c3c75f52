"""A command-palette provider that offers the active screen's own key actions (every binding with a
description, including the ones the footer has no room for), so every form action is also reachable
from Ctrl+P by name. The palette runs the same
action the key does; nothing here is a second copy of a screen's behaviour."""

from __future__ import annotations

from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider


class ScreenActions(Provider):
    def _entries(self) -> list[tuple[str, str, Binding]]:
        screen = self.screen
        title = type(screen).__name__.removesuffix("Screen").replace("FirstRun", "First run")
        out = []
        for binding in type(screen).BINDINGS:
            if not isinstance(binding, Binding) or not binding.description:
                continue
            if screen.check_action(binding.action.split("(")[0], ()) is False:
                continue  # not available now (Dataset: Stop only while preprocessing runs)
            out.append((f"{title}: {binding.description}", binding.tooltip or binding.description, binding))
        return out

    async def discover(self) -> Hits:
        for text, help_text, binding in self._entries():
            yield DiscoveryHit(text, partial(self.screen.run_action, binding.action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, help_text, binding in self._entries():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self.screen.run_action, binding.action), help=help_text)
