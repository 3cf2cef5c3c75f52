"""The base of the mode screens (F1-F6): a switch to a screen whose styles are current restyles nothing.

Textual restyles every widget of a screen on each ``ScreenResume`` (twice on a screen's first open:
once from the mode's start, once from the switch), although its styles change only with the app's
CSS (a theme, a reparse), which ``App.switch_mode`` already refreshes through ``refresh_css`` when
``_css_update_count`` says the screen is behind. On the Setup form (~300 widgets) those restyles
were most of a screen switch on a 2-core machine.
"""

from __future__ import annotations

from textual import events
from textual.screen import Screen


class QuickScreen(Screen[None]):
    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        # Runs before Screen._on_screen_resume (Textual dispatches down the MRO from the subclass).
        # Private counters of Textual (pinned in pyproject): equal when no CSS change happened since.
        if self._css_update_count == self.app._css_update_count:
            event.refresh_styles = False
