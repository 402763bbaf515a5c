"""What trains in a fine-tuning run and where it stands: the strategy applied to the task model,
rehearsal's MLM head and batches, the optimiser and schedule (:class:`Training`), the progress
(:class:`Progress`), and the checkpoints that hold both."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from mlmfast.train.finetune import forgetting
from mlmfast.train.finetune import model as task_model
from mlmfast.train.finetune.config import FinetuneConfig
from mlmfast.train.finetune.inputs import Inputs

FORMAT = 1  # of the checkpoint state


@dataclass
class Rehearsal:
    """The MLM term of ``rehearsal``: a head on the training encoder and general-shard batches."""

    head: torch.nn.Module
    objective: torch.nn.Module
    stream: Any
    masker: Any
    batches: Any = None

    def next_batch(self, progress: Progress) -> dict[str, torch.Tensor]:
        batch = next(self.batches, None)
        if batch is None:
            progress.rehearsal_epoch += 1
            self.stream.set_epoch(progress.rehearsal_epoch)
            self.batches = iter(self.stream)
            batch = next(self.batches)
        return batch


@dataclass
class Training:
    """Everything a training step needs."""

    cfg: FinetuneConfig
    inputs: Inputs
    model: torch.nn.Module  # the task model being trained (for lora its PEFT wrapper)
    optimised: torch.nn.Module  # what the optimiser updates: the model, and rehearsal's head
    optimizer: torch.optim.Optimizer
    scheduler: Any
    lr: float
    steps_per_epoch: int
    total_steps: int
    parameters: tuple[int, int]  # (all, trainable) of the task model
    rehearsal: Rehearsal | None = None

    @property
    def device(self) -> torch.device:
        return self.inputs.device


@dataclass
class Progress:
    """Where the run is, and what its validations found: what a checkpoint holds besides the
    weights and the optimiser."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    rehearsal_epoch: int = 0
    best: dict[str, Any] = field(
        default_factory=lambda: {"step": None, "value": None, "metrics": None, "bad_evals": 0}
    )
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: str | None = None  # the signal that stopped the run


def build_training(cfg: FinetuneConfig, inputs: Inputs, model: torch.nn.Module, head) -> Training:
    """Apply the strategy to ``model``, add rehearsal's head, build the optimiser (layer-wise
    decay when asked) and the schedule."""
    from mlmfast.train import optim

    train_model = task_model.apply_strategy(cfg, model, inputs.data.token_level)
    rehearsal = None
    optimised: torch.nn.Module = train_model
    if cfg.strategy == "rehearsal":
        rehearsal = _rehearsal(cfg, inputs, task_model.encoder(train_model), head)
        optimised = torch.nn.ModuleDict({"task": train_model, "mlm_head": rehearsal.head})
    lr = cfg.learning_rate
    groups = optim.param_groups(
        optimised,
        lr=lr,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        num_layers=inputs.base_config.num_hidden_layers,
    )
    optimizer = optim.make_optimizer(
        groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
    )
    steps_per_epoch = math.ceil(len(inputs.data.train) / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = optim.make_scheduler(
        optimizer, kind=cfg.schedule, warmup_steps=warmup, total_steps=total_steps
    )
    return Training(
        cfg=cfg,
        inputs=inputs,
        model=train_model,
        optimised=optimised,
        optimizer=optimizer,
        scheduler=scheduler,
        lr=lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        parameters=task_model.count_parameters(train_model),
        rehearsal=rehearsal,
    )


def _rehearsal(cfg: FinetuneConfig, inputs: Inputs, encoder: torch.nn.Module, head) -> Rehearsal:
    from mlmfast.train.mlm import MaskedLMObjective

    module = forgetting.bind_head(head.state, encoder, trainable=True)
    objective = MaskedLMObjective(forgetting.EncoderMLM(encoder, module), sparse=True)
    stream, masker = forgetting.mlm_batches(
        cfg,
        cfg.rehearsal_data,
        cfg.rehearsal_batch_size or cfg.batch_size,
        forgetting.masking(cfg),
        inputs.tokenizer,
        names=("rehearsal_data", "rehearsal_batch_size"),
    )
    return Rehearsal(module, objective, stream, masker)


def resume(training: Training, state: dict[str, Any] | None) -> Progress:
    """The progress of the run, restored from ``state`` with the weights, optimiser, schedule,
    rehearsal position and RNG of its checkpoint."""
    from mlmfast.train import checkpoint as ckpt

    torch.manual_seed(training.cfg.seed + 1)  # dropout
    progress = Progress()
    rehearsal = training.rehearsal
    if state is not None:
        task_model.load_checkpoint_weights(training.cfg, training.model, state["path"])
        if rehearsal is not None:
            with torch.no_grad():
                saved = state["rehearsal"]["head"]
                for p, v in zip(forgetting.head_parameters(rehearsal.head), saved, strict=True):
                    p.copy_(v)
            rehearsal.stream.load_state_dict(state["rehearsal"]["loader"])
            progress.rehearsal_epoch = state["rehearsal"]["epoch"]
        training.optimizer.load_state_dict(state["optimizer"])
        training.scheduler.load_state_dict(state["scheduler"])
        progress.step, progress.epoch = state["step"], state["epoch"]
        progress.batch_in_epoch = state["batch_in_epoch"]
        progress.best = {k: v for k, v in state["best"].items() if k != "weights"}
        progress.best_weights = state["best"]["weights"]
        if progress.best["step"] is not None and progress.best_weights is None:
            # the best weights were the checkpoint's own
            progress.best_weights = task_model.trainable_state(training.optimised)
        progress.history = state["history"]
        progress.stopped_early = bool(state.get("stopped_early"))
        ckpt.set_rng_state(state["rng"])
    if rehearsal is not None:
        rehearsal.batches = iter(rehearsal.stream)
    return progress


def save_checkpoint(training: Training, progress: Progress) -> str:
    from mlmfast.train import checkpoint as ckpt

    cfg, rehearsal, best = training.cfg, training.rehearsal, progress.best
    return ckpt.save_checkpoint(
        cfg.out,
        progress.step,
        model=training.model,
        tokenizer=training.inputs.tokenizer,
        keep_last=cfg.keep_last,
        state={
            "format": FORMAT,
            "step": progress.step,
            "epoch": progress.epoch,
            "batch_in_epoch": progress.batch_in_epoch,
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "rehearsal": None
            if rehearsal is None
            else {
                "loader": rehearsal.stream.state_dict(),
                "epoch": progress.rehearsal_epoch,
                "head": [
                    p.detach().cpu().clone() for p in forgetting.head_parameters(rehearsal.head)
                ],
            },
            # the weights of the best evaluation, unless they are this checkpoint's own
            "best": {
                **best,
                "weights": None if best["step"] == progress.step else progress.best_weights,
            },
            "history": progress.history,
            "stopped_early": progress.stopped_early,
            "rng": ckpt.rng_state(),
            "config": dataclasses.asdict(cfg),
        },
    )
