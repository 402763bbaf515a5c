"""The shard format: a directory of Arrow IPC files plus ``manifest.json``.

::

    out/
      manifest.json          written last; its presence means the set is complete
      shard-00000.arrow      Arrow IPC *file* format, uncompressed, one record batch
      shard-00001.arrow
      ...

Columns of a shard:

* ``input_ids``: ``fixed_size_list<int32>[L]`` when every row of the shard has the full
  length ``L`` (a ``[rows, L]`` matrix the loader views without copying), else
  ``list<int32>``;
* ``sample_id``: int64, the global row index in prepare order (stable across runs, so masks
  keyed on it are reproducible);
* ``word_ids`` (optional): ``list<int32>``, the tokenizer's word index per token, ``-1`` for
  special tokens;
* ``pos_ids`` (optional, ``prepare --pos``): the part-of-speech class per token (uint8, see
  :mod:`mlmfast.pos`; ``SPECIAL`` on special tokens), ``fixed_size_list<uint8>[L]`` when
  ``input_ids`` is, else ``list<uint8>``;
* ``token_type_ids`` (optional): ``list<int32>``.

Files are uncompressed so that ``pyarrow.memory_map`` serves rows straight from the page cache.
Every write goes to a temporary file in the same directory, is fsynced and renamed over the
final name, so a reader never sees half a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:05d}.arrow"
_FIX = "re-run `mlmfast prepare` (with --overwrite) to rebuild the shard set"

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "ShardError",
    "ShardSet",
    "ShardWriter",
    "atomic_write_bytes",
    "file_sha256",
    "open_shards",
    "tokenizer_info",
    "vocab_hash",
]


class ShardError(RuntimeError):
    """A shard directory is missing, incomplete, corrupt or from other options."""


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("mlmfast shards need pyarrow (pip install pyarrow)") from e
    return pa


def vocab_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary as sorted ``(token, id)`` items: two tokenizers
    with the same hash map every token to the same id."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_info(tokenizer: Any, path: str | None = None) -> dict[str, Any]:
    """What the manifest records about the tokenizer the shards were made with."""
    return {
        "name": getattr(tokenizer, "name_or_path", None),
        "path": path,
        "vocab_hash": vocab_hash(tokenizer),
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one:
    temp file in the same directory, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; shards are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _list_column(pa, rows: Sequence[np.ndarray], fixed: int | None, dtype=np.int32):
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    values = (
        np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if rows else np.empty(0, dtype)
    )
    flat = pa.array(values, type=pa.from_numpy_dtype(np.dtype(dtype)))
    if fixed is not None:
        return pa.FixedSizeListArray.from_arrays(flat, fixed)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), flat)


def encode_shard(
    input_ids: Sequence[np.ndarray],
    sample_id: np.ndarray,
    max_length: int,
    word_ids: Sequence[np.ndarray] | None = None,
    token_type_ids: Sequence[np.ndarray] | None = None,
    pos_ids: Sequence[np.ndarray] | None = None,
) -> bytes:
    """One shard as Arrow IPC file bytes (one record batch). Deterministic: the same rows give
    the same bytes, which is what makes an interrupted ``prepare`` resumable bit for bit."""
    pa = _pa()
    full = len(input_ids) > 0 and all(len(r) == max_length for r in input_ids)
    fixed = max_length if full else None
    columns = {"input_ids": _list_column(pa, input_ids, fixed)}
    columns["sample_id"] = pa.array(np.asarray(sample_id, dtype=np.int64), type=pa.int64())
    if word_ids is not None:
        columns["word_ids"] = _list_column(pa, word_ids, None)
    if pos_ids is not None:
        columns["pos_ids"] = _list_column(pa, pos_ids, fixed, np.uint8)
    if token_type_ids is not None:
        columns["token_type_ids"] = _list_column(pa, token_type_ids, None)
    batch = pa.RecordBatch.from_pydict(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


@dataclass
class ShardWriter:
    """Buffers rows and writes ``shard-NNNNN.arrow`` every ``shard_rows`` rows.

    ``add(input_ids, word_ids=None, token_type_ids=None, pos_ids=None)`` takes one row (int
    sequence with its special tokens);
    ``sample_id`` is the global row index, counted from ``first_row``. ``close()`` flushes the
    last partial shard. ``on_shard(entry)`` is called after each shard is on disk (prepare
    records its progress there; with ``pos_ids`` the entry has ``pos_counts``, the number of
    tokens of each class). The manifest is not written here: see ``write_manifest``.
    """

    directory: str
    max_length: int
    shard_rows: int = 65536
    word_ids: bool = False
    token_type_ids: bool = False
    pos_ids: bool = False
    first_shard: int = 0
    first_row: int = 0
    on_shard: Any = None
    shards: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {self.shard_rows}")
        os.makedirs(self.directory, exist_ok=True)
        self._ids: list[np.ndarray] = []
        self._words: list[np.ndarray] = []
        self._types: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._next_shard = self.first_shard
        self._next_row = self.first_row

    def add(self, input_ids, word_ids=None, token_type_ids=None, pos_ids=None) -> None:
        if len(input_ids) > self.max_length:
            raise ValueError(f"row of {len(input_ids)} tokens exceeds max_length={self.max_length}")
        self._ids.append(np.asarray(input_ids, dtype=np.int32))
        if self.word_ids:
            if word_ids is None or len(word_ids) != len(input_ids):
                raise ValueError("ShardWriter(word_ids=True) needs word_ids of the row's length")
            self._words.append(np.asarray(word_ids, dtype=np.int32))
        if self.token_type_ids:
            tt = np.zeros(len(input_ids), np.int32) if token_type_ids is None else token_type_ids
            self._types.append(np.asarray(tt, dtype=np.int32))
        if self.pos_ids:
            if pos_ids is None or len(pos_ids) != len(input_ids):
                raise ValueError("ShardWriter(pos_ids=True) needs pos_ids of the row's length")
            self._pos.append(np.asarray(pos_ids, dtype=np.uint8))
        if len(self._ids) >= self.shard_rows:
            self.flush()

    def flush(self) -> dict[str, Any] | None:
        if not self._ids:
            return None
        n = len(self._ids)
        data = encode_shard(
            self._ids,
            np.arange(self._next_row, self._next_row + n, dtype=np.int64),
            self.max_length,
            self._words if self.word_ids else None,
            self._types if self.token_type_ids else None,
            self._pos if self.pos_ids else None,
        )
        name = SHARD_PATTERN.format(self._next_shard)
        atomic_write_bytes(os.path.join(self.directory, name), data)
        entry = {
            "file": name,
            "rows": n,
            "tokens": int(sum(len(r) for r in self._ids)),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "fixed_length": all(len(r) == self.max_length for r in self._ids),
        }
        if self.pos_ids:
            from mlmfast import pos

            counts = np.bincount(np.concatenate(self._pos), minlength=pos.NUM_CLASSES)
            entry["pos_counts"] = [int(c) for c in counts[: pos.NUM_CLASSES]]
        self.shards.append(entry)
        self._next_shard += 1
        self._next_row += n
        self._ids, self._words, self._types, self._pos = [], [], [], []
        if self.on_shard is not None:
            self.on_shard(entry)
        return entry

    def close(self) -> list[dict[str, Any]]:
        self.flush()
        return self.shards


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    atomic_write_json(os.path.join(directory, MANIFEST), manifest)


@dataclass
class ShardSet:
    """A validated shard directory: its manifest and the absolute paths of its shards."""

    directory: str
    manifest: dict[str, Any]
    paths: list[str]

    @property
    def rows_per_shard(self) -> list[int]:
        return [s["rows"] for s in self.manifest["shards"]]

    @property
    def num_rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def pad_token_id(self) -> int:
        pad = self.manifest["tokenizer"].get("pad_token_id")
        return 0 if pad is None else int(pad)


def _count_rows(path: str) -> tuple[int, list[str]]:
    """(rows, column names) of a shard file."""
    pa = _pa()
    with pa.memory_map(path, "r") as source:
        reader = pa.ipc.open_file(source)
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return rows, list(reader.schema.names)


def open_shards(directory: str, *, verify: bool = False, tokenizer: Any = None) -> ShardSet:
    """Validate a shard directory and return its :class:`ShardSet`.

    Checks that ``manifest.json`` exists and has a known ``format_version``, that every shard
    file exists with the size and row count the manifest records, with ``verify=True`` that its
    sha256 matches, and with a ``tokenizer`` that the shards were made with the same vocabulary.
    Each failure raises :class:`ShardError` naming the file and the fix.
    """
    directory = os.path.abspath(directory)
    mpath = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ShardError(f"{directory}: no such shard directory; create it with `mlmfast prepare`")
    if not os.path.isfile(mpath):
        hint = (
            " (an interrupted prepare: re-run the same `mlmfast prepare` command to finish it)"
            if os.path.exists(os.path.join(directory, "progress.json"))
            else ""
        )
        raise ShardError(f"{mpath}: missing, the shard set is incomplete{hint}; {_FIX}")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ShardError(f"{mpath}: unreadable manifest ({e}); {_FIX}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{mpath}: format_version {version!r}, this mlmfast reads {FORMAT_VERSION}; "
            f"{_FIX} with this version of mlmfast"
        )
    if tokenizer is not None:
        want = vocab_hash(tokenizer)
        have = manifest.get("tokenizer", {}).get("vocab_hash")
        if want != have:
            raise ShardError(
                f"{mpath}: shards were made with tokenizer "
                f"{manifest.get('tokenizer', {}).get('name')!r} (vocab hash {str(have)[:12]}), "
                f"not with the given one (vocab hash {want[:12]}); re-run `mlmfast prepare "
                f"--tokenizer` with this tokenizer, or load the tokenizer the shards were made with"
            )
    if "pos_ids" in (manifest.get("columns") or []):
        from mlmfast import pos

        freqs = manifest.get("pos_class_frequencies")
        if not isinstance(freqs, list) or len(freqs) != pos.NUM_CLASSES:
            raise ShardError(
                f"{mpath}: pos_ids shards need pos_class_frequencies with {pos.NUM_CLASSES} "
                f"entries (UPOS + special), found {freqs!r}; {_FIX}"
            )
    paths = []
    for entry in manifest.get("shards", []):
        path = os.path.join(directory, entry["file"])
        if not os.path.isfile(path):
            raise ShardError(f"{path}: listed in {MANIFEST} but missing; {_FIX}")
        size = os.path.getsize(path)
        if "bytes" in entry and size != entry["bytes"]:
            raise ShardError(
                f"{path}: {size} bytes, the manifest records {entry['bytes']} "
                f"(truncated or replaced); {_FIX}"
            )
        try:
            rows, names = _count_rows(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ShardError(f"{path}: not a readable Arrow IPC file ({e}); {_FIX}") from None
        if rows != entry["rows"]:
            raise ShardError(f"{path}: {rows} rows, the manifest records {entry['rows']}; {_FIX}")
        missing = [c for c in manifest.get("columns") or [] if c not in names]
        if missing:
            raise ShardError(
                f"{path}: lacks the column(s) {missing} that {MANIFEST} lists (has {names}); {_FIX}"
            )
        if verify and file_sha256(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 does not match the manifest (corrupt); {_FIX}")
        paths.append(path)
    return ShardSet(directory, manifest, paths)
