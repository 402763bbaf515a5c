#!/usr/bin/env python
"""Benchmark of ``mlmfast.span_corrupt`` (T5 span corruption) against numpy.

Both competitors corrupt the same batch of packed rows (T5's standard: 568 raw tokens -> 512
encoder inputs and 114 labels, noise density 0.15, mean span length 3) in the same run:

  flax_numpy      the algorithm of transformers' run_t5_mlm_flax.py example in plain numpy,
                  written for this benchmark: per row a random_spans_noise_mask (two random
                  segmentations by permutation, interleaved), then sentinel ids and the
                  filtering of the batch (vectorised over the batch, as the example does)
  mlmfast         mlmfast.span_corrupt on int64 ids (inputs, attention mask and labels)
  mlmfast_int32   the same on int32 ids (as shards store them)

Usage:
  python benchmarks/bench_span.py                    # 1 thread, 64x568 and 256x568
  python benchmarks/bench_span.py --quick            # smoke run
  python benchmarks/bench_span.py --json out.json

Timing: perf_counter around each call, samples in interleaved rounds (bench_mask.time_cpu), the
median is the figure of merit. Target: mlmfast >= 10x flax_numpy (printed PASS/MISS).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mask import time_cpu  # noqa: E402

DENSITY, MEAN_SPAN = 0.15, 3.0
VOCAB, EOS, PAD = 32100, 1, 0  # T5's: <extra_id_0> = 32099, counting down


# ---- the Flax example's algorithm, in numpy --------------------------------------------------


def _segment_lengths(rng: np.random.Generator, items: int, segments: int) -> np.ndarray:
    """A random split of `items` into `segments` non-empty runs: shuffle segments - 1 start
    marks among the items - 1 gaps, then count the run lengths."""
    marks = np.arange(items - 1) < (segments - 1)
    rng.shuffle(marks)
    starts = np.concatenate([[True], marks])
    run = np.cumsum(starts)
    return np.bincount(run)[1:]


def noise_mask(rng: np.random.Generator, length: int) -> np.ndarray:
    noise = min(max(round(length * DENSITY), 1), length - 1)
    spans = max(round(noise / MEAN_SPAN), 1)
    keep_runs = _segment_lengths(rng, length - noise, spans)
    noise_runs = _segment_lengths(rng, noise, spans)
    runs = np.stack([keep_runs, noise_runs], axis=1).reshape(-1)
    boundaries = np.cumsum(runs)[:-1]
    flags = np.zeros(length, dtype=np.int8)
    flags[boundaries] = 1
    return np.cumsum(flags) % 2 == 1


def sentinel_ids(mask: np.ndarray) -> np.ndarray:
    """First token of each masked run -> its sentinel (VOCAB - 1 counting down), the rest of
    the run -> -1, unmasked tokens -> 0."""
    m = mask.astype(np.int64)
    first = m - np.roll(m, 1, axis=-1) * m
    first[:, 0] = m[:, 0]
    ids = np.where(first != 0, np.cumsum(first, axis=-1), 0)
    ids = np.where(ids != 0, VOCAB - ids, 0)
    return ids - (m - first)


def filter_ids(ids: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    full = np.where(sentinels != 0, sentinels, ids)
    kept = full[full >= 0].reshape(ids.shape[0], -1)
    return np.concatenate([kept, np.full((ids.shape[0], 1), EOS, dtype=kept.dtype)], axis=-1)


def flax_numpy(ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = np.stack([noise_mask(rng, ids.shape[1]) for _ in range(ids.shape[0])])
    return filter_ids(ids, sentinel_ids(mask)), filter_ids(ids, sentinel_ids(~mask))


# ---- the run ---------------------------------------------------------------------------------


def run_shape(mlmfast, B: int, L: int, args) -> dict:
    inputs_length, targets_length = mlmfast.span_corruption_lengths(L, DENSITY, MEAN_SPAN)
    g = torch.Generator().manual_seed(B * L)
    ids = torch.randint(2, 32000, (B, L), generator=g)
    ids32, ids_np = ids.int(), ids.numpy().copy()
    rng = np.random.default_rng(0)
    kw = {
        "sentinel_start": VOCAB - 1,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "noise_density": DENSITY,
        "mean_noise_span_length": MEAN_SPAN,
        "inputs_length": inputs_length,
        "targets_length": targets_length,
        "seed": 1234,
    }
    comps = {
        "flax_numpy": lambda: flax_numpy(ids_np, rng),
        "mlmfast": lambda: mlmfast.span_corrupt(ids, **kw),
        "mlmfast_int32": lambda: mlmfast.span_corrupt(ids32, **kw),
    }
    # the same shapes and noise counts from both (the spans themselves are random)
    f_in, f_lab = comps["flax_numpy"]()
    out = comps["mlmfast"]()
    assert f_in.shape == tuple(out.input_ids.shape) and f_lab.shape == tuple(out.labels.shape)
    assert out.attention_mask.all()
    f_noise = int((f_lab < VOCAB - 100).sum() - B)  # minus EOS
    m_noise = int((out.labels < VOCAB - 100).sum() - B)
    assert f_noise == m_noise, (f_noise, m_noise)
    res = time_cpu(comps, args.repeats, args.warmup, args.min_time, args.max_samples, args.rounds)
    med = {k: v["median_s"] for k, v in res.items()}
    ratio = med["flax_numpy"] / med["mlmfast"]
    entry = {
        "shape": [B, L],
        "inputs_length": inputs_length,
        "targets_length": targets_length,
        "results": res,
        "speedup_vs_flax_numpy": ratio,
        "speedup_int32_vs_flax_numpy": med["flax_numpy"] / med["mlmfast_int32"],
        "target": {"speedup >= 10": ratio >= 10},
    }
    print(f"[{B}x{L}] -> inputs {inputs_length}, labels {targets_length}")
    for name, t in med.items():
        print(f"  {name:<14} {t * 1e3:9.3f} ms   {B * L / t / 1e6:8.2f} M tokens/s")
    print(f"  mlmfast vs flax_numpy: {ratio:.1f}x  {'PASS' if ratio >= 10 else 'MISS'} (>= 10x)")
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="64x568,256x568")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--max-samples", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=str(ROOT / "results" / "bench_span.json"))
    args = p.parse_args()
    if args.quick:
        args.shapes, args.repeats, args.min_time, args.rounds = "16x568", 5, 0.1, 2
    torch.set_num_threads(args.threads)
    import mlmfast

    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    out = {
        "benchmark": "span_corrupt",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "threads": args.threads,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "shapes": [run_shape(mlmfast, B, L, args) for B, L in shapes],
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
