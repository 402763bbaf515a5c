"""``mlmfast pretrain``: the command-line options of :class:`PretrainConfig`."""

from __future__ import annotations

import argparse
import json

from mlmfast.train.config import add_optimiser_arguments, add_run_arguments, option_adder
from mlmfast.train.pretrain.config import PRECISIONS, PretrainConfig

DESCRIPTION = """\
Pre-train a BERT masked-language model on shards made by "mlmfast prepare". Batches stream
from the shards to the device unmasked, the fused op masks them there, and the MLM head
predicts the selected positions only. One process per device under torchrun.

A step sees batch-size x grad-accum x processes rows. Checkpoints hold everything needed to
continue bit for bit: --resume continues from the newest, --resume-from from an older one;
Ctrl-C or SIGTERM saves one and stops.

Writes to --out: model/ (transformers from_pretrained loads it), metrics.jsonl, loss.png,
summary.json, config.json, checkpoints/ and tb/ (TensorBoard)."""

EXAMPLES = """\
examples:
  mlmfast pretrain --data runs/shards --eval-data runs/heldout --out runs/tiny --max-steps 300
  mlmfast pretrain --config run.json --out runs/tiny --resume
  torchrun --nproc-per-node 4 -m mlmfast.cli pretrain --data runs/shards --out runs/base \\
      --model-config base"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train a BERT MLM on shards (torchrun-ready)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        usage="mlmfast pretrain --data SHARDS --out DIR [--eval-data SHARDS] [--config FILE] "
        "[options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = option_adder(p.add_argument_group("inputs and outputs"), PretrainConfig)
    a("--data", metavar="SHARDS", help="training shard directory (mlmfast prepare)")
    a("--out", metavar="DIR", help="run directory for the model, metrics and checkpoints")
    a(
        "--config",
        metavar="FILE",
        help='JSON file with any of these options by field name, e.g. {"batch_size": 64}; '
        "command-line values win (default: none)",
    )
    a(
        "--eval-data",
        metavar="SHARDS",
        help="held-out shards, evaluated with a fixed mask (default: none)",
    )
    a(
        "--tokenizer",
        metavar="DIR",
        help="tokenizer directory (default: the one the shards were made with)",
    )
    _model_options(option_adder(p.add_argument_group("model"), PretrainConfig))
    _optimisation_options(option_adder(p.add_argument_group("optimisation"), PretrainConfig))
    _masking_options(option_adder(p.add_argument_group("masking"), PretrainConfig))
    _execution_options(option_adder(p.add_argument_group("execution"), PretrainConfig))
    b = option_adder(p.add_argument_group("logging, evaluation, checkpoints"), PretrainConfig)
    b("--log-every", type=int, help="a metrics line every N steps")
    b(
        "--eval-every",
        type=int,
        metavar="N",
        help="evaluate --eval-data every N steps (default: at the end only)",
    )
    b("--eval-batches", type=int, help="held-out batches per evaluation")
    b("--eval-batch-size", type=int, help="rows per held-out batch")
    add_run_arguments(b)
    p.set_defaults(func=_run)


def _model_options(a) -> None:
    a(
        "--model-config",
        metavar="SIZE|JSON",
        help="with --init random: tiny, mini, small, medium or base, or a BertConfig JSON file "
        "or string",
    )
    a(
        "--init",
        metavar="random|DIR",
        help="random, or the weights of a model directory, a "
        "pretrain run or one of its checkpoints",
    )


def _optimisation_options(a) -> None:
    a("--batch-size", type=int, help="rows per process per micro-step")
    a("--grad-accum", type=int, help="micro-steps per optimiser step")
    a(
        "--max-steps",
        type=int,
        metavar="N",
        help="optimiser steps (default: --epochs over the data)",
    )
    a("--epochs", type=float, help="passes over the data, when --max-steps is not given")
    a("--lr", type=float, help="peak learning rate")
    add_optimiser_arguments(a)
    a("--seed", type=int, help="seeds the initialisation, data order, masks and dropout")


def _masking_options(a) -> None:
    a("--mlm-probability", type=float, help="share of the tokens selected for prediction")
    a("--mask-replace-prob", type=float, help="share of the selected tokens replaced by [MASK]")
    a(
        "--random-replace-prob",
        type=float,
        help="share of the selected tokens replaced by a random token (the rest stay as they are)",
    )
    a("--whole-word", bool=True, help="select whole words (shards with word ids)")
    a(
        "--pos-weights",
        metavar="PRESET|JSON",
        help="part-of-speech weights: uniform, content, "
        "content-only or nouns, or a JSON object tag -> weight (shards with --pos; default: none)",
    )
    a(
        "--mask-mode",
        choices=("bernoulli", "exact", "span"),
        help="bernoulli: each token independently "
        "(as transformers); exact: round(p x eligible tokens) per row; span: as many, in spans "
        "of whole words of Geometric(0.2) length clipped at 10 (SpanBERT; words from --whole-word "
        "shards, else tokens)",
    )
    a("--static-masking", bool=True, help="the same mask every epoch (original BERT)")


def _execution_options(a) -> None:
    a("--sparse-head", bool=True, help="run the MLM head on the selected positions only")
    a("--device", help="auto, cpu, cuda or cuda:N (auto: cuda:LOCAL_RANK when CUDA is there)")
    a("--precision", choices=PRECISIONS, help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    a("--compile", bool=True, help="torch.compile the model and its loss")
    a("--num-workers", type=int, help="DataLoader worker processes per process")


def _run(args: argparse.Namespace) -> int:
    converted = {}
    if isinstance(args.pos_weights, str) and args.pos_weights.lstrip().startswith("{"):
        try:
            converted["pos_weights"] = json.loads(args.pos_weights)
        except ValueError as e:
            raise ValueError(
                f"pos_weights: {args.pos_weights!r} is not a valid JSON object ({e}); expected "
                'e.g. {"NOUN": 3, "VERB": 2} or a preset name'
            ) from None
    from mlmfast.train.pretrain.run import pretrain

    pretrain(PretrainConfig.from_args(args, "pretrain", **converted))
    return 0
