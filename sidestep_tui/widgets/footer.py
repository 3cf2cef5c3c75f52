"""The screens' footer: the screen-switching F-keys first, then the screen's own keys, compact on
narrow terminals. Textual's Footer lists the focused widget's and the screen's keys before the App's,
so at 80 columns F1–F5 fell off the right edge on most screens (Ctrl+P lists every key anyway)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

NARROW = 120


class SidestepFooter(Footer):
    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        self.compact = self.app.size.width < NARROW
        active = self.screen.active_bindings
        shown = [(b, enabled, tooltip) for (_, b, enabled, tooltip) in active.values() if b.show]
        first_per_action: dict[str, tuple] = {}
        for item in shown:
            first_per_action.setdefault(item[0].action, item)
        items = list(first_per_action.values())
        # F-keys (screen switches) lead; everything else keeps its order.
        items.sort(key=lambda item: 0 if item[0].key.startswith("f") and item[0].key[1:].isdigit() else 1)
        self.styles.grid_size_columns = len(items)
        for binding, enabled, tooltip in items:
            yield FooterKey(
                binding.key,
                self.app.get_key_display(binding),
                binding.description,
                binding.action,
                disabled=not enabled,
                tooltip=tooltip,
            ).data_bind(compact=Footer.compact)
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            palette = active.get(self.app.COMMAND_PALETTE_BINDING)
            if palette is not None:
                _node, binding, enabled, _tooltip = palette
                yield FooterKey(
                    binding.key,
                    self.app.get_key_display(binding),
                    binding.description,
                    binding.action,
                    classes="-command-palette",
                    disabled=not enabled,
                    tooltip=binding.tooltip or binding.description,
                )
