"""One rank of a several-process run started by the engine process (``engine.process.group``):
``python -m engine.process.rank``, with torchrun's variables (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``) in its environment, so Fabric joins the group exactly as
under torchrun.

stdin: first line ``{"config_json": ..., "run_id": ...}``, then (rank 0) the UI's commands, one
protocol message a line. stdout: rank 0's events, one protocol message a line; everything libraries
print goes to stderr (the engine log). Other ranks report nothing: their stdout is stderr too."""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
from typing import Any, TextIO

from engine import protocol


def _read_commands(stream: TextIO, cmd_q: queue.Queue[Any]) -> None:
    for line in stream:
        if line.strip():
            cmd_q.put(protocol.loads(line))


def main() -> int:
    rank = os.environ.get("RANK", "0")
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # library prints never reach the event stream
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s", force=True
    )
    boot = json.loads(sys.stdin.readline())

    from engine.analysis.sensitivity import run_training  # the trainer's, after any --auto-estimate
    from engine.channel.control import CommandInbox
    from engine.channel.events import EventBus, StreamJsonSink

    cmd_q: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_read_commands, args=(sys.stdin, cmd_q), name="sidestep-rank-commands", daemon=True).start()
    bus = EventBus([StreamJsonSink(events)] if rank == "0" else [])
    inbox = CommandInbox(cmd_q)
    inbox.install_signal_handlers()
    try:
        final = run_training(boot["config_json"], bus, inbox, run_id=boot["run_id"])
    finally:
        bus.close()
    return 0 if isinstance(final, protocol.RunFinished) else 1


if __name__ == "__main__":
    sys.exit(main())
