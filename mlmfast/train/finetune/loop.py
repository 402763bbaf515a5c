"""The fine-tuning loop: seeded batches of the task (plus rehearsal's MLM term), a metrics line
every ``log_every`` steps, validation every ``eval_every`` steps and at the end of every epoch
with the best weights kept and early stopping, checkpoints on schedule, a clean stop on
Ctrl-C/SIGTERM."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from mlmfast.train.finetune import model as task_model
from mlmfast.train.finetune.data import EpochOrder
from mlmfast.train.finetune.evaluation import evaluate, model_inputs, task_loss
from mlmfast.train.finetune.training import Progress, Training, save_checkpoint
from mlmfast.train.mlm import MLMStats


@dataclass
class _Window:
    """Task loss, accuracy, rehearsal's MLM loss and time since the last metrics line."""

    loss: float = 0.0  # summed over examples
    examples: int = 0
    correct: int = 0
    labelled: int = 0  # labelled tokens (POS) or examples (classification)
    mlm: MLMStats = field(default_factory=MLMStats)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _StepResult:
    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    examples: int
    grad_norm: float | None


def train(training: Training, progress: Progress, logger) -> None:
    """Step until the end of the schedule, ``stop_at_step``, early stopping or a stop signal;
    ``progress`` says which."""
    from tqdm.auto import tqdm

    from mlmfast.train.runtime import StopFlag

    cfg = training.cfg
    stop_at = min(training.total_steps, cfg.stop_at_step or training.total_steps)
    bar = tqdm(
        total=training.total_steps,
        initial=progress.step,
        disable=not cfg.progress,
        desc=f"finetune {cfg.strategy}",
        unit="step",
        dynamic_ncols=True,
    )
    order, window = EpochOrder(cfg, training.inputs.data), _Window()
    training.model.train()
    with StopFlag() as stop:
        while progress.step < stop_at and not progress.stopped_early:
            result = _step(training, progress, order, window.mlm)
            bar.update(1)
            _count(window, result)
            if progress.step % cfg.log_every == 0 or progress.step == stop_at:
                metrics = _log(training, progress, window, result.grad_norm, logger)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                window = _Window()
            if _validation_due(training, progress):
                val = validate(training, progress, logger)
                bar.set_postfix(
                    loss=f"{result.loss.item():.3f}", **{f"val_{cfg.metric}": val[cfg.metric]}
                )
                patience = cfg.early_stopping_patience
                if patience and progress.best["bad_evals"] >= patience:
                    progress.stopped_early = True
                    break
            if stop.requested:
                progress.interrupted = stop.signal
                break
            if cfg.save_every and progress.step % cfg.save_every == 0 and progress.step < stop_at:
                save_checkpoint(training, progress)
    bar.close()


def _step(
    training: Training, progress: Progress, order: EpochOrder, mlm_stats: MLMStats
) -> _StepResult:
    """One optimiser step on the next batch of the epoch's order (rehearsal's MLM loss goes to
    ``mlm_stats``)."""
    cfg, data, device = training.cfg, training.inputs.data, training.device
    amp = training.inputs.amp
    if progress.batch_in_epoch >= training.steps_per_epoch:
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
    idx = order(progress.epoch)[progress.batch_in_epoch]
    batch = data.collate([data.train[int(i)] for i in idx])
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = training.model(**model_inputs(batch)).logits
        loss = task_loss(logits, batch["labels"])
        total = loss
        if training.rehearsal is not None:
            mlm_loss = _rehearsal_loss(training, progress, mlm_stats)
            total = loss + cfg.rehearsal_weight * mlm_loss
    total.backward()
    grad_norm = None
    if cfg.max_grad_norm is not None:
        trained = [p for p in training.optimised.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, cfg.max_grad_norm))
    training.optimizer.step()
    training.scheduler.step()
    training.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    progress.batch_in_epoch += 1
    return _StepResult(loss, logits, batch["labels"], len(idx), grad_norm)


def _rehearsal_loss(training: Training, progress: Progress, stats: MLMStats) -> torch.Tensor:
    """The MLM loss of the next batch of general shards, masked on the device."""
    rehearsal = training.rehearsal
    batch = rehearsal.next_batch(progress)
    batch = {k: v.to(training.device, non_blocking=True) for k, v in batch.items()}
    masked = rehearsal.masker(batch, progress.rehearsal_epoch)
    loss, count, correct = rehearsal.objective(
        masked.input_ids,
        batch["attention_mask"],
        masked.labels,
        masked.positions,
        batch.get("token_type_ids"),
    )
    stats.add(loss.detach(), count, correct)
    return loss


def _count(window: _Window, result: _StepResult) -> None:
    y = result.labels.reshape(-1)
    keep = y != -100
    logits = result.logits.detach()
    pred = logits.reshape(-1, logits.shape[-1]).argmax(-1)
    window.loss += result.loss.item() * result.examples
    window.examples += result.examples
    window.correct += int((pred[keep] == y[keep]).sum())
    window.labelled += int(keep.sum())


def _log(training: Training, progress: Progress, window: _Window, grad_norm, logger) -> dict:
    cfg = training.cfg
    elapsed = time.perf_counter() - window.started
    metrics = {
        "loss": window.loss / max(1, window.examples),
        "accuracy": window.correct / max(1, window.labelled),
        "lr": training.scheduler.get_last_lr()[0],
        "examples_per_s": window.examples / max(elapsed, 1e-9),
        "epoch": progress.epoch,
    }
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    if training.rehearsal is not None:
        mlm = window.mlm.summary()
        metrics.update(
            mlm_loss=mlm["loss"],
            mlm_accuracy=mlm["accuracy"],
            total_loss=metrics["loss"] + cfg.rehearsal_weight * mlm["loss"],
        )
    logger.log(progress.step, metrics)
    return metrics


def _validation_due(training: Training, progress: Progress) -> bool:
    """Every ``eval_every`` steps, at the end of every epoch and of the schedule (with a
    validation split)."""
    if not len(training.inputs.data.validation):
        return False
    every = training.cfg.eval_every
    return bool(
        (every and progress.step % every == 0)
        or progress.batch_in_epoch == training.steps_per_epoch
        or progress.step == training.total_steps
    )


def validate(training: Training, progress: Progress, logger) -> dict[str, float]:
    """Validation metrics, logged; the best ones so far keep their weights."""
    cfg, data = training.cfg, training.inputs.data
    result = evaluate(
        training.model,
        data.validation,
        data.collate,
        batch_size=cfg.eval_batch_size,
        num_labels=data.num_labels,
        device=training.device,
        amp=training.inputs.amp,
    )
    best = progress.best
    value = result[cfg.metric]
    if best["value"] is None or value > best["value"]:
        best.update(step=progress.step, value=value, metrics=result, bad_evals=0)
        progress.best_weights = task_model.trainable_state(training.optimised)
    else:
        best["bad_evals"] += 1
    progress.history.append({"step": progress.step, "epoch": progress.epoch, **result})
    logger.log(progress.step, {**result, "best": best["value"]}, prefix="val")
    return result
