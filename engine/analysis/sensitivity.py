"""Gradient-sensitivity ranking of the decoder's modules over the user's own tensors (``sidestep
estimate``; Side-Step's selective training with ``--auto-estimate``; ACE_STEP.md §10.1).

The ranking Side-Step's estimate ended up with: every q/k/v/o projection of self- and cross-attention
and every gate/up/down projection of the MLP, scored by the per-element mean squared gradient of the
flow-matching loss with respect to its weight (an empirical diagonal Fisher), over ``estimate_batches``
batches with balanced (logit-normal, the model's own mu/sigma) timesteps and no CFG dropout, with
gradient checkpointing on and the decoder in train mode (transformers skips checkpointing in eval).
``granularity`` ``layer`` scores each decoder layer as a whole (its modules' squared gradients summed
over their elements).

Memory: only the ranked weights take gradients, and each weight's gradient is folded into its running
sum the moment backward has produced it (a post-accumulate hook) and then dropped, so at most one
weight gradient is alive at a time.

The training loop's parts are used as they are: the model loader, the dataset and its loader, the
variant defaults and the recipe's timesteps, noising and masked velocity loss.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import config as cfgmod
from engine import discovery, layout, moduleconfig
from engine.train import recipe
from engine.train.build import timestep_mu_sigma

Progress = Callable[[int, int], None]  # (batches done, batches in all)
Ranking = list[tuple[str, float]]  # (layers.N[.kind.proj], score), best first


class EstimateCancelled(RuntimeError):
    """The estimate was stopped before it finished; nothing was written."""


def target_modules(decoder: nn.Module) -> dict[str, nn.Linear]:
    """The decoder's rankable Linear layers by name (``layers.N.self_attn.q_proj`` ...)."""
    return {
        name: module
        for name, module in decoder.named_modules()
        if isinstance(module, nn.Linear) and name.count(".") == 3 and moduleconfig.canonical(name) == name
    }


def estimate(
    config: cfgmod.TrainConfig,
    *,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> Ranking:
    """Every module (or layer, by ``config.granularity``) with its sensitivity, highest first. Uses the
    config's model, device, precision, dataset, batch size, crop, seed and ``estimate_batches``.
    Raises ``EstimateCancelled`` when ``cancel()`` turns true, ``ValueError`` (one line) for bad input."""
    from engine.data.dataset import DatasetError, TensorDataset
    from engine.data.loader import build_loader
    from engine.data.sampler import EpochBatchSampler
    from engine.models.loader import enable_gradient_checkpointing, load_decoder, read_model_config, resolve_device, resolve_dtype

    say = log or (lambda _m: None)
    if config.granularity not in moduleconfig.GRANULARITIES:
        raise ValueError(f"granularity {config.granularity!r} is not one of {', '.join(moduleconfig.GRANULARITIES)}")
    model_dir = discovery.resolve_model_dir(config.checkpoint_dir, config.model_variant)
    model_config = read_model_config(Path(model_dir))
    config = cfgmod.resolve_variant_defaults(config, model_config)
    dataset = TensorDataset(config.dataset_dir)
    hidden = model_config.get("hidden_size")
    if isinstance(hidden, int) and dataset.hidden_size != hidden:
        raise DatasetError(
            f"{dataset.root}: tensors were made for hidden size {dataset.hidden_size}, the model {config.model_variant} has "
            f"{hidden}: preprocess again with this model"
        )
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    loaded = load_decoder(model_dir, device=device, dtype=dtype, attention_backend=config.attention_backend, log=say)
    decoder = loaded.decoder
    targets = target_modules(decoder)
    if not targets:
        raise ValueError(f"{model_dir}: the decoder has no q/k/v/o or gate/up/down projections to rank")
    decoder.requires_grad_(False)
    sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in targets}
    handles = []
    for name, module in targets.items():
        module.weight.requires_grad_(True)

        def fold(param: torch.Tensor, _name: str = name) -> None:
            assert param.grad is not None
            sums[_name] += param.grad.detach().float().pow(2).sum()
            param.grad = None

        handles.append(module.weight.register_post_accumulate_grad_hook(fold))
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(decoder, config.gradient_checkpointing_ratio)
    decoder.train()

    total = config.estimate_batches
    say(f"estimate: {len(targets)} modules, {total} batches of {config.batch_size} from {len(dataset)} samples on {device}")
    loader = build_loader(dataset, config, device_type=device.type)
    sampler = loader.batch_sampler
    assert isinstance(sampler, EpochBatchSampler)  # build_loader's own
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    mu, sigma = timestep_mu_sigma(config)
    done, epoch = 0, 0
    try:
        while done < total:
            sampler.set_epoch(epoch, 0)
            for batch in loader:
                if cancel is not None and cancel():
                    raise EstimateCancelled(f"the estimate was stopped after {done} of {total} batches; nothing was written")
                _backward(decoder, batch, device=device, dtype=dtype, generator=generator, mu=mu, sigma=sigma)
                done += 1
                if progress is not None:
                    progress(done, total)
                if done >= total:
                    break
            epoch += 1
    finally:
        for handle in handles:
            handle.remove()
    numel = {name: module.weight.numel() for name, module in targets.items()}
    scores: dict[str, float]
    if config.granularity == "layer":
        layers: dict[str, list[str]] = {}
        for name in targets:
            layers.setdefault(".".join(name.split(".")[:2]), []).append(name)
        scores = {
            layer: float(sum(sums[n].item() for n in names)) / (sum(numel[n] for n in names) * done)
            for layer, names in layers.items()
        }
    else:
        scores = {name: float(sums[name].item()) / (numel[name] * done) for name in targets}
    del decoder, loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _backward(
    decoder: nn.Module,
    batch: dict[str, Any],
    *,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator,
    mu: float,
    sigma: float,
) -> None:
    """One training-step forward (no CFG dropout, continuous timesteps) and its backward."""
    x0 = batch["target_latents"].to(device).float()
    frame_mask = batch["frame_mask"].to(device)
    t = recipe.sample_timesteps(x0.shape[0], mode="continuous", mu=mu, sigma=sigma, device=device, generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device)
    x_t = recipe.noisy_input(x0, noise, t).to(dtype).requires_grad_(True)  # non-reentrant checkpointing is fine with it
    out = decoder(
        hidden_states=x_t,
        timestep=t.to(dtype),
        timestep_r=t.to(dtype),
        attention_mask=frame_mask.to(dtype),
        encoder_hidden_states=batch["encoder_hidden_states"].to(device, dtype),
        encoder_attention_mask=batch["encoder_attention_mask"].to(device),
        context_latents=batch["context_latents"].to(device, dtype),
    )
    loss, _ = recipe.flow_matching_loss(out[0], noise, x0, frame_mask, t=t)
    loss.backward()


def top(ranking: Ranking, k: int) -> Ranking:
    return ranking[: max(0, k)]


# --------------------------------------------------------------------------- --auto-estimate


def _selection_of_run(config: cfgmod.TrainConfig) -> tuple[str, ...]:
    """The modules a resumed auto-estimate run selected when it started (its config.json), else ()."""
    path = layout.config_path(os.path.abspath(os.path.expanduser(config.output_dir)))
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return ()
    names = saved.get("selected_modules") if isinstance(saved, dict) and saved.get("auto_estimate") else None
    return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


def with_estimate(
    config: cfgmod.TrainConfig,
    *,
    log: Callable[[str], None],
    cancel: Callable[[], bool] | None = None,
) -> cfgmod.TrainConfig:
    """``config`` with ``selected_modules`` = the estimate's top ``top_k`` (expanded to modules for
    ``layer`` granularity). A resume keeps the selection its run started with."""
    if not config.auto_estimate or config.selected_modules:
        return config
    if config.resume_from is not None:
        kept = _selection_of_run(config)
        if kept:
            log(f"auto-estimate: resuming with the {len(kept)} modules this run selected when it started")
            return dataclasses.replace(config, selected_modules=kept)
    step = max(1, config.estimate_batches // 10)

    def progress(done: int, total: int) -> None:
        if done == total or done % step == 0:
            log(f"auto-estimate: batch {done}/{total}")

    ranking = estimate(config, progress=progress, cancel=cancel, log=log)
    chosen = top(ranking, config.top_k)
    log(
        f"auto-estimate: training the top {len(chosen)} {config.granularity}s by gradient sensitivity: "
        + ", ".join(f"{moduleconfig.display(n)} ({s:.3e})" for n, s in chosen)
    )
    return dataclasses.replace(config, selected_modules=moduleconfig.expand(n for n, _ in chosen))


def run_training(config_json: str, bus: Any, inbox: Any, *, run_id: str, monitor: Any = None) -> Any:
    """``engine.train.trainer.run_training`` after the ``--auto-estimate`` (when the config asks for
    one): the call every launcher makes (``sidestep train``, the engine process, the queue worker)."""
    from engine.train.trainer import failure_event
    from engine.train.trainer import run_training as train

    try:
        config = cfgmod.from_json(config_json)
    except ValueError:
        config = None  # the trainer reports it
    if config is not None and config.auto_estimate and not config.selected_modules:

        def stop_asked() -> bool:
            for job in inbox.poll():
                bus.log("warning", f"ignored {type(job).__name__}: a run is already active")
            return bool(inbox.state.stop_requested)

        # Between batches a stop (the UI's, or SIGINT/SIGTERM headless) can be honoured: no abrupt exit.
        interrupt_now, inbox.interrupt_now = inbox.interrupt_now, False
        try:
            config = with_estimate(config, log=lambda m: bus.log("info", m), cancel=stop_asked)
        except EstimateCancelled as exc:
            return stopped_before_training(config, bus, run_id=run_id, line=f"auto-estimate stopped: {exc}")
        except Exception as exc:  # reported like any run that cannot start
            return bus.emit(failure_event(exc))
        finally:
            inbox.interrupt_now = interrupt_now
        config_json = cfgmod.to_json(config)
    return train(config_json, bus, inbox, run_id=run_id, monitor=monitor)


def stopped_before_training(config: cfgmod.TrainConfig, bus: Any, *, run_id: str, line: str) -> Any:
    """A run stopped during its ``--auto-estimate``: ``RunFinished(stopped)`` with no adapter and no
    steps, after ``line`` (why). The run folder records it (config.json for a new run, events.jsonl), so
    ``sidestep runs`` lists it as stopped; a later start may reuse the folder (it trained nothing)."""
    import math
    import time

    from engine import fsutil, protocol
    from engine.channel.events import JsonlSink
    from engine.train import rundir

    started = time.time()
    bus.run_id = run_id
    held = jsonl = None
    try:
        held = rundir.claim(
            config.output_dir,
            resuming=config.resume_from is not None,
            overwrite=config.overwrite,
            run_id=run_id,
            keep_out=(("--dataset-dir", config.dataset_dir), ("--checkpoint-dir", config.checkpoint_dir)),
        )
    except (rundir.RunDirError, OSError) as exc:
        bus.log("warning", f"the stop is not recorded in a run folder: {exc}")
    try:
        if held is not None:
            if not os.path.isfile(layout.config_path(held.run_dir)):
                fsutil.write_text(layout.config_path(held.run_dir), cfgmod.to_json(config))
            jsonl = JsonlSink(layout.events_path(held.run_dir))
            bus.add(jsonl)
        bus.log("warning", line)
        return bus.emit(
            protocol.RunFinished(
                status="stopped",
                steps=0,
                epochs=0,
                final_loss=math.nan,
                best_loss=math.nan,
                adapter_path="",
                wall_s=time.time() - started,
            )
        )
    finally:
        if jsonl is not None:
            bus.remove(jsonl)
        if held is not None:
            held.release()


def run_estimate_job(config_json: str, output: str, bus: Any, inbox: Any, *, run_id: str, monitor: Any = None) -> Any:
    """``sidestep estimate`` in the engine process (the TUI's): ``EstimateProgress`` per batch, then
    ``EstimateDone`` (completed: the top-k written atomically to ``output``, the whole ranking in the
    event; stopped by ``StopRun``: nothing written) or ``RunFailed``. The UI never imports torch."""
    import time

    from engine import fsutil, protocol
    from engine.train.trainer import report_job_failure

    bus.run_id = run_id
    started = time.time()
    if monitor is not None:
        monitor.phase = lambda: "preparing_data"
    try:
        config = cfgmod.from_json(config_json)
        output = os.path.abspath(os.path.expanduser(output))
        if os.path.isdir(output) or not os.path.isdir(os.path.dirname(output)):
            what = "is a folder" if os.path.isdir(output) else "is in a folder that does not exist"
            raise ValueError(f"module config {output} {what}; choose a file name in an existing folder")
        bus.emit(protocol.PhaseChanged(phase="preparing_data", detail=f"estimating on {config.dataset_dir}"))

        def stop_asked() -> bool:
            for job in inbox.poll():
                bus.log("warning", f"ignored {type(job).__name__}: an estimate is running")
            return bool(inbox.state.stop_requested)

        def progress(done: int, total: int) -> None:
            bus.emit(protocol.EstimateProgress(done=done, total=total, elapsed_s=time.time() - started))

        try:
            ranking = estimate(config, progress=progress, cancel=stop_asked, log=lambda m: bus.log("info", m))
        except EstimateCancelled as exc:
            bus.log("info", str(exc))
            return bus.emit(protocol.EstimateDone(status="stopped", path="", wall_s=time.time() - started))
        chosen = top(ranking, config.top_k)
        fsutil.write_json(output, moduleconfig.to_json_list(chosen))
        return bus.emit(
            protocol.EstimateDone(
                status="completed",
                path=output,
                modules=tuple(name for name, _ in ranking),
                scores=tuple(score for _, score in ranking),
                top_k=len(chosen),
                granularity=config.granularity,
                wall_s=time.time() - started,
            )
        )
    except BaseException as exc:
        return report_job_failure(bus, exc)
