"""A fine-tuning run as the list of its phases: check the inputs, build the task model, prepare
the MLM head and measure "before", build what trains, resume, train, then the best weights, the
test set, the saved model, "after", drift and the summary."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from mlmfast.train.finetune import forgetting
from mlmfast.train.finetune import model as task_model
from mlmfast.train.finetune.config import FinetuneConfig
from mlmfast.train.finetune.evaluation import evaluate
from mlmfast.train.finetune.inputs import Inputs, check_inputs
from mlmfast.train.finetune.loop import train
from mlmfast.train.finetune.training import (
    Progress,
    Training,
    build_training,
    resume,
    save_checkpoint,
)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) fine-tuning; returns the summary (also ``OUT/summary.json``)."""
    from mlmfast.locking import DirectoryLock
    from mlmfast.train import checkpoint as ckpt

    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"finetune runs in one process, not under torchrun with WORLD_SIZE="
            f"{os.environ['WORLD_SIZE']}; start it with python / mlmfast directly"
        )
    # one run per --out: a second one would interleave its checkpoints and metrics with ours
    with DirectoryLock(cfg.out, "mlmfast finetune"):
        ckpt.remove_partial_checkpoints(cfg.out)  # written by a run killed mid-save
        return _finetune(cfg)


@dataclass
class _Start:
    """The task model as it starts, and the baselines "after" is measured against."""

    model: torch.nn.Module  # the task model that trains, on the device
    before: torch.nn.Module  # a frozen copy of it, on the CPU: the baseline of drift
    init_report: dict[str, Any]
    head: forgetting.MLMHead | None = None  # reads general-shard MLM loss before and after
    forgetting: dict[str, Any] | None = None  # the forgetting report, "before" measured


def _finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    from mlmfast.train.runtime import MetricsLogger

    started = time.perf_counter()
    inputs = check_inputs(cfg)
    state = cfg.resume_state()
    os.makedirs(cfg.out, exist_ok=True)
    logger = MetricsLogger(cfg.out, tensorboard=cfg.tensorboard)
    try:
        with open(os.path.join(cfg.out, "config.json"), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
        start = _build_models(cfg, inputs)
        start.head = forgetting.prepare_head(cfg, inputs, start.model, state is not None, logger)
        start.forgetting = forgetting.measure_before(cfg, inputs, start.before, start.head, logger)
        training = build_training(cfg, inputs, start.model, start.head)
        progress = resume(training, state)
        _announce(training, start)
        train(training, progress, logger)
        summary = _summary(training, progress, start, save_checkpoint(training, progress))
        if not summary["finished"]:
            return _write_paused(cfg, summary, started)
        _restore_best(training, progress)
        _evaluate_and_save(training, progress, start, summary, logger)
        summary["wall_time_s"] = time.perf_counter() - started
        _write_json(os.path.join(cfg.out, "summary.json"), summary)
        print(_closing_line(summary))
        return summary
    finally:
        logger.close()


def _build_models(cfg: FinetuneConfig, inputs: Inputs) -> _Start:
    model, init_report = task_model.build_task_model(cfg, inputs.model_dir, inputs.data)
    if cfg.strategy == "lora":
        task_model.check_lora_targets(model, cfg.targets)
    before = copy.deepcopy(model).eval()
    model.to(inputs.device)
    return _Start(model, before, init_report)


def _announce(training: Training, start: _Start) -> None:
    cfg, data = training.cfg, training.inputs.data
    total, trainable = training.parameters
    print(
        f"finetune: {cfg.strategy} on {cfg.task} ({len(data.train)} train / "
        f"{len(data.validation)} val / {len(data.test)} test, {data.num_labels} labels), init "
        f"{start.init_report['init']}, {trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters "
        f"train, lr {training.lr}, {training.steps_per_epoch} steps/epoch, "
        f"{training.total_steps} steps, {training.device}, {training.inputs.precision}"
    )


def _summary(training: Training, progress: Progress, start: _Start, checkpoint: str) -> dict:
    cfg = training.cfg
    return {
        "task": cfg.task,
        "strategy": cfg.strategy,
        "init": start.init_report,
        "data": training.inputs.data.description,
        "lr": training.lr,
        "step": progress.step,
        "total_steps": training.total_steps,
        "steps_per_epoch": training.steps_per_epoch,
        "epoch": progress.epoch,
        "finished": progress.stopped_early or progress.step >= training.total_steps,
        "interrupted": progress.interrupted,
        "stopped_early": progress.stopped_early,
        "checkpoint": checkpoint,
        "device": str(training.device),
        "precision": training.inputs.precision,
        "config": dataclasses.asdict(cfg),
    }


def _write_paused(cfg: FinetuneConfig, summary: dict[str, Any], started: float) -> dict:
    summary["wall_time_s"] = time.perf_counter() - started
    _write_json(os.path.join(cfg.out, "summary.json"), summary)
    interrupted = summary["interrupted"]
    why = f"stopped by {interrupted}" if interrupted else "paused (stop_at_step)"
    print(
        f"finetune: {why} at step {summary['step']}; checkpoint {summary['checkpoint']}; "
        "continue with --resume"
    )
    return summary


def _restore_best(training: Training, progress: Progress) -> None:
    """The weights of the best validation, unless they are the last step's."""
    if progress.best_weights is not None and progress.best["step"] != progress.step:
        task_model.load_trainable(training.optimised, progress.best_weights)


def _evaluate_and_save(
    training: Training, progress: Progress, start: _Start, summary: dict[str, Any], logger
) -> None:
    """The test set, the saved model, forgetting "after" and drift, into ``summary``."""
    cfg, inputs, data = training.cfg, training.inputs, training.inputs.data
    test = evaluate(
        training.model,
        data.test,
        data.collate,
        batch_size=cfg.eval_batch_size,
        num_labels=data.num_labels,
        device=inputs.device,
        amp=inputs.amp,
    )
    if test is not None:
        logger.log(progress.step, test, prefix="test")
    final, paths = task_model.save_final_model(cfg, training.model, start.before, inputs.tokenizer)
    summary.update(paths)
    final.eval()
    rehearsal_head = training.rehearsal.head if training.rehearsal is not None else None
    if start.forgetting is not None:
        forgetting.measure_after(
            cfg, inputs, start.forgetting, final, start.head, rehearsal_head, progress.step, logger
        )
    drift, plot = _drift(training, start, final)
    total, trainable = training.parameters
    parameters = {"total": total, "trainable": trainable, "trainable_share": trainable / total}
    if rehearsal_head is not None:
        parameters["rehearsal_head"] = sum(
            p.numel() for p in forgetting.head_parameters(rehearsal_head)
        )
    summary.update(
        parameters=parameters,
        best_step=progress.best["step"],
        metric=cfg.metric,
        validation=progress.best["metrics"],
        test=test,
        history=progress.history,
        forgetting=start.forgetting,
        drift=drift,
        drift_plot=plot,
    )


def _drift(training: Training, start: _Start, final) -> tuple[dict[str, Any], str | None]:
    """Weight drift and CKA of the hidden states, initial model vs ``final``, and their plot
    (None with a note when matplotlib is missing: the numbers are in the summary anyway)."""
    from mlmfast.train.analysis import drift_report, plot_drift
    from mlmfast.train.finetune.data import probe_batches

    cfg = training.cfg
    start.before.to(training.device)
    probes = probe_batches(training.inputs.data, cfg)
    drift = drift_report(start.before, final, probes, max_tokens=cfg.probe_tokens)
    start.before.cpu()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("finetune: no drift.png: matplotlib is not installed (pip install matplotlib)")
        return drift, None
    path = os.path.join(cfg.out, "drift.png")
    init = os.path.basename(str(start.init_report["init"]))
    plot_drift(drift, path, title=f"{cfg.strategy} fine-tune from {init}")
    return drift, path


def _closing_line(summary: dict[str, Any]) -> str:
    val, test = summary["validation"] or {}, summary["test"]
    line = f"finetune: done, {summary['step']} steps (best step {summary['best_step']})"
    if val:
        line += f", val accuracy {val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f}"
    if test:
        line += f", test accuracy {test['accuracy']:.4f} macro-F1 {test['macro_f1']:.4f}"
    report = summary["forgetting"]
    if report is not None:
        before, after = report["before"]["loss"], report["after"]["loss"]
        line += f", general MLM loss {before:.3f} -> {after:.3f}"
    return line + f"; model in {summary['model']}"


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
