"""``--post-checkpoint-script``: a user command run after each checkpoint folder is complete
(SimpleTuner's ``--post_checkpoint_script``).

- The template is split with ``shlex`` into an argument list and run with ``subprocess`` directly,
  never through a shell; ``{checkpoint_path}``, ``{step}`` and ``{run_dir}`` are replaced inside each
  argument (``engine.config.hook_argv``).
- Hooks run one at a time, in checkpoint order, on a background thread: training never waits for a
  hook while it runs. Each hook's exit status and the tail of its output (stdout and stderr merged)
  go to the run log (``sidestep.log``) and the event stream as a ``LogRecord`` from the logger
  ``post_checkpoint_script`` (level ``info`` on exit 0, ``warning`` otherwise or when the command
  cannot be started). A failing hook never stops training.
- At the end of a run, ``close`` waits up to ``timeout`` seconds for the queued hooks (so their
  reports land in events.jsonl); a hook still running after that is left running and reported.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
import time
from typing import Any

from engine import config as cfgmod
from engine import protocol

log = logging.getLogger("sidestep.engine")
LOGGER = "post_checkpoint_script"
OUTPUT_TAIL = 2000  # characters of the hook's output kept in the report
CLOSE_TIMEOUT_S = 120.0


class PostCheckpointHook:
    def __init__(self, template: str, *, run_dir: str, bus: Any) -> None:
        cfgmod.hook_argv(template, {k: "" for k in cfgmod.HOOK_PLACEHOLDERS})  # a bad template fails now, not per checkpoint
        self.template = template
        self.run_dir = run_dir
        self.bus = bus
        self._jobs: queue.Queue[list[str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="post-checkpoint-script", daemon=True)
        self._thread.start()
        self.reports: list[tuple[int | None, str]] = []  # (exit status or None = not started, output tail)

    def argv(self, checkpoint_path: str, step: int) -> list[str]:
        return cfgmod.hook_argv(self.template, {"checkpoint_path": checkpoint_path, "step": str(step), "run_dir": self.run_dir})

    def fire(self, checkpoint_path: str, step: int) -> None:
        """Queue the hook for a checkpoint that is complete on disk; returns at once."""
        self._jobs.put(self.argv(checkpoint_path, step))

    def _report(self, level: protocol.LogLevel, message: str) -> None:
        getattr(log, level)(message)
        self.bus.emit(protocol.LogRecord(level=level, message=message, logger=LOGGER))

    def _work(self) -> None:
        while True:
            argv = self._jobs.get()
            if argv is None:
                return
            started = time.monotonic()
            try:
                proc = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
                )
            except OSError as exc:
                self.reports.append((None, str(exc)))
                self._report("warning", f"post-checkpoint script could not start: {argv[0]}: {exc}; training goes on")
                continue
            output = proc.stdout.decode("utf-8", errors="replace").strip()
            tail = output[-OUTPUT_TAIL:]
            self.reports.append((proc.returncode, tail))
            took = time.monotonic() - started
            level: protocol.LogLevel = "info" if proc.returncode == 0 else "warning"
            verdict = "ok" if proc.returncode == 0 else "FAILED; training goes on"
            text = f"post-checkpoint script exited {proc.returncode} after {took:.1f}s ({verdict}): {' '.join(argv)}"
            self._report(level, text + (f"\n{tail}" if tail else ""))

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Let queued hooks finish (up to ``timeout`` s), then stop the worker."""
        self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._report(
                "warning", f"post-checkpoint script still running after {timeout:.0f}s at the end of the run; left running"
            )


def from_config(config: Any, *, run_dir: str, bus: Any) -> PostCheckpointHook | None:
    if not config.post_checkpoint_script:
        return None
    return PostCheckpointHook(config.post_checkpoint_script, run_dir=run_dir, bus=bus)
