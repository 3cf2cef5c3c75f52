"""The training-config form, generated from ``dataclasses.fields(engine.config.TrainConfig)``.

Sections follow the schema's ``group`` metadata; Basic depth hides fields marked ``advanced``; the
adapter type shows only its own section (LoRA, LoKR, LoHA or OFT; LyCORIS for the last three). A field with an error is shown whatever the
depth or adapter, so no problem can hide. The form itself parses nothing: it hands raw values up
(``ConfigForm.Changed``) and shows the per-field errors it is given (``show_errors``), which come from
``engine.config.parse``.
"""

from __future__ import annotations

from typing import Any

from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import AwaitMount, Widget
from textual.widgets import Static

from ..forms import ADVANCED, BASIC, SPEC_BY_NAME, RawValue, field_visible, grouped
from .config_field import FieldRow

LOOK_AROUND = 2
"""Rows built on either side of the focused one (Tab must find the next field as a widget)."""
FILL_MARGIN = 2
"""Lines above and below the form's view whose placeholder rows are built too."""


class ConfigForm(VerticalScroll):
    """All schema fields as rows in group sections."""

    DEFAULT_CSS = """
    ConfigForm { height: 1fr; padding: 0 1; }
    ConfigForm > .form-section { height: auto; margin-bottom: 1; }
    ConfigForm .section-title { text-style: bold; color: $primary; border-bottom: solid $primary 40%; }
    ConfigForm FieldRow { layout: grid; grid-size: 2; grid-columns: 24 1fr; grid-rows: auto; height: auto; }
    ConfigForm .field-label { width: 100%; padding-right: 1; color: $text-muted; }
    ConfigForm FieldRow > Input, ConfigForm FieldRow > Select { width: 1fr; max-width: 60; }
    ConfigForm FieldRow > Checkbox { width: auto; }
    ConfigForm .multi { height: auto; width: 1fr; }
    ConfigForm .multi > Checkbox { width: auto; margin-right: 2; }
    ConfigForm .field-error { display: none; column-span: 2; color: $error; padding-left: 24; height: auto; text-style: bold; }
    ConfigForm FieldRow.-invalid > .field-error { display: block; }
    ConfigForm FieldRow.-invalid > .field-label { color: $error; text-style: bold; }
    ConfigForm FieldRow.-current > .field-label { color: $text; text-style: bold; }
    ConfigForm FieldRow.-pending { height: 1; }
    """

    can_focus = False  # Tab goes straight to the fields

    depth: reactive[str] = reactive(BASIC)
    """``basic`` or ``advanced``: whether fields marked advanced are shown."""

    class Changed(Message):
        """A field changed; ``values`` are all raw form values (text / bools / tuples)."""

        def __init__(self, form: ConfigForm, values: dict[str, RawValue], name: str) -> None:
            super().__init__()
            self.form = form
            self.values = values
            self.name = name

        @property
        def control(self) -> ConfigForm:
            return self.form

    class Focused(Message):
        """A field got the focus; the screen shows ``row.help_text``."""

        def __init__(self, form: ConfigForm, row: FieldRow) -> None:
            super().__init__()
            self.form = form
            self.row = row

        @property
        def control(self) -> ConfigForm:
            return self.form

    def __init__(
        self,
        values: dict[str, RawValue],
        placeholders: dict[str, str] | None = None,
        *,
        depth: str = BASIC,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self._initial = dict(values)
        self._placeholders = dict(placeholders or {})
        self._errors: dict[str, str] = {}
        self._rows: dict[str, FieldRow] = {}
        self._sections: list[tuple[Vertical, list[FieldRow]]] = []
        self._last: dict[str, RawValue] = {}
        self._current: FieldRow | None = None
        self._fill_scheduled = False
        self.set_reactive(ConfigForm.depth, depth)

    def compose(self) -> ComposeResult:
        # Rows and sections are kept in plain dicts/lists: the form reads all of them on every edit,
        # and DOM queries over ~350 widgets per keystroke would be slow.
        # Rows hidden at the start (advanced, another adapter's) stay out of the widget tree until first
        # shown (each node in the tree costs on every restyle and layout, shown or not); shown rows
        # below the first screenful are one-line placeholders until scrolled or tabbed to.
        adapter = str(self._initial.get("adapter_type", ""))
        eager = self._first_screenful(adapter)
        for group, specs in grouped():
            rows = []
            for s in specs:
                lazy = s.name not in eager
                row = FieldRow(s, self._initial.get(s.name, ""), self._placeholders.get(s.name, ""), lazy=lazy, owner=self)
                if lazy and field_visible(s, depth=self.depth, adapter_type=adapter):
                    row.display = True
                    row.add_class("-pending", update=False)  # not mounted yet: nothing to restyle
                rows.append(row)
            self._rows.update((row.spec.name, row) for row in rows)
            shown = [row for row in rows if row.display]
            section = Vertical(
                Static(group, classes="section-title"), *shown, classes="form-section", id=f"section-{group.lower()}"
            )
            section.display = bool(shown)
            self._sections.append((section, rows))
            yield section

    def _first_screenful(self, adapter: str) -> set[str]:
        """The shown fields a screen (at its tallest, the terminal) can hold from the top, and the
        last few (Shift+Tab from the first field wraps to the last one): built in compose."""
        shown = [
            [s.name for s in specs if field_visible(s, depth=self.depth, adapter_type=adapter)] for _group, specs in grouped()
        ]
        lines, budget, eager = 0, self.app.size.height, set()
        for names in shown:
            if not names:
                continue
            lines += 3  # the section title (text and rule) and the gap after the section
            for name in names:
                if lines > budget:
                    break
                eager.add(name)
                lines += 1
        eager.update([name for names in shown for name in names][-LOOK_AROUND:])
        return eager

    def on_mount(self) -> None:
        self._last = self.values
        self._update_visibility()

    # ------------------------------------------------------------------ reading and writing

    def rows(self) -> list[FieldRow]:
        return list(self._rows.values())

    def row(self, name: str) -> FieldRow:
        return self._rows[name]

    @property
    def values(self) -> dict[str, RawValue]:
        return {row.spec.name: row.raw for row in self.rows()}

    @property
    def adapter_type(self) -> str:
        return str(self.row("adapter_type").raw)

    def set_values(self, values: dict[str, Any]) -> None:
        """Show ``values`` (a draft, a preset merged over the form). Keys outside the schema are the
        caller's business: ``parse`` names them."""
        for name, value in values.items():
            if name in SPEC_BY_NAME:
                self.row(name).set_raw(value)
        self._update_visibility()

    def set_placeholders(self, placeholders: dict[str, str]) -> None:
        for name, text in placeholders.items():
            if name in SPEC_BY_NAME and self._placeholders.get(name) != text:
                self._placeholders[name] = text
                self.row(name).set_placeholder(text)

    def show_errors(self, errors: dict[str, str]) -> None:
        """Per-field messages from ``ConfigError.by_field()``; an empty dict clears them all."""
        self._errors = dict(errors)
        for row in self.rows():
            row.set_error(errors.get(row.spec.name))
        self._update_visibility()

    @property
    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def focus_field(self, name: str) -> None:
        row = self.row(name)
        row.display = True
        row.materialize()
        if row.parent is None:  # never shown yet: joins the tree, and takes the focus once mounted
            section, rows = next((section, rows) for section, rows in self._sections if row in rows)
            self._mount_rows(section, rows, [])
            self.call_after_refresh(self.focus_field, name)
            return
        target = row.widget
        focusable = target if target.can_focus else next((w for w in target.query("*") if w.can_focus), None)
        if focusable is not None:
            focusable.focus()
        self.scroll_to_widget(row, animate=False)

    # ------------------------------------------------------------------ visibility

    def watch_depth(self) -> None:
        self._update_visibility()

    def toggle_depth(self) -> None:
        self.depth = ADVANCED if self.depth == BASIC else BASIC

    def _update_visibility(self) -> None:
        if not self.is_mounted:
            return
        adapter = self.adapter_type
        mounts: list[AwaitMount] = []
        for section, rows in self._sections:
            any_shown = False
            for row in rows:
                has_error = row.spec.name in self._errors
                shown = field_visible(row.spec, depth=self.depth, adapter_type=adapter, has_error=has_error)
                if shown and has_error:
                    row.materialize()  # its error line sets its height: never a placeholder
                elif shown and not row.built:
                    row.add_class("-pending", update=row.parent is not None)
                if row.display != shown:
                    row.display = shown
                any_shown = any_shown or shown
            if any_shown:
                self._mount_rows(section, rows, mounts)
            if section.display != any_shown:
                section.display = any_shown
        if mounts:
            self.call_next(self._fill_when_mounted, mounts)  # placed by the layout only once mounted
        else:
            self._schedule_fill()

    async def _fill_when_mounted(self, mounts: list[AwaitMount]) -> None:
        for mounted in mounts:
            await mounted
        self._schedule_fill()

    @staticmethod
    def _mount_rows(section: Vertical, rows: list[FieldRow], mounts: list[AwaitMount]) -> None:
        """Rows first shown join their section's tree, each after the one before it in the schema."""
        previous: Widget | None = None
        for row in rows:
            if row.parent is None and row.display:
                # after the one before it, or the section title
                mounts.append(section.mount(row, after=0 if previous is None else previous))
            if row.parent is not None:
                previous = row

    # ------------------------------------------------------------------ placeholders

    def _schedule_fill(self) -> None:
        """Build the placeholder rows in view once the layout has placed them (one pass per refresh)."""
        if not self._fill_scheduled:
            self._fill_scheduled = True
            self.call_after_refresh(self._fill_viewport)

    def _fill_viewport(self) -> None:
        self._fill_scheduled = False
        area = self.region
        if not area:
            return
        top, bottom = area.y - FILL_MARGIN, area.bottom + FILL_MARGIN
        for row in self._rows.values():
            if row.display and not row.built:
                place = row.region
                if place and place.y < bottom and place.bottom > top:
                    row.materialize()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._schedule_fill()

    def on_resize(self) -> None:
        self._schedule_fill()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        row = next((a for a in event.widget.ancestors_with_self if isinstance(a, FieldRow)), None)
        if row is None or row is self._current:
            return
        # Tab and Shift+Tab go to the next shown field: it must exist as a widget by then.
        shown = [r for r in self._rows.values() if r.display]
        if row in shown:
            at = shown.index(row)
            for near in shown[max(0, at - LOOK_AROUND) : at + LOOK_AROUND + 1]:
                near.materialize()
        if self._current is not None:
            self._current.remove_class("-current")
        self._current = row
        row.add_class("-current")  # restyles one row, unlike a :focus-within rule (the whole form)
        self.post_message(self.Focused(self, row))

    @property
    def current(self) -> FieldRow | None:
        return self._current

    @on(FieldRow.Edited)
    def _edited(self, event: FieldRow.Edited) -> None:
        event.stop()
        name, value = event.row.spec.name, event.row.raw
        if self._last.get(name) == value:
            return  # no news (a widget announcing its initial value, or a repeat)
        self._last[name] = value
        if name == "adapter_type":
            self._update_visibility()
        self.post_message(self.Changed(self, dict(self._last), name))
