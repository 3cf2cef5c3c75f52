"""One row of the generated config form: label, the widget its schema type calls for, help and error.

The widget comes from ``FieldSpec.kind`` (see ``sidestep_tui.forms``):

    bool   -> Checkbox (compact)            choice -> Select (blank allowed only if the field is optional)
    multi  -> one Checkbox per allowed item path   -> PathInput (filesystem completion)
    int / float / text -> Input (plain text: a bad entry stays visible and the parser names it)

A value that is not one of the allowed choices (from a draft or a preset file) is kept as an extra
option marked "(invalid)" so the parser reports it next to the field; it is never swapped for a default.
"""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static

from ..forms import FieldSpec, RawValue, to_raw
from .path_input import PathInput


class Tick(Checkbox):
    """A checkbox whose mark is drawn only when checked: Textual's always shows an "X" and tells
    on from off by colour alone, which 256-colour tmux or NO_COLOR cannot show."""

    @property
    def BUTTON_INNER(self) -> str:  # type: ignore[override]  # Textual's name, a class attribute there
        return "X" if self.value else " "


def _help_text(spec: FieldSpec) -> str:
    extra = [spec.flag]
    if spec.range_text:
        extra.append(spec.range_text)
    if spec.kind in ("choice", "multi"):
        extra.append(" | ".join(spec.choices))
    return f"{spec.help}  [{' · '.join(extra)}]"


class FieldRow(Widget):
    """A schema field as a form row. ``raw`` reads the widget; ``set_raw`` writes it."""

    class Edited(Message):
        """The user (or ``set_raw``) changed this field."""

        def __init__(self, row: FieldRow) -> None:
            super().__init__()
            self.row = row

        @property
        def control(self) -> FieldRow:
            return self.row

    def __init__(
        self, spec: FieldSpec, value: RawValue, placeholder: str = "", *, lazy: bool = False, owner: Widget | None = None
    ) -> None:
        super().__init__(id=f"row-{spec.name}", classes="field-row")
        self.spec = spec
        self._owner = owner  # told of edits while the row is outside the widget tree (never shown yet)
        self._value = value  # the value while the row has no widget yet (lazy), then its first value
        self._placeholder = placeholder
        self._extra_items: tuple[str, ...] = ()
        self._error: str | None = None
        self._lazy = lazy
        self._composed = False
        self._parts: tuple[Widget, Widget, Static] | None = None
        if lazy:
            self.display = False

    # ------------------------------------------------------------------ compose

    def _build(self) -> tuple[Widget, Widget, Static]:
        # Four nodes per row (a grid: label | widget, then the error across both columns): the form
        # has ~95 rows, and every extra node costs on each restyle.
        if self._parts is None:
            spec = self.spec
            self._widget = self._make_widget(self._value)
            self._error_line = Static(f"✗ {self._error}" if self._error else "", classes="field-error", markup=False)
            self._parts = (
                Label(spec.label + (" *" if spec.required else ""), classes="field-label"),
                self._widget,
                self._error_line,
            )
        return self._parts

    def compose(self) -> ComposeResult:
        self._composed = True
        if not self._lazy:
            yield from self._build()

    @property
    def built(self) -> bool:
        """Whether the row has its widgets (a lazy row gets them when first shown)."""
        return self._parts is not None

    def materialize(self) -> None:
        """Give a lazy row its widgets: a hidden row is one empty node until it is first shown (the
        form's ~95 rows would be ~400 widgets to compose and restyle on every screen switch)."""
        if not self._lazy:
            return
        self._lazy = False
        parts = self._build()
        if self._composed:  # compose already ran, with nothing to yield
            self.mount_all(parts)
        self.remove_class("-pending")  # a one-line placeholder until now (ConfigForm)

    @property
    def help_text(self) -> str:
        """Help, CLI flag, range and choices: shown for the focused field and as the tooltip."""
        return _help_text(self.spec)

    def _make_widget(self, value: RawValue) -> Widget:
        spec, wid = self.spec, f"field-{self.spec.name}"
        tooltip = _help_text(spec)
        if spec.kind == "bool":
            box = Tick(_yes_no(bool(value)), bool(value), id=wid, compact=True, tooltip=tooltip)
            return box
        if spec.kind == "choice":
            return Select(
                self._choice_options(str(value)),
                value=self._select_value(str(value)),
                allow_blank=spec.optional,
                prompt=self._placeholder or "(empty)",
                id=wid,
                compact=True,
                tooltip=tooltip,
            )
        if spec.kind == "multi":
            chosen = tuple(value) if isinstance(value, tuple) else ()
            self._extra_items = tuple(v for v in chosen if v not in spec.choices)
            items = [*spec.choices, *self._extra_items]
            row = Horizontal(
                *(
                    Tick(
                        item if item in spec.choices else f"{item} (invalid)",
                        item in chosen,
                        id=f"{wid}-{i}",
                        name=item,
                        compact=True,
                        classes="multi-item",
                    )
                    for i, item in enumerate(items)
                ),
                id=wid,
                classes="multi",
            )
            row.tooltip = tooltip
            return row
        cls = PathInput if spec.kind == "path" else Input
        return cls(str(value), placeholder=self._placeholder, id=wid, compact=True, tooltip=tooltip)

    def _choice_options(self, current: str) -> list[tuple[str, str]]:
        options = [(c, c) for c in self.spec.choices]
        if current not in self.spec.choices and not (self.spec.optional and current == ""):
            options.append((f"{current!r} (invalid)", current))
        return options

    def _select_value(self, current: str) -> Any:
        return Select.NULL if self.spec.optional and current == "" else current

    # ------------------------------------------------------------------ value

    @property
    def widget(self) -> Widget:
        """The input widget (kept from compose: the form reads every row on every edit)."""
        self.materialize()
        return self._build()[1]

    def _boxes(self) -> list[Checkbox]:
        return [child for child in self._widget.children if isinstance(child, Checkbox)]

    @property
    def raw(self) -> RawValue:
        if self._parts is None:
            return self._value
        widget, kind = self._widget, self.spec.kind
        if kind == "bool":
            assert isinstance(widget, Checkbox)
            return widget.value
        if kind == "choice":
            assert isinstance(widget, Select)
            return "" if widget.value is Select.NULL else str(widget.value)
        if kind == "multi":
            return tuple(box.name or "" for box in self._boxes() if box.value)
        assert isinstance(widget, Input)
        return widget.value

    def set_raw(self, value: Any) -> None:
        """Show ``value`` (typed or raw). Unknown choices / items become visible "(invalid)" entries."""
        value = to_raw(self.spec, value)
        if self._parts is None:
            if value != self._value:
                self._value = value
                # As the widget would (the form keeps the last values); a row outside the tree has no
                # message loop yet, so its form hears it directly.
                target = self._owner if self.parent is None and self._owner is not None else self
                target.post_message(self.Edited(self))
            return
        widget, kind = self._widget, self.spec.kind
        if kind == "bool":
            assert isinstance(widget, Checkbox)
            widget.value = bool(value)
        elif kind == "choice":
            assert isinstance(widget, Select)
            text = str(value)
            widget.set_options(self._choice_options(text))
            widget.value = self._select_value(text)
        elif kind == "multi":
            chosen = tuple(value) if isinstance(value, tuple) else ()
            extras = tuple(v for v in chosen if v not in self.spec.choices)
            if extras != self._extra_items:
                self._extra_items = extras
                widget.remove_children()
                widget.mount_all(
                    Tick(
                        item if item in self.spec.choices else f"{item} (invalid)",
                        item in chosen,
                        name=item,
                        compact=True,
                        classes="multi-item",
                    )
                    for item in (*self.spec.choices, *extras)
                )
                self.post_message(self.Edited(self))  # fresh boxes post no Changed of their own
            else:
                for box in self._boxes():
                    box.value = (box.name or "") in chosen
        else:
            assert isinstance(widget, Input)
            widget.value = str(value)

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        if self._parts is None:
            return
        widget = self._widget
        if isinstance(widget, Input):
            widget.placeholder = text
        elif isinstance(widget, Select):
            widget.prompt = text or "(empty)"

    def set_error(self, message: str | None) -> None:
        if message == self._error:
            return  # called for every row on every keystroke: touch only what changed
        self._error = message
        self.set_class(bool(message), "-invalid", update=self.parent is not None)
        if self._parts is not None:
            self._error_line.update(f"✗ {message}" if message else "")

    # ------------------------------------------------------------------ events

    @on(Checkbox.Changed)
    def _checkbox(self, event: Checkbox.Changed) -> None:
        event.stop()
        if self.spec.kind == "bool":
            event.checkbox.label = _yes_no(event.value)
        self.post_message(self.Edited(self))

    @on(Input.Changed)
    @on(Select.Changed)
    def _edited(self, event: Message) -> None:
        event.stop()
        self.post_message(self.Edited(self))


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"
