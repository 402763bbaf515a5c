"""Shard sets on object storage: ``s3://bucket/prefix`` and ``gs://bucket/prefix``.

Reading. ``open_shards``, ``ShardStream``, ``make_loader`` and ``mlmfast pretrain --data`` take
such a URL. The manifest is read from the bucket and checked as a local one is, every listed
object not yet cached must exist with the size the manifest records, and shards are downloaded
into a local cache as the loader needs them, then memory-mapped and checked like local shards:

::

    $MLMFAST_SHARD_CACHE (default: mlmfast.data.shards.cache_dir()/remote)
      .evict.lock                               one eviction pass at a time on this node
      <bucket>_<prefix>-<sha256(url)[:12]>/     one directory per remote set
        source.json                             the URL it caches
        shard-00000.<sha256[:16]>.arrow         a verified copy, named by its content
        .shard-00000.<sha256[:16]>.arrow.*.part a download in progress (or killed)
        .locks/shard-00000.<sha256[:16]>.arrow.use   readers: shared flock while in use
        .locks/shard-00000.<sha256[:16]>.arrow.dl    the one downloader: exclusive flock
      staging/<bucket>_<prefix>-<hash>/         prepare -o URL: the set built locally, resumable

* Downloads go to a ``.part`` file, are checked against the manifest's size and sha256 while they
  stream, and are renamed to the final name only when both match; the copy is then stamped like
  a verified local shard, so mapping it does not hash it again. A killed download leaves only a
  ``.part`` file, removed by the next download of that shard or the next eviction pass. A file
  named by its sha256 cannot be mistaken for another version of the set: a rewritten set is
  downloaded again.
* Several processes on a node (ranks, DataLoader workers) share the cache. A process holds a
  shared ``flock`` on a shard's ``.use`` file from before it looks for the copy until it has
  unmapped it (and while a prefetched copy waits to be read); a missing copy is downloaded by
  whoever takes the shard's exclusive ``.dl`` lock first, while the others wait on it and then
  find the copy. Locks die with their process (``kill -9`` included).
* Size bound: before a download, copies are evicted least recently used first (by the ``.use``
  file's mtime, touched at every use) until the cache (every set under the root) plus the new
  shard fits ``cache_limit`` (``MLMFAST_CACHE_LIMIT``, default 64 GiB) and the disk keeps 256 MiB
  free. A copy is evicted only under its exclusive ``.use`` lock, taken without waiting, so no
  copy that any process has mapped or prefetched is ever removed; when everything is in use the
  cache grows past the limit with a warning instead of stalling training.
* Prefetch: each process downloads, in a background thread, the next ``prefetch_shards``
  (``MLMFAST_PREFETCH_SHARDS``, default 2) shards in the order it will read them: the stream
  hands over the order of its batches' shards at the start of each epoch (a pure function of
  seed, epoch, rank and worker; see ``ShardStream.global_order``). ``RemoteShardSet.stats()``
  tells how long reads waited for downloads.
* Transfer failures (a dropped connection, a short body, a server error) are retried (4 attempts
  per shard, with backoff) and then raise a :class:`~mlmfast.data.shards.ShardError` naming the
  object's URL; a copy whose sha256 does not match is never kept, and the error names the URL.
  An epoch never silently loses a shard.

Endpoints and credentials: ``s3://`` uses pyarrow's S3 client with the AWS SDK's usual chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, instance
roles); ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:9000``) points it
at another S3 API (MinIO, Ceph, a test server), as they do for the aws CLI and boto3; the region
comes from ``AWS_REGION``/``AWS_DEFAULT_REGION``, else from the bucket. ``gs://`` uses pyarrow's
GCS client with Google's default credentials (untested here: no GCS server runs in CI).

Writing. :func:`prepare_to_remote` (``mlmfast prepare -o s3://...``) runs ``prepare`` into a
staging directory under the cache, uploads the shards not yet uploaded, then the manifest last,
so a reader never sees a partial set; an interrupted run resumes when run again.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlmfast._faults import kill_point
from mlmfast.data.shards import (
    MANIFEST,
    ShardError,
    ShardFile,
    ShardSet,
    _fsync_dir,
    _stamp,
    _umask,
    _write_stamp,
    atomic_write_json,
    cache_dir,
    check_manifest,
    file_sha256,
    verify_mode,
)

__all__ = [
    "CACHE_ENV",
    "LIMIT_ENV",
    "PREFETCH_ENV",
    "RemoteShardSet",
    "is_remote",
    "open_remote",
    "parse_size",
    "prepare_to_remote",
    "shard_cache_root",
]

SCHEMES = ("s3", "gs")
CACHE_ENV = "MLMFAST_SHARD_CACHE"
LIMIT_ENV = "MLMFAST_CACHE_LIMIT"
PREFETCH_ENV = "MLMFAST_PREFETCH_SHARDS"
DEFAULT_CACHE_LIMIT = 64 << 30
DEFAULT_PREFETCH = 2
ATTEMPTS = 4
CHUNK = 8 << 20
DISK_RESERVE = 256 << 20
_STAGING = "staging"
_LOCKS = ".locks"


def is_remote(path: Any) -> bool:
    """Whether ``path`` is an object-storage URL this module reads (``s3://``, ``gs://``)."""
    return isinstance(path, str) and path.startswith(tuple(f"{s}://" for s in SCHEMES))


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"500M"``, ``"64G"``, ``"1.5TiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.I)
        if m is None:
            raise ValueError(
                f"cache_limit must be a number of bytes or a size such as 500M, 64G or 1T, "
                f"got {value!r}"
            )
        unit = m.group(2).upper()
        n = int(float(m.group(1)) * (1024 ** ("KMGT".index(unit) + 1) if unit else 1))
    if n < 1:
        raise ValueError(f"cache_limit must be at least 1 byte, got {value!r}")
    return n


def shard_cache_root(cache: str | None = None) -> str:
    """The cache of remote shard sets: ``cache``, else ``$MLMFAST_SHARD_CACHE``, else
    ``remote/`` under :func:`mlmfast.data.shards.cache_dir`."""
    return os.path.abspath(
        cache or os.environ.get(CACHE_ENV) or os.path.join(cache_dir(), "remote")
    )


@dataclass(frozen=True)
class _Location:
    """``scheme://bucket/prefix``, and where its objects are for pyarrow's file systems."""

    scheme: str
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> _Location:
        scheme, _, rest = url.partition("://")
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        if scheme not in SCHEMES or not bucket or ".." in prefix.split("/") or "\\" in rest:
            raise ValueError(
                f"{url!r}: expected s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (the folder of a "
                "shard set's manifest.json)"
            )
        return cls(scheme, bucket, prefix)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def path(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def object(self, name: str) -> str:
        return f"{self.path}/{name}"

    def object_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    @property
    def key(self) -> str:
        """A directory name for this set: readable, and unique by the URL's hash."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.path.replace("/", "_"))[-80:]
        return f"{slug}-{hashlib.sha256(self.url.encode()).hexdigest()[:12]}"

    def filesystem(self):
        import pyarrow.fs as pafs

        _register_exit()
        with _client_call():
            return self._filesystem(pafs)

    def _filesystem(self, pafs):
        if self.scheme == "gs":
            return pafs.GcsFileSystem()
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        options: dict[str, Any] = {}
        if endpoint:
            scheme, sep, host = endpoint.partition("://")
            options["endpoint_override"] = host.rstrip("/") if sep else endpoint
            options["scheme"] = scheme if sep else "https"
        elif not region:
            with contextlib.suppress(OSError):  # no network or no permission: the SDK's default
                region = pafs.resolve_s3_region(self.bucket)
        options["region"] = region or "us-east-1"
        return pafs.S3FileSystem(**options)


def _endpoint_hint(loc: _Location) -> str:
    if loc.scheme == "gs":
        return "check the URL and Google's credentials (GOOGLE_APPLICATION_CREDENTIALS)"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f"the endpoint {endpoint}" if endpoint else "AWS_ENDPOINT_URL for a non-AWS server"
    return f"check the URL, the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and {where}"


def _read_object(fs, path: str) -> bytes:
    with _client_call(), fs.open_input_stream(path) as f:
        return f.read()


def _listing(fs, loc: _Location) -> dict[str, int]:
    """Object name -> size of the files directly under the set's prefix."""
    from pyarrow.fs import FileSelector, FileType

    with _client_call():
        infos = fs.get_file_info(FileSelector(loc.path, allow_not_found=True))
    return {i.base_name: i.size for i in infos if i.type == FileType.File}


def _remote_manifest(fs, loc: _Location) -> dict | None:
    """The set's parsed manifest, None where the prefix has none."""
    murl = loc.object_url(MANIFEST)
    try:
        data = _read_object(fs, loc.object(MANIFEST))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ShardError(f"{murl}: cannot be read ({e}); {_endpoint_hint(loc)}") from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ShardError(
            f"{murl}: unreadable manifest ({e}); re-upload the set with `mlmfast prepare "
            f"INPUTS -o {loc.url} --overwrite`"
        ) from None


def _cached_name(entry: dict) -> str:
    stem = entry["file"][: -len(".arrow")] if entry["file"].endswith(".arrow") else entry["file"]
    return f"{stem}.{entry['sha256'][:16]}.arrow"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number") from None


def open_remote(
    url: str,
    *,
    verify: bool | str = "once",
    tokenizer: Any = None,
    cache_dir: str | None = None,
    cache_limit: int | str | None = None,
    prefetch_shards: int | None = None,
) -> RemoteShardSet:
    """The shard set at ``url`` (``s3://bucket/prefix``, ``gs://bucket/prefix``), read through
    the local cache. Checks the manifest as :func:`~mlmfast.data.shards.open_shards` checks a
    local one and that every listed object exists with its recorded size; shards are downloaded
    when read. ``cache_limit``: bytes or a size string (default ``$MLMFAST_CACHE_LIMIT``, else 64
    GiB); ``prefetch_shards``: shards downloaded ahead of the reader (default
    ``$MLMFAST_PREFETCH_SHARDS``, else 2; 0 downloads each when it is first read)."""
    mode = verify_mode(verify)
    loc = _Location.parse(url)
    limit = parse_size(
        cache_limit if cache_limit is not None else os.environ.get(LIMIT_ENV) or DEFAULT_CACHE_LIMIT
    )
    ahead = _env_int(PREFETCH_ENV, DEFAULT_PREFETCH) if prefetch_shards is None else prefetch_shards
    if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 0:
        raise ValueError(f"prefetch_shards must be a whole number >= 0, got {ahead!r}")
    fs = loc.filesystem()
    murl = loc.object_url(MANIFEST)
    manifest = _remote_manifest(fs, loc)
    if manifest is None:
        raise ShardError(
            f"{murl}: not found: no shard set at {loc.url}, or its upload has not finished (the "
            f"manifest is uploaded last); make one with `mlmfast prepare INPUTS -o {loc.url}`"
        )
    check_manifest(murl, manifest, tokenizer)
    root = shard_cache_root(cache_dir)
    directory = os.path.join(root, loc.key)
    os.makedirs(os.path.join(directory, _LOCKS), exist_ok=True)
    paths = [os.path.join(directory, _cached_name(e)) for e in manifest["shards"]]
    # the objects still to download must be there with their sizes; a cached copy, named by its
    # sha256, needs no object (an epoch on a warm cache costs one request)
    wanted = [e for e, p in zip(manifest["shards"], paths, strict=True) if not os.path.exists(p)]
    if wanted:
        try:
            sizes = _listing(fs, loc)
        except OSError as e:
            raise ShardError(f"{loc.url}: cannot be listed ({e}); {_endpoint_hint(loc)}") from None
    fix = f"re-upload the set with `mlmfast prepare INPUTS -o {loc.url} --overwrite`"
    for e in wanted:
        got = sizes.get(e["file"])
        if got is None:
            raise ShardError(
                f"{loc.object_url(e['file'])}: listed in {MANIFEST} but missing; {fix}"
            )
        if got != e["bytes"]:
            raise ShardError(
                f"{loc.object_url(e['file'])}: {got} bytes, the manifest records {e['bytes']} "
                f"(truncated or replaced); {fix}"
            )
    source = os.path.join(directory, "source.json")
    if not os.path.exists(source):
        atomic_write_json(source, {"url": loc.url})
    return RemoteShardSet(
        directory,
        manifest,
        paths,
        mode,
        url=loc.url,
        cache_root=root,
        cache_limit=limit,
        prefetch_shards=ahead,
    )


@dataclass
class RemoteShardSet(ShardSet):
    """A :class:`~mlmfast.data.shards.ShardSet` on object storage: ``paths`` are the cached
    copies (present or not), ``open(k)`` downloads shard ``k`` first when needed. Picklable into
    DataLoader workers; each process downloads and locks on its own (see the module docstring)."""

    url: str = ""
    cache_root: str = ""
    cache_limit: int = DEFAULT_CACHE_LIMIT
    prefetch_shards: int = DEFAULT_PREFETCH

    remote = True
    max_open = 3  # mapped per process: a batch's shards, and one read past (bucketing mixes)

    def __post_init__(self) -> None:
        self._fetcher: _Fetcher | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fetcher"] = None
        return state

    def fetcher(self) -> _Fetcher:
        """This process's downloader (a fresh one in a forked worker: locks and threads are per
        process)."""
        f = self._fetcher
        if f is None or f.pid != os.getpid():
            if f is not None:
                f.abandon()
            f = self._fetcher = _Fetcher(self)
        return f

    def object_url(self, k: int) -> str:
        return f"{self.url}/{self.manifest['shards'][k]['file']}"

    def plan(self, order: Sequence[int]) -> None:
        self.fetcher().plan(order)

    def stats(self) -> dict[str, float]:
        """This process's counts: ``downloads``, ``bytes``, ``download_seconds``, ``hits``
        (reads served by a cached or prefetched copy), ``wait_seconds`` (time reads waited for a
        download: the data wait the prefetch is there to hide), ``evictions``, ``retries``."""
        return dict(self.fetcher().stats)

    def open(self, k: int) -> ShardFile:
        fetcher = self.fetcher()
        for attempt in (0, 1):
            path = fetcher.acquire(k)
            try:
                shard = ShardFile(path, self.manifest["shards"][k], self, self.verify)
            except ShardError as e:
                fetcher.release(k)
                damaged = file_sha256(path) != self.manifest["shards"][k]["sha256"]
                # a copy changed on this disk after its download: fetch it again, once
                if damaged and fetcher.evict_one(path) and attempt == 0:
                    continue
                if not damaged:
                    fetcher.evict_one(path)  # the bucket's bytes are bad: keep nothing of them
                what = str(e).split(": ", 1)[1] if str(e).startswith(path) else str(e)
                what = what.replace(
                    "re-run `mlmfast prepare` (with --overwrite) to rebuild the shard set",
                    f"re-upload the set with `mlmfast prepare INPUTS -o {self.url} --overwrite`",
                )
                raise ShardError(f"{self.object_url(k)} (cached as {path}): {what}") from None
            weakref.finalize(shard, _release, fetcher, k, os.getpid())
            return shard
        raise AssertionError("unreachable")


def _release(fetcher: _Fetcher, k: int, pid: int) -> None:
    if os.getpid() == pid:  # a forked child drops the parent's locks through abandon()
        fetcher.release(k)


class _Lease:
    """This process's shared lock on a cached shard's ``.use`` file: while it is held, no process
    evicts the copy. ``refs`` counts mapped ShardFiles; ``prefetched`` a copy not yet read."""

    __slots__ = ("fd", "refs", "prefetched")

    def __init__(self, fd: int):
        self.fd, self.refs, self.prefetched = fd, 0, False

    def close(self) -> None:
        # close, never LOCK_UN: a forked process shares the lock's open file description, and
        # LOCK_UN would drop the lock for both
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Transient(OSError):
    """A transfer that ended short: worth another attempt."""


class _Missing(Exception):
    """The object is not in the bucket: no attempt will find it."""


class _ForkGate:
    """Calls into the storage clients against ``fork``: a fork (a DataLoader starting its
    workers) waits until no thread of this process is inside a call, and calls wait while it
    forks. A child forked in the middle of a call inherits the AWS SDK's state mid-request and
    its own first request hangs."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.forking = False

    @contextlib.contextmanager
    def call(self):
        with self.cond:
            while self.forking:
                self.cond.wait()
            self.active += 1
        try:
            yield
        finally:
            with self.cond:
                self.active -= 1
                self.cond.notify_all()

    def before_fork(self) -> None:
        self.cond.acquire()
        self.forking = True
        while self.active:
            self.cond.wait()

    def after_fork_in_parent(self) -> None:
        self.forking = False
        self.cond.notify_all()
        self.cond.release()


_GATE = _ForkGate()


def _client_call():
    """Around every call into a storage client (never nested: a fork waits for the outer)."""
    return _GATE.call()


def _new_gate() -> None:
    global _GATE
    _GATE = _ForkGate()  # the child's copy of the parent's is held by the forking thread


os.register_at_fork(
    before=lambda: _GATE.before_fork(),
    after_in_parent=lambda: _GATE.after_fork_in_parent(),
    after_in_child=_new_gate,
)

_FETCHERS: weakref.WeakSet = weakref.WeakSet()
_EXIT_REGISTERED = False


def _register_exit() -> None:
    # registered after pyarrow.fs is imported (which registers the S3 SDK's finalisation at
    # exit), so it runs first: no download thread uses the SDK after its shutdown
    global _EXIT_REGISTERED
    if not _EXIT_REGISTERED:
        import pyarrow.fs  # noqa: F401

        atexit.register(_stop_all)
        _EXIT_REGISTERED = True


def _stop_all() -> None:
    for f in list(_FETCHERS):
        f.stop()


class _Fetcher:
    """One process's downloads of one remote set: the cache's locks, the prefetch thread, the
    reading position in the planned shard order, and its counts."""

    def __init__(self, shards: RemoteShardSet):
        self.shards = shards
        self.pid = os.getpid()
        self.cond = threading.Condition()
        self.leases: dict[int, _Lease] = {}
        self.pending: set[int] = set()  # being downloaded or locked by a thread of this process
        self.failed: dict[int, BaseException] = {}
        self.order: list[int] = []
        self.positions: dict[int, list[int]] = {}
        self.cursor = -1
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.warned = False
        self._fs = None
        self.stats = dict.fromkeys(
            ("downloads", "bytes", "download_seconds", "hits", "wait_seconds", "evictions"), 0
        )
        self.stats["retries"] = 0
        _FETCHERS.add(self)

    @property
    def fs(self):
        if self._fs is None:
            self._fs = _Location.parse(self.shards.url).filesystem()
        return self._fs

    # -- lifetime --
    def abandon(self) -> None:
        """In a forked child: drop the parent's locks (close the inherited descriptors; the
        parent keeps its own) without touching the parent's threading state."""
        for lease in self.leases.values():
            lease.close()
        self.leases = {}

    def stop(self) -> None:
        if self.pid != os.getpid():
            return
        with self.cond:
            self.stopping = True
            thread = self.thread
            self.cond.notify_all()
        if thread is not None:
            thread.join(timeout=30)

    # -- the reading order and the prefetch window --
    def plan(self, order: Sequence[int]) -> None:
        with self.cond:
            self.order = list(order)
            self.positions = {}
            for j, k in enumerate(self.order):
                self.positions.setdefault(k, []).append(j)
            self.cursor = -1
            self.failed.clear()
            self._drop_outside_window()
            self._kick()

    def _window(self) -> list[int]:
        start = self.cursor + 1
        return self.order[start : start + self.shards.prefetch_shards]

    def _advance(self, k: int) -> None:
        at = self.positions.get(k)
        if at:
            i = bisect_left(at, max(self.cursor, 0))
            if i < len(at):
                self.cursor = at[i]

    def _drop_outside_window(self) -> None:
        keep = set(self._window())
        for k in [k for k, lease in self.leases.items() if lease.prefetched and k not in keep]:
            self.leases[k].prefetched = False
            self._maybe_close(k)

    def _maybe_close(self, k: int) -> None:
        lease = self.leases[k]
        if lease.refs == 0 and not lease.prefetched:
            lease.close()
            del self.leases[k]

    def _kick(self) -> None:
        if self.stopping or self.thread is not None:
            return
        if any(self._wanted(k) for k in self._window()):
            self.thread = threading.Thread(
                target=self._prefetch, name="mlmfast-prefetch", daemon=True
            )
            self.thread.start()

    def _wanted(self, k: int) -> bool:
        return k not in self.leases and k not in self.pending and k not in self.failed

    def _prefetch(self) -> None:
        while True:
            with self.cond:
                k = next((k for k in self._window() if self._wanted(k)), None)
                if k is None or self.stopping:
                    self.thread = None
                    return
                self.pending.add(k)
            fd, error = -1, None
            try:
                fd = self._lock_and_fetch(k)
            except BaseException as e:  # handed to the reader, which tries again itself
                error = e
            with self.cond:
                self.pending.discard(k)
                if error is not None:
                    self.failed[k] = error
                else:
                    lease = self.leases[k] = _Lease(fd)
                    lease.prefetched = True
                    if k not in self._window():  # the reader moved on meanwhile
                        self._drop_outside_window()
                self.cond.notify_all()

    # -- what the reader calls --
    def acquire(self, k: int) -> str:
        """Shard ``k``'s cached copy, downloaded if needed, leased until ``release(k)``."""
        t0 = time.perf_counter()
        with self.cond:
            self._advance(k)
            while k in self.pending:
                self.cond.wait()
            lease = self.leases.get(k)
            if lease is not None:
                if lease.prefetched:
                    lease.prefetched = False
                lease.refs += 1
                self.stats["hits"] += 1
            else:
                self.pending.add(k)
                self.failed.pop(k, None)
            self._drop_outside_window()
            self._kick()
        if lease is None:
            hit = os.path.exists(self.shards.paths[k])
            try:
                fd = self._lock_and_fetch(k)
            finally:
                with self.cond:
                    self.pending.discard(k)
                    self.cond.notify_all()
            with self.cond:
                lease = self.leases[k] = _Lease(fd)
                lease.refs = 1
                self.stats["hits"] += hit
                self._kick()
        self.stats["wait_seconds"] += time.perf_counter() - t0
        return self.shards.paths[k]

    def release(self, k: int) -> None:
        with self.cond:
            lease = self.leases.get(k)
            if lease is not None and lease.refs > 0:
                lease.refs -= 1
                self._maybe_close(k)

    # -- the cache --
    def _lock_files(self, k: int) -> tuple[str, str]:
        name = os.path.basename(self.shards.paths[k])
        base = os.path.join(self.shards.directory, _LOCKS, name)
        return base + ".use", base + ".dl"

    def _lock_and_fetch(self, k: int) -> int:
        """A shared lock on shard ``k``'s ``.use`` file, with its copy in the cache."""
        use, dl = self._lock_files(k)
        fd = os.open(use, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an evictor removes the copy
            if not os.path.exists(self.shards.paths[k]):
                dfd = os.open(dl, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                try:
                    fcntl.flock(dfd, fcntl.LOCK_EX)  # one downloader; the others wait here
                    if not os.path.exists(self.shards.paths[k]):
                        self._download(k)
                finally:
                    os.close(dfd)
            os.utime(fd)  # the LRU clock
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _download(self, k: int) -> None:
        """Shard ``k`` from the bucket into its cached copy (the caller holds its ``.dl``
        lock): to a ``.part`` file, checked, renamed, stamped."""
        entry = self.shards.manifest["shards"][k]
        final = self.shards.paths[k]
        url = self.shards.object_url(k)
        directory = os.path.dirname(final)
        name = os.path.basename(final)
        for stale in os.listdir(directory):  # of a killed download: we hold the shard's lock
            if stale.startswith(f".{name}.") and stale.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, stale))
        self._make_room(entry["bytes"], url)
        src = _Location.parse(self.shards.url).object(entry["file"])
        last: BaseException | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(0.2 * 2**attempt)
            if self.stopping:
                break
            t0 = time.perf_counter()
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
            try:
                digest = self._transfer(src, fd, entry["bytes"])
                if digest != entry["sha256"]:
                    raise ShardError(
                        f"{url}: sha256 does not match the manifest (corrupt or modified in the "
                        f"bucket); nothing of it was kept in the cache; re-upload the set with "
                        f"`mlmfast prepare INPUTS -o {self.shards.url} --overwrite`"
                    )
                os.chmod(tmp, 0o666 & ~_umask())
                os.replace(tmp, final)
                _fsync_dir(directory)
                _write_stamp(_stamp(os.stat(final), entry["sha256"]))
                self.stats["downloads"] += 1
                self.stats["bytes"] += entry["bytes"]
                self.stats["download_seconds"] += time.perf_counter() - t0
                return
            except _Missing as e:
                raise ShardError(
                    f"{url}: not found in the bucket ({e}); re-upload the set with "
                    f"`mlmfast prepare INPUTS -o {self.shards.url} --overwrite`"
                ) from None
            except OSError as e:  # network, server, short transfer: another attempt
                last = e
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        if self.stopping:
            raise ShardError(f"{url}: download stopped (the process is exiting)")
        raise ShardError(
            f"{url}: download failed after {ATTEMPTS} attempts ({last}); nothing of it was "
            f"kept in the cache; {_endpoint_hint(_Location.parse(self.shards.url))}"
        )

    def _transfer(self, src: str, fd: int, size: int) -> str:
        """The object ``src`` into ``fd``, hashed as it streams; its sha256."""
        h = hashlib.sha256()
        n = 0
        fs = self.fs
        try:
            with _client_call():
                stream = fs.open_input_stream(src)
        except FileNotFoundError as e:
            raise _Missing(str(e)) from None
        try:
            while True:
                with _client_call():
                    chunk = stream.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                n += len(chunk)
                kill_point(f"mid-download {os.path.basename(src)}")
                if n > size or self.stopping:
                    break
        finally:
            with _client_call():
                stream.close()
        if n != size:
            raise _Transient(f"received {n} bytes, the manifest records {size}")
        os.fsync(fd)
        return h.hexdigest()

    def _make_room(self, size: int, url: str) -> None:
        """Evict least recently used copies that no process holds until the cache plus
        ``size`` fits the limit and the disk."""
        root = self.shards.cache_root
        fd = os.open(
            os.path.join(root, ".evict.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            copies = _cached_copies(root)
            used = sum(c[2] for c in copies)
            over = used + size - self.shards.cache_limit
            short = size + DISK_RESERVE - shutil.disk_usage(root).free
            for _, path, nbytes in sorted(copies):
                if over <= 0 and short <= 0:
                    break
                if self.evict_one(path):
                    over, short = over - nbytes, short - nbytes
        finally:
            os.close(fd)
        if short > 0:
            raise ShardError(
                f"{url}: {size} bytes do not fit on the disk of the shard cache {root} (every "
                f"cached shard left is in use); free space there or set {CACHE_ENV} to a larger "
                "disk"
            )
        if over > 0 and not self.warned:
            self.warned = True
            warnings.warn(
                f"shard cache {root}: {used + size} bytes needed at once, over cache_limit "
                f"{self.shards.cache_limit} (every cached shard is in use by a process of this "
                f"node); raise {LIMIT_ENV} or lower prefetch_shards",
                stacklevel=2,
            )

    def evict_one(self, path: str) -> bool:
        """Remove the cached copy ``path`` if no process holds it (its exclusive ``.use`` lock,
        without waiting); stale ``.part`` files of the shard go with it."""
        directory, name = os.path.split(path)
        use = os.path.join(directory, _LOCKS, name + ".use")
        try:
            fd = os.open(use, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
        self.stats["evictions"] += 1
        return True


def _cached_copies(root: str) -> list[tuple[float, str, int]]:
    """(last use, path, bytes) of every cached copy under ``root``."""
    out = []
    with os.scandir(root) as sets:
        for d in sets:
            if not d.is_dir() or d.name.startswith(".") or d.name == _STAGING:
                continue
            with os.scandir(d.path) as files:
                for f in files:
                    if f.name.startswith(".") or not f.name.endswith(".arrow"):
                        continue
                    try:
                        size = f.stat().st_size
                    except FileNotFoundError:
                        continue
                    try:
                        used = os.stat(os.path.join(d.path, _LOCKS, f.name + ".use")).st_mtime
                    except FileNotFoundError:
                        used = 0.0
                    out.append((used, f.path, size))
    return out


# -- write side --------------------------------------------------------------------------------


def _upload(fs, local: str, dest: str, url: str) -> None:
    last: BaseException | None = None
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.2 * 2**attempt)
        try:
            with open(local, "rb") as src, fs.open_output_stream(dest) as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
            return
        except OSError as e:
            last = e
    raise ShardError(f"{url}: upload failed after {ATTEMPTS} attempts ({last})")


def prepare_to_remote(
    inputs: Sequence[str] | str,
    url: str,
    *,
    overwrite: bool = False,
    cache_dir: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``mlmfast.data.prepare`` to object storage: the set is built in a staging directory
    under the shard cache (``staging/<set>/set``; resumable as a local prepare is), its shards
    are uploaded (those not uploaded yet: ``uploaded.json`` beside it records each by sha256),
    then the manifest, last. Returns the manifest.

    A prefix that holds another set (its manifest differs) is refused unless ``overwrite``,
    which removes the remote manifest first (readers then fail clearly instead of mixing two
    sets), rebuilds and uploads everything and removes the old set's shards. The staging
    directory is kept after the upload (a rerun of the same command is then a no-op); remove
    it to reclaim the space. ``options`` are ``prepare``'s."""
    from mlmfast.data.prepare import prepare
    from mlmfast.locking import DirectoryLock

    loc = _Location.parse(url)
    fs = loc.filesystem()
    staging = os.path.join(shard_cache_root(cache_dir), _STAGING, loc.key)
    local = os.path.join(staging, "set")
    record_path = os.path.join(staging, "uploaded.json")
    refuse = (
        f"{loc.url}: holds another shard set ({MANIFEST} differs from this run's); pass "
        "--overwrite to replace it, or choose another prefix"
    )
    with DirectoryLock(staging, f"mlmfast prepare -o {loc.url}"):
        remote = _remote_manifest(fs, loc)
        if overwrite:
            if remote is not None:
                fs.delete_file(loc.object(MANIFEST))
                remote = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record_path)
        elif remote is not None and not os.path.exists(os.path.join(local, MANIFEST)):
            raise ShardError(refuse)
        manifest = prepare(inputs, local, overwrite=overwrite, **options)
        with open(os.path.join(local, MANIFEST), encoding="utf-8") as f:
            staged = json.load(f)  # as uploaded: JSON, not the dict prepare returned
        if remote is not None:
            if remote == staged:
                return manifest
            raise ShardError(refuse)
        try:
            with open(record_path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {}
        sizes = _listing(fs, loc)
        for e in manifest["shards"]:
            if record.get(e["file"]) == e["sha256"] and sizes.get(e["file"]) == e["bytes"]:
                continue
            _upload(
                fs, os.path.join(local, e["file"]), loc.object(e["file"]), loc.object_url(e["file"])
            )
            record[e["file"]] = e["sha256"]
            atomic_write_json(record_path, record)
            kill_point(f"uploaded {e['file']}")
        listed = {e["file"] for e in manifest["shards"]}
        for name in sizes:  # an overwritten set's shards that the new one does not have
            if name.startswith("shard-") and name.endswith(".arrow") and name not in listed:
                fs.delete_file(loc.object(name))
        _upload(fs, os.path.join(local, MANIFEST), loc.object(MANIFEST), loc.object_url(MANIFEST))
        return manifest
