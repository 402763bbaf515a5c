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

Files are uncompressed so that a memory map serves rows straight from the page cache.
Every write goes to a temporary file in the same directory, is fsynced and renamed over the
final name, so a reader never sees half a shard.

Reading is safe against any bytes in a shard file or its manifest: every shard is checked when
a process maps it (:class:`ShardFile`: Arrow's full validation, the column types, list offsets
inside their buffers, row lengths within ``max_length``, per-token columns as long as
``input_ids``, ids inside the vocabulary), so a damaged or hostile file gives a
:class:`ShardError` naming it, never a read outside the file or ids the model cannot embed. Its
content is checked against the manifest's sha256 too: by default once per machine (``verify=
"once"``: a stamp under the cache directory records that this exact file, by device, inode,
size, mtime and ctime, matched), or every time (``"always"``), or never (``"never"``).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mlmfast._faults import kill_point

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:05d}.arrow"
_FIX = "re-run `mlmfast prepare` (with --overwrite) to rebuild the shard set"
VERIFY_MODES = ("once", "always", "never")
CACHE_ENV = "MLMFAST_CACHE_DIR"

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "ShardError",
    "ShardFile",
    "ShardSet",
    "VERIFY_MODES",
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
        view = memoryview(data)
        with os.fdopen(fd, "wb") as f:
            f.write(view[: len(view) // 2])
            kill_point(f"mid-write {os.path.basename(path)}")
            f.write(view[len(view) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    kill_point(f"written {os.path.basename(path)}")


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


def verify_mode(verify: bool | str) -> str:
    """``verify`` as one of :data:`VERIFY_MODES` (True is ``"always"``, False ``"never"``)."""
    if verify is True:
        return "always"
    if verify is False:
        return "never"
    if isinstance(verify, str) and verify in VERIFY_MODES:
        return verify
    raise ValueError(
        f"verify must be 'once' (each shard's sha256 checked on its first use on this machine), "
        f"'always', 'never', True or False; got {verify!r}"
    )


def cache_dir() -> str:
    """Where mlmfast keeps per-machine state (verification stamps): ``$MLMFAST_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mlmfast``, else ``~/.cache/mlmfast``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mlmfast")


def _stamp(st: os.stat_result, sha256: str) -> str:
    # ctime cannot be set back by a user (touch -d sets mtime only): any write to the file, or a
    # new file under the name, gives another stamp
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{sha256}"
    return os.path.join(
        cache_dir(), "verified", hashlib.blake2b(key.encode(), digest_size=20).hexdigest()
    )


def _write_stamp(path: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            pass
    except OSError:  # a read-only cache: the shard is hashed again next time, nothing is lost
        pass


@dataclass
class ShardSet:
    """A validated shard directory: its manifest, the absolute paths of its shards, and how
    their content is checked when they are read (``verify``, one of :data:`VERIFY_MODES`)."""

    directory: str
    manifest: dict[str, Any]
    paths: list[str]
    verify: str = "once"

    # a set on object storage (mlmfast.data.storage.RemoteShardSet) is read through a local
    # cache: its readers announce their shard order (plan) and keep few shards mapped (max_open)
    remote: ClassVar[bool] = False
    max_open: ClassVar[int | None] = None

    def plan(self, order: Sequence[int]) -> None:
        """The order in which this process will open shards (a remote set downloads ahead)."""

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

    @property
    def vocab_size(self) -> int | None:
        return self.manifest["tokenizer"].get("vocab_size")

    def open(self, k: int) -> ShardFile:
        """Shard ``k`` memory-mapped, checked (see :class:`ShardFile`)."""
        return ShardFile(self.paths[k], self.manifest["shards"][k], self, self.verify)


# Columns the loader reads: (element type, may be fixed_size_list, allowed value range).
def _column_rules(vocab_size: int | None) -> dict[str, tuple[str, bool, tuple[int, int | None]]]:
    from mlmfast import pos

    return {
        "input_ids": ("int32", True, (0, vocab_size)),
        "word_ids": ("int32", False, (-1, None)),
        "pos_ids": ("uint8", True, (0, pos.NUM_CLASSES)),
        "token_type_ids": ("int32", False, (0, 2)),
    }


class ShardFile:
    """One shard, memory-mapped and checked; ``columns`` maps a column name to numpy views into
    the mapped file (no copy): ``(values [rows, width], None, width)`` for a fixed-size list,
    ``(values, offsets, None)`` for a list, ``(values, None, None)`` for ``sample_id``.

    Checked on every open, in O(rows + tokens) with no Python loop per row: Arrow's full
    validation, the row count, column types, no nulls, list offsets inside their values,
    row lengths within ``max_length``, per-token columns as long as ``input_ids`` row by row,
    values in range (ids inside ``[0, vocab_size)``, POS classes known, token types 0/1, word ids
    >= -1). With ``verify`` ``"once"`` or ``"always"`` the file's sha256 is checked against
    ``entry`` first (see the module docstring). Every failure is a :class:`ShardError` naming the
    file."""

    def __init__(self, path: str, entry: dict[str, Any], shards: ShardSet, verify: str = "once"):
        pa = _pa()
        self.path = path
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size != entry.get("bytes", st.st_size):
                    self._fail(f"{st.st_size} bytes, the manifest records {entry['bytes']}")
                if st.st_size == 0:
                    self._fail("empty file")
                # the map of this very file (fstat of its descriptor): a file renamed over the
                # path meanwhile cannot pass on the other file's stamp
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ShardError(f"{path}: cannot be read ({e}); {_FIX}") from None
        if verify != "never":
            stamp = _stamp(st, entry["sha256"]) if verify == "once" else None
            if stamp is None or not os.path.exists(stamp):
                if hashlib.sha256(self._map).hexdigest() != entry["sha256"]:
                    self._fail("sha256 does not match the manifest (corrupt or modified)")
                if stamp is not None:
                    _write_stamp(stamp)
        try:
            reader = pa.ipc.open_file(pa.py_buffer(self._map))
            if reader.num_record_batches == 1:
                batch = reader.get_batch(0)
            else:
                table = reader.read_all().combine_chunks()
                batch = table.to_batches()[0] if table.num_rows else None
                if batch is None:
                    batch = pa.RecordBatch.from_pylist([], schema=table.schema)
            batch.validate(full=True)
        except (pa.ArrowException, ValueError, OSError) as e:
            self._fail(f"not a valid Arrow IPC shard ({e})")
        self.rows = batch.num_rows
        if self.rows != entry["rows"]:
            self._fail(f"{self.rows} rows, the manifest records {entry['rows']}")
        self.columns: dict[str, tuple[np.ndarray, np.ndarray | None, int | None]] = {}
        self._read_sample_ids(pa, batch)
        rules = _column_rules(shards.vocab_size)
        lengths = None
        for name in ("input_ids", *(c for c in rules if c != "input_ids")):
            if name not in batch.schema.names:
                if name == "input_ids":
                    self._fail("has no input_ids column")
                continue
            got = self._read_list(pa, name, batch.column(name), rules[name], shards.max_length)
            if lengths is None:
                lengths = got
            elif not np.array_equal(got, lengths):
                row = int(np.flatnonzero(got != lengths)[0])
                self._fail(
                    f"row {row} has {got[row]} {name} for {lengths[row]} input_ids "
                    "(per-token columns must match input_ids)"
                )

    def _fail(self, what: str):
        raise ShardError(f"{self.path}: {what}; {_FIX}")

    def _read_sample_ids(self, pa, batch) -> None:
        if "sample_id" not in batch.schema.names:
            self._fail("has no sample_id column")
        col = batch.column("sample_id")
        if col.type != pa.int64() or col.null_count:
            self._fail(f"sample_id must be int64 without nulls, found {col.type}")
        self.columns["sample_id"] = (col.to_numpy(zero_copy_only=True), None, None)

    def _read_list(self, pa, name: str, col, rule, max_length: int) -> np.ndarray:
        """Views of list column ``name`` after its checks; returns its row lengths."""
        element, fixed_ok, (lo, hi) = rule
        fixed = pa.types.is_fixed_size_list(col.type)
        if not (fixed and fixed_ok) and not pa.types.is_list(col.type):
            kinds = "list or fixed_size_list" if fixed_ok else "list"
            self._fail(f"{name} must be a {kinds} of {element}, found {col.type}")
        if str(col.type.value_type) != element:
            self._fail(f"{name} must hold {element} values, found {col.type.value_type}")
        if col.null_count:
            self._fail(f"{name} has {col.null_count} null rows")
        if fixed:
            width = col.type.list_size
            if not 1 <= width <= max_length:
                self._fail(f"{name} rows of {width} tokens, max_length is {max_length}")
            flat = col.flatten()
            if flat.null_count:
                self._fail(f"{name} has null values")
            values = flat.to_numpy(zero_copy_only=True)
            self.columns[name] = (values.reshape(-1, width), None, width)
            used, lengths = values, np.full(self.rows, width, dtype=np.int64)
        else:
            # Arrow's full validation proved the offsets monotonic and inside the values
            if col.values.null_count:
                self._fail(f"{name} has null values")
            offsets = col.offsets.to_numpy(zero_copy_only=True)
            values = col.values.to_numpy(zero_copy_only=True)
            lengths = np.diff(offsets).astype(np.int64)
            if len(lengths) and int(lengths.max()) > max_length:
                row = int(np.argmax(lengths))
                self._fail(
                    f"{name} row {row} has {lengths[row]} tokens, max_length is {max_length}"
                )
            self.columns[name] = (values, offsets, None)
            used = values[offsets[0] : offsets[-1]] if len(offsets) else values[:0]
        if len(used):
            vmin, vmax = int(used.min()), int(used.max())
            if vmin < lo or (hi is not None and vmax >= hi):
                bad = vmin if vmin < lo else vmax
                where = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
                extra = " (vocab_size in the manifest)" if name == "input_ids" else ""
                self._fail(f"{name} holds {bad}, outside {where}{extra}")
        return lengths

    def lengths(self, name: str, idx: np.ndarray) -> np.ndarray:
        values, offsets, width = self.columns[name]
        if width is not None:
            return np.full(len(idx), width, dtype=np.int64)
        return (offsets[idx + 1] - offsets[idx]).astype(np.int64)

    def row_lengths(self) -> np.ndarray:
        """Token count of every row (int32)."""
        values, offsets, width = self.columns["input_ids"]
        if width is not None:
            return np.full(self.rows, width, dtype=np.int32)
        return np.diff(offsets).astype(np.int32)


def _manifest_error(mpath: str, what: str) -> ShardError:
    return ShardError(f"{mpath}: {what}; {_FIX}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_manifest(mpath: str, manifest: Any) -> None:
    """The manifest fields mlmfast reads, with their types, before anything uses them: a
    damaged manifest is a named error, never a TypeError deep in the loader."""
    if not isinstance(manifest, dict):
        raise _manifest_error(mpath, f"must hold a JSON object, found {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{mpath}: format_version {version!r}, this mlmfast reads {FORMAT_VERSION}; "
            f"{_FIX} with this version of mlmfast"
        )
    if not _is_int(manifest.get("max_length")) or manifest["max_length"] < 1:
        raise _manifest_error(mpath, f"max_length {manifest.get('max_length')!r} is not >= 1")
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict):
        raise _manifest_error(mpath, "has no tokenizer record")
    for key in ("pad_token_id", "vocab_size"):
        if tok.get(key) is not None and (not _is_int(tok[key]) or tok[key] < 0):
            raise _manifest_error(mpath, f"tokenizer.{key} {tok[key]!r} is not an id")
    columns = manifest.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise _manifest_error(mpath, f"columns {columns!r} is not a list of names")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise _manifest_error(mpath, "has no list of shards")
    names = set()
    for i, e in enumerate(shards):
        name = e.get("file") if isinstance(e, dict) else None
        # a plain name in the directory: a manifest never makes mlmfast open another file
        if (
            not isinstance(name, str)
            or name in ("", ".", "..", MANIFEST)
            or os.path.basename(name) != name
            or "/" in name
            or "\\" in name
            or "\0" in name
        ):
            raise _manifest_error(
                mpath, f"shard {i} names {name!r}; shard files must be plain names in its directory"
            )
        if name in names:
            raise _manifest_error(mpath, f"lists {name} twice")
        names.add(name)
        bad = [k for k in ("rows", "bytes") if not _is_int(e.get(k)) or e[k] < 0]
        sha = e.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            bad.append("sha256")
        if bad:
            raise _manifest_error(mpath, f"shard {name}: {', '.join(bad)} missing or invalid")
    if manifest.get("rows") != sum(e["rows"] for e in shards):
        raise _manifest_error(
            mpath, f"rows {manifest.get('rows')!r} is not the sum of its shards' rows"
        )


def _count_rows(path: str) -> tuple[int, list[str]]:
    """(rows, column names) of a shard file, from its metadata."""
    pa = _pa()
    with pa.memory_map(path, "r") as source:
        reader = pa.ipc.open_file(source)
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return rows, list(reader.schema.names)


def _check_shard_file(directory: str, entry: dict, manifest: dict, mode: str) -> str:
    """The cheap checks of one listed shard (exists, size, row count, columns; the sha256 too
    with ``mode == "always"``) -> its path."""
    path = os.path.join(directory, entry["file"])
    if not os.path.isfile(path):
        raise ShardError(f"{path}: listed in {MANIFEST} but missing; {_FIX}")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
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
    if mode == "always" and file_sha256(path) != entry["sha256"]:
        raise ShardError(f"{path}: sha256 does not match the manifest (corrupt); {_FIX}")
    return path


def open_shards(
    directory: str,
    *,
    verify: bool | str = "once",
    tokenizer: Any = None,
    cache_dir: str | None = None,
    cache_limit: int | str | None = None,
    prefetch_shards: int | None = None,
) -> ShardSet:
    """Validate a shard directory and return its :class:`ShardSet`.

    Checks that ``manifest.json`` exists, has a known ``format_version`` and well-formed fields,
    names only files inside the directory, that every shard file exists with the size and row
    count the manifest records, and with a ``tokenizer`` that the shards were made with the same
    vocabulary. ``verify``: how shard content is checked against the manifest's sha256 when a
    shard is read, ``"once"`` per machine (default), ``"always"`` or ``"never"`` (True and False
    mean ``"always"`` and ``"never"``); with ``"always"`` every shard is also hashed here. Each
    failure raises :class:`ShardError` naming the file and the fix.

    ``directory`` may be ``s3://bucket/prefix`` or ``gs://bucket/prefix``: the set is then read
    through a local cache (``cache_dir``, ``cache_limit``, ``prefetch_shards``; see
    :mod:`mlmfast.data.storage`); these three are ignored for a local directory.
    """
    from mlmfast.data import storage

    if storage.is_remote(directory):
        return storage.open_remote(
            directory,
            verify=verify,
            tokenizer=tokenizer,
            cache_dir=cache_dir,
            cache_limit=cache_limit,
            prefetch_shards=prefetch_shards,
        )
    mode = verify_mode(verify)
    directory = os.path.abspath(directory)
    mpath = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ShardError(f"{directory}: no such shard directory; create it with `mlmfast prepare`")
    if not os.path.isfile(mpath):
        if os.path.exists(os.path.join(directory, "progress.json")):
            raise ShardError(
                f"{mpath}: missing, the shard set is incomplete (an interrupted prepare: re-run "
                "the same `mlmfast prepare` command to finish it)"
            )
        if not any(n.startswith("shard-") and n.endswith(".arrow") for n in os.listdir(directory)):
            raise ShardError(
                f"{directory}: not a shard directory (no {MANIFEST}); make one with "
                f"`mlmfast prepare INPUTS -o {directory}`"
            )
        raise ShardError(f"{mpath}: missing, the shard set is incomplete; {_FIX}")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ShardError(f"{mpath}: unreadable manifest ({e}); {_FIX}") from None
    check_manifest(mpath, manifest, tokenizer)
    paths = [_check_shard_file(directory, e, manifest, mode) for e in manifest["shards"]]
    return ShardSet(directory, manifest, paths, mode)


def check_manifest(mpath: str, manifest: Any, tokenizer: Any = None) -> None:
    """The checks of a parsed manifest (fields, and with ``tokenizer`` its vocabulary), each a
    :class:`ShardError` naming ``mpath`` (a path or a URL)."""
    _check_manifest(mpath, manifest)
    if tokenizer is not None:
        want = vocab_hash(tokenizer)
        have = manifest["tokenizer"].get("vocab_hash")
        if want != have:
            raise ShardError(
                f"{mpath}: shards were made with tokenizer "
                f"{manifest['tokenizer'].get('name')!r} (vocab hash {str(have)[:12]}), "
                f"not with the given one (vocab hash {want[:12]}); re-run `mlmfast prepare "
                f"--tokenizer` with this tokenizer, or load the tokenizer the shards were made with"
            )
    if "pos_ids" in (manifest.get("columns") or []):
        from mlmfast import pos

        freqs = manifest.get("pos_class_frequencies")
        if (
            not isinstance(freqs, list)
            or len(freqs) != pos.NUM_CLASSES
            or not all(isinstance(f, int | float) and not isinstance(f, bool) for f in freqs)
        ):
            raise ShardError(
                f"{mpath}: pos_ids shards need pos_class_frequencies with {pos.NUM_CLASSES} "
                f"entries (UPOS + special), found {freqs!r}; {_FIX}"
            )
