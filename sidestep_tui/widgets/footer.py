"""The footer of every screen and dialog: every key it offers stays visible, even at 80 columns.

Textual's Footer is one row that lists the focused widget's and the screen's keys before the App's, so
at 80 columns the screen switches (F1–F5) or the screen's own last keys fell off the right edge, and
what was cut showed through the palette key's margin as a stray character in the bottom-right cell.
Here, under ``NARROW`` columns (and wherever one row cannot hold every key) the footer takes two rows:
the screen's own keys above, and the App's keys (F1–F5, Ctrl+Q, the palette) on the bottom row, which
reads the same on every screen; the keys are drawn compact there (less padding). Wide terminals keep
one row: F-keys first, then the screen's keys, then the App's other keys, the palette on the right.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from rich.cells import cell_len
from textual import events
from textual.app import App, ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Horizontal
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

NARROW = 120


class _Key(NamedTuple):
    binding: Binding
    enabled: bool
    tooltip: str
    global_: bool  # an App key (F-keys, quit): the bottom row when there are two


def _is_fkey(binding: Binding) -> bool:
    return binding.key.startswith("f") and binding.key[1:].isdigit()


def key_cells(key_display: str, description: str, compact: bool) -> int:
    """Cells one FooterKey takes, its margin included, per Textual's Footer CSS (textual is pinned):
    compact is "key description" and a one-cell right margin; otherwise " key description " and no
    margin. A key without a description is its key alone."""
    if not description:
        return cell_len(key_display) + (1 if compact else 0)
    if compact:
        return cell_len(key_display) + 1 + cell_len(description) + 1
    return cell_len(key_display) + 2 + cell_len(description) + 1


class SidestepFooter(Footer):
    DEFAULT_CSS = """
    SidestepFooter.-two-rows {
        layout: vertical;
        height: 2;
    }
    SidestepFooter .footer-row {
        height: 1;
        width: 1fr;
    }
    SidestepFooter.-compact FooterKey.-command-palette {
        margin-right: 0;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shape: tuple[bool, bool] | None = None  # (compact, two rows) the last compose used
        self._drawn: tuple[object, ...] | None = None  # what the last compose showed (see _signature)
        self._recomposing = asyncio.Lock()

    async def recompose(self) -> None:
        """One recompose at a time: Textual starts one per bindings change and one per resize, and two
        that overlap (a slow machine) remove the old keys, then both mount their rows (DuplicateIds).
        None when the keys are the ones already shown: Textual asks after every focus move and
        screen switch (~20 times on a screen's first open), and each recompose remounts and restyles
        every key."""
        async with self._recomposing:
            if self._drawn is not None and self._bindings_ready and self.is_attached and self._drawn == self._signature():
                return
            await super().recompose()

    def _signature(self, shown: tuple[list[_Key], _Key | None] | None = None) -> tuple[object, ...]:
        """Everything ``compose`` draws from: the shape, and each key's display, text, state and tooltip."""
        keys, palette = shown or self._shown()
        width = self.size.width or self.app.size.width
        return (
            self.shape(width, (keys, palette)),
            tuple(
                None if k is None else (k.binding.key, self.app.get_key_display(k.binding), k.binding.description,
                                        k.binding.action, k.enabled, k.tooltip, k.global_)
                for k in (*keys, palette)
            ),
        )  # fmt: skip

    # ------------------------------------------------------------------ what to show

    def _shown(self) -> tuple[list[_Key], _Key | None]:
        """(keys, palette key) from one read of the screen's active bindings (each read asks every
        binding's ``check_action``)."""
        active = self.screen.active_bindings
        return self._keys(active), self._palette(active)

    def _keys(self, active: dict[str, ActiveBinding]) -> list[_Key]:
        first_per_action: dict[str, _Key] = {}
        for node, binding, enabled, tooltip in active.values():
            if binding.show and binding.key != self.app.COMMAND_PALETTE_BINDING:
                first_per_action.setdefault(binding.action, _Key(binding, enabled, tooltip, isinstance(node, App)))
        keys = list(first_per_action.values())
        # F-keys (screen switches) lead; everything else keeps its order.
        keys.sort(key=lambda k: 0 if _is_fkey(k.binding) else 1)
        return keys

    def _palette(self, active: dict[str, ActiveBinding]) -> _Key | None:
        if not (self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE):
            return None
        found = active.get(self.app.COMMAND_PALETTE_BINDING)
        if found is None:
            return None
        _node, binding, enabled, _tooltip = found
        return _Key(binding, enabled, binding.tooltip or binding.description, True)

    def _cells(self, keys: list[_Key], compact: bool) -> int:
        return sum(key_cells(self.app.get_key_display(k.binding), k.binding.description, compact) for k in keys)

    def _palette_cells(self, palette: _Key | None, compact: bool) -> int:
        if palette is None:
            return 0
        display, description = self.app.get_key_display(palette.binding), palette.binding.description
        # Its left border, plus a padding cell on the right when not compact; it has no margin (see CSS).
        return key_cells(display, description, compact) + (0 if compact else 2)

    def shape(self, width: int, shown: tuple[list[_Key], _Key | None] | None = None) -> tuple[bool, bool]:
        """(compact, two rows) for a footer ``width`` cells wide. Narrow terminals always get two rows
        when the screen has keys of its own, so the rows do not come and go as keys are enabled and
        disabled (the content above would jump); wide ones only when one row cannot hold every key."""
        compact = width < NARROW
        keys, palette = shown or self._shown()
        one_row = self._cells(keys, compact) + self._palette_cells(palette, compact)
        both = any(k.global_ for k in keys) and not all(k.global_ for k in keys)
        return compact, both and (compact or one_row > width)

    # ------------------------------------------------------------------ drawing

    def _key_widget(self, key: _Key, classes: str = "") -> FooterKey:
        binding = key.binding
        widget = FooterKey(
            binding.key,
            self.app.get_key_display(binding),
            binding.description,
            binding.action,
            disabled=not key.enabled,
            tooltip=key.tooltip,
            classes=classes,
        )
        if classes:
            return widget
        # Compact from the start: bound later, each key would restyle itself once mounted (on every
        # recompose, which Textual does whenever the focus moves).
        widget.set_reactive(FooterKey.compact, self.compact)
        widget.set_class(self.compact, "-compact", update=False)  # not mounted: styled once, when mounted
        return widget.data_bind(compact=Footer.compact)

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        shown = keys, palette = self._shown()
        self._drawn = self._signature(shown)
        width = self.size.width or self.app.size.width
        compact, two_rows = self._shape = self.shape(width, shown)
        self.compact = compact
        self.set_class(two_rows, "-two-rows")
        palette_widget = None if palette is None else self._key_widget(palette, "-command-palette")
        if not two_rows:
            yield from (self._key_widget(k) for k in keys)
            if palette_widget is not None:
                yield palette_widget
            return
        with Horizontal(classes="footer-row", id="footer-screen-keys"):
            yield from (self._key_widget(k) for k in keys if not k.global_)
        with Horizontal(classes="footer-row", id="footer-app-keys"):
            yield from (self._key_widget(k) for k in keys if k.global_)
            if palette_widget is not None:
                yield palette_widget

    def on_resize(self, event: events.Resize) -> None:
        if self._bindings_ready and self._shape is not None and self.shape(event.size.width) != self._shape:
            self.refresh(recompose=True)
