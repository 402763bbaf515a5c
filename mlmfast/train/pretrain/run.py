"""A pre-training run as the list of its phases: check the inputs, build the data stream, stop if
the run finished already, build the model, resume, train, write the outputs."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from mlmfast.train.pretrain.build import (
    Progress,
    Run,
    build_data,
    build_run,
    check_inputs,
    distribute,
    resume,
)
from mlmfast.train.pretrain.config import PretrainConfig
from mlmfast.train.pretrain.loop import LoopResult, evaluate, save_checkpoint, train
from mlmfast.train.runtime import Dist


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pre-training; returns the final summary (also written to
    ``OUT/summary.json``). The trained model is saved to ``OUT/model``."""
    from mlmfast.locking import DirectoryLock
    from mlmfast.train import checkpoint as ckpt

    cfg.validate()
    if int(os.environ.get("RANK", "0")) != 0:
        return _pretrain(cfg)
    # one run per --out: a second one would interleave its checkpoints and metrics with ours
    with DirectoryLock(cfg.out, "mlmfast pretrain"):
        ckpt.remove_partial_checkpoints(cfg.out)  # written by a run killed mid-save
        return _pretrain(cfg)


def _pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    from mlmfast.train.runtime import MetricsLogger, setup

    dist = setup(cfg.device)
    try:
        inputs = check_inputs(cfg, dist)
        data = build_data(cfg, dist, inputs)
        done = _finished_already(cfg, dist, inputs.state, data.total_steps)
        if done is not None:
            return done
        run = build_run(cfg, dist, inputs, data)
        progress = resume(run, inputs.state)
        distribute(run)
        logger = MetricsLogger(cfg.out, enabled=dist.is_main, tensorboard=cfg.tensorboard)
        try:
            if dist.is_main:
                _start(run, progress)
            result = train(run, progress, logger)
            return _finish(run, progress, result, logger)
        finally:
            logger.close()
    finally:
        dist.close()


def _finished_already(
    cfg: PretrainConfig, dist: Dist, state: dict[str, Any] | None, total_steps: int
) -> dict[str, Any] | None:
    """The summary of a run that --resume finds finished (its final checkpoint, summary and
    model all there): nothing to rebuild or train. None when there is work left, e.g. after a
    larger --max-steps."""
    summary = None
    if state is not None and state["step"] >= total_steps:
        try:
            with open(os.path.join(cfg.out, "summary.json"), encoding="utf-8") as f:
                summary = json.load(f)
        except (OSError, ValueError):
            summary = None  # killed before the summary was written: finish the run again
        complete = (
            isinstance(summary, dict)
            and summary.get("finished")
            and summary.get("step") == state["step"]
            and os.path.isdir(os.path.join(cfg.out, "model"))
        )
        summary = summary if complete else None
    # every rank must agree, or the ranks that go on would wait for the others forever
    if not dist.any(summary is not None):
        return None
    summary = summary or {"step": state["step"], "finished": True}
    if dist.is_main:
        ev = summary.get("eval") or {}
        loss = f", held-out loss {ev['loss']:.3f}" if "loss" in ev else ""
        print(
            f"pretrain: done already, {summary['step']} steps{loss}; model in "
            f"{os.path.join(cfg.out, 'model')} (a larger --max-steps with --resume trains on, another "
            "--out starts a new run)"
        )
    return summary


def _start(run: Run, progress: Progress) -> None:
    """The run's settings to OUT/config.json, and one line on what is about to happen."""
    cfg = run.cfg
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)
    n_params = sum(p.numel() for p in run.model.parameters())
    start = f"resumed at step {progress.step}" if progress.step else run.init_report["init"]
    data = run.data
    print(
        f"pretrain: {n_params / 1e6:.1f}M parameters ({start}), {data.stream.num_rows} rows x "
        f"{run.max_length}, {data.steps_per_epoch} steps/epoch, {data.total_steps} steps, world "
        f"{run.dist.world_size}, {run.device}, {run.precision}, "
        f"{'sparse' if cfg.sparse_head else 'dense'} head"
    )
    if run.init_report.get("initialised"):
        print(f"init: newly initialised weights: {run.init_report['initialised']}")


def _finish(run: Run, progress: Progress, result: LoopResult, logger) -> dict[str, Any]:
    """The final checkpoint and evaluation, then (rank 0) the model, summary.json, the loss
    curve and the closing line."""
    path = save_checkpoint(run, progress)
    finished = progress.step >= run.data.total_steps
    if result.interrupted is None and finished and run.cfg.eval_data:
        result.last_eval = evaluate(run, progress, logger)
    summary = _summary(run, progress, result, path)
    if run.dist.is_main:
        _write_outputs(run, summary)
    return summary


def _summary(run: Run, progress: Progress, result: LoopResult, path: str | None) -> dict:
    elapsed = time.perf_counter() - result.started
    return {
        "step": progress.step,
        "total_steps": run.data.total_steps,
        "epoch": progress.epoch,
        "tokens_seen": progress.tokens_seen,
        "tokens_per_s": (progress.tokens_seen - result.tokens_start) / max(elapsed, 1e-9),
        "data_wait_fraction": result.data_wait / max(elapsed, 1e-9),
        "train": result.last_train,
        "eval": result.last_eval,
        "checkpoint": path,
        "interrupted": result.interrupted,
        "finished": progress.step >= run.data.total_steps,
        "world_size": run.dist.world_size,
        "device": str(run.device),
        "precision": run.precision,
        "sparse_head": run.cfg.sparse_head,
        **run.init_report,
    }


def _write_outputs(run: Run, summary: dict[str, Any]) -> None:
    from mlmfast.train.plot import plot_losses_or_note

    out = run.cfg.out
    if summary["finished"]:
        model_dir = os.path.join(out, "model")
        run.model.save_pretrained(model_dir)
        run.tokenizer.save_pretrained(model_dir)
        summary["model"] = model_dir
    summary["loss_plot"] = plot_losses_or_note(out, "pretrain")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    step = summary["step"]
    if summary["interrupted"]:
        print(
            f"pretrain: stopped by {summary['interrupted']} at step {step}; checkpoint "
            f"{summary['checkpoint']}; continue with the same command and --resume"
        )
    elif not summary["finished"]:
        print(f"pretrain: paused at step {step} (stop_at_step); continue with --resume")
    else:
        ev = "" if not summary["eval"] else f", held-out loss {summary['eval']['loss']:.3f}"
        plot = f"; loss curve {summary['loss_plot']}" if summary["loss_plot"] else ""
        print(f"pretrain: done, {step} steps{ev}; model in {summary['model']}{plot}")
