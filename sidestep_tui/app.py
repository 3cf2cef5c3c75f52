"""The Side-Step app: modes, global keys, and the wiring between screens and the engine session.

Screens post intents (``StartRequested``, ``StopRequested`` ...) and read ``run_state`` /
``engine_banner``; the App routes the intents and the pump's engine messages (``bridge.py``) to its
``EngineSession`` (``session.py``: the engine lifecycle, no Textual), and is the session's host: it runs
the pump and blocking work in workers, notifies, shows the failure dialog and exits. Screens redraw on
their own timers. No torch here, ever: ``tests/unit/test_ui_import_hygiene.py`` checks it.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from textual import on
from textual._context import active_app
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import var
from textual.screen import Screen
from textual.widget import AwaitMount
from textual.worker import Worker, WorkerState

from engine.protocol import Command

from . import messages as m
from .bridge import EngineBridge
from .commands import RunCommands
from .engine_client import EngineClientProtocol
from .session import ClientFactory, EngineSession, QuitChoice, default_client_factory
from .settings import Settings, config_dir, load_settings, save_settings
from .state import Failure, RunState
from .theme import THEMES


def _screen(module: str, name: str) -> Callable[[], Screen]:
    """A MODES entry that imports its screen module on first use (keeps start-up light). A mode's
    screen built ahead by the warm-up (``SidestepApp._warm_up``) is handed over instead of a new one."""

    def make() -> Screen:
        built = getattr(active_app.get(None), "prebuilt", {}).pop(module, None)
        if built is not None:
            return built
        screen: Screen = getattr(importlib.import_module(f"sidestep_tui.screens.{module}"), name)()
        # Its CSS is in the app's stylesheet from the start (CSS_PATH below), so a new screen needs no
        # CSS refresh: Textual's would reparse every rule and restyle every open screen (~0.5 s on a
        # 2-core machine for each first open). Private in Textual (pinned in pyproject).
        screen._css_update_count = screen.app._css_update_count
        return screen

    return make


class SidestepApp(EngineBridge, App[None]):
    TITLE = "Side-Step"
    # Every screen's CSS, read once at start-up (all its rules name a screen or an id): loading a
    # screen's file on its first open reparses and reapplies the whole stylesheet.
    CSS_PATH = [
        "styles/app.tcss",
        *(f"screens/{name}.tcss" for name in ("models", "dataset", "setup", "monitor", "runs", "queue", "first_run")),
    ]
    MODES = {
        "models": _screen("models", "ModelsScreen"),
        "dataset": _screen("dataset", "DatasetScreen"),
        "setup": _screen("setup", "SetupScreen"),
        "monitor": _screen("monitor", "MonitorScreen"),
        "runs": _screen("runs", "RunsScreen"),
        "queue": _screen("queue", "QueueScreen"),
    }
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("f1", "switch_mode('models')", "Models", id="app.models", tooltip="Model folders under the checkpoint root"),
        Binding("f2", "switch_mode('dataset')", "Dataset", id="app.dataset", tooltip="Pick and check a tensor folder"),
        Binding("f3", "switch_mode('setup')", "Setup", id="app.setup", tooltip="Configure and start a run"),
        Binding("f4", "switch_mode('monitor')", "Monitor", id="app.monitor", tooltip="The live run"),
        Binding("f5", "switch_mode('runs')", "Runs", id="app.runs", tooltip="Every run under the output root"),
        # Not in the footer yet (showing it changes every screen's footer): Ctrl+P lists it as "Go to Queue".
        Binding("f6", "switch_mode('queue')", "Queue", id="app.queue", show=False, tooltip="The run queue"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True, tooltip="Quit (asks what to do with a running run)"),
    ]

    # The screens a user opens first are built ahead, one at a time, once the app has been idle this
    # long after start (None: never). Composing and styling a screen's widgets is most of a first
    # open's time (Setup ~0.7 s of CPU on a 2-core machine); built ahead, a first open costs what a
    # switch does. A key pressed meanwhile waits at most for the one screen being built.
    WARM_UP_AFTER_S: float | None = 1.0
    WARM_UP_GAP_S = 0.15
    WARM_UP_ORDER = ("setup", "dataset", "monitor", "runs", "models", "queue")

    # Mirrors of ``session.state`` / ``session.banner`` for screens to watch. ``var``: a new state per
    # batch must not repaint the screen by itself; screens redraw on timers.
    run_state: var[RunState] = var(RunState, always_update=True, init=False)
    engine_banner: var[str] = var("")

    def __init__(
        self,
        *,
        settings: Settings,
        client: EngineClientProtocol | None = None,
        client_factory: ClientFactory = default_client_factory,
        initial_mode: str = "models",
        start_config_json: str | None = None,
        draft: dict[str, Any] | None = None,
        settings_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_dir: str | None = None,
        demo: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for theme in THEMES:
            self.register_theme(theme)
        self.settings = settings
        self.settings_path = settings_path
        self.draft: dict[str, Any] = dict(draft or {})
        self.initial_client = client
        self.initial_mode = initial_mode
        self.start_config_json = start_config_json
        self.clock = clock
        self.demo = demo
        self.session = EngineSession(
            self, log_dir=log_dir or str(config_dir() / "logs"), client_factory=client_factory, clock=clock
        )
        self.prebuilt: dict[str, Screen] = {}  # mode -> its screen, built by the warm-up, not yet shown

    # ------------------------------------------------------------------ setup
    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(THEMES[0].variables)  # chart colours for themes that do not define them

    def on_mount(self) -> None:
        self.theme = self.settings.theme if self.settings.theme in self.available_themes else THEMES[0].name
        self.set_keymap(self.settings.keymap)
        self.switch_mode(self.initial_mode)
        if not self.settings.checkpoint_root and self.initial_mode in ("models", "dataset", "setup"):
            self.push_screen(_screen("first_run", "FirstRunScreen")())
        if self.initial_client is not None:
            self.session.follow(self.initial_client)
        if self.start_config_json is not None:
            self.post_message(m.StartRequested(self.start_config_json))
        if self.demo is not None:
            self.session.show_waiting("preparing_demo", "writing or reusing the demo model and data")
            self.run_worker(self._prepare_demo, thread=True, name="demo-setup", group="demo-setup", exit_on_error=False)
        self.set_interval(1.0, self.session.check_silence, name="engine-silence")
        if self.WARM_UP_AFTER_S is not None:
            self.run_worker(self._warm_up(self.WARM_UP_AFTER_S), name="warm-up", group="warm-up", exit_on_error=False)

    async def _warm_up(self, after_s: float) -> None:
        """Build, mount and lay out the screens of ``WARM_UP_ORDER`` not yet open, one step at a time
        with ``WARM_UP_GAP_S`` between steps so that keys pressed meanwhile are served first;
        ``switch_mode`` then shows the built one (``_screen``). Screens refresh what may have changed
        meanwhile when they are shown (``on_screen_resume``). Uses what Textual's own ``_init_mode``
        does (``_register``, the screen's ``_refresh_layout``): private, hence the pinned Textual."""
        await asyncio.sleep(after_s)
        for mode in self.WARM_UP_ORDER:
            await asyncio.sleep(self.WARM_UP_GAP_S)
            if mode in self._screen_stacks or mode in self.prebuilt or self._exit:
                continue
            make = self.MODES[mode]
            assert callable(make)  # every mode is a ``_screen`` factory
            screen = make()
            self.prebuilt[mode] = screen
            await AwaitMount(screen, self._register(self, screen))  # composed and mounted, not shown
            # Laid out too, until its widgets stop resizing one another (rows mounted to fill the view,
            # text that wraps): an inactive screen's pending layout waits for it to be shown otherwise.
            for _ in range(4):
                await asyncio.sleep(self.WARM_UP_GAP_S)
                if not screen.is_attached or self._exit or (screen.size == self.size and not screen._layout_widgets):
                    break
                screen._refresh_layout(self.size)

    def _prepare_demo(self) -> None:
        from .demo import demo_draft, prepare_demo_run

        demo = self.demo or {}
        paths, config_json = prepare_demo_run(demo.get("root"), demo.get("adapter", "lora"), demo.get("max_steps", 200))
        # This session browses the demo's folders; the saved settings stay as they are.
        self.settings = self.settings.replace(checkpoint_root=paths["checkpoint_dir"], output_root=paths["output_root"])
        self.post_message(m.DraftUpdated(demo_draft(paths)))
        self.post_message(m.StartRequested(config_json))

    def attach_run(self, run_dir: str) -> None:
        """Follow an existing run read-only on the monitor (Runs screen)."""
        if self.session.attach(run_dir):
            self.switch_mode("monitor")

    # ------------------------------------------------------------------ the session's host
    def start_pump(self, client: EngineClientProtocol, then_send: tuple[Command, ...]) -> None:
        self.pump_engine(client, True, then_send)

    def run_blocking(self, name: str, work: Callable[[], None], then: Callable[[], None] | None = None) -> None:
        def job() -> None:
            work()
            if then is not None:
                self.call_from_thread(then)

        self.run_worker(job, thread=True, group=name, name=name, exit_on_error=False)

    def show_failure(self, failure: Failure) -> None:
        from .dialogs.error import ErrorDialog

        self.push_screen(ErrorDialog(failure))

    def leave(self, message: str | None = None) -> None:
        self.exit(message=message)

    def session_changed(self) -> None:
        if self.run_state is not self.session.state:
            self.run_state = self.session.state
        self.engine_banner = self.session.banner

    # ------------------------------------------------------------------ routing
    @on(m.StartRequested)
    def _on_start(self, message: m.StartRequested) -> None:
        if self.session.start_run(message.config_json):
            self.switch_mode("monitor")

    @on(m.PreprocessRequested)
    def _on_preprocess(self, message: m.PreprocessRequested) -> None:
        self.session.start_preprocess(message.config_json)

    @on(m.StopRequested)
    def _on_stop(self) -> None:
        self.session.stop()

    @on(m.SaveRequested)
    def _on_save(self) -> None:
        self.session.save()

    @on(m.PauseRequested)
    def _on_pause(self) -> None:
        self.session.pause()

    @on(m.ResumeRequested)
    def _on_resume(self) -> None:
        self.session.resume()

    @on(m.EngineEventsReceived)
    def _on_events(self, message: m.EngineEventsReceived) -> None:
        self.session.on_events(message.events)

    @on(m.EngineDied)
    def _on_died(self, message: m.EngineDied) -> None:
        self.session.on_died(message.exit_code, message.reason)

    @on(m.EngineStartFailed)
    def _on_start_failed(self, message: m.EngineStartFailed) -> None:
        self.session.on_start_failed(message.reason)

    @on(Worker.StateChanged)
    def _route_worker_errors(self, event: Worker.StateChanged) -> None:
        """One router for every worker failure: shown, logged, never swallowed."""
        if event.state is WorkerState.ERROR:
            error = event.worker.error
            self.log.error(f"worker {event.worker.name} failed: {error!r}")
            self.notify(f"{event.worker.name}: {error}", severity="error", title="Internal error", timeout=15)

    # ------------------------------------------------------------------ drafts, settings
    @on(m.DraftUpdated)
    def _on_draft(self, message: m.DraftUpdated) -> None:
        self.draft.update(message.values)

    @on(m.SettingsChanged)
    def _on_settings(self, message: m.SettingsChanged) -> None:
        self.settings = message.settings
        try:
            save_settings(message.settings, self.settings_path)
        except OSError as exc:
            self.notify(f"Settings not saved: {exc}", severity="error")
        if message.settings.theme in self.available_themes:
            self.theme = message.settings.theme
        self.set_keymap(message.settings.keymap)

    def watch_theme(self, theme: str) -> None:
        """A theme picked in the palette is remembered (settings.json), like every other setting."""
        if theme != self.settings.theme:
            self.post_message(m.SettingsChanged(self.settings.replace(theme=theme)))

    def change_checkpoint_root(self) -> None:
        """Ask for a new checkpoint root (Models screen key, command palette); save it, point the
        draft at it, and rescan the Models screen when it is the one showing."""
        from .dialogs.root import RootDialog

        def chosen(path: str | None) -> None:
            if not path or path == self.settings.checkpoint_root:
                return
            self._on_settings(m.SettingsChanged(self.settings.replace(checkpoint_root=path)))
            self.draft["checkpoint_dir"] = path
            self.notify(path, title="Checkpoint root")
            rescan = getattr(self.screen, "on_screen_resume", None)
            if type(self.screen).__name__ == "ModelsScreen" and rescan is not None:
                rescan()

        self.push_screen(RootDialog(self.settings.checkpoint_root), chosen)

    # ------------------------------------------------------------------ quitting
    async def action_quit(self) -> None:
        question = self.session.request_quit()
        if question is not None:
            from .dialogs.quit import QuitDialog

            self.push_screen(
                QuitDialog(owns_engine=question.owns_engine, preprocessing=question.preprocessing), self._quit_choice
            )

    def _quit_choice(self, choice: QuitChoice | None) -> None:
        self.session.quit_choice(choice)

    def on_unmount(self) -> None:
        self.session.close()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, title in (
            ("models", "Models"),
            ("dataset", "Dataset"),
            ("setup", "Setup"),
            ("monitor", "Monitor"),
            ("runs", "Runs"),
            ("queue", "Queue"),
        ):
            yield SystemCommand(f"Go to {title}", f"Switch to the {title} screen", lambda mode=mode: self.switch_mode(mode))
        yield SystemCommand(
            "Set checkpoint root", "The folder holding the model folders (saved in settings)", self.change_checkpoint_root
        )


def make_app(
    client: EngineClientProtocol | None = None,
    settings: Settings | None = None,
    **kwargs: Any,
) -> SidestepApp:
    """The one factory for the CLI and the tests. ``settings`` default to the saved ones."""
    return SidestepApp(
        settings=settings if settings is not None else load_settings(kwargs.get("settings_path")), client=client, **kwargs
    )
