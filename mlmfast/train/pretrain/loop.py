"""The pre-training loop: optimiser steps of ``grad_accum`` micro-batches masked on the device,
a metrics line every ``log_every`` steps, held-out evaluations and checkpoints on schedule, a
clean stop on Ctrl-C/SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mlmfast.train.mlm import MLMStats
from mlmfast.train.pretrain.build import Progress, Run

FORMAT = 1  # of the checkpoint state


@dataclass
class LoopResult:
    last_train: dict[str, float] | None = None
    last_eval: dict[str, float] | None = None
    interrupted: str | None = None  # the signal that stopped the run
    started: float = field(default_factory=time.perf_counter)
    tokens_start: int = 0
    data_wait: float = 0.0  # seconds spent waiting for batches


@dataclass
class _Window:
    """Loss, tokens and time since the last metrics line."""

    stats: MLMStats = field(default_factory=MLMStats)
    started: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    tokens: int = 0


class _Batches:
    """The loader's batches in step order across epochs: the tail of an epoch that does not fill
    a step on every rank is skipped, so every rank moves to the next epoch at the same step."""

    def __init__(self, run: Run, progress: Progress):
        self.data = run.data
        self.progress = progress
        self._it = iter(self.data.loader)

    def next(self) -> dict[str, torch.Tensor]:
        try:
            batch = next(self._it)
        except StopIteration:
            batch = None
        consumed = self.data.stream.state_dict()["num_batches_consumed"]
        if batch is None or consumed > self.data.steps_per_epoch * self.data.micro_per_step:
            self.progress.epoch += 1
            self.data.loader.set_epoch(self.progress.epoch)
            self._it = iter(self.data.loader)
            batch = next(self._it)
        return batch


def train(run: Run, progress: Progress, logger) -> LoopResult:
    """Step until the end of the schedule, ``stop_at_step`` or a stop signal."""
    from tqdm.auto import tqdm

    from mlmfast.train.runtime import StopFlag

    cfg, dist = run.cfg, run.dist
    total = run.data.total_steps
    stop_at = min(total, cfg.stop_at_step or total)
    bar = tqdm(
        total=total,
        initial=progress.step,
        disable=not (cfg.progress and dist.is_main),
        desc="pretrain",
        unit="step",
        dynamic_ncols=True,
    )
    window, result = _Window(), LoopResult(tokens_start=progress.tokens_seen)
    batches = _Batches(run, progress)
    with StopFlag() as stop:
        while progress.step < stop_at:
            grad_norm = _step(run, progress, batches, window, result)
            bar.update(1)
            if progress.step % cfg.log_every == 0 or progress.step == stop_at:
                result.last_train = _log(run, progress, window, grad_norm, logger)
                bar.set_postfix(
                    loss=f"{result.last_train['loss']:.3f}",
                    tok_s=f"{result.last_train['tokens_per_s']:.0f}",
                    wait=f"{100 * result.last_train['data_wait_fraction']:.1f}%",
                )
                window = _Window()
            if cfg.eval_every and progress.step % cfg.eval_every == 0 and progress.step < stop_at:
                result.last_eval = evaluate(run, progress, logger)
            stop_now = dist.any(stop.requested)
            due = cfg.save_every and progress.step % cfg.save_every == 0
            if due and progress.step < stop_at and not stop_now:
                save_checkpoint(run, progress)
            if stop_now:
                result.interrupted = stop.signal or "signal on another rank"
                break
    bar.close()
    return result


def _step(run: Run, progress: Progress, batches: _Batches, window: _Window, result: LoopResult):
    """One optimiser step over ``grad_accum`` micro-batches; returns the gradient norm before
    clipping (None without clipping)."""
    cfg, dist, device = run.cfg, run.dist, run.device
    amp = run.amp_dtype
    for micro in range(cfg.grad_accum):
        t0 = time.perf_counter()
        batch = batches.next()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        wait = time.perf_counter() - t0
        window.data_wait += wait
        result.data_wait += wait
        masked = run.data.masker(batch, progress.epoch)
        # gradients are all-reduced once per step, on its last micro-batch
        last = micro == cfg.grad_accum - 1
        sync = (
            run.objective.no_sync() if dist.initialised and not last else contextlib.nullcontext()
        )
        autocast = torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)
        with sync, autocast:
            loss, count, correct = run.objective(
                masked.input_ids,
                batch["attention_mask"],
                masked.labels,
                masked.positions,
                batch.get("token_type_ids"),
            )
            (loss / cfg.grad_accum).backward()
        window.stats.add(loss.detach(), count, correct)
        n_tok = int(batch["attention_mask"].sum()) * dist.world_size
        window.tokens += n_tok
        progress.tokens_seen += n_tok
    grad_norm = None
    if cfg.max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    return grad_norm


def _log(run: Run, progress: Progress, window: _Window, grad_norm, logger) -> dict[str, float]:
    elapsed = time.perf_counter() - window.started
    stats = window.stats
    if run.dist.initialised:  # the loss of the global batch, not of rank 0's share
        t = torch.tensor(
            [stats.loss_sum, float(stats.tokens), float(stats.correct)],
            dtype=torch.float64,
            device=run.device,
        )
        torch.distributed.all_reduce(t)
        stats.loss_sum, stats.tokens, stats.correct = t[0].item(), int(t[1]), int(t[2])
    metrics = stats.summary()
    metrics.update(
        lr=run.scheduler.get_last_lr()[0],
        tokens=window.tokens,
        seconds=elapsed,
        tokens_per_s=window.tokens / max(elapsed, 1e-9),
        data_wait_fraction=window.data_wait / max(elapsed, 1e-9),
        epoch=progress.epoch,
    )
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    logger.log(progress.step, metrics)
    return metrics


def evaluate(run: Run, progress: Progress, logger) -> dict[str, float] | None:
    """The held-out MLM loss with a fixed mask (rank 0; the others wait), logged and printed."""
    from tqdm.auto import tqdm

    from mlmfast.train.mlm import evaluate_mlm

    cfg = run.cfg
    result = None
    if run.dist.is_main and cfg.eval_data:
        result = evaluate_mlm(
            run.model,
            cfg.eval_data,
            tokenizer=run.tokenizer,
            masking=cfg.masking(),
            batch_size=cfg.eval_batch_size,
            max_batches=cfg.eval_batches,
            device=run.device,
            autocast_dtype=run.amp_dtype,
        )
        logger.log(progress.step, result, prefix="eval")
        tqdm.write(
            f"pretrain: step {progress.step}/{run.data.total_steps}, held-out loss "
            f"{result['loss']:.3f}, accuracy {result['accuracy']:.3f}, perplexity "
            f"{result['perplexity']:.1f}"
        )
    run.dist.barrier()
    return result


def save_checkpoint(run: Run, progress: Progress) -> str | None:
    """A checkpoint of the run as it is (written by rank 0, with every rank's RNG states);
    returns its path on rank 0."""
    from mlmfast.train import checkpoint as ckpt

    dist, cfg = run.dist, run.cfg
    rngs: list[Any] = [None] * dist.world_size
    if dist.initialised:
        torch.distributed.all_gather_object(rngs, ckpt.rng_state())
    else:
        rngs = [ckpt.rng_state()]
    path = None
    if dist.is_main:
        path = ckpt.save_checkpoint(
            cfg.out,
            progress.step,
            model=run.model,
            tokenizer=run.tokenizer,
            keep_last=cfg.keep_last,
            state={
                "format": FORMAT,
                "step": progress.step,
                "epoch": progress.epoch,
                "tokens_seen": progress.tokens_seen,
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "loader": run.data.loader.state_dict(),
                "rng": rngs,
                "config": dataclasses.asdict(cfg),
            },
        )
    dist.barrier()
    return path
