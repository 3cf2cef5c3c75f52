"""The engine process main: ``run_engine`` is the only function passed to ``Process(target=...)``.

The module's top level imports the standard library only, because the UI process must import this
module to hand the function to ``multiprocessing`` (spawn pickles it by reference) and the UI never
imports torch. Everything heavy is imported inside the child.

Order of business in the child, and why:
1. ``os.setsid()``: the engine leaves the terminal's session, so a dropped SSH connection or a killed
   tmux (SIGHUP to the session) does not end the run (DESIGN §1).
2. fds 0/1/2 → /dev/null and the engine log, *before* torch, bitsandbytes or Prodigy can print:
   anything printed behind a Textual screen corrupts it.
3. Signals: SIGTERM/SIGINT = stop and save (from ``sidestep attach`` or the UI's escalation).
4. ``EngineReady`` with ``PROTOCOL_VERSION``, then serve jobs until ``Shutdown`` or, while idle, the
   parent's death. A run in progress when the UI dies keeps going; only the queue sink goes quiet.
5. On the way out: ``EngineStopping``, close sinks (the queue's feeder thread is flushed and joined).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import traceback
from typing import Any

from engine import protocol


def _redirect_stdio(log_path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    # The engine's own stdout/stderr for the rest of the process (the fds outlive these objects).
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def run_engine(cmd_q: Any, evt_q: Any, boot: dict[str, Any]) -> None:
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader (e.g. started by a test harness that did it)
    _redirect_stdio(boot["log_path"])

    from engine.channel.control import CommandInbox
    from engine.channel.events import EventBus, QueueSink

    queue_sink = QueueSink(evt_q)
    bus = EventBus([queue_sink])

    def parent_lost() -> None:
        # The UI is gone: stop feeding a queue nobody reads; the run's events.jsonl carries on.
        logging.getLogger("sidestep.engine").warning("the UI process is gone; continuing headless")
        queue_sink.enabled = False

    inbox = CommandInbox(cmd_q, parent_pid=boot.get("parent_pid"), on_parent_lost=parent_lost)
    inbox.install_signal_handlers()
    exit_code = 0
    monitor = None
    try:
        import torch

        from engine.process.monitor import ResourceMonitor

        cuda = torch.cuda.is_available()
        bus.emit(
            protocol.EngineReady(
                pid=os.getpid(),
                protocol_version=protocol.PROTOCOL_VERSION,
                torch_version=str(torch.__version__),
                python_version=platform.python_version(),
                cuda_available=cuda,
                device_names=tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else (),
            )
        )
        monitor = ResourceMonitor(bus.emit, phase=lambda: "idle", last_step=lambda: 0)
        monitor.start()
        inbox.interrupt_now = False  # up and idle: SIGTERM is a polite shutdown
        _serve(inbox, bus, monitor)
    except BaseException as exc:  # the last line of defence: report, then exit non-zero
        exit_code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        traceback.print_exc()
        from engine.train.trainer import failure_event

        bus.emit(failure_event(exc))
    finally:
        if monitor is not None:
            monitor.stop()
        bus.emit(protocol.EngineStopping(reason="shutdown" if exit_code == 0 else "error"))
        bus.close()
    sys.exit(exit_code)


def _serve(inbox: Any, bus: Any, monitor: Any) -> None:

    while not inbox.state.shutdown_requested:
        if not inbox.parent_alive:
            break  # idle and orphaned: nobody can send us work any more
        job = inbox.next_job(timeout=0.5)
        if job is None:
            continue
        match job:
            case protocol.StartRun(run_id=run_id, config_json=config_json):
                _start_run(config_json, bus, inbox, run_id=run_id, monitor=monitor)
            case protocol.StartPreprocess(run_id=run_id, config_json=config_json):
                run_preprocess_job(config_json, bus, inbox, run_id=run_id, monitor=monitor)
            case protocol.StartAnalysis(run_id=run_id, options_json=options_json):
                run_analysis_job(options_json, bus, inbox, run_id=run_id, monitor=monitor)
            case protocol.StartEstimate(run_id=run_id, config_json=config_json, output=output):
                from engine.analysis.sensitivity import run_estimate_job

                run_estimate_job(config_json, output, bus, inbox, run_id=run_id, monitor=monitor)
            case _:
                raise protocol.ProtocolError(f"unexpected job {type(job).__name__}")
        bus.run_id = ""
        monitor.phase = lambda: "idle"
        monitor.last_step = lambda: 0
        # A run that ends because its UI vanished leaves nothing to serve: the loop exits on the
        # parent check above. Otherwise a stop applies to that run only.
        inbox.reset_for_next_job()


def _start_run(config_json: str, bus: Any, inbox: Any, *, run_id: str, monitor: Any) -> Any:
    """One process trains here; several (``--devices``) are started by this process, torchrun-style."""
    from engine.analysis.sensitivity import run_training  # the trainer's, after any --auto-estimate
    from engine.process.group import processes_wanted, run_group
    from engine.train.trainer import failure_event

    try:
        world = processes_wanted(config_json)
    except ValueError as exc:
        bus.run_id = run_id
        return bus.emit(failure_event(exc))
    if world == 1:
        return run_training(config_json, bus, inbox, run_id=run_id, monitor=monitor)
    return run_group(config_json, bus, inbox, run_id=run_id, monitor=monitor, world=world)


def run_preprocess_job(config_json: str, bus: Any, inbox: Any, *, run_id: str, monitor: Any) -> Any:
    """Audio -> tensors in the engine process (the UI never imports torch). Progress arrives as
    ``PreprocessProgress``; the job ends with ``RunFinished`` (completed, or stopped: a re-run
    resumes) or ``RunFailed``. ``StopRun`` is honoured between files."""
    import time

    from engine import prepconfig as pcfg
    from engine.audio.preprocess.pipeline import run_preprocess
    from engine.train.trainer import report_job_failure

    bus.run_id = run_id
    started = time.time()
    monitor.phase = lambda: "preprocessing"
    try:
        config = pcfg.from_json(config_json)
        bus.emit(protocol.PhaseChanged(phase="preprocessing", detail=config.output_dir))

        def should_stop() -> bool:
            inbox.poll()
            return inbox.state.stop_requested

        summary = run_preprocess(config, bus.emit, should_stop)
        for warning in summary.warnings:
            bus.log("warning", warning)
        return bus.emit(
            protocol.RunFinished(
                status="stopped" if summary.stopped else "completed",
                steps=summary.processed,
                epochs=0,
                final_loss=float("nan"),
                best_loss=float("nan"),
                adapter_path=summary.output_dir,
                wall_s=time.time() - started,
            )
        )
    except BaseException as exc:
        return report_job_failure(bus, exc)


def run_analysis_job(options_json: str, bus: Any, inbox: Any, *, run_id: str, monitor: Any = None) -> Any:
    """PP++ in the engine process: ``AnalysisProgress`` per measured batch, then ``AnalysisDone``
    (completed: fisher_map.json written atomically; stopped by ``StopRun``: nothing written) or
    ``RunFailed``. The UI shows the map from the file (``engine.fishermap``), never importing torch."""
    import dataclasses
    import time

    from engine import fishermap
    from engine.analysis.fisher import AnalyzeOptions, Stopped, run_analysis
    from engine.train.trainer import report_job_failure

    bus.run_id = run_id
    started = time.time()
    if monitor is not None:
        monitor.phase = lambda: "preparing_data"
    try:
        options = AnalyzeOptions.from_json(options_json)
        bus.emit(protocol.PhaseChanged(phase="preparing_data", detail=f"analysing {options.dataset_dir}"))

        def should_stop() -> bool:
            inbox.poll()
            return bool(inbox.state.stop_requested)

        try:
            data = run_analysis(
                options,
                progress=lambda p: bus.emit(protocol.AnalysisProgress(**dataclasses.asdict(p))),
                should_stop=should_stop,
                note=lambda level, message: bus.log(level, message),
            )
        except Stopped:
            return bus.emit(protocol.AnalysisDone(status="stopped", path="", summary="", wall_s=time.time() - started))
        path = fishermap.write(options.dataset_dir, data)
        summary = fishermap.FisherMap(path=path, data=data).summary()
        return bus.emit(protocol.AnalysisDone(status="completed", path=path, summary=summary, wall_s=time.time() - started))
    except BaseException as exc:
        return report_job_failure(bus, exc)
