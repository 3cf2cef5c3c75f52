"""The typed way from a screen, widget or palette provider to the Side-Step App.

Textual types ``self.app`` as a plain ``App``, so reaching the App's settings, draft, clock or engine
session took ``type: ignore`` or ``getattr``. A class that needs them declares ``app = SidestepAppRef()``
(Textual's own ``getters.app`` pattern): ``self.app`` is then typed ``SidestepApp``, and a node mounted
in another App fails at once with a clear error instead of an ``AttributeError`` somewhere later.
``SidestepApp`` is looked up lazily: ``app.py`` imports ``commands.py`` and loads the screens, so none
of them may import it at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from textual.app import App

    from .app import SidestepApp


def as_sidestep(app: App[Any]) -> SidestepApp:
    from .app import SidestepApp

    if not isinstance(app, SidestepApp):
        raise TypeError(f"this part of the UI runs in the Side-Step app, not in {type(app).__name__}")
    return app


class SidestepAppRef:
    """A class attribute ``app = SidestepAppRef()``: Textual's ``app`` lookup, typed ``SidestepApp``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._owner = owner
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type) -> SidestepAppRef: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> SidestepApp: ...

    def __get__(self, obj: object, objtype: type | None = None) -> SidestepApp | SidestepAppRef:
        if obj is None:
            return self
        return as_sidestep(getattr(super(self._owner, obj), self._name))  # the base class's lookup
