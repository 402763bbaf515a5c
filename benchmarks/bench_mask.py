#!/usr/bin/env python
"""Benchmark of ``mlmfast.mask_tokens`` against transformers and plain PyTorch.

Every competitor masks the same realistic BERT batch (bert-base-uncased vocabulary, [CLS] ...
[SEP] rows, right padding with log-normal row lengths) in the same run:

  hf                     transformers' DataCollatorForLanguageModeling.torch_mask_tokens
  torch_vec_dense        hand-optimised PyTorch, no host sync (one rand + one randint per token)
  torch_vec_sparse       hand-optimised PyTorch, works on the selected tokens only (nonzero)
  mlmfast                mlmfast.mask_tokens (out of place, attention_mask + special_ids)
  mlmfast_inplace        copy_ into a preallocated buffer + mlmfast.mask_tokens_
  mlmfast_stm            mlmfast.mask_tokens with special_tokens_mask too (HF-style call)
  mlmfast_exact          mode="exact"
  mlmfast_wholeword      word_ids given (whole-word masking)
  mlmfast_exactword      mode="exact" with word_ids (whole words within an exact budget)
  mlmfast_span           mode="span" (SpanBERT spans of tokens, Geometric(0.2) lengths <= 10)
  mlmfast_spanword       mode="span" with word_ids (spans of whole words)
  clone_floor            ids.clone(); att.clone(); stm.clone() (memory-traffic floor)

Usage:
  python benchmarks/bench_mask.py                  # CPU, 1 thread, 256x128 and 256x512
  python benchmarks/bench_mask.py --quick          # smoke run (a few seconds)
  python benchmarks/bench_mask.py --device cuda    # 256x512 and 8192x512 on the GPU
  python benchmarks/bench_mask.py --threads 2 --shapes 64x128,1024x512 --json out.json

Each competitor is warmed up, then timed ``--repeats`` times (more on the CPU when one sample
is short, so every competitor gets at least ``--min-time`` seconds); the median is the figure
of merit, min and max are reported too. CPU: time.perf_counter around each call, the samples
taken in ``--rounds`` chunks interleaved across competitors (robust to load from other
processes on a shared machine). Before timing, one call of each competitor is checked for
plausibility (selection rate, 80/10/10 shares, labels; see "sanity" in the JSON). CUDA: CUDA
events around ``inner`` back-to-back calls (each sample >= ~1 ms), i.e. the per-call cost a
training loop sees (max of launch overhead and GPU time); mlmfast is also timed as a replayed
CUDA graph (GPU time without Python/launch overhead) when the op can be captured.

Targets (printed PASS/MISS; the script never fails on a MISS):
  CPU:  mlmfast >= 10x hf, >= 3x the best torch_vec_*, <= 3x clone_floor
  CUDA: [256,512] <= 15 us; [8192,512] effective bandwidth >= 50% of the measured device copy
        bandwidth; >= 10x hf on CUDA tensors
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

VOCAB_SIZE = 30522
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL_IDS = [PAD, UNK, CLS, SEP, MASK]
MLM_P = 0.15
MASK_P = 0.8
RANDOM_P = 0.1
SEED = 1234
FIRST_WORDPIECE = 999  # ids below are [unusedN] / special in bert-base-uncased
DEFAULT_SHAPES = {"cpu": "256x128,256x512", "cuda": "256x512,8192x512"}

# Bytes per token mlmfast must move: ids (8) + attention (8) read, out ids (8) + labels (8)
# written.
MLMFAST_BYTES_PER_TOKEN = 32

NOTES = {
    "hf": (
        "DataCollatorForLanguageModeling(tok, mlm_probability=0.15).torch_mask_tokens("
        "ids.clone(), special_tokens_mask=stm); the clone is INSIDE the timed region (HF mutates "
        "its input, so a caller must clone). On CUDA it runs under `with torch.device('cuda')` so "
        "its torch.full/bernoulli/randint tensors are created on the GPU."
    ),
    "torch_vec_dense": (
        "eligible = att > stm (0/1 masks); one torch.rand per token, non-eligible set to 2; "
        "u<0.15 selected, u<0.12 -> [MASK], u<0.135 -> random id from one dense torch.randint; "
        "labels/out by torch.where. No host synchronisation."
    ),
    "torch_vec_sparse": (
        "one torch.rand per token, selected = (u<0.15) & (att>stm), nonzero, then labels, "
        "80/10/10 and random ids only for the selected tokens (index_select/index_copy_). "
        "nonzero synchronises with the host on CUDA."
    ),
    "torch_vectorised": "the faster of torch_vec_dense and torch_vec_sparse for that shape",
    "mlmfast": (
        "mlmfast.mask_tokens(ids, attention_mask=att, special_ids=[0,100,101,102,103], "
        "seed, mode='bernoulli'); allocates out and labels"
    ),
    "mlmfast_inplace": (
        "buf.copy_(ids) then mlmfast.mask_tokens_(buf, labels, ...) into preallocated buf/labels; "
        "the copy_ is INSIDE the timed region (a caller that keeps the original ids needs it)"
    ),
    "mlmfast_stm": "as mlmfast, plus special_tokens_mask=stm (the HF-style call)",
    "mlmfast_exact": "as mlmfast with mode='exact' (round(0.15 * n_eligible) tokens per row)",
    "mlmfast_wholeword": (
        "as mlmfast with word_ids (~30% of words have 2-3 sub-tokens, -1 at specials/padding)"
    ),
    "mlmfast_exactword": "as mlmfast_wholeword with mode='exact'",
    "mlmfast_span": (
        "as mlmfast with mode='span' (round(0.15 * n_eligible) tokens per row in spans, lengths "
        "~ Geometric(0.2) clipped at 10, one 80/10/10 decision per span)"
    ),
    "mlmfast_spanword": "as mlmfast_span with word_ids (spans of whole words)",
    "clone_floor": "ids.clone(); att.clone(); stm.clone(): touching the three int64 tensors",
}


# ---------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------


def import_mlmfast():
    """mlmfast, from the installed package or from the source tree (in-place build)."""
    try:
        return importlib.import_module("mlmfast")
    except ImportError:
        sys.path.insert(0, str(ROOT))
        return importlib.import_module("mlmfast")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        b, _, length = part.partition("x")
        shapes.append((int(b), int(length)))
    if not shapes:
        raise ValueError(f"no shapes in {text!r}")
    return shapes


def build_tokenizer():
    """A bert-base-uncased-shaped fast tokenizer built offline (30522 entries, real specials)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    named = {PAD: "[PAD]", UNK: "[UNK]", CLS: "[CLS]", SEP: "[SEP]", MASK: "[MASK]"}
    vocab = {}
    for i in range(VOCAB_SIZE):
        name = named.get(i) or (f"[unused{i}]" if i < FIRST_WORDPIECE else f"tok{i}")
        vocab[name] = i
    core = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    if len(tok) != VOCAB_SIZE or tok.mask_token_id != MASK or tok.pad_token_id != PAD:
        raise RuntimeError(
            f"offline tokenizer is wrong: len={len(tok)} mask={tok.mask_token_id} "
            f"pad={tok.pad_token_id}"
        )
    return tok


def make_batch(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """A realistic padded BERT batch, on the CPU.

    Row lengths: log-normal with median 0.6 * L and sigma 0.5, clipped to [min(8, L), L] (so
    ~15% of the rows are full length, as truncated documents are). Half the rows of length >= 8
    are sentence pairs ([CLS] A [SEP] B [SEP]). Body ids are uniform word pieces, with 0.2%
    [UNK]. special_tokens_mask is what get_special_tokens_mask(already_has_special_tokens=True)
    gives (1 at every special id) with 1 at the padding too. word_ids: ~30% of the words have
    2-3 sub-tokens, words never straddle a special token, -1 at specials and padding.
    """
    rng = np.random.default_rng(seed)
    lo = min(8, length)
    lengths = np.exp(rng.normal(math.log(0.6 * length), 0.5, batch))
    lengths = np.clip(np.rint(lengths), lo, length).astype(np.int64)
    pos = np.arange(length)[None, :]
    attended = pos < lengths[:, None]

    ids = rng.integers(FIRST_WORDPIECE, VOCAB_SIZE, (batch, length), dtype=np.int64)
    ids[rng.random((batch, length)) < 0.002] = UNK
    ids[~attended] = PAD
    rows = np.arange(batch)
    ids[:, 0] = CLS
    ids[rows, lengths - 1] = SEP
    pair = (lengths >= 8) & (rng.random(batch) < 0.5)
    mid = np.rint(lengths * rng.uniform(0.3, 0.7, batch)).astype(np.int64)
    mid = np.clip(mid, 2, np.maximum(lengths - 3, 2))
    ids[rows[pair], mid[pair]] = SEP

    special = np.isin(ids, SPECIAL_IDS) | ~attended
    # Word boundaries: a word of 1 (70%), 2 (20%) or 3 (10%) tokens; a new word also starts
    # right after a special token.
    sizes = rng.choice(np.array([1, 2, 3]), size=batch * length, p=[0.7, 0.2, 0.1])
    first = np.cumsum(sizes) - sizes
    starts = np.zeros(batch * length, dtype=bool)
    starts[first[first < batch * length]] = True
    starts = starts.reshape(batch, length)
    starts[:, 1:] |= special[:, :-1]
    starts &= ~special
    word_ids = np.cumsum(starts, axis=1) - 1
    word_ids[special] = -1

    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(attended.astype(np.int64)),
        "special_tokens_mask": torch.from_numpy(special.astype(np.int64)),
        "word_ids": torch.from_numpy(word_ids.astype(np.int64)),
        "lengths": torch.from_numpy(lengths),
    }


# ---------------------------------------------------------------------------------------------
# competitors: zero-argument callables returning (input_ids, labels) or None
# ---------------------------------------------------------------------------------------------


def torch_vec_dense(ids, att, stm):
    eligible = att > stm  # 0/1 masks: attended and not special
    u = torch.rand(ids.shape, device=ids.device)
    u.masked_fill_(eligible.logical_not_(), 2.0)
    labels = torch.where(u < MLM_P, ids, -100)
    random_ids = torch.randint(VOCAB_SIZE, ids.shape, device=ids.device)
    out = torch.where(u < MLM_P * (MASK_P + RANDOM_P), random_ids, ids)
    out = torch.where(u < MLM_P * MASK_P, MASK, out)
    return out, labels


def torch_vec_sparse(ids, att, stm):
    u = torch.rand(ids.shape, device=ids.device)
    selected = u < MLM_P
    selected &= att > stm
    idx = selected.view(-1).nonzero().squeeze(1)
    flat = ids.view(-1)
    original = flat.index_select(0, idx)
    labels = torch.full_like(ids, -100)
    labels.view(-1).index_copy_(0, idx, original)
    us = u.view(-1).index_select(0, idx)
    random_ids = torch.randint(VOCAB_SIZE, idx.shape, device=ids.device)
    new = torch.where(us < MLM_P * (MASK_P + RANDOM_P), random_ids, original)
    new = torch.where(us < MLM_P * MASK_P, MASK, new)
    out = ids.clone()
    out.view(-1).index_copy_(0, idx, new)
    return out, labels


def make_competitors(mlmfast, collator, data, device) -> dict[str, Callable]:
    ids, att = data["input_ids"], data["attention_mask"]
    stm, words = data["special_tokens_mask"], data["word_ids"]
    common = dict(
        mask_token_id=MASK,
        vocab_size=VOCAB_SIZE,
        special_ids=SPECIAL_IDS,
        mlm_probability=MLM_P,
        mask_replace_prob=MASK_P,
        random_replace_prob=RANDOM_P,
        seed=SEED,
        epoch=0,
    )
    buf = torch.empty_like(ids)
    lab = torch.empty_like(ids)
    comps: dict[str, Callable] = {}

    if collator is not None:
        if device.type == "cuda":

            def hf():
                with device:
                    return collator.torch_mask_tokens(ids.clone(), special_tokens_mask=stm)

        else:

            def hf():
                return collator.torch_mask_tokens(ids.clone(), special_tokens_mask=stm)

        comps["hf"] = hf

    comps["torch_vec_dense"] = lambda: torch_vec_dense(ids, att, stm)
    comps["torch_vec_sparse"] = lambda: torch_vec_sparse(ids, att, stm)
    comps["mlmfast"] = lambda: tuple(mlmfast.mask_tokens(ids, attention_mask=att, **common)[:2])

    def mlmfast_inplace():
        buf.copy_(ids)
        mlmfast.mask_tokens_(buf, lab, attention_mask=att, **common)
        return buf, lab

    comps["mlmfast_inplace"] = mlmfast_inplace
    comps["mlmfast_stm"] = lambda: tuple(
        mlmfast.mask_tokens(ids, attention_mask=att, special_tokens_mask=stm, **common)[:2]
    )
    comps["mlmfast_exact"] = lambda: tuple(
        mlmfast.mask_tokens(ids, attention_mask=att, mode="exact", **common)[:2]
    )
    comps["mlmfast_wholeword"] = lambda: tuple(
        mlmfast.mask_tokens(ids, attention_mask=att, word_ids=words, **common)[:2]
    )
    comps["mlmfast_exactword"] = lambda: tuple(
        mlmfast.mask_tokens(ids, attention_mask=att, word_ids=words, mode="exact", **common)[:2]
    )

    comps["mlmfast_span"] = lambda: tuple(
        mlmfast.mask_tokens(ids, attention_mask=att, mode="span", **common)[:2]
    )
    comps["mlmfast_spanword"] = lambda: tuple(
        mlmfast.mask_tokens(ids, attention_mask=att, word_ids=words, mode="span", **common)[:2]
    )

    def clone_floor():
        ids.clone()
        att.clone()
        stm.clone()

    comps["clone_floor"] = clone_floor
    return comps


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def _summary(samples: list[float], inner: int, how: str) -> dict:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples": len(samples),
        "calls_per_sample": inner,
        "timing": how,
    }


def time_cpu(
    comps: dict[str, Callable],
    repeats: int,
    warmup: int,
    min_time: float,
    max_samples: int,
    rounds: int,
) -> dict[str, dict]:
    """perf_counter around each call. Each competitor gets max(repeats, min_time / its call
    time) samples, taken in `rounds` chunks interleaved with the other competitors' chunks (a
    burst of load from another process then hits every competitor alike). Each chunk starts
    with one untimed call."""
    counts = {}
    for name, fn in comps.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        est = (time.perf_counter() - t0) / max(warmup, 1)
        counts[name] = max(repeats, min(max_samples, math.ceil(min_time / max(est, 1e-9))))
    rounds = max(1, min(rounds, min(counts.values())))
    samples: dict[str, list[float]] = {name: [] for name in comps}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for name, fn in comps.items():
                n = counts[name] * (r + 1) // rounds - counts[name] * r // rounds
                fn()
                for _ in range(n):
                    t = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t)
    finally:
        if gc_was:
            gc.enable()
    how = f"perf_counter per call, {rounds} interleaved rounds"
    return {name: _summary(v, 1, how) for name, v in samples.items()}


def time_cuda(fn, repeats: int, warmup: int, sample_s: float = 1e-3) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    end.synchronize()
    est = start.elapsed_time(end) / 1e3 / 5
    inner = int(min(200, max(1, math.ceil(sample_s / max(est, 1e-7)))))
    samples = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
    finally:
        if gc_was:
            gc.enable()
    return _summary(samples, inner, "CUDA events around back-to-back calls")


def time_cuda_graph(mlmfast, data, repeats: int, inner: int = 10) -> dict:
    """mlmfast.mask_tokens captured `inner` times in a CUDA graph (seed/epoch from rng_state):
    GPU time without Python or launch overhead."""
    ids, att = data["input_ids"], data["attention_mask"]
    state = torch.tensor([SEED, 0], dtype=torch.int64, device=ids.device)
    kw = dict(
        mask_token_id=MASK,
        vocab_size=VOCAB_SIZE,
        special_ids=SPECIAL_IDS,
        attention_mask=att,
        seed=SEED,
        rng_state=state,
    )
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            mlmfast.mask_tokens(ids, **kw)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            mlmfast.mask_tokens(ids, **kw)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    del graph
    return _summary(samples, inner, "CUDA graph replay of back-to-back calls")


def copy_bandwidth(device, nbytes: int = 1 << 30, repeats: int = 20) -> dict:
    """Device-to-device copy bandwidth, counting bytes read + written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    res = time_cuda(lambda: dst.copy_(src), repeats, warmup=3, sample_s=0.0)
    res["bytes_per_copy_rw"] = 2 * nbytes
    res["bandwidth_GBps"] = 2 * nbytes / res["median_s"] / 1e9
    return res


# ---------------------------------------------------------------------------------------------
# sanity (not timed)
# ---------------------------------------------------------------------------------------------


def sanity(name, result, data) -> dict:
    """Plausibility of one call's output (loose bounds; catches broken competitors)."""
    out, labels = (t.cpu() for t in result)
    ids = data["input_ids"]
    eligible = (data["attention_mask"] != 0) & (data["special_tokens_mask"] == 0)
    selected = labels != -100
    n_sel = int(selected.sum())
    n_elig = int(eligible.sum())
    rep = {
        "selected_fraction_of_eligible": n_sel / max(n_elig, 1),
        "selected_outside_eligible": int((selected & ~eligible).sum()),
        "labels_wrong": int((labels[selected] != ids[selected]).sum()),
        "unselected_changed": int((out[~selected] != ids[~selected]).sum()),
    }
    if n_sel:
        o, orig = out[selected], ids[selected]
        rep["mask_share"] = float((o == MASK).float().mean())
        rep["random_share"] = float(((o != MASK) & (o != orig)).float().mean())
        rep["kept_share"] = float(((o == orig) & (orig != MASK)).float().mean())
    ok = (
        rep["selected_outside_eligible"] == 0
        and rep["labels_wrong"] == 0
        and rep["unselected_changed"] == 0
    )
    if n_elig >= 5000 and n_sel:
        tol = (
            0.04 if name in ("mlmfast_wholeword", "mlmfast_exactword", "mlmfast_spanword") else 0.02
        )
        ok &= abs(rep["selected_fraction_of_eligible"] - MLM_P) < tol
    if n_sel >= 2000:
        ok &= abs(rep["mask_share"] - MASK_P) < 0.05 and abs(rep["random_share"] - RANDOM_P) < 0.05
    rep["ok"] = bool(ok)
    return rep


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def machine_info(device, mlmfast) -> dict:
    info = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "mlmfast": getattr(mlmfast, "__version__", "?"),
        "mlmfast_built_with_cuda": bool(getattr(mlmfast, "built_with_cuda", False)),
        "threads": torch.get_num_threads(),
        "cpu_model": "?",
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu_model"] = platform.processor() or "?"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_capability"] = f"{props.major}.{props.minor}"
        info["device_memory_GiB"] = round(props.total_memory / 2**30, 1)
        info["device_sm_count"] = props.multi_processor_count
    return info


def _fmt_t(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.3f} ms"


def _err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def run_shape(mlmfast, collator, shape, device, args) -> tuple[dict, dict]:
    batch, length = shape
    cpu_data = make_batch(batch, length, seed=1_000_003 * batch + length)
    data = {k: v.to(device) for k, v in cpu_data.items()}
    tokens = batch * length
    attended = int(cpu_data["attention_mask"].sum())
    eligible = int(
        ((cpu_data["attention_mask"] != 0) & (cpu_data["special_tokens_mask"] == 0)).sum()
    )
    entry = {
        "shape": [batch, length],
        "tokens": tokens,
        "attended_fraction": attended / tokens,
        "eligible_fraction": eligible / tokens,
        "mean_row_length": float(cpu_data["lengths"].float().mean()),
        "full_length_rows": int((cpu_data["lengths"] == length).sum()),
        "results": {},
        "sanity": {},
    }
    if collator is not None and batch > 0:
        # The synthetic special_tokens_mask is the tokenizer's (plus padding) on a few rows.
        tok = collator.tokenizer
        for r in range(min(4, batch)):
            row = cpu_data["input_ids"][r].tolist()
            ref = tok.get_special_tokens_mask(row, already_has_special_tokens=True)
            att_row = cpu_data["attention_mask"][r].tolist()
            ref = [1 if (x or a == 0) else 0 for x, a in zip(ref, att_row, strict=True)]
            if ref != cpu_data["special_tokens_mask"][r].tolist():
                raise RuntimeError("synthetic special_tokens_mask differs from the tokenizer's")

    comps = make_competitors(mlmfast, collator, data, device)
    torch.manual_seed(0)
    working = {}
    for name, fn in comps.items():  # one untimed call each: sanity of the output, errors
        try:
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if result is not None:
                entry["sanity"][name] = sanity(name, result, cpu_data)
                if not entry["sanity"][name]["ok"]:
                    print(f"  WARNING: {name} output looks wrong: {entry['sanity'][name]}")
            del result
            working[name] = fn
        except Exception as exc:  # keep going: one broken competitor must not hide the others
            entry["results"][name] = {"error": _err(exc)}
            print(f"  {name}: ERROR {entry['results'][name]['error']}")

    if device.type == "cuda":
        for name, fn in working.items():
            try:
                entry["results"][name] = time_cuda(fn, args.repeats, args.warmup)
            except Exception as exc:
                entry["results"][name] = {"error": _err(exc)}
                print(f"  {name}: ERROR {entry['results'][name]['error']}")
    else:
        entry["results"].update(
            time_cpu(
                working, args.repeats, args.warmup, args.min_time, args.max_samples, args.rounds
            )
        )
    entry["results"] = {n: entry["results"][n] for n in comps}  # table in competitor order
    for res in entry["results"].values():
        if "median_s" in res:
            res["tokens_per_s"] = tokens / res["median_s"]

    return entry, data


def add_graph_timing(mlmfast, entry, data, args) -> bool:
    """CUDA-graph timing of mlmfast (run after every normal timing: a failed capture can leave
    the CUDA context unusable). Returns False when the capture failed."""
    if "median_s" not in entry["results"].get("mlmfast", {}):
        return True
    try:
        res = time_cuda_graph(mlmfast, data, args.repeats)
        res["tokens_per_s"] = entry["tokens"] / res["median_s"]
        ok = True
    except Exception as exc:
        res = {"error": _err(exc)}
        ok = False
    entry["results"]["mlmfast_graph"] = res
    return ok


def finalize(entry, device, copy_bw) -> None:
    """Ratios and targets from the medians."""
    tokens = entry["tokens"]
    med = {k: v["median_s"] for k, v in entry["results"].items() if "median_s" in v}
    tv = [med[k] for k in ("torch_vec_dense", "torch_vec_sparse") if k in med]
    if tv:
        best = min(("torch_vec_dense", "torch_vec_sparse"), key=lambda k: med.get(k, math.inf))
        med["torch_vectorised"] = med[best]
        entry["torch_vectorised_is"] = best
    ratios = {}
    for name in [k for k in med if k.startswith("mlmfast")]:
        t = med[name]
        r = {}
        if "hf" in med:
            r["speedup_vs_hf"] = med["hf"] / t
        if "torch_vectorised" in med:
            r["speedup_vs_torch_vectorised"] = med["torch_vectorised"] / t
        if "clone_floor" in med:
            r["time_over_clone_floor"] = t / med["clone_floor"]
        r["effective_bandwidth_GBps"] = MLMFAST_BYTES_PER_TOKEN * tokens / t / 1e9
        if copy_bw:
            r["bandwidth_fraction_of_copy"] = r["effective_bandwidth_GBps"] / copy_bw
        ratios[name] = r
    entry["ratios"] = ratios
    entry["targets"] = targets_for(entry, device, med, copy_bw)


def targets_for(entry, device, med, copy_bw) -> list[dict]:
    out = []
    r = entry["ratios"].get("mlmfast")
    if r is None:
        return [{"target": "mlmfast ran", "value": None, "pass": False}]

    def add(target, value, ok, unit=""):
        out.append({"target": target, "value": value, "unit": unit, "pass": bool(ok)})

    if "speedup_vs_hf" in r:
        add("mlmfast >= 10x hf", r["speedup_vs_hf"], r["speedup_vs_hf"] >= 10, "x")
    if device.type == "cpu":
        if "speedup_vs_torch_vectorised" in r:
            v = r["speedup_vs_torch_vectorised"]
            add("mlmfast >= 3x torch_vectorised", v, v >= 3, "x")
        if "time_over_clone_floor" in r:
            v = r["time_over_clone_floor"]
            add("mlmfast <= 3x clone_floor", v, v <= 3, "x")
    else:
        if tuple(entry["shape"]) == (256, 512):
            add("[256,512] mlmfast <= 15 us", med["mlmfast"] * 1e6, med["mlmfast"] <= 15e-6, "us")
            if "mlmfast_graph" in med:
                v = med["mlmfast_graph"]
                add("[256,512] mlmfast (CUDA graph) <= 15 us", v * 1e6, v <= 15e-6, "us")
        if tuple(entry["shape"]) == (8192, 512) and copy_bw:
            v = r["bandwidth_fraction_of_copy"]
            add("[8192,512] bandwidth >= 50% of copy", v * 100, v >= 0.5, "%")
    return out


def print_shape(entry, device) -> None:
    b, length = entry["shape"]
    print(
        f"\n[{b}, {length}] {device.type}  tokens={entry['tokens']}  "
        f"attended={entry['attended_fraction']:.1%}  eligible={entry['eligible_fraction']:.1%}  "
        f"full-length rows={entry['full_length_rows']}"
    )
    res = entry["results"]
    t_ml = res.get("mlmfast", {}).get("median_s")
    head = f"  {'competitor':<19}{'median':>12}{'min':>12}{'max':>12}{'Mtok/s':>10}"
    head += f"{'vs mlmfast':>12}"
    print(head)
    for name, v in res.items():
        if "median_s" not in v:
            print(f"  {name:<19}{'ERROR: ' + v.get('error', '?')}")
            continue
        rel = f"{v['median_s'] / t_ml:.2f}x" if t_ml else "-"
        print(
            f"  {name:<19}{_fmt_t(v['median_s']):>12}{_fmt_t(v['min_s']):>12}"
            f"{_fmt_t(v['max_s']):>12}{v['tokens_per_s'] / 1e6:>10.1f}{rel:>12}"
        )
    for name, r in entry["ratios"].items():
        parts = []
        if "speedup_vs_hf" in r:
            parts.append(f"{r['speedup_vs_hf']:.1f}x vs hf")
        if "speedup_vs_torch_vectorised" in r:
            parts.append(f"{r['speedup_vs_torch_vectorised']:.2f}x vs torch_vectorised")
        if "time_over_clone_floor" in r:
            parts.append(f"{r['time_over_clone_floor']:.2f}x clone_floor")
        parts.append(f"{r['effective_bandwidth_GBps']:.1f} GB/s")
        if "bandwidth_fraction_of_copy" in r:
            parts.append(f"{r['bandwidth_fraction_of_copy']:.1%} of copy")
        print(f"  {name:<19}" + ", ".join(parts))
    if "torch_vectorised_is" in entry:
        print(f"  (torch_vectorised = {entry['torch_vectorised_is']})")
    for t in entry["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        print(f"  target {t['target']:<42} {value:>12}  {_pf(t['pass'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shapes", default=None, help="comma-separated BxL (default per device)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per competitor")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--min-time", type=float, default=None, help="CPU: min seconds of samples")
    p.add_argument("--max-samples", type=int, default=5000, help="CPU: cap on samples")
    p.add_argument("--rounds", type=int, default=None, help="CPU: interleaved rounds")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--json", default=None, help="output (default results/bench_mask_<dev>.json)")
    p.add_argument("--quick", action="store_true", help="fast smoke run (few repeats)")
    args = p.parse_args(argv)

    if args.repeats is None:
        args.repeats = 5 if args.quick else (50 if args.device == "cuda" else 30)
    if args.warmup is None:
        args.warmup = 1 if args.quick else (10 if args.device == "cuda" else 3)
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 10
    shapes = parse_shapes(args.shapes or DEFAULT_SHAPES[args.device])
    json_path = (
        Path(args.json) if args.json else ROOT / "results" / f"bench_mask_{args.device}.json"
    )

    torch.set_num_threads(args.threads)
    mlmfast = import_mlmfast()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench_mask: --device cuda but torch sees no GPU", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")

    collator, hf_error = None, None
    try:
        from transformers import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(build_tokenizer(), mlm_probability=MLM_P)
    except Exception as exc:  # transformers/tokenizers missing: benchmark the rest
        hf_error = f"{type(exc).__name__}: {exc}"
        print(f"bench_mask: no hf competitor ({hf_error})")

    info = machine_info(device, mlmfast)
    print(
        f"bench_mask: device={device.type}"
        + (f" ({info['device_name']})" if device.type == "cuda" else "")
        + f" threads={info['threads']} cpu={info['cpu_model']!r} torch={info['torch']} "
        f"mlmfast={info['mlmfast']} transformers={info['transformers']}"
    )
    copy_bw = None
    copy_res = None
    if device.type == "cuda":
        copy_res = copy_bandwidth(device, repeats=max(5, args.repeats // 2))
        copy_bw = copy_res["bandwidth_GBps"]
        torch.cuda.empty_cache()
        print(f"device copy bandwidth (read+write, 1 GiB dst.copy_(src)): {copy_bw:.0f} GB/s")

    t_start = time.perf_counter()
    entries = []
    datas = []
    for shape in shapes:
        entry, data = run_shape(mlmfast, collator, shape, device, args)
        entries.append(entry)
        if device.type == "cuda":
            datas.append(data)  # graph timing and the table come after every shape is timed
            print(f"timed {shape[0]}x{shape[1]}")
        else:
            finalize(entry, device, copy_bw)
            print_shape(entry, device)
        del data
    if device.type == "cuda":
        graphs_ok = True
        for entry, data in zip(entries, datas, strict=True):
            if graphs_ok:
                graphs_ok = add_graph_timing(mlmfast, entry, data, args)
            finalize(entry, device, copy_bw)
            print_shape(entry, device)
        del datas
    wall = time.perf_counter() - t_start

    report = {
        "benchmark": "mlmfast.mask_tokens",
        "machine": info,
        "config": {
            "device": device.type,
            "shapes": [list(s) for s in shapes],
            "repeats": args.repeats,
            "warmup": args.warmup,
            "min_time_s": args.min_time if device.type == "cpu" else None,
            "rounds": args.rounds if device.type == "cpu" else None,
            "quick": args.quick,
            "vocab_size": VOCAB_SIZE,
            "special_ids": SPECIAL_IDS,
            "mlm_probability": MLM_P,
            "mask_replace_prob": MASK_P,
            "random_replace_prob": RANDOM_P,
            "seed": SEED,
            "statistic": "median of samples; tokens_per_s = B*L / median",
            "mlmfast_bytes_per_token": MLMFAST_BYTES_PER_TOKEN,
            "hf_timing_includes_clone": True,
            "mlmfast_inplace_timing_includes_copy": True,
        },
        "notes": NOTES,
        "hf_unavailable": hf_error,
        "device_copy": copy_res,
        "shapes": entries,
        "wall_s": wall,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {json_path} ({wall:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
