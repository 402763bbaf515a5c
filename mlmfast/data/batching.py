"""Rows of memory-mapped shards -> padded batch tensors, with no Python loop per row: one
``np.take`` for fixed-length shards, one ``memcpy`` per row in C for list columns, into tensors
of their final dtype (int32 ids for mlmfast's collator, which widens them as it masks)."""

from __future__ import annotations

import os

import numpy as np
import torch

from mlmfast import _C, pos
from mlmfast.collator import FULL_ROWS_KEY
from mlmfast.data.shards import ShardFile, ShardSet

# Per-token columns a shard may have besides input_ids, their batch dtypes and padding values.
_OPTIONAL = ("word_ids", "pos_ids", "token_type_ids")
_OUT_DTYPES = {
    "input_ids": torch.int64,
    "word_ids": torch.int32,
    "pos_ids": torch.uint8,
    "token_type_ids": torch.int64,
}


def _gather(
    shard: ShardFile, name: str, idx: np.ndarray, out: np.ndarray, pad: int, scratch: _Scratch
) -> None:
    """Rows ``idx`` of a list column of a checked shard into ``out`` [k, L] (right-padded with
    ``pad``), in ``out``'s dtype (int32 ids become int64 in the one copy into ``out``)."""
    values, offsets, width = shard.columns[name]
    same = out.dtype == values.dtype
    if width is not None:
        if same and out.shape[1] == width:
            np.take(values, idx, axis=0, out=out)
            return
        rows = np.take(values, idx, axis=0, out=scratch.get((len(idx), width), values))
        out[:, :width] = rows
        out[:, width:] = pad
        return
    starts = offsets[idx].astype(np.int64)
    lengths = offsets[idx + 1].astype(np.int64) - starts
    if not out.flags.c_contiguous:
        raise ValueError("gather: the output buffer must be C-contiguous")
    # one memcpy per row in C (no [k, L] index arrays), in the column's own dtype: a
    # conversion, when one is needed, then costs a batch, not the whole memory-mapped shard
    dst = out if same else scratch.get(out.shape, values)
    _C.gather_rows(
        values.ctypes.data,
        len(values),
        starts.ctypes.data,
        lengths.ctypes.data,
        len(idx),
        dst.ctypes.data,
        dst.shape[1],
        dst.itemsize,
        int(pad),
        False,
    )
    if dst is not out:
        np.copyto(out, dst)


class _Scratch:
    """One reusable buffer per dtype for the intermediate copies of a batch (never handed out:
    batches are fresh tensors, a consumer may keep them)."""

    def __init__(self) -> None:
        self._buffers: dict[np.dtype, np.ndarray] = {}

    def get(self, shape: tuple[int, ...], like: np.ndarray) -> np.ndarray:
        """A C-contiguous ``shape`` array of ``like``'s dtype (contents undefined)."""
        n = int(np.prod(shape))
        buf = self._buffers.get(like.dtype)
        if buf is None or buf.size < n:
            buf = self._buffers[like.dtype] = np.empty(max(n, 1), like.dtype)
        return buf[:n].reshape(shape)


class Batcher:
    """Builds the batches of one shard set in one process: its shards are mapped (and checked)
    on first use in each process, so a copy pickled into a DataLoader worker maps its own."""

    def __init__(self, shards: ShardSet, pad_to_max_length: bool = False):
        self.shards = shards
        self.pad_to_max_length = pad_to_max_length
        counts = np.asarray(shards.rows_per_shard, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._pads = {
            "input_ids": shards.pad_token_id,
            "word_ids": -1,
            "pos_ids": pos.SPECIAL,
            "token_type_ids": 0,
        }
        self._open: dict[int, ShardFile] = {}
        self._pid = os.getpid()
        self._scratch = _Scratch()
        self._ones = np.ones(0, dtype=np.int64)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"], state["_scratch"] = {}, _Scratch()
        return state

    def shard(self, k: int) -> ShardFile:
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        shard = self._open.get(k)
        if shard is None:
            shard = self._open[k] = self.shards.open(k)
            limit = self.shards.max_open
            if limit is not None and len(self._open) > limit:
                # a remote set's cached shards become evictable once this process reads past them
                del self._open[next(iter(self._open))]
        return shard

    def make_batch(self, rows: np.ndarray, narrow_ids: bool = False) -> dict[str, torch.Tensor]:
        n = len(rows)
        batch = self._full_rows_batch(rows, narrow_ids)
        if batch is not None:
            return batch
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        # runs of rows from one shard (the order keeps a batch's rows of a shard together), each
        # gathered straight into its rows of the output
        if shard_of[0] == shard_of[-1] and (n < 3 or (shard_of == shard_of[0]).all()):
            bounds = [0, n]
        else:
            bounds = [0, *(np.flatnonzero(np.diff(shard_of)) + 1).tolist(), n]
        pieces = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            k = int(shard_of[lo])
            pieces.append((self.shard(k), slice(lo, hi), rows[lo:hi] - self.starts[k]))
        first = pieces[0][0]
        lengths = np.empty(n, dtype=np.int64)
        sample_id = np.empty(n, dtype=np.int64)
        for shard, where, local in pieces:
            lengths[where] = shard.lengths("input_ids", local)
            sample_id[where] = shard.columns["sample_id"][0][local]
        width = self.shards.max_length if self.pad_to_max_length else int(lengths.max())
        batch = {
            "input_ids": self._gather("input_ids", pieces, n, width, narrow_ids),
            "attention_mask": self._attention_mask(lengths, width),
            "sample_id": torch.from_numpy(sample_id),
        }
        for name in _OPTIONAL:
            if name in first.columns:
                batch[name] = self._gather(name, pieces, n, width)
        return batch

    def _full_rows_batch(self, rows: np.ndarray, narrow_ids: bool) -> dict | None:
        """The common case in few steps: every row from one shard whose ids are fixed-size
        (packed to full length) and no other per-token column. None otherwise."""
        k = int(np.searchsorted(self.starts, rows[0], side="right")) - 1
        lo, hi = self.starts[k], self.starts[k + 1]
        if rows.min() < lo or rows.max() >= hi:
            return None
        shard = self.shard(k)
        values, _, width = shard.columns["input_ids"]
        if width is None or len(shard.columns) != 2:  # input_ids and sample_id only
            return None
        if self.pad_to_max_length and width != self.shards.max_length:
            return None
        local = rows - lo
        n = len(rows)
        if narrow_ids and values.dtype == np.int32:
            ids = torch.empty((n, width), dtype=torch.int32)
            np.take(values, local, axis=0, out=ids.numpy())
        else:
            ids = self._gather("input_ids", [(shard, slice(0, n), local)], n, width)
        batch = {
            "input_ids": ids,
            "attention_mask": torch.ones((n, width), dtype=torch.int64),
            "sample_id": torch.from_numpy(shard.columns["sample_id"][0][local]),
        }
        if narrow_ids:  # for mlmfast's collator only, which consumes the key
            batch[FULL_ROWS_KEY] = True
        return batch

    def _gather(
        self, name: str, pieces: list, n: int, width: int, narrow: bool = False
    ) -> torch.Tensor:
        """Column ``name`` of the batch's rows as a fresh ``[n, width]`` tensor, written in its
        final dtype (no int32 tensor converted afterwards), or with ``narrow`` in the shard's
        own (int32 ids for mlmfast's collator, which widens them as it masks)."""
        dtype = _OUT_DTYPES[name]
        if narrow and pieces[0][0].columns[name][0].dtype == np.int32:
            dtype = torch.int32  # the op takes int32 ids; any other stored type is widened here
        out = torch.empty((n, width), dtype=dtype)
        arr, pad = out.numpy(), self._pads[name]
        for shard, where, local in pieces:
            _gather(shard, name, local, arr[where], pad, self._scratch)
        return out

    def _attention_mask(self, lengths: np.ndarray, width: int) -> torch.Tensor:
        n = len(lengths)
        if int(lengths.min()) == width:
            return torch.ones((n, width), dtype=torch.int64)
        # each row a copy of a row of ones cut at its length, in C: 4x faster than comparing
        # a broadcast arange and casting the bool result to int64
        if len(self._ones) < width:
            self._ones = np.ones(width, dtype=np.int64)
        out = torch.empty((n, width), dtype=torch.int64)
        zeros = np.zeros(n, dtype=np.int64)
        _C.gather_rows(
            self._ones.ctypes.data,
            len(self._ones),
            zeros.ctypes.data,
            lengths.ctypes.data,
            n,
            out.data_ptr(),
            width,
            8,
            0,
            False,
        )
        return out
