#!/usr/bin/env python
"""Benchmark of ``mlmfast prepare``'s scaling: 1 and 2 processes, the local pool and Dask.

Data: the embedded movie reviews, packed into rows of 128 tokens (``--word-ids``), tokenised by
the embedded bert-base-uncased tokenizer; with ``--pos`` also tagged by spaCy (fewer documents:
it is ~40x slower). Each configuration writes a fresh shard directory; tokens/s = tokens written
/ wall time of the whole call (tokenizer loading, worker start-up and the merge included: what a
user waits for). A "process" is one core: the tokenizer's own thread pool is off
(TOKENIZERS_PARALLELISM=false) so that 1 and 2 processes compare one core with two; the single
process with the tokenizer's threads is reported too. The shards of every configuration are
checked to be byte-identical to the single process's. Median of ``--rounds``, after an untimed
warm-up run (imports and first model loads).

  local_np1        prepare(num_proc=1)
  local_np1_threads  the same with the tokenizer's own threads (its default)
  local_np2        prepare(num_proc=2): batches streamed through 2 worker processes
  dask_np1, dask_np2  prepare(engine="dask", num_proc=N): N parts on a local Dask cluster of N
                   single-threaded workers, then the merge

Usage:
  python benchmarks/bench_prepare.py                 # 20,000 documents; --pos on 1,000
  python benchmarks/bench_prepare.py --quick         # 3,000 / 200 documents, 1 round
JSON to results/bench_prepare.json.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import statistics
import sys
import tempfile
import time

from _common import env_info, write_json  # benchmarks/, the script's folder

CONFIGS = {
    "local_np1": {"num_proc": 1},
    "local_np1_threads": {"num_proc": 1},
    "local_np2": {"num_proc": 2},
    "dask_np1": {"num_proc": 1, "engine": "dask"},
    "dask_np2": {"num_proc": 2, "engine": "dask"},
}


def _run(name: str, out: str, docs: int, pos: bool) -> tuple[float, dict]:
    from mlmfast.data import prepare

    os.environ["TOKENIZERS_PARALLELISM"] = "true" if name.endswith("threads") else "false"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = prepare(
        "movie-reviews",
        out,
        limit=docs,
        max_length=128,
        word_ids=True,
        pos=pos,
        progress=False,
        **CONFIGS[name],
    )
    return time.perf_counter() - t0, m


def _same(a: str, b: str, manifest: dict) -> bool:
    return all(filecmp.cmp(os.path.join(a, e["file"]), os.path.join(b, e["file"]), shallow=False)
               for e in manifest["shards"])  # fmt: skip


def bench(tmp: str, docs: int, pos: bool, rounds: int) -> dict:
    out: dict = {"documents": docs, "pos": pos}
    # untimed: the imports (transformers, spaCy) and the models' first load go to no configuration
    _run("local_np1", os.path.join(tmp, f"warm-{int(pos)}"), 20, pos)
    reference = None
    for _ in range(rounds):  # interleaved: every configuration once per round
        for name in CONFIGS:
            path = os.path.join(tmp, f"{name}-{int(pos)}")
            seconds, m = _run(name, path, docs, pos)
            entry = out.setdefault(name, {"seconds_all": [], "tokens": m["tokens"]})
            entry["seconds_all"].append(seconds)
            if reference is None:
                reference = (path + "-ref", m)
                shutil.copytree(path, reference[0])
            entry["identical"] = entry.get("identical", True) and _same(reference[0], path, m)
    for name in CONFIGS:
        e = out[name]
        e["seconds"] = statistics.median(e["seconds_all"])
        e["tokens_per_s"] = e["tokens"] / e["seconds"]
    for engine in ("local", "dask"):
        out[f"ratio_{engine}_np2_over_np1"] = (
            out[f"{engine}_np2"]["tokens_per_s"] / out[f"{engine}_np1"]["tokens_per_s"]
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--pos-docs", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-pos", action="store_true", help="skip the --pos measurement")
    p.add_argument("--no-plain", action="store_true", help="skip the measurement without --pos")
    p.add_argument("--json", default="results/bench_prepare.json")
    args = p.parse_args(argv)
    docs = args.docs or (3000 if args.quick else 20000)
    pos_docs = args.pos_docs or (200 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)

    results = {
        "env": env_info(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        todo = [] if args.no_plain else [(False, docs)]
        todo += [] if args.no_pos else [(True, pos_docs)]
        for pos, n in todo:
            r = bench(tmp, n, pos, rounds)
            results["runs"].append(r)
            label = "--pos" if pos else "plain"
            for name in CONFIGS:
                e = r[name]
                print(f"{label:6} {name:18} {e['tokens_per_s']:>12,.0f} tok/s  "
                      f"{e['seconds']:7.2f} s  identical={e['identical']}")  # fmt: skip
            print(f"{label:6} np2/np1: local {r['ratio_local_np2_over_np1']:.2f}x, "
                  f"dask {r['ratio_dask_np2_over_np1']:.2f}x")  # fmt: skip
    write_json(args.json, results)
    return 0


if __name__ == "__main__":  # worker processes (Dask's spawn) import this module again
    sys.exit(main())
