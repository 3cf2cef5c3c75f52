"""The Side-Step app: modes, global keys, and the wiring between screens and the engine.

Screens post intents (``StartRequested``, ``StopRequested`` ...); only this App calls the engine
client. Engine events arrive in batches from the pump worker (``bridge.py``) and are folded into
``run_state`` by the pure reducer (``state.py``); screens watch ``run_state`` and redraw on their own
timers. No torch here, ever: ``tests/unit/test_ui_import_hygiene.py`` checks it.
"""

from __future__ import annotations

import importlib
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import var
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from engine import protocol
from engine.protocol import RunFailed, RunFinished, StartPreprocess, StartRun, StopRun

from . import messages as m
from .bridge import EngineBridge
from .commands import RunCommands
from .engine_client import EngineClient, EngineClientProtocol, EngineError
from .settings import Settings, config_dir, load_settings, save_settings
from .state import RunState, apply_all, engine_lost
from .theme import THEMES

SILENCE_S = 10.0
"""A heartbeat gap longer than this (process alive) shows the "not responding" banner."""
ClientFactory = Callable[[str], EngineClientProtocol]


def _screen(module: str, name: str) -> Callable[[], Screen]:
    """A MODES entry that imports its screen module on first use (keeps start-up light)."""

    def make() -> Screen:
        return getattr(importlib.import_module(f"sidestep_tui.screens.{module}"), name)()

    return make


def default_client_factory(log_path: str) -> EngineClientProtocol:
    return EngineClient(log_path=log_path)


class SidestepApp(EngineBridge, App[None]):
    TITLE = "Side-Step"
    CSS_PATH = "styles/app.tcss"
    MODES = {
        "models": _screen("models", "ModelsScreen"),
        "dataset": _screen("dataset", "DatasetScreen"),
        "setup": _screen("setup", "SetupScreen"),
        "monitor": _screen("monitor", "MonitorScreen"),
        "runs": _screen("runs", "RunsScreen"),
    }
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("f1", "switch_mode('models')", "Models", id="app.models", tooltip="Model folders under the checkpoint root"),
        Binding("f2", "switch_mode('dataset')", "Dataset", id="app.dataset", tooltip="Pick and check a tensor folder"),
        Binding("f3", "switch_mode('setup')", "Setup", id="app.setup", tooltip="Configure and start a run"),
        Binding("f4", "switch_mode('monitor')", "Monitor", id="app.monitor", tooltip="The live run"),
        Binding("f5", "switch_mode('runs')", "Runs", id="app.runs", tooltip="Every run under the output root"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True, tooltip="Quit (asks what to do with a running run)"),
    ]

    # ``var``: a new state per batch must not repaint the screen by itself; screens redraw on timers.
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
        self.client = client
        self.client_factory = client_factory
        self.initial_mode = initial_mode
        self.start_config_json = start_config_json
        self.clock = clock
        self.log_dir = log_dir or str(config_dir() / "logs")
        self.demo = demo
        self.last_contact: float | None = None
        self._expect_exit = False  # we asked the engine to go: its exit is not news
        self._quit_when_idle = False
        self._detached = False

    # ------------------------------------------------------------------ setup
    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(THEMES[0].variables)  # chart colours for themes that do not define them

    def on_mount(self) -> None:
        self.theme = self.settings.theme if self.settings.theme in self.available_themes else THEMES[0].name
        self.set_keymap(self.settings.keymap)
        self.switch_mode(self.initial_mode)
        if not self.settings.checkpoint_root and self.initial_mode in ("models", "dataset", "setup"):
            self.push_screen(_screen("first_run", "FirstRunScreen")())
        if self.client is not None:
            self._start_pump(self.client)
        if self.start_config_json is not None:
            self.post_message(m.StartRequested(self.start_config_json))
        if self.demo is not None:
            self.run_state = RunState(phase="preparing_demo", phase_detail="writing or reusing the demo model and data")
            self.run_worker(self._prepare_demo, thread=True, name="demo-setup", group="demo-setup", exit_on_error=False)
        self.set_interval(1.0, self._check_silence, name="engine-silence")

    def _prepare_demo(self) -> None:
        from .demo import demo_draft, prepare_demo_run

        demo = self.demo or {}
        paths, config_json = prepare_demo_run(demo.get("root"), demo.get("adapter", "lora"), demo.get("max_steps", 300))
        # This session browses the demo's folders; the saved settings stay as they are.
        self.settings = self.settings.replace(checkpoint_root=paths["checkpoint_dir"], output_root=paths["output_root"])
        self.post_message(m.DraftUpdated(demo_draft(paths)))
        self.post_message(m.StartRequested(config_json))

    def attach_run(self, run_dir: str) -> None:
        """Follow an existing run read-only (Runs screen, ``sidestep attach``)."""
        from .engine_client import AttachClient

        if self.client is not None and self.client.is_alive and self.run_state.active:
            self.notify("A run is being monitored: stop it or quit (leave it running) first.", severity="error")
            return
        if self.client is not None and self.client.owns_engine and self.client.is_alive:
            self._stop_engine(self.client)
        self.run_state = RunState()
        self._start_pump(AttachClient(run_dir))
        self.switch_mode("monitor")

    # ------------------------------------------------------------------ engine lifecycle
    def _start_pump(self, client: EngineClientProtocol, then_send: tuple[Any, ...] = ()) -> None:
        self.client = client
        self.last_contact = self.clock()
        self._expect_exit = False
        self.engine_banner = ""
        self.pump_engine(client, True, then_send)

    def _begin(self, command: StartRun | StartPreprocess, *, show_monitor: bool = True) -> bool:
        """Start ``command`` in an engine (an idle fresh one is reused, else a new one is spawned).
        False, with a notification, when another run is in progress."""
        client = self.client
        if client is not None and client.is_alive:
            if self.run_state.active or not client.owns_engine:
                self.notify("A run is in progress: stop it (or quit and leave it running) first.", severity="error")
                return False
            if not self.run_state.run_id and self.run_state.preprocess is None:
                # An idle engine that has not run anything yet: reuse it.
                if not self.send_command(command):
                    return False
                self.run_state = RunState()
                if show_monitor:
                    self.switch_mode("monitor")
                return True
            self._stop_engine(client)
        self.run_state = RunState(phase="starting_engine", phase_detail="spawning the engine process")
        log_path = str(Path(self.log_dir) / f"engine-{time.strftime('%Y%m%d-%H%M%S')}.log")
        self._start_pump(self.client_factory(log_path), (command,))
        if show_monitor:
            self.switch_mode("monitor")
        return True

    def _stop_engine(self, client: EngineClientProtocol, *, then_exit: bool = False) -> None:
        """Shut an engine down off the UI thread (Shutdown -> join -> terminate -> kill)."""
        self._expect_exit = True

        def stop() -> None:
            client.shutdown(10.0)
            if then_exit:
                self.call_from_thread(self.exit)

        self.run_worker(stop, thread=True, group="engine-stop", name="engine-stop", exit_on_error=False)

    @on(m.StartRequested)
    def _on_start(self, message: m.StartRequested) -> None:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._begin(StartRun(run_id=run_id, config_json=message.config_json))

    @on(m.PreprocessRequested)
    def _on_preprocess(self, message: m.PreprocessRequested) -> None:
        self.start_preprocess(message.config_json)

    def start_preprocess(self, config_json: str, *, run_id: str = "", show_monitor: bool = False) -> bool:
        """Audio -> tensors in an engine. The Dataset screen follows it itself (it calls this
        directly to learn at once whether the job started); the Monitor shows it too."""
        run_id = run_id or f"pre-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        return self._begin(StartPreprocess(run_id=run_id, config_json=config_json), show_monitor=show_monitor)

    def send_command(self, command: Any) -> bool:
        """Send one command to the engine; a dead engine or a read-only client is a notification."""
        if self.client is None:
            self.notify("No engine is running.", severity="warning")
            return False
        try:
            self.client.send(command)
        except EngineError as exc:
            self.notify(str(exc), severity="error", title="Engine")
            return False
        return True

    def can_send(self, command_type: type) -> bool:
        return self.client is not None and command_type in self.client.controls and self.client.is_alive

    @on(m.StopRequested)
    def _on_stop(self, message: m.StopRequested) -> None:
        if self.send_command(StopRun(save=message.save)):
            self.notify("Stopping after the current step; a checkpoint is saved first.", title="Stop")

    @on(m.SaveRequested)
    def _on_save(self) -> None:
        if self.send_command(protocol.SaveCheckpoint()):
            self.notify("A checkpoint is saved after the current step.", title="Save")

    @on(m.PauseRequested)
    def _on_pause(self) -> None:
        self.send_command(protocol.PauseRun())

    @on(m.ResumeRequested)
    def _on_resume(self) -> None:
        self.send_command(protocol.ResumeRun())

    @on(m.EngineEventsReceived)
    def _on_events(self, message: m.EngineEventsReceived) -> None:
        self.last_contact = self.clock()
        self.run_state = apply_all(self.run_state, message.events)
        if self.engine_banner.startswith("Engine silent"):
            self.engine_banner = ""
        for event in message.events:
            if isinstance(event, RunFailed):
                self._show_failure()
        ended = any(isinstance(e, (RunFinished, RunFailed)) for e in message.events)
        if ended and self.client is not None and self.client.owns_engine:
            self._stop_engine(self.client, then_exit=self._quit_when_idle)  # one engine per run
        elif ended and self._quit_when_idle:
            self.exit()

    def _show_failure(self) -> None:
        from .dialogs.error import ErrorDialog

        failure = self.run_state.failure
        if failure is not None:
            self.push_screen(ErrorDialog(failure))

    @on(m.EngineDied)
    def _on_died(self, message: m.EngineDied) -> None:
        ended = self.run_state.finished_status is not None or self.run_state.failure is not None
        if self._expect_exit or (ended and message.exit_code in (0, None)):
            self.engine_banner = ""
        elif self.client is not None and not self.client.owns_engine:
            self.engine_banner = "" if ended else f"Engine gone: {message.reason}"
            self.run_state = engine_lost(self.run_state, message.reason)
        else:
            self.engine_banner = f"Engine died: {message.reason}"
            self.run_state = engine_lost(self.run_state, message.reason)
            self.notify(self.engine_banner, severity="error", timeout=10)
        if self._quit_when_idle:
            self.exit()

    @on(m.EngineStartFailed)
    def _on_start_failed(self, message: m.EngineStartFailed) -> None:
        self.engine_banner = f"Engine did not start: {message.reason}"
        self.notify(message.reason, severity="error", title="Engine", timeout=15)

    def _check_silence(self) -> None:
        client = self.client
        if client is None or self.last_contact is None or not client.owns_engine or not client.is_alive:
            return
        gap = self.clock() - self.last_contact
        if gap > SILENCE_S:
            self.engine_banner = f"Engine silent for {gap:.0f} s: no heartbeat (process alive, not responding)"

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
        if self.is_mounted and theme != self.settings.theme:
            self.post_message(m.SettingsChanged(self.settings.replace(theme=theme)))

    # ------------------------------------------------------------------ quitting
    async def action_quit(self) -> None:
        client = self.client
        running = client is not None and client.is_alive and (self.run_state.active or self.run_state.phase == "preprocessing")
        if not running:
            if client is not None and client.owns_engine and client.is_alive:
                self._stop_engine(client, then_exit=True)
            else:
                self.exit()
            return
        from .dialogs.quit import QuitDialog

        self.push_screen(QuitDialog(owns_engine=client.owns_engine, preprocessing=self.run_state.preprocess is not None), self._quit_choice)

    def _quit_choice(self, choice: str | None) -> None:
        client = self.client
        if client is None or choice in (None, "cancel"):
            return
        if choice == "leave":
            self._detached = True
            client.detach()
            if self.run_state.preprocess is not None:
                self.exit(message="Preprocessing goes on in the background; its tensors appear in " + (self.run_state.phase_detail or "the tensor folder"))
            else:
                self.exit(message="The run keeps training. Re-attach with: sidestep attach " + (self.run_state.run_dir or "RUN_DIR"))
        elif choice == "stop":
            if not self.send_command(StopRun(save=True)):
                return
            if client.owns_engine:
                self._quit_when_idle = True
                self.notify("Stopping: saving a checkpoint, then quitting…", title="Quit", timeout=30)
            else:
                self.exit(message="Asked the engine to stop and save (SIGTERM).")

    def on_unmount(self) -> None:
        """However the app ends (quit, a test finishing, an error), never leave an engine behind by
        accident: an idle one is shut down; a training one is detached, because a run outlives its UI
        (and multiprocessing would otherwise hold this process's exit until the run ends)."""
        client = self.client
        if client is None or not client.owns_engine or self._detached or not client.is_alive:
            return
        if self.run_state.active:
            client.detach()
        else:
            self._expect_exit = True
            client.shutdown(5.0)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, title in (("models", "Models"), ("dataset", "Dataset"), ("setup", "Setup"), ("monitor", "Monitor"), ("runs", "Runs")):
            yield SystemCommand(f"Go to {title}", f"Switch to the {title} screen", lambda mode=mode: self.switch_mode(mode))


def make_app(
    client: EngineClientProtocol | None = None,
    settings: Settings | None = None,
    **kwargs: Any,
) -> SidestepApp:
    """The one factory for the CLI and the tests. ``settings`` default to the saved ones."""
    return SidestepApp(settings=settings if settings is not None else load_settings(kwargs.get("settings_path")), client=client, **kwargs)
