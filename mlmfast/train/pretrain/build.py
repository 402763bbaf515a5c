"""A pre-training run up to its first step: the inputs checked, the data stream, the model and
its optimiser built, the state of a checkpoint restored. Everything a user can get wrong fails
here, before any file of the run is written."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from mlmfast.train.pretrain.config import PretrainConfig
from mlmfast.train.runtime import Dist


@dataclass
class Inputs:
    """What the run reads, checked: the training shards, their tokenizer and the state of the
    checkpoint it continues from (None from step 0)."""

    shards: Any
    tokenizer: Any
    state: dict[str, Any] | None


@dataclass
class Data:
    """The training stream: ``batch_size`` rows per process per micro-step, ``grad_accum``
    micro-steps per optimiser step."""

    loader: torch.utils.data.DataLoader
    masker: Any
    steps_per_epoch: int
    micro_per_step: int
    total_steps: int
    warmup_steps: int

    @property
    def stream(self):
        return self.loader.dataset


@dataclass
class Run:
    """Everything a training step needs."""

    cfg: PretrainConfig
    dist: Dist
    tokenizer: Any
    data: Data
    model: torch.nn.Module
    objective: torch.nn.Module  # the model and its loss; DDP- and compile-wrapped when asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: str
    init_report: dict[str, Any]
    max_length: int

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


@dataclass
class Progress:
    """Where the run is: what a checkpoint must hold besides the weights and optimiser."""

    step: int = 0
    epoch: int = 0
    tokens_seen: int = 0


# -- check the inputs ----------------------------------------------------------------------------


def check_inputs(cfg: PretrainConfig, dist: Dist) -> Inputs:
    from mlmfast.data.shards import open_shards
    from mlmfast.train.runtime import require

    shards = open_shards(cfg.data)
    tokenizer = _load_tokenizer(cfg, shards.manifest)
    shards = open_shards(cfg.data, tokenizer=tokenizer)
    if cfg.eval_data:
        _check_eval_data(cfg, tokenizer)
    if cfg.tensorboard:
        require("tensorboard", "--tensorboard true", fix="or pass --tensorboard false")
    state = cfg.resume_state(main=dist.is_main)
    if state is not None:
        _check_resume_tokenizer(state["path"], tokenizer, cfg.data)
    return Inputs(shards=shards, tokenizer=tokenizer, state=state)


def _load_tokenizer(cfg: PretrainConfig, manifest: dict):
    from mlmfast.data.embedded import load_tokenizer

    if cfg.tokenizer:
        try:
            return load_tokenizer(cfg.tokenizer)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"tokenizer: {cfg.tokenizer!r} holds no tokenizer a transformers AutoTokenizer "
                f"can load ({' '.join(str(e).split())[:200]}); pass the directory a tokenizer was "
                "saved to (tokenizer.save_pretrained), or leave --tokenizer out to use the one "
                "the shards were made with"
            ) from None
    path = (manifest.get("tokenizer") or {}).get("path")
    if path and os.path.isdir(path):
        return load_tokenizer(path)
    return load_tokenizer()  # the embedded default (open_shards checks it is the right one)


def _check_eval_data(cfg: PretrainConfig, tokenizer) -> None:
    from mlmfast.data.shards import open_shards
    from mlmfast.train.mlm import DeviceMasker

    held = open_shards(cfg.eval_data, tokenizer=tokenizer)
    # the evaluation masks like training (whole words, POS classes): the held-out shards must
    # carry those columns; found out now, not after the last step
    try:
        DeviceMasker.for_shards(tokenizer, cfg.masking(), held.manifest)
    except ValueError as e:
        raise ValueError(f"eval_data {cfg.eval_data}: {e}") from None


def _check_resume_tokenizer(checkpoint: str, tokenizer, data: str) -> None:
    """A checkpoint continues only on shards of its own tokenizer (else its embeddings and
    output bias do not fit, or worse, fit another vocabulary)."""
    from mlmfast.data.shards import vocab_hash
    from mlmfast.train import models

    saved = models.tokenizer_of(checkpoint)
    if saved is not None and vocab_hash(saved) != vocab_hash(tokenizer):
        raise ValueError(
            f"resume: {checkpoint} was trained with a tokenizer of {len(saved)} ids (vocab hash "
            f"{vocab_hash(saved)[:12]}), the shards in {data} were made with one of "
            f"{len(tokenizer)} ids (vocab hash {vocab_hash(tokenizer)[:12]}); resume on shards "
            f"made with its tokenizer (`mlmfast prepare ... --tokenizer {checkpoint}/model`), or "
            "start a new run in another --out (--init the checkpoint to start from its weights)"
        )


# -- build the data stream -----------------------------------------------------------------------


def build_data(cfg: PretrainConfig, dist: Dist, inputs: Inputs) -> Data:
    from mlmfast.data.stream import make_loader
    from mlmfast.train.mlm import DeviceMasker

    loader = make_loader(
        cfg.data,
        cfg.batch_size,
        num_workers=cfg.num_workers,
        pin_memory=dist.device.type == "cuda",
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    # the DataLoader draws a base seed for its workers at every iter(); from its own generator,
    # not torch's global one, or a resumed run's dropout draws would shift
    loader.generator = torch.Generator().manual_seed(cfg.seed)
    masker = DeviceMasker.for_shards(inputs.tokenizer, cfg.masking(), inputs.shards.manifest)
    micro_per_step = cfg.grad_accum * dist.world_size
    steps_per_epoch = loader.dataset.num_batches // micro_per_step
    if steps_per_epoch < 1:
        raise ValueError(
            f"the data has {loader.dataset.num_rows} rows: fewer than one step of batch_size "
            f"{cfg.batch_size} x grad_accum {cfg.grad_accum} x {dist.world_size} processes"
        )
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = int(cfg.warmup_ratio * total_steps)
    return Data(loader, masker, steps_per_epoch, micro_per_step, total_steps, warmup)


# -- build the model and its optimiser -----------------------------------------------------------


def build_run(cfg: PretrainConfig, dist: Dist, inputs: Inputs, data: Data) -> Run:
    from mlmfast.train import checkpoint as ckpt
    from mlmfast.train import optim
    from mlmfast.train.mlm import MaskedLMObjective

    model, init_report = _build_model(cfg, inputs.tokenizer, inputs.shards.max_length)
    if inputs.state is not None:
        ckpt.load_model_weights(model, inputs.state["path"])
    model.to(dist.device)
    model.train()
    groups = optim.param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    optimizer = optim.make_optimizer(
        groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
    )
    scheduler = optim.make_scheduler(
        optimizer, kind=cfg.schedule, warmup_steps=data.warmup_steps, total_steps=data.total_steps
    )
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if dist.device.type == "cuda" else "fp32"
    return Run(
        cfg=cfg,
        dist=dist,
        tokenizer=inputs.tokenizer,
        data=data,
        model=model,
        objective=MaskedLMObjective(model, sparse=cfg.sparse_head),
        optimizer=optimizer,
        scheduler=scheduler,
        precision=precision,
        init_report=init_report,
        max_length=inputs.shards.max_length,
    )


def _build_model(cfg: PretrainConfig, tokenizer, max_length: int):
    from transformers import BertForMaskedLM

    from mlmfast.data.shards import vocab_hash
    from mlmfast.train import models

    if cfg.init == "random":
        config = models.bert_config(
            cfg.model_config,
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id or 0,
            hidden_dropout=cfg.hidden_dropout,
            attention_dropout=cfg.attention_dropout,
        )
        torch.manual_seed(cfg.seed)
        return BertForMaskedLM(config), {"init": "random"}
    init_tok = models.tokenizer_of(cfg.init)
    if init_tok is not None and vocab_hash(init_tok) != vocab_hash(tokenizer):
        raise ValueError(
            f"init: {cfg.init!r} was trained with another tokenizer than the shards "
            f"({getattr(init_tok, 'name_or_path', '?')} vs "
            f"{getattr(tokenizer, 'name_or_path', '?')}); prepare the shards with "
            f"`mlmfast prepare --tokenizer {models.resolve_model_dir(cfg.init)}`"
        )
    overrides = {}
    if cfg.hidden_dropout is not None:
        overrides["hidden_dropout_prob"] = cfg.hidden_dropout
    if cfg.attention_dropout is not None:
        overrides["attention_probs_dropout_prob"] = cfg.attention_dropout
    model, report = models.load_masked_lm(cfg.init, max_length=max_length, **overrides)
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(
            f"init: the model has {model.config.vocab_size} token embeddings, the shards' "
            f"tokenizer {len(tokenizer)} ids"
        )
    return model, {"init": report["path"], "initialised": report["initialised"]}


# -- continue from a checkpoint ------------------------------------------------------------------


def resume(run: Run, state: dict[str, Any] | None) -> Progress:
    """The progress of the run, restored from ``state`` (the optimiser, schedule, loader position
    and RNG of its checkpoint; the weights were loaded with the model)."""
    from mlmfast.train import checkpoint as ckpt

    dist, loader = run.dist, run.data.loader
    torch.manual_seed(run.cfg.seed + 1000 * dist.rank)  # dropout differs per rank, reproducibly
    if state is None:
        loader.set_epoch(0)
        return Progress()
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    progress = Progress(step=state["step"], epoch=state["epoch"], tokens_seen=state["tokens_seen"])
    loader.set_epoch(progress.epoch)
    loader.load_state_dict(state["loader"])
    rngs = state["rng"]
    if len(rngs) == dist.world_size:
        ckpt.set_rng_state(rngs[dist.rank])
    elif dist.is_main:
        print(
            f"resume: {len(rngs)} processes saved this checkpoint, {dist.world_size} run now: "
            "data order and masks continue exactly, dropout draws do not"
        )
    return progress


def distribute(run: Run) -> None:
    """Wrap the objective for DistributedDataParallel and ``torch.compile`` when asked."""
    if run.dist.initialised:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = run.device
        run.objective = DDP(
            run.objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    if run.cfg.compile:
        run.objective = torch.compile(run.objective)
