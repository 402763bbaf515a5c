"""``mlmfast prepare`` as independent parts that any engine can schedule, and their merge.

The documents (after ``skip``/``limit``) are cut into batches of ``batch_docs`` by absolute
document index, as a single run cuts them. Part ``k`` of ``n`` tokenises (and tags) the batches
``b`` with ``b % n == k``: a pure function of (inputs, options, k, n), whatever runs it. It
reads the whole input (reading and hashing, for ``dedup``, cost little next to tokenising) and
writes one chunk per batch, ``OUT/parts/part-K-of-N/chunk-BBBBBBB.arrow`` (the batch's encoded
documents, duplicates marked), then ``part.json``. A part killed midway resumes: written chunks
are kept (each is written atomically), the rest are made.

:func:`merge` then packs the chunks in batch order with the same packer and shard writer as a
single run, so the shards and the manifest are byte-identical (timing fields aside) to
``prepare`` in one process, whatever ``n`` and engine. It refuses a set with a missing part, a
part of another ``n`` or one made with other options. Engines: a Slurm array or any launcher
(``--part K/N`` per task, then ``--merge``), a Dask cluster (:func:`run_on_dask`), and the
local pool of ``prepare(num_proc=...)``, which streams the same batches through worker
processes without chunk files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np

from mlmfast.data.encode import Encoded, _encode, _init_worker
from mlmfast.data.shards import ShardError, atomic_write_bytes, atomic_write_json
from mlmfast.locking import DirectoryLock

PARTS = "parts"
JOB = "job.json"
DONE = "part.json"
_FIELDS = Encoded._fields

__all__ = ["PartError", "merge", "part_dir", "parse_part", "run_on_dask", "run_part"]


class PartError(RuntimeError):
    """A part failed: the message names the part and its inputs (the cause is chained)."""


def part_dir(output: str, k: int, n: int) -> str:
    return os.path.join(output, PARTS, f"part-{k:05d}-of-{n:05d}")


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` (``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) -> (k, n), 0 <= k < n."""
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"part must be K/N with integers 0 <= K < N, got {text!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"part must be K/N with 0 <= K < N, got {text!r}")
    return k, n


# -- chunks: one batch's encoded documents as an Arrow IPC file ---------------------------------


def _chunk_bytes(docs: list[int], encoded: list[Encoded | None]) -> bytes:
    import pyarrow as pa

    columns: dict[str, Any] = {
        "doc": pa.array(np.asarray(docs, np.int64)),
        "dup": pa.array([e is None for e in encoded]),
    }
    for name in _FIELDS:
        values = [None if e is None else getattr(e, name) for e in encoded]
        arrays = [v for v in values if v is not None]
        if not arrays:
            continue
        dtype = arrays[0].dtype
        flat = np.concatenate([np.asarray(v, dtype) for v in arrays])
        lengths = np.array([0 if v is None else len(v) for v in values], np.int64)
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        valid = pa.array([v is not None for v in values])
        columns[name] = pa.LargeListArray.from_arrays(
            pa.array(offsets), pa.array(flat), mask=pa.compute.invert(valid)
        )
    batch = pa.RecordBatch.from_pydict(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _read_chunk(path: str) -> tuple[list[int], list[Encoded | None]]:
    import pyarrow as pa

    try:
        with pa.memory_map(path) as src:
            table = pa.ipc.open_file(src).read_all()
        table.validate(full=True)
        docs = table.column("doc").to_numpy().tolist()
        dup = table.column("dup").to_pylist()
        fields = {}
        for name in _FIELDS:
            if name in table.column_names:
                col = table.column(name).combine_chunks()
                values = col.values.to_numpy(zero_copy_only=False)
                offsets = col.offsets.to_numpy()
                fields[name] = [
                    values[offsets[i] : offsets[i + 1]].copy() if col[i].is_valid else None
                    for i in range(len(col))
                ]
    except (pa.ArrowException, OSError, KeyError, ValueError) as e:
        raise ShardError(f"{path}: not a readable chunk ({e}); re-run its part") from None
    encoded = [
        None if dup[i] else Encoded(**{name: fields[name][i] for name in fields})
        for i in range(len(docs))
    ]
    return docs, encoded


# -- a part ----------------------------------------------------------------------------------


def run_part(job: Any, output: str, k: int, n: int, progress: bool = False) -> dict[str, Any]:
    """Make part ``k`` of ``n`` of ``job`` (a :class:`mlmfast.data.prepare._Job`) under
    ``output``; returns its record (``part.json``). Resumes a killed run of the same part."""
    from mlmfast.data.prepare import _batched, _documents

    directory = part_dir(output, k, n)
    with DirectoryLock(directory, f"mlmfast prepare --part {k}/{n}"):
        record = _load(os.path.join(directory, DONE))
        if record is not None and record.get("options") == job.options:
            return record
        _check_job(output, job)
        _init_worker(job.tok, job.word_ids, False, job.tagger, job.mode, job.max_length)
        bar = _bar(progress, f"part {k}/{n}")
        batches = chunks = 0
        try:
            for b, batch in enumerate(_batched(_documents(job, 0), job.batch_docs)):
                batches = b + 1
                if b % n != k:
                    continue
                chunks += 1
                path = os.path.join(directory, f"chunk-{b:07d}.arrow")
                if not os.path.exists(path):  # written atomically: present means complete
                    encoded = _encode([t for _, t in batch])
                    atomic_write_bytes(path, _chunk_bytes([i for i, _ in batch], encoded))
                if bar is not None:
                    bar.update(len(batch))
        except Exception as e:
            raise PartError(
                f"part {k}/{n} of {job.files} (document batches b with b % {n} == {k}): "
                f"{type(e).__name__}: {e}"
            ) from e
        finally:
            if bar is not None:
                bar.close()
        record = {"part": k, "parts": n, "batches": batches, "chunks": chunks}
        record["options"] = job.options
        atomic_write_json(os.path.join(directory, DONE), record)
        return record


def _check_job(output: str, job: Any) -> None:
    """The first part records the job's options; a part of another job is refused."""
    os.makedirs(os.path.join(output, PARTS), exist_ok=True)
    path = os.path.join(output, PARTS, JOB)
    recorded = _load(path)
    if recorded is None:
        atomic_write_json(path, {"options": job.options, "settings": job.settings})
    elif recorded.get("options") != job.options:
        raise ShardError(
            f"{path}: the parts in {output} were made with other prepare options; run every "
            "part with the same options, or remove the parts directory to start over"
        )


def _load(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _bar(enabled: bool, desc: str):
    if not enabled:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(unit="doc", desc=desc, file=sys.stderr)


# -- the merge -------------------------------------------------------------------------------


def check_parts(output: str, options: dict) -> tuple[int, int]:
    """(n, batches) of a complete set of parts made with ``options``; else a ShardError naming
    the missing, foreign or unfinished part."""
    root = os.path.join(output, PARTS)
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    dirs = [d for d in names if d.startswith("part-")]
    if not dirs:
        raise ShardError(
            f"{root}: no parts to merge; make them with `mlmfast prepare ... --part K/N`"
        )
    counts = {d.rsplit("-of-", 1)[-1] for d in dirs}
    if len(counts) != 1:
        raise ShardError(
            f"{root}: parts of different splits ({sorted(dirs)}); remove the foreign ones"
        )
    n = int(counts.pop())
    batches = set()
    for k in range(n):
        d = part_dir(output, k, n)
        record = _load(os.path.join(d, DONE))
        if record is None:
            raise ShardError(
                f"{d}: part {k}/{n} is missing or unfinished; run `mlmfast prepare ... "
                f"--part {k}/{n}` (it resumes) before --merge"
            )
        if record.get("options") != options:
            raise ShardError(f"{d}: part {k}/{n} was made with other prepare options")
        batches.add(record["batches"])
    if len(batches) != 1:
        raise ShardError(f"{root}: the parts read different numbers of documents (inputs changed?)")
    return n, batches.pop()


def iter_chunks(output: str, n: int, batches: int, first_batch: int) -> Iterator[tuple]:
    """(document indices, encoded documents) of every batch from ``first_batch``, in order."""
    for b in range(first_batch, batches):
        path = os.path.join(part_dir(output, b % n, n), f"chunk-{b:07d}.arrow")
        if not os.path.isfile(path):
            raise ShardError(f"{path}: missing; re-run part {b % n}/{n} (it resumes)")
        yield _read_chunk(path)


def merge(output: str, progress: bool = True, keep_parts: bool = False) -> dict[str, Any]:
    """Pack the parts in ``output`` into shards and the manifest (see the module docstring).
    The job is the one recorded by the parts; the parts are removed once the manifest is
    written, unless ``keep_parts``."""
    from mlmfast.data.prepare import _Job, write_locked

    recorded = _load(os.path.join(output, PARTS, JOB))
    if recorded is None:
        raise ShardError(
            f"{os.path.join(output, PARTS)}: no parts to merge; make them with "
            "`mlmfast prepare ... --part K/N`"
        )
    job = _Job.from_settings(recorded["settings"])
    n, batches = check_parts(output, job.options)

    def source(first_doc: int):
        yield from iter_chunks(output, n, batches, first_doc // job.batch_docs)

    manifest = write_locked(job, output, source, progress=progress, command="--merge")
    if not keep_parts:
        shutil.rmtree(os.path.join(output, PARTS), ignore_errors=True)
    return manifest


# -- Dask ---------------------------------------------------------------------------------------


def _dask_part(settings: dict, output: str, k: int, n: int) -> dict:
    from mlmfast.data.prepare import _Job

    # one thread per worker process: the cluster already runs one process per core
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    return run_part(_Job.from_settings(settings), output, k, n)


def run_on_dask(
    settings: dict, output: str, parts: int, scheduler: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """The parts as tasks of a Dask cluster (``scheduler``: an address such as
    ``tcp://head:8786``; None starts a local cluster of ``parts`` single-threaded worker
    processes), then the merge here. Workers must import mlmfast and see ``output`` (a shared
    file system)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise ImportError(
            "engine='dask' needs dask.distributed: pip install 'mlmfast[cluster]' "
            "(or dask[distributed])"
        ) from e
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=parts, threads_per_worker=1, processes=True, dashboard_address=None
        )
    try:
        with Client(scheduler or cluster) as client:
            futures = [
                client.submit(_dask_part, settings, output, k, parts, pure=False)
                for k in range(parts)
            ]
            for k, future in enumerate(futures):
                try:
                    future.result()
                except PartError:
                    raise
                except Exception as e:
                    raise PartError(f"part {k}/{parts} on Dask: {type(e).__name__}: {e}") from e
    finally:
        if cluster is not None:
            cluster.close()
    return merge(output, progress=progress)
