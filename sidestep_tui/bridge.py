"""The one path from the engine into Textual: a thread worker that polls the client and posts batches.

One ``@work(thread=True, exclusive=True, group="engine-pump", exit_on_error=False)`` method loops on
``client.poll(0.2)`` and posts **one** ``EngineEventsReceived`` per drain with ``post_message`` (thread
safe, non-blocking). Batching bounds the message rate however chatty the engine is and keeps order.
When the client reports the process gone and nothing is left to drain, it posts ``EngineDied`` once and
ends. No timer polls beside it, no ``call_from_thread``: one pump, one message type.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.worker import get_current_worker

from .engine_client import EngineClientProtocol, EngineError
from .messages import EngineDied, EngineEventsReceived, EngineStartFailed

POLL_TIMEOUT_S = 0.2


class EngineBridge:
    """Mixed into the App: ``pump_engine(client)`` starts (handshake) and drains one client."""

    @work(thread=True, exclusive=True, group="engine-pump", name="engine-pump", exit_on_error=False)
    def pump_engine(self, client: EngineClientProtocol, start: bool = True, then_send: tuple[Any, ...] = ()) -> None:
        app: Any = self
        worker = get_current_worker()
        if start:
            try:
                client.start()  # the handshake blocks: it belongs in this thread, not the UI loop
            except EngineError as exc:
                app.post_message(EngineStartFailed(str(exc)))
                return
            for cmd in then_send:
                client.send(cmd)
        quiet_after_exit = 0
        while not worker.is_cancelled:
            events = client.poll(POLL_TIMEOUT_S)
            if events:
                app.post_message(EngineEventsReceived(tuple(events)))
                continue
            if not client.is_alive:
                # A last empty poll after exit, so events flushed just before the exit are not lost.
                quiet_after_exit += 1
                if quiet_after_exit >= 2:
                    app.post_message(EngineDied(client.exit_code, client.death_reason()))
                    return
