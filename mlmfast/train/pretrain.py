"""``mlmfast pretrain``: BERT masked-language-model pre-training from shards.

Shards stream in (``mlmfast.data.ShardStream``, split by rank), unmasked batches are copied to
the device, the fused op masks them there, a transformers ``BertForMaskedLM`` learns with the
head on the selected positions only. One process per device under ``torchrun``.

Batches: ``batch_size`` rows per device per micro-step, ``grad_accum`` micro-steps per optimiser
step, so a step sees ``batch_size * grad_accum * world_size`` rows: global batches
``step * A * W ... (step + 1) * A * W - 1`` of the epoch's order (A = grad_accum, W = world size).
The same run on 1 process with ``grad_accum=2`` and on 2 processes with ``grad_accum=1`` sees the
same rows in every step, with the same masks.

Resume: a checkpoint holds the model, optimiser, scheduler, loader position, every rank's RNG
states and the step; ``resume=True`` continues from the run's newest one. On the CPU, N steps
straight and N/2 + resume + N/2 give bitwise identical weights (tested).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from mlmfast.train.config import (
    RunConfig,
    add_optimiser_arguments,
    add_run_arguments,
    parse_bool,
)
from mlmfast.train.mlm import MaskingConfig

_FORMAT = 1


@dataclass
class PretrainConfig(RunConfig):
    data: str
    out: str
    eval_data: str | None = None
    tokenizer: str | None = None
    model_config: str = "tiny"
    init: str = "random"
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    schedule: str = "linear"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    # masking
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word: bool = False
    pos_weights: str | dict[str, float] | None = None
    mask_mode: str = "bernoulli"
    static_masking: bool = False
    seed: int = 0
    # execution
    sparse_head: bool = True
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    num_workers: int = 0
    # bookkeeping
    log_every: int = 10
    eval_every: int | None = None
    eval_batches: int | None = 50
    eval_batch_size: int = 64
    save_every: int | None = None
    keep_last: int = 2
    resume: bool = False
    resume_from: str | None = None
    stop_at_step: int | None = None
    tensorboard: bool = True
    progress: bool = True

    # fields that may differ between a run and its resumption (they do not change the maths)
    RESUMABLE_CHANGES = (
        "out", "resume", "resume_from", "stop_at_step", "log_every", "eval_every", "eval_batches",
        "eval_batch_size", "save_every", "keep_last", "tensorboard", "progress", "num_workers",
        "data", "eval_data", "tokenizer", "max_steps", "epochs", "compile",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("data", "out", "eval_data", "tokenizer", "model_config", "init"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):  # pathlib paths are fine; the JSON config needs str
                setattr(self, name, os.fspath(value))

    def masking(self) -> MaskingConfig:
        return MaskingConfig(
            mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            whole_word=self.whole_word,
            pos_weights=self.pos_weights,
            mode=self.mask_mode,
            static=self.static_masking,
            seed=self.seed,
        )

    def validate(self) -> None:
        positive = ("batch_size", "grad_accum", "log_every", "eval_batch_size", "keep_last")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "save_every", "eval_every", "eval_batches", "stop_at_step"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be >= 1 or unset, got {v}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        self.masking()  # validates the masking fields


# -- setup ---------------------------------------------------------------------------------------


def _load_tokenizer(cfg: PretrainConfig, manifest: dict):
    from mlmfast.data.embedded import load_tokenizer

    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    path = (manifest.get("tokenizer") or {}).get("path")
    if path and os.path.isdir(path):
        return load_tokenizer(path)
    return load_tokenizer()  # the embedded default (open_shards checks it is the right one)


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


# -- the loop ------------------------------------------------------------------------------------


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
    from tqdm.auto import tqdm

    from mlmfast.data.shards import open_shards
    from mlmfast.data.stream import make_loader
    from mlmfast.train import checkpoint as ckpt
    from mlmfast.train import optim
    from mlmfast.train.mlm import DeviceMasker, MaskedLMObjective, MLMStats, evaluate_mlm
    from mlmfast.train.runtime import MetricsLogger, StopFlag, setup

    dist = setup(cfg.device)
    device = dist.device
    try:
        # ---- everything that can be wrong is checked before the first step
        shards = open_shards(cfg.data)
        tokenizer = _load_tokenizer(cfg, shards.manifest)
        shards = open_shards(cfg.data, tokenizer=tokenizer)
        if cfg.eval_data:
            held = open_shards(cfg.eval_data, tokenizer=tokenizer)
            # the evaluation masks like training (whole words, POS classes): the held-out shards
            # must carry those columns; found out now, not after the last step
            try:
                DeviceMasker.for_shards(tokenizer, cfg.masking(), held.manifest)
            except ValueError as e:
                raise ValueError(f"eval_data {cfg.eval_data}: {e}") from None
        state = cfg.resume_state(main=dist.is_main)
        if state is not None:
            _check_resume_tokenizer(state["path"], tokenizer, cfg.data)
        model, init_report = _build_model(cfg, tokenizer, shards.max_length)
        if state is not None:
            ckpt.load_model_weights(model, state["path"])
        masking = cfg.masking()
        loader = make_loader(
            cfg.data,
            cfg.batch_size,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        # the DataLoader draws a base seed for its workers at every iter(); from its own
        # generator, not torch's global one, or a resumed run's dropout draws would shift
        loader.generator = torch.Generator().manual_seed(cfg.seed)
        stream = loader.dataset
        masker = DeviceMasker.for_shards(tokenizer, masking, shards.manifest)
        micro_per_step = cfg.grad_accum * dist.world_size
        steps_per_epoch = stream.num_batches // micro_per_step
        if steps_per_epoch < 1:
            raise ValueError(
                f"the data has {stream.num_rows} rows: fewer than one step of batch_size "
                f"{cfg.batch_size} x grad_accum {cfg.grad_accum} x {dist.world_size} processes"
            )
        total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        warmup = (
            cfg.warmup_steps
            if cfg.warmup_steps is not None
            else int(cfg.warmup_ratio * total_steps)
        )

        model.to(device)
        model.train()
        objective: torch.nn.Module = MaskedLMObjective(model, sparse=cfg.sparse_head)
        groups = optim.param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        optimizer = optim.make_optimizer(
            groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
        )
        scheduler = optim.make_scheduler(
            optimizer, kind=cfg.schedule, warmup_steps=warmup, total_steps=total_steps
        )
        step, epoch, tokens_seen = 0, 0, 0
        torch.manual_seed(cfg.seed + 1000 * dist.rank)  # dropout differs per rank, reproducibly
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, epoch, tokens_seen = state["step"], state["epoch"], state["tokens_seen"]
            loader.set_epoch(epoch)
            loader.load_state_dict(state["loader"])
            rngs = state["rng"]
            if len(rngs) == dist.world_size:
                ckpt.set_rng_state(rngs[dist.rank])
            elif dist.is_main:
                print(
                    f"resume: {len(rngs)} processes saved this checkpoint, {dist.world_size} run "
                    "now: data order and masks continue exactly, dropout draws do not"
                )
        else:
            loader.set_epoch(0)

        if dist.initialised:
            from torch.nn.parallel import DistributedDataParallel as DDP

            objective = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            objective = torch.compile(objective)
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        amp_dtype = torch.bfloat16 if precision == "bf16" else None
    except BaseException:
        dist.close()
        raise

    logger = MetricsLogger(cfg.out, enabled=dist.is_main, tensorboard=cfg.tensorboard)
    if dist.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"pretrain: {n_params / 1e6:.1f}M parameters ({init_report['init']}), "
            f"{stream.num_rows} rows x {shards.max_length}, {steps_per_epoch} steps/epoch, "
            f"{total_steps} steps, world {dist.world_size}, {device}, {precision}, "
            f"{'sparse' if cfg.sparse_head else 'dense'} head"
        )
        if init_report.get("initialised"):
            print(f"init: newly initialised weights: {init_report['initialised']}")

    def save(final: bool = False) -> str | None:
        rngs = [None] * dist.world_size
        if dist.initialised:
            torch.distributed.all_gather_object(rngs, ckpt.rng_state())
        else:
            rngs = [ckpt.rng_state()]
        path = None
        if dist.is_main:
            path = ckpt.save_checkpoint(
                cfg.out,
                step,
                model=model,
                tokenizer=tokenizer,
                keep_last=cfg.keep_last,
                state={
                    "format": _FORMAT,
                    "step": step,
                    "epoch": epoch,
                    "tokens_seen": tokens_seen,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "loader": loader.state_dict(),
                    "rng": rngs,
                    "config": dataclasses.asdict(cfg),
                },
            )
        dist.barrier()
        return path

    def evaluate() -> dict[str, float] | None:
        result = None
        if dist.is_main and cfg.eval_data:
            result = evaluate_mlm(
                model,
                cfg.eval_data,
                tokenizer=tokenizer,
                masking=masking,
                batch_size=cfg.eval_batch_size,
                max_batches=cfg.eval_batches,
                device=device,
                autocast_dtype=amp_dtype,
            )
            logger.log(step, result, prefix="eval")
        dist.barrier()
        return result

    stop_at = min(total_steps, cfg.stop_at_step or total_steps)
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (cfg.progress and dist.is_main),
        desc="pretrain",
        unit="step",
        dynamic_ncols=True,
    )
    window = MLMStats()
    last_train: dict[str, float] | None = None
    t_window, wait_window, tok_window = time.perf_counter(), 0.0, 0
    t_start, wait_total, tokens_start = time.perf_counter(), 0.0, tokens_seen
    interrupted: str | None = None
    last_eval = None
    batches = iter(loader)
    with StopFlag() as stop:
        while step < stop_at:
            grad_norm = None
            for micro in range(cfg.grad_accum):
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    batch = None
                if batch is None or stream.state_dict()["num_batches_consumed"] > (
                    steps_per_epoch * micro_per_step
                ):
                    # epoch boundary: the tail that does not fill a step on every rank is skipped
                    epoch += 1
                    loader.set_epoch(epoch)
                    batches = iter(loader)
                    batch = next(batches)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                wait = time.perf_counter() - t0
                wait_window += wait
                wait_total += wait
                masked = masker(batch, epoch)
                sync = (
                    objective.no_sync()
                    if dist.initialised and micro < cfg.grad_accum - 1
                    else contextlib.nullcontext()
                )
                with (
                    sync,
                    torch.autocast(
                        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                    ),
                ):
                    loss, count, correct = objective(
                        masked.input_ids,
                        batch["attention_mask"],
                        masked.labels,
                        masked.positions,
                        batch.get("token_type_ids"),
                    )
                    (loss / cfg.grad_accum).backward()
                window.add(loss.detach(), count, correct)
                n_tok = int(batch["attention_mask"].sum()) * dist.world_size
                tok_window += n_tok
                tokens_seen += n_tok
            if cfg.max_grad_norm is not None:
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == stop_at:
                elapsed = time.perf_counter() - t_window
                if dist.initialised:  # the loss of the global batch, not of rank 0's share
                    t = torch.tensor(
                        [window.loss_sum, float(window.tokens), float(window.correct)],
                        dtype=torch.float64,
                        device=device,
                    )
                    torch.distributed.all_reduce(t)
                    window.loss_sum, window.tokens, window.correct = (
                        t[0].item(),
                        int(t[1]),
                        int(t[2]),
                    )
                metrics = window.summary()
                metrics.update(
                    lr=scheduler.get_last_lr()[0],
                    tokens=tok_window,
                    seconds=elapsed,
                    tokens_per_s=tok_window / max(elapsed, 1e-9),
                    data_wait_fraction=wait_window / max(elapsed, 1e-9),
                    epoch=epoch,
                )
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                logger.log(step, metrics)
                last_train = metrics
                bar.set_postfix(
                    loss=f"{metrics['loss']:.3f}",
                    tok_s=f"{metrics['tokens_per_s']:.0f}",
                    wait=f"{100 * metrics['data_wait_fraction']:.1f}%",
                )
                window = MLMStats()
                t_window, wait_window, tok_window = time.perf_counter(), 0.0, 0
            if cfg.eval_every and step % cfg.eval_every == 0 and step < stop_at:
                last_eval = evaluate()
            stop_now = dist.any(stop.requested)
            if cfg.save_every and step % cfg.save_every == 0 and step < stop_at and not stop_now:
                save()
            if stop_now:
                interrupted = stop.signal or "signal on another rank"
                break
    bar.close()
    path = save(final=True)
    if interrupted is None and step >= total_steps:
        last_eval = evaluate() if cfg.eval_data else last_eval
    elapsed = time.perf_counter() - t_start
    summary = {
        "step": step,
        "total_steps": total_steps,
        "epoch": epoch,
        "tokens_seen": tokens_seen,
        "tokens_per_s": (tokens_seen - tokens_start) / max(elapsed, 1e-9),
        "data_wait_fraction": wait_total / max(elapsed, 1e-9),
        "train": last_train,
        "eval": last_eval,
        "checkpoint": path,
        "interrupted": interrupted,
        "finished": step >= total_steps,
        "world_size": dist.world_size,
        "device": str(device),
        "precision": precision,
        "sparse_head": cfg.sparse_head,
        **init_report,
    }
    if dist.is_main:
        if summary["finished"]:
            model.save_pretrained(os.path.join(cfg.out, "model"))
            tokenizer.save_pretrained(os.path.join(cfg.out, "model"))
            summary["model"] = os.path.join(cfg.out, "model")
        with open(os.path.join(cfg.out, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        if interrupted:
            print(
                f"pretrain: stopped by {interrupted} at step {step}; checkpoint {path}; continue "
                "with the same command and --resume"
            )
        elif not summary["finished"]:
            print(f"pretrain: paused at step {step} (stop_at_step); continue with --resume")
        else:
            ev = "" if not last_eval else f", eval loss {last_eval['loss']:.3f}"
            print(f"pretrain: done, {step} steps{ev}; model in {summary['model']}")
    logger.close()
    dist.close()
    return summary


# -- CLI -----------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train a BERT MLM on shards (torchrun-ready)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--data", help="training shard directory (mlmfast prepare)")
    a("--out", help="run directory: checkpoints, metrics.jsonl, tb/, model/, summary.json")
    a("--config", help="JSON file with any of the options below (command-line values win)")
    a("--eval-data", help="held-out shard directory, evaluated with a fixed mask")
    a("--tokenizer", help="tokenizer directory (default: the one the shards were made with)")
    a("--model-config", help="tiny | mini | small | medium | base, or a BertConfig JSON file")
    a("--init", help="random (default) or a model directory / pretrain run / checkpoint")
    a("--batch-size", type=int, help="rows per device per micro-step (default 32)")
    a("--grad-accum", type=int, help="micro-steps per optimiser step")
    a("--max-steps", type=int, help="optimiser steps (default: --epochs over the data)")
    a("--epochs", type=float)
    a("--lr", type=float, help="peak learning rate (default 5e-4)")
    add_optimiser_arguments(a)
    a("--mlm-probability", type=float)
    a("--mask-replace-prob", type=float)
    a("--random-replace-prob", type=float)
    a("--whole-word", type=parse_bool, nargs="?", const=True, help="mask whole words (word_ids)")
    a("--pos-weights", help="POS weight preset (uniform, content, content-only, nouns) or JSON")
    a("--mask-mode", choices=("bernoulli", "exact"))
    a("--static-masking", type=parse_bool, nargs="?", const=True, help="same mask every epoch")
    a("--seed", type=int)
    a("--sparse-head", type=parse_bool, help="MLM head on selected positions only (default true)")
    a("--device", help="auto | cpu | cuda")
    a("--precision", choices=("auto", "fp32", "bf16"))
    a("--compile", type=parse_bool, nargs="?", const=True, help="torch.compile the model")
    a("--num-workers", type=int, help="DataLoader workers per process")
    a("--log-every", type=int)
    a("--eval-every", type=int)
    a("--eval-batches", type=int)
    a("--eval-batch-size", type=int)
    add_run_arguments(a)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    converted = {}
    if isinstance(args.pos_weights, str) and args.pos_weights.lstrip().startswith("{"):
        converted["pos_weights"] = json.loads(args.pos_weights)
    pretrain(PretrainConfig.from_args(args, "pretrain", **converted))
    return 0
