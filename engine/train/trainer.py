"""The Fabric training loop with the corrected ACE-Step 1.5 recipe.

Features, and the trade-offs behind them:
- Continuous logit-normal timesteps (mu/sigma from the model's config.json) or the legacy discrete
  8-step schedule; per-sample CFG dropout with ``null_condition_emb`` for every variant; flow-matching
  velocity loss in fp32 where padded frames never count; optional min-SNR weighting.
- Gradient accumulation with the partial window at an epoch's end flushed; clipping; a non-finite loss
  skips its window, and 10 in a row halt the run as a failure (never "complete").
- Only the adapter trains (fp32 even on a bf16 base: ``bf16-mixed`` autocasts the forward, the adapter
  weights and optimizer state stay fp32).
- Commands (stop, save now, pause) are applied between optimizer steps only; stop always saves.
- Resume restores adapter, optimizer, scheduler, step, epoch, the position inside the epoch, the data
  order and crop planner, every RNG stream and the best-model tracker, so N straight steps equal N/2 +
  stop + resume + N/2 (tested).
- Events are bounded at the source (``StepAggregator``); TensorBoard gets every ``log_every`` step and
  the timestep histogram every ``log_heavy_every`` steps, for every loss weighting.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import torch

from engine import config as cfgmod
from engine import discovery, fsutil, layout, moduleconfig, protocol
from engine.adapters.base import AdapterMismatchError
from engine.channel.control import CommandInbox
from engine.channel.events import CallbackSink, EventBus, JsonlSink, StepAggregator
from engine.train import checkpoint as ckpt
from engine.train import cruise, diskspace, dist, ema, hooks, recipe, rundir, throughput
from engine.train.build import RunParts, build_run, resume_mismatch, timestep_mu_sigma
from engine.train.samples import TrainingSampler

log = logging.getLogger("sidestep.engine")
MAX_BAD_WINDOWS = 10
BEST_WINDOW = 5
BEST_MIN_DELTA = 1e-3


class TrainingHalted(RuntimeError):
    """The run cannot go on (e.g. the loss stayed NaN/Inf); the message says what to change."""


class Trainer:
    def __init__(
        self,
        config: cfgmod.TrainConfig,
        bus: EventBus,
        inbox: CommandInbox,
        *,
        run_id: str,
        monitor: Any = None,
        metrics_hz: float = 4.0,
    ):
        self.config = config
        self.bus = bus
        self.inbox = inbox
        self.run_id = run_id
        self.monitor = monitor
        self.metrics_hz = metrics_hz
        self.phase: protocol.Phase = "loading_model"
        self.global_step = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches consumed in the current epoch
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        self.parts: RunParts | None = None
        self.best_loss = math.inf
        self.epoch_losses: list[float] = []
        self.epochs_since_best = 0
        self.last_loss = math.nan
        self.started = time.time()
        self._tb: Any = None
        self._recent_t: list[torch.Tensor] = []
        self._boundary_step = 0  # global_step at the last optimizer-step boundary
        self._cruise: cruise.CruiseControl | None = None
        self._ema: ema.AdapterEMA | None = None
        self._hook: hooks.PostCheckpointHook | None = None
        self._space: diskspace.SpaceWatch | None = None
        self._sampler: TrainingSampler | None = None
        self._resume: tuple[str, dict[str, Any]] | None = None  # (checkpoint, training state), checked before the claim
        self._resume_notes: list[str] = []  # what --resume-from auto skipped, and why
        self._resume_newest: str | None = None  # the newest checkpoint when the resume was checked
        self._group: dist.Group | None = None  # one of several processes (engine.train.dist); None = one
        self._gathered: tuple[dict[str, Any], dict[str, Any]] | None = None  # fsdp: the state being saved

    @property
    def is_zero(self) -> bool:
        """Rank 0 (or the only process): the one that writes the run folder, events and TensorBoard."""
        return self._group is None or self._group.is_zero

    @property
    def _sharded(self) -> bool:
        """fsdp: a save is a collective (every rank gathers its shards), so only shared save points save."""
        return self._group is not None and self._group.sharded

    @property
    def world(self) -> int:
        return 1 if self._group is None else self._group.world

    def epoch_number(self) -> int:
        """The 1-based epoch of the latest optimizer step: what every event and view calls "epoch N".

        ``self.epoch`` (and the ``epoch`` stored in training_state.pt, so resume is unchanged) counts
        finished epochs; this is the one place it is converted. Right after an epoch ended (no batch of
        the next one taken yet) the latest step still belongs to the epoch that ended. ``EpochCompleted``
        carries the number of the epoch just finished and ``RunFinished.epochs`` the count: the same
        numbers. ``RunStarted.start_epoch`` is the epoch a segment starts (or continues) in."""
        return self.epoch if self.batches_done == 0 and self.epoch > 0 else self.epoch + 1

    # ------------------------------------------------------------------ lifecycle
    def set_phase(self, phase: protocol.Phase, detail: str = "") -> None:
        self.phase = phase
        self.bus.emit(protocol.PhaseChanged(phase=phase, detail=detail))

    def fit(self) -> Any:
        """Run to completion, stop or failure. Returns the final event (``RunFinished``/``RunFailed``),
        already emitted. Failures are reported, not raised: the engine stays up for the next job.

        A resume is validated (checkpoint found, readable, same settings) before the run folder is
        touched, and its events reach events.jsonl only once it has started: a refused or failed
        resume leaves the run it refused as it was."""
        held = None
        jsonl = log_handler = buffer = None
        self.inbox.interrupt_now = True  # loading: a signal exits at once (nothing to save yet)
        pending: list[Any] = []
        try:
            # Model code runs only from under the checkpoint root: refused before the run folder is touched.
            discovery.check_model_name(self.config.checkpoint_dir, self.config.model_variant)
            self.config = moduleconfig.resolve(self.config)  # --module-config read and checked: a bad one never claims a folder
            self._group = dist.launch(self.config)
            if not self.is_zero:  # rank 0 alone reports; this rank's failures go to its own log (stderr)
                self.bus = EventBus([])
                self.bus.run_id = self.run_id
            resuming = self.config.resume_from is not None
            if resuming:
                wanted = os.path.abspath(os.path.expanduser(self.config.output_dir))
                self._resume_newest = layout.newest_checkpoint(wanted)
                self._resume = self._load_resume(wanted)
            if self.is_zero:
                try:
                    held = rundir.claim(
                        self.config.output_dir,
                        resuming=resuming,
                        overwrite=self.config.overwrite,
                        run_id=self.run_id,
                        keep_out=(("--dataset-dir", self.config.dataset_dir), ("--checkpoint-dir", self.config.checkpoint_dir)),
                    )
                except BaseException:
                    if self._group is not None:
                        dist.agree(self._group, False)  # the other ranks stop now, not at the timeout
                    raise
                run_dir = held.run_dir
                log_handler = rundir.attach_log_file(run_dir)
                if resuming:
                    buffer = CallbackSink(pending.append)
                    self.bus.add(buffer)
                else:
                    jsonl = JsonlSink(layout.events_path(run_dir))
                    self.bus.add(jsonl)
            else:
                run_dir = os.path.abspath(os.path.expanduser(self.config.output_dir))
            if self._group is not None and not dist.agree(self._group, True):
                raise TrainingHalted("rank 0 could not start the run; its error is in its log")
            for note in self._resume_notes:
                self.bus.log("warning", note)
            for removed in rundir.clean_stale_temps(run_dir) if self.is_zero else []:
                self.bus.log("warning", f"removed {removed}: left by a writer that died during a save")
            self.parts = build_run(
                self.config,
                run_dir,
                self.bus,
                set_phase=self.set_phase,
                write_config=not resuming and self.is_zero,
                group=self._group,
            )
            self.config = self.parts.config
            if self.monitor is not None:
                self.monitor.set_device(self.parts.device)
            self._attach_options()
            self._space = self._watch_space() if self.is_zero else None
            self._restore_if_resuming()
            if buffer is not None:  # the resume holds: from here on the run folder records it
                fsutil.write_text(layout.config_path(run_dir), cfgmod.to_json(self.config))
                self.bus.remove(buffer)
                buffer = None
                jsonl = JsonlSink(layout.events_path(run_dir))
                for event in pending:
                    jsonl.emit(event)
                self.bus.add(jsonl)
            if self.is_zero:
                self._open_tensorboard()
            self.bus.emit(self.parts.run_started_event(start_step=self.global_step, start_epoch=self.epoch + 1))
            self.inbox.interrupt_now = False  # from here a signal stops at a step boundary and saves
            if self.is_zero:  # samples are rank 0's (the others wait at the next step's collective)
                self._sampler = TrainingSampler.build(self.config, self.parts, lambda message: self.bus.log("info", message))
            if self._sampler is not None and self.global_step == 0:
                self._sample_round()  # the base model, the A side
            self.set_phase("training")
            status = self._train()
            final = self._finish(status)
        except BaseException as exc:
            failed = failure_event(exc, step=self.global_step)
            # The run's sidestep.log (attached above once the folder exists) gets the traceback too: the
            # failure dialog sends people there, and events.jsonl is no place to read one. Without that
            # file (refused before the claim) the line goes to the console: one line, no traceback.
            # Logged before the event goes out, so whoever reacts to RunFailed finds the log complete.
            if log_handler is not None:
                log.error("run failed: %s\n%s", failed.message, failed.traceback.rstrip())
            else:
                log.error("run failed: %s", failed.message)
            final = self.bus.emit(failed)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            if self._tb is not None:
                self._tb.close()
            if self._hook is not None:
                self._hook.close()  # queued hooks report into this run's events.jsonl
            if self._sampler is not None:
                self._sampler.close()
            if buffer is not None:
                self.bus.remove(buffer)  # a resume that never started: its events stay out of the folder
            if jsonl is not None:
                self.bus.remove(jsonl)
            if log_handler is not None:
                rundir.detach_log_file(log_handler)
            if held is not None:
                held.release()
            self.phase = "idle"
            self.inbox.interrupt_now = False
        return final

    # ------------------------------------------------------------------ the loop
    def _train(self) -> protocol.RunStatus:
        p = self.parts
        assert p is not None
        c = self.config
        agg = StepAggregator(self.bus, total_steps=p.total_steps, max_hz=self.metrics_hz)
        data_watch = throughput.DataWaitWatch(
            lambda message: self.bus.log("warning", message),
            num_workers=c.num_workers,
            persistent_workers=c.persistent_workers,
        )
        bad_windows = 0
        while self.epoch < c.epochs and self.global_step < p.total_steps:
            epoch_start = time.time()
            loader = throughput.TimedBatches(p.loader_for_epoch(self.epoch, skip=self.batches_done))
            n_batches = p.batches_per_epoch
            window_losses: list[torch.Tensor] = []
            step_start = time.perf_counter()
            for batch in loader:
                index = self.batches_done
                window_start = (index // c.gradient_accumulation) * c.gradient_accumulation
                window_size = min(c.gradient_accumulation, n_batches - window_start)
                closes_window = index - window_start + 1 == window_size
                window_losses.append(self._micro_step(batch, window_size, accumulating=not closes_window))
                self.batches_done += 1
                if not closes_window:
                    continue
                # ---- optimizer step boundary: the one host sync of the step reads the window's loss.
                # A non-finite micro-batch poisons the window's gradients, so the whole window is skipped.
                # Several processes: the loss is the mean over the ranks, so all of them skip or step alike.
                if self._group is None:
                    step_loss = float(torch.stack(window_losses).mean().item())
                else:
                    step_loss = self._sync_step(torch.stack(window_losses).mean(), time.perf_counter() - step_start, agg)
                if not math.isfinite(step_loss):
                    bad_windows += 1
                    self._skip_window(agg, bad_windows, "loss", "lower the learning rate or check the dataset")
                else:
                    grad_norm = p.fabric.clip_gradients(p.module, p.optimizer, max_norm=c.max_grad_norm, error_if_nonfinite=False)
                    gn = float(grad_norm)
                    if not math.isfinite(gn):
                        bad_windows += 1
                        self._skip_window(agg, bad_windows, "gradient norm", "lower the learning rate")
                    else:
                        bad_windows = 0
                        scale = self._optimizer_step(step_loss)
                        p.optimizer.zero_grad(set_to_none=True)
                        self.global_step += 1
                        self.last_loss = step_loss
                        self.epoch_loss_sum += step_loss
                        self.epoch_loss_n += 1
                        lr = p.current_lr() * scale
                        wait = loader.take()
                        data_watch.step(wait, time.perf_counter() - step_start)
                        agg.add(
                            step=self.global_step,
                            epoch=self.epoch_number(),
                            loss=step_loss,
                            lr=lr,
                            grad_norm=gn,
                            samples=window_size * c.batch_size * self.world,
                            cruise_scale=self._cruise.scale if self._cruise else -1.0,
                            cruise_ema=self._cruise.ema if self._cruise and self._cruise.ema is not None else -1.0,
                            data_wait_s=wait,
                        )
                        self._log_tensorboard(step_loss, lr, gn, data_watch.share)
                window_losses = []
                outcome = self._between_steps(agg)
                if outcome is not None:
                    return outcome
                step_start = time.perf_counter()
                if self.global_step >= p.total_steps and self.batches_done < n_batches:
                    break  # (on the epoch's last batch the epoch ends first: EpochCompleted, best/)
            else:
                # the epoch ran to its end
                self._end_epoch(
                    self.epoch_loss_sum / self.epoch_loss_n if self.epoch_loss_n else math.nan, time.time() - epoch_start
                )
                if c.early_stop_patience and self.epochs_since_best >= c.early_stop_patience:
                    self.bus.log("info", f"early stop: no new best for {self.epochs_since_best} epochs")
                    break
                continue
            break  # max steps reached inside the epoch
        agg.flush()
        return "completed"

    def _optimizer_step(self, step_loss: float) -> float:
        """optimizer.step (with cruise control's LR damping, if on), scheduler.step on the undamped LR,
        then the EMA update; returns the LR factor this step used."""
        p = self.parts
        assert p is not None
        scale = 1.0
        if self._cruise is None:
            p.optimizer.step()
        else:
            scale = self._cruise.update(step_loss, self.global_step + 1)
            with self._cruise.applied(p.optimizer):
                p.optimizer.step()
        p.scheduler.step()
        if self._ema is not None:
            self._ema.update(self.global_step + 1)
        return scale

    def _micro_step(self, batch: dict[str, Any], window_size: int, *, accumulating: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns the detached loss without reading it
        (no host sync here: the step boundary reads the whole window at once)."""
        p = self.parts
        assert p is not None
        c = self.config
        dev = p.device
        # Targets and noise stay fp32 (datasets store bf16); only the model inputs take the compute dtype.
        x0 = batch["target_latents"].to(dev, non_blocking=True).float()
        ctx = batch["context_latents"].to(dev, non_blocking=True)
        enc = batch["encoder_hidden_states"].to(dev, non_blocking=True)
        enc_mask = batch["encoder_attention_mask"].to(dev, non_blocking=True)
        frame_mask = batch["frame_mask"].to(dev, non_blocking=True)
        share = (0, 1)
        if self._group is not None:
            # Every rank pads to its global batch's lengths and draws the global batch's random numbers,
            # keeping its own rows: exactly what one process with the whole batch computes for them.
            share = (self._group.rank, self._group.world)
            frames, tokens = dist.max_lengths(self._group, x0.shape[1], enc.shape[1])
            x0, ctx, frame_mask = (_pad_dim1(x, frames) for x in (x0, ctx, frame_mask))
            enc, enc_mask = (_pad_dim1(x, tokens) for x in (enc, enc_mask))
        gen = p.generator
        enc, _ = recipe.apply_cfg_dropout(enc, p.null_condition_emb, c.cfg_ratio, generator=gen, share=share)
        mu, sigma = timestep_mu_sigma(c)
        t = recipe.sample_timesteps(x0.shape[0], mode=c.timestep_mode, mu=mu, sigma=sigma, device=dev, generator=gen, share=share)
        drawn = (x0.shape[0] * share[1], *x0.shape[1:])
        noise = recipe.share_rows(torch.randn(drawn, generator=gen, device=gen.device, dtype=torch.float32), share).to(dev)
        x_t = recipe.noisy_input(x0, noise, t).to(p.compute_input_dtype)
        if c.gradient_checkpointing:
            # The input-grad fix: with reentrant checkpointing no decoder input needs grad and
            # backward fails; non-reentrant does not need it, and it costs nothing.
            x_t.requires_grad_(True)
        p.tracker.add(t)
        self._recent_t.append(t.detach())  # read back only when a histogram is written
        with p.fabric.no_backward_sync(p.module, enabled=accumulating and p.distributed):
            out = p.module(
                hidden_states=x_t,
                timestep=t.to(p.compute_input_dtype),
                timestep_r=t.to(p.compute_input_dtype),
                attention_mask=frame_mask.to(p.compute_input_dtype),
                encoder_hidden_states=enc.to(p.compute_input_dtype),
                encoder_attention_mask=enc_mask,
                context_latents=ctx.to(p.compute_input_dtype),
            )
            pred = out[0]
            loss, _ = recipe.flow_matching_loss(
                pred, noise, x0, frame_mask, t=t, loss_weighting=c.loss_weighting, snr_gamma=c.snr_gamma
            )
            p.fabric.backward(loss / window_size)
        return loss.detach()

    # ------------------------------------------------------------------ between steps
    def _between_steps(self, agg: StepAggregator) -> protocol.RunStatus | None:
        """Apply commands and scheduled saves at an optimizer-step boundary."""
        c = self.config
        # A skipped (NaN/Inf) window ends at the same step as the one before: nothing new to save or log.
        advanced, self._boundary_step = self.global_step != self._boundary_step, self.global_step
        for job in self.inbox.poll() if self._group is None else ():  # (several processes: polled in _sync_step)
            self.bus.log("warning", f"ignored {type(job).__name__}: a run is already active")
        if self.inbox.state.paused:
            agg.flush()
            self.bus.emit(protocol.RunPaused(step=self.global_step))
            self.set_phase("paused")
            if self._group is None:
                self.inbox.wait_while_paused()
            else:
                dist.wait_while_paused(self._group, self.inbox)
            if not self.inbox.state.stop_requested:
                self.bus.emit(protocol.RunResumed(step=self.global_step))
                self.set_phase("training")
        if self.inbox.state.stop_requested:
            agg.flush()
            self.save_checkpoint("stop")
            return "stopped"
        if self.inbox.take_save_request():
            self.save_checkpoint("requested")
        if advanced and c.save_every_n_steps and self.global_step and self.global_step % c.save_every_n_steps == 0:
            self.save_checkpoint("periodic")
        elif advanced and self._space is not None and self._space.retry_due() and not self._sharded:  # fsdp: at the next save
            self.save_checkpoint(
                "requested" if self._space.owed == "requested" else "periodic"
            )  # refused by a full disk, fits now
        if advanced and self._heavy_due():
            self._log_heavy()
        if advanced and self._sampler is not None and self._sampler.due(self.global_step):
            self._sample_round()
        sampled = advanced and bool(c.sample_every) and self.global_step % c.sample_every == 0
        if sampled and self._group is not None:
            dist.sync_step(self._group, self.inbox, step_time_s=-1.0, memory_mb=-1.0)  # a stop sent while rank 0 sampled
        if sampled and self.inbox.state.stop_requested:  # a stop that came in while sampling: save now
            agg.flush()
            self.save_checkpoint("stop")
            return "stopped"
        return None

    def _sync_step(self, loss: torch.Tensor, step_time_s: float, agg: StepAggregator) -> float:
        """Several processes, at a step boundary: rank 0 reads the UI's commands, then one collective
        gives every rank the same commands and the mean loss, and rank 0 every rank's figures."""
        assert self._group is not None
        for job in self.inbox.poll():
            self.bus.log("warning", f"ignored {type(job).__name__}: a run is already active")
        p = self.parts
        assert p is not None
        figures = dist.sync_step(
            self._group, self.inbox, step_time_s=step_time_s, memory_mb=dist.memory_mb(p.device), loss=float(loss.item())
        )
        agg.ranks = (figures.step_time_s, figures.memory_mb)
        return figures.mean_loss

    def _sample_round(self) -> None:
        """Render the samples of this step (phase "sampling i/n"); stop requests end the round early."""
        p = self.parts
        assert p is not None and self._sampler is not None
        previous = self.phase

        def should_stop() -> bool:
            for job in self.inbox.poll():
                self.bus.log("warning", f"ignored {type(job).__name__}: a run is already active")
            return self.inbox.state.stop_requested

        self._sampler.render_round(
            self.global_step,
            p.run_dir,
            emit=self.bus.emit,
            set_phase=lambda detail: self.set_phase("sampling", detail),
            tensorboard=self._tb,
            should_stop=should_stop,
        )
        self.set_phase(previous)

    def _skip_window(self, agg: StepAggregator, bad_windows: int, what: str, fix: str) -> None:
        """A non-finite ``what`` poisoned this window: drop its gradients, report the skipped step (the
        UI and ``sidestep runs`` count it), and halt after MAX_BAD_WINDOWS in a row."""
        p = self.parts
        assert p is not None
        p.optimizer.zero_grad(set_to_none=True)
        agg.add(
            step=self.global_step,
            epoch=self.epoch_number(),
            loss=math.nan,
            lr=p.current_lr(),
            grad_norm=math.nan,
            samples=0,
            skipped=True,
        )
        self.bus.log("warning", f"step {self.global_step + 1}: {what} was NaN/Inf; the update was skipped")
        if bad_windows >= MAX_BAD_WINDOWS:
            raise TrainingHalted(
                f"the {what} was NaN/Inf for {bad_windows} optimizer steps in a row at step {self.global_step}; {fix}"
            )

    def _end_epoch(self, mean_loss: float, duration: float) -> None:
        c = self.config
        self.epoch += 1
        self.batches_done = 0
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        self.bus.emit(protocol.EpochCompleted(epoch=self.epoch, step=self.global_step, mean_loss=mean_loss, duration_s=duration))
        if self._tb is not None and math.isfinite(mean_loss):
            self._tb.add_scalar("train/epoch_loss", mean_loss, self.epoch)
        if math.isfinite(mean_loss):
            self.epoch_losses.append(mean_loss)
        if self.epoch_losses:
            window = self.epoch_losses[-BEST_WINDOW:]
            smoothed = sum(window) / len(window)
            if smoothed < self.best_loss - BEST_MIN_DELTA:
                self.best_loss = smoothed
                self.epochs_since_best = 0
                if c.save_best and self.epoch >= c.save_best_after:
                    self.save_checkpoint("best", loss=smoothed)
            else:
                self.epochs_since_best += 1
        if self.epoch % c.save_every == 0 and self.epoch < c.epochs:
            self.save_checkpoint("periodic", name=layout.epoch_checkpoint_name(self.epoch))

    # ------------------------------------------------------------------ saving
    def _training_state(self) -> dict[str, Any]:
        p = self.parts
        assert p is not None
        return {
            "schema_version": ckpt.STATE_SCHEMA_VERSION,
            "world_size": self.world,
            "adapter_type": self.config.adapter_type,
            # fsdp: the full adapter and optimizer state by parameter name (gathered), re-sharded on resume
            "sharded": self._gathered is not None,
            "adapter": p.adapter.state_dict() if self._gathered is None else self._gathered[0],
            "optimizer": p.optimizer.state_dict() if self._gathered is None else self._gathered[1],
            "scheduler": p.scheduler.state_dict(),
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_n],
            "rng": ckpt.capture_rng(p.device),
            "generator": p.generator.get_state(),
            "data": p.data_state_dict(),
            "tracker": p.tracker.state_dict(),
            "best": {
                "best_loss": self.best_loss,
                "epoch_losses": list(self.epoch_losses),
                "epochs_since_best": self.epochs_since_best,
            },
            "config_meta": {k: getattr(self.config, k) for k in RESUME_MUST_MATCH},
            "cruise": self._cruise.state_dict() if self._cruise is not None else None,
            "ema": self._ema.state_dict() if self._ema is not None else None,
        }

    def save_checkpoint(self, kind: protocol.CheckpointKind, *, name: str | None = None, loss: float | None = None) -> str:
        """Save the adapter as ``kind``: "best" and "final" are the run's adapter-only folders; every
        other kind (periodic, requested, stop) is a resumable checkpoint under checkpoints/ (``name``,
        default step_<N>). The UI sees the "saving" phase for as long as it takes.

        A save the disk cannot take (full, or any write error) does not end the run: see
        ``diskspace``. A periodic or requested one is owed and "" is returned; the run's last save
        (final, stop) waits for space and raises ``diskspace.SaveFailed`` if none comes."""
        p = self.parts
        assert p is not None
        resumable = kind not in ("best", "final")
        self._gathered = None
        if self._sharded:  # fsdp: every rank gathers, rank 0 gets the full state
            self._gathered = dist.gather_adapter(p.adapter.module, p.optimizer, with_optimizer=resumable)
        if not self.is_zero:
            return ""  # rank 0 writes every checkpoint (the adapter and the replicated state are the same on all)
        if resumable:
            target = layout.checkpoint_dir(p.run_dir, name or layout.step_checkpoint_name(self.global_step))
        else:
            target = layout.best_dir(p.run_dir) if kind == "best" else layout.final_dir(p.run_dir)
        loss = self.last_loss if loss is None else loss
        previous = self.phase
        self.set_phase("saving", kind)
        comfyui_name = f"{os.path.basename(p.run_dir.rstrip(os.sep))}_comfyui.safetensors"  # <run-name>_comfyui
        space = self._space
        waited_since: float | None = None
        while True:
            if space is not None:
                space.before(resumable)
            try:
                ckpt.write_checkpoint_dir(
                    target,
                    adapter=self._writer(),
                    metadata=p.adapter_metadata(self.global_step),
                    config_json=cfgmod.to_json(self.config),
                    info={"step": self.global_step, "epoch": self.epoch_number(), "kind": kind, "loss": loss},
                    training_state=self._training_state() if resumable else None,
                    comfyui_name=comfyui_name,
                    warn=lambda message: self.bus.log("warning", message),
                )
                break
            except Exception as exc:
                if space is None or not diskspace.is_write_failure(exc):
                    raise
                problem = space.describe_failure(exc, kind, target, resumable)
                if kind not in ("final", "stop"):
                    space.owe("requested" if kind == "requested" else "periodic")
                    more = "" if kind == "best" else "; it is tried again when space frees up, at the next save point and at stop"
                    self.bus.log("warning", f"{problem}; training goes on{more}")
                    self.set_phase(previous)
                    return ""
                now = time.monotonic()
                if waited_since is None:
                    waited_since = now
                    self.bus.log(
                        "warning",
                        f"{problem}; this is the run's last save: free space in {p.run_dir}"
                        f" (retrying every {diskspace.LAST_SAVE_POLL_S:.0f} s for {diskspace.LAST_SAVE_WAIT_S / 60:.0f} min)",
                    )
                elif now - waited_since >= diskspace.LAST_SAVE_WAIT_S:
                    kept = layout.newest_checkpoint(p.run_dir)
                    raise diskspace.SaveFailed(
                        f"{problem}; gave up after {diskspace.LAST_SAVE_WAIT_S / 60:.0f} min;"
                        + (f" the last saved checkpoint is {kept}" if kept else " no checkpoint of this run was saved")
                    ) from exc
                self.set_phase("saving", f"{kind}: disk full, waiting for space")
                time.sleep(diskspace.LAST_SAVE_POLL_S)
        if space is not None:
            space.saved(target, resumable)
        comfyui = os.path.join(target, comfyui_name)
        self.bus.emit(
            protocol.CheckpointSaved(
                step=self.global_step,
                epoch=self.epoch_number(),
                path=target,
                kind=kind,
                loss=loss,
                comfyui_path=comfyui if os.path.isfile(comfyui) else "",
            )
        )
        if self._hook is not None:
            self._hook.fire(target, self.global_step)
        if kind == "periodic" and self.config.keep_checkpoints:
            self._prune_checkpoints()
        self.set_phase(previous)
        return target

    def _writer(self) -> Any:
        """What writes the adapter files: the adapter, its EMA stand-in, or (fsdp) the gathered tensors."""
        p = self.parts
        assert p is not None
        if self._gathered is not None:
            return dist.GatheredAdapter(p.adapter, self._gathered[0])
        return p.adapter if self._ema is None else ema.EmaAdapterWriter(p.adapter, self._ema)

    def _watch_space(self) -> diskspace.SpaceWatch:
        """Free-space watch for this run, with first size guesses from the adapter's tensors: the adapter
        file and its ComfyUI copy; resumable adds the state's adapter copy and two AdamW moments."""
        p = self.parts
        assert p is not None
        adapter = sum(t.numel() * t.element_size() for t in p.adapter.state_dict().values())
        return diskspace.SpaceWatch(
            p.run_dir, lambda message: self.bus.log("warning", message), {True: 5 * adapter, False: 2 * adapter}
        )

    def _prune_checkpoints(self) -> None:
        import shutil

        p = self.parts
        assert p is not None
        periodic = [
            (s, path)
            for s, path in layout.list_checkpoints(p.run_dir)
            if (layout.read_checkpoint_meta(path) or {}).get("kind") == "periodic"
        ]
        for _, path in periodic[: max(len(periodic) - self.config.keep_checkpoints, 0)]:
            shutil.rmtree(path, ignore_errors=True)

    def _finish(self, status: protocol.RunStatus) -> Any:
        p = self.parts
        assert p is not None
        if self.global_step == 0:
            raise TrainingHalted(
                "no optimizer step ran (the dataset yielded no batches or every step was skipped); check the dataset and max steps"
            )
        adapter_path = self.save_checkpoint("final") if status == "completed" else (layout.newest_checkpoint(p.run_dir) or "")
        self.phase = "finished"
        return self.bus.emit(
            protocol.RunFinished(
                status=status,
                steps=self.global_step,
                epochs=self.epoch,
                final_loss=self.last_loss,
                best_loss=self.best_loss if math.isfinite(self.best_loss) else self.last_loss,
                adapter_path=adapter_path,
                wall_s=time.time() - self.started,
            )
        )

    # ------------------------------------------------------------------ resume
    def _load_resume(self, run_dir: str) -> tuple[str, dict[str, Any]]:
        """Find, load and check the checkpoint to resume from; raises before anything is written."""
        c = self.config
        assert c.resume_from is not None
        source, state = self._pick_resume(run_dir) if c.resume_from == "auto" else ("", None)
        if state is None:
            source = ckpt.find_resume_dir(c.resume_from, run_dir)
            state = ckpt.load_training_state(source)
        where = layout.trainer_state_path(source)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world:
            raise ckpt.CheckpointError(
                f"{where}: trained by {saved_world} process(es), this run has {self.world}; resume with --devices and "
                f"--num-nodes giving {saved_world} (the data order and batch depend on it)"
            )
        if state["adapter_type"] != c.adapter_type:
            raise ckpt.CheckpointError(
                f"{where}: trained a {state['adapter_type']} adapter but this run asks for {c.adapter_type}; match --adapter-type"
            )
        if c.strict_resume:
            saved = {
                k: state["config_meta"].get(k, cfgmod.FIELD_BY_NAME[k].default) for k in RESUME_MUST_MATCH
            }  # newer keys: default
            changed = [f"{k} {saved[k]!r} -> {getattr(c, k)!r}" for k in RESUME_MUST_MATCH if saved[k] != getattr(c, k)]
            if changed:
                raise ckpt.CheckpointError(
                    f"{where}: settings differ from the checkpoint ({'; '.join(changed)}); restore them or pass --no-strict-resume"
                )
        return source, state

    def _pick_resume(self, run_dir: str) -> tuple[str, dict[str, Any] | None]:
        """``--resume-from auto``: the newest checkpoint whose training state loads. One that does not is
        skipped with a note saying which and why (emitted once the run starts); a checkpoint.json that
        cannot be read is noted too (its step then comes from training_state.pt)."""
        self._resume_notes = []
        skipped: list[str] = []
        for _step, path in reversed(layout.list_checkpoints(run_dir)):
            try:
                state = ckpt.load_training_state(path)
            except ckpt.CheckpointError as exc:
                skipped.append(str(exc))
                self._resume_notes.append(f"--resume-from auto skipped {path}: {exc}")
                continue
            if layout.read_checkpoint_meta(path) is None:
                self._resume_notes.append(
                    f"--resume-from auto: {layout.checkpoint_meta_path(path)} is missing or not valid JSON; "
                    f"resuming from {path} with the step recorded in its {layout.TRAINER_STATE_FILE}"
                )
            elif skipped:
                self._resume_notes.append(f"--resume-from auto: resuming from {path}, the newest checkpoint that loads")
            return path, state
        if skipped:
            raise ckpt.CheckpointError(f"--resume-from auto: no checkpoint loads ({skipped[0]}); start without --resume-from")
        return "", None

    def _restore_if_resuming(self) -> None:
        c = self.config
        if c.resume_from is None:
            return
        p = self.parts
        assert p is not None
        source, state = self._resume or ("", {})
        if layout.newest_checkpoint(p.run_dir) != self._resume_newest:  # a newer checkpoint appeared meanwhile
            source, state = self._load_resume(p.run_dir)
        self._resume = None
        where = layout.trainer_state_path(source)
        try:
            if bool(state.get("sharded")) != self._sharded:
                raise ValueError(
                    f"saved by a {'sharded (fsdp)' if state.get('sharded') else 'ddp or one-process'} run; "
                    "resume with the --strategy that saved it"
                )
            if state.get("sharded"):
                matched = dist.load_sharded(p.adapter.module, p.optimizer, state["adapter"], state["optimizer"])
            else:
                matched = p.adapter.load_state_dict(state["adapter"])
                p.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            line = f"{where}: {exc}"
            if isinstance(exc, AdapterMismatchError):  # with LoRA, most likely a fisher map that changed: say so
                ranks = (v.shape[0] for k, v in state["adapter"].items() if "lora_A" in k and v.dim() == 2)
                line = resume_mismatch(
                    line, dataset_dir=c.dataset_dir, adapter_type=c.adapter_type, ignore=c.ignore_fisher_map, saved_ranks=ranks
                )
            raise ckpt.CheckpointError(line) from None
        p.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.epoch_loss_sum, self.epoch_loss_n = float(state["epoch_loss"][0]), int(state["epoch_loss"][1])
        for warning in ckpt.restore_rng(state["rng"], p.device):
            self.bus.log("warning", warning)
        p.generator.set_state(state["generator"])
        p.load_data_state_dict(state["data"])
        p.tracker.load_state_dict(state["tracker"])
        best = state["best"]
        self.best_loss = float(best["best_loss"])
        self.epoch_losses = [float(x) for x in best["epoch_losses"]]
        self.epochs_since_best = int(best["epochs_since_best"])
        self._restore_options(state, where)
        self._boundary_step = self.global_step
        self.bus.log(
            "info",
            f"resumed from {source}: step {self.global_step}, epoch {self.epoch_number()}, {matched} adapter tensors restored",
        )

    # ------------------------------------------------------------------ cruise control, EMA, checkpoint hook
    def _attach_options(self) -> None:
        p = self.parts
        assert p is not None
        from engine.train.optim import warmup_steps

        c = self.config
        self._cruise = cruise.from_config(c, lr_warmup=warmup_steps(c, p.total_steps))
        if self._cruise is not None:
            self.bus.log(
                "info",
                f"cruise control: target loss {c.target_loss:g}, floor {c.target_loss_floor:g}, "
                f"smoothing {c.target_loss_smoothing:g}, engages after step {self._cruise.engage_after}",
            )
        self._ema = ema.from_config(c, p.adapter.module)
        if self._ema is not None:
            where = "CPU" if c.ema_cpu_only else str(p.device)
            self.bus.log(
                "info",
                f"EMA: decay {c.ema_decay:g} every {c.ema_update_interval} step(s), fp32 shadow on {where}; "
                f"saved adapters are the EMA weights, raw ones in {ema.RAW_DIR}/",
            )
        self._hook = hooks.from_config(c, run_dir=p.run_dir, bus=self.bus)

    def _restore_options(self, state: dict[str, Any], where: str) -> None:
        """Cruise-control and EMA state from a checkpoint (absent in one saved with them off)."""
        if self._cruise is not None and state.get("cruise"):
            self._cruise.load_state_dict(state["cruise"])
        if self._ema is not None:
            if state.get("ema"):
                self._ema.load_state_dict(state["ema"], source=where)
            else:
                self._ema.reset()
                self.bus.log("warning", f"{where} has no EMA state; the EMA starts from the resumed weights")

    # ------------------------------------------------------------------ logging
    def _open_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        p = self.parts
        assert p is not None
        log_dir = self.config.log_dir or layout.tensorboard_dir(p.run_dir)
        self.bus.log("info", f"TensorBoard logs: {log_dir}")
        # flush_secs: the default of 120 s makes a live TensorBoard look frozen.
        writer = SummaryWriter(log_dir=log_dir, flush_secs=10, purge_step=self.global_step or None)
        self._tb = diskspace.SafeWriter(writer, lambda message: self.bus.log("warning", message))

    def _log_tensorboard(self, loss: float, lr: float, grad_norm: float, data_share: float | None = None) -> None:
        if self._tb is not None and self.global_step % self.config.log_every == 0:
            self._tb.add_scalar("train/loss", loss, self.global_step)
            self._tb.add_scalar("train/lr", lr, self.global_step)
            self._tb.add_scalar("train/grad_norm", grad_norm, self.global_step)
            if data_share is not None:
                self._tb.add_scalar("perf/data_wait_share", data_share, self.global_step)
        if self._tb is not None and self._cruise is not None and self._cruise.ema is not None:
            # every step while cruise control is on (Side-Step's tags)
            self._tb.add_scalar("target_loss_scale", self._cruise.scale, self.global_step)
            self._tb.add_scalar("target_loss_ema", self._cruise.ema, self.global_step)

    def _heavy_due(self) -> bool:
        return self.global_step > 0 and self.global_step % self.config.log_heavy_every == 0

    def _log_heavy(self) -> None:
        p = self.parts
        assert p is not None
        snap: dict[str, Any] = p.tracker.snapshot()  # primitive tuples, one per histogram field
        self.bus.emit(protocol.TimestepHistogram(step=self.global_step, **snap))
        if self._tb is not None and self._recent_t:
            import numpy as np

            values = torch.cat(self._recent_t).float().cpu().numpy()
            self._tb.add_histogram("train/timestep_distribution", values, self.global_step, bins=np.asarray(snap["bin_edges"]))
        self._recent_t = []


def _pad_dim1(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 to ``length``, as ``collate`` pads a batch to its longest item."""
    if x.shape[1] >= length:
        return x
    return torch.cat([x, x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))], dim=1)


RESUME_MUST_MATCH = (
    "adapter_type",
    "optimizer_type",
    "scheduler_type",
    "rank",
    "alpha",
    "lokr_linear_dim",
    "lokr_factor",
    "lokr_targets",
    "loha_linear_dim",
    "oft_dim",
    "attention_type",
    "target_modules",
    "target_mlp",
    "selected_modules",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out of memory, and the CPU allocator's ``alloc_cpu.cpp ... can't allocate memory`` RuntimeError."""
    text = str(exc).lower()
    return (
        type(exc).__name__ == "OutOfMemoryError"
        or "out of memory" in text
        or isinstance(exc, MemoryError)
        or ("cpuallocator" in text and ("can't allocate memory" in text or "not enough memory" in text))
    )


def failure_event(exc: BaseException, *, step: int = 0) -> protocol.RunFailed:
    """Turn any exception into a ``RunFailed`` with traceback text, an OOM flag and a hint."""
    import traceback

    oom = is_out_of_memory(exc)
    user_error = isinstance(exc, (ValueError, TrainingHalted, FileNotFoundError, diskspace.SaveFailed))
    hint = ""
    if oom:
        hint = "out of memory: lower --batch-size or --chunk-duration, keep --gradient-checkpointing on, or lower --rank"
    elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
        hint = "the engine was interrupted"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return protocol.RunFailed(
        error_type=type(exc).__name__,
        message=message if user_error else f"{type(exc).__name__}: {message}",
        traceback="".join(traceback.format_exception(exc)),
        hint=hint,
        oom=oom,
        step=step,
    )


def report_job_failure(bus: EventBus, exc: BaseException) -> Any:
    """For a job's ``except BaseException``: report ``exc`` as ``RunFailed`` (the engine stays up for the
    next command); an interrupt or exit is then raised again so the process still ends."""
    event = bus.emit(failure_event(exc))
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    return event


def run_training(config_json: str, bus: EventBus, inbox: CommandInbox, *, run_id: str, monitor: Any = None) -> Any:
    """Parse, then train. A config error is a RunFailed (with every problem in the message)."""
    try:
        config = cfgmod.from_json(config_json)
    except (cfgmod.ConfigError, ValueError) as exc:
        return bus.emit(failure_event(exc))
    bus.run_id = run_id
    trainer = Trainer(config, bus, inbox, run_id=run_id, monitor=monitor)
    if monitor is not None:
        monitor.phase = lambda: trainer.phase
        monitor.last_step = lambda: trainer.global_step
    return trainer.fit()
