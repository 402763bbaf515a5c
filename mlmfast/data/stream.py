"""A streaming loader over a shard directory: memory-mapped, shuffled, elastic, resumable.

Sample order. For ``(seed, epoch)`` the order of all N rows is fixed: a seeded permutation of
the shards, then a seeded permutation inside each shard (so consecutive rows mostly come from one
memory-mapped file). Global batch ``i`` is ``order[i*B:(i+1)*B]``. Nothing in the order depends
on the number of ranks or DataLoader workers:

* rank ``r`` of ``world_size`` takes the global batches ``i`` with ``(i - start) % world_size ==
  r`` (``start`` is 0 unless resuming);
* within a rank, DataLoader worker ``w`` of ``num_workers`` takes every ``num_workers``-th of the
  rank's batches, and the DataLoader's round-robin over workers hands them back in order.

So global batch ``i`` holds the same samples whatever the world size and worker count, and each
row is seen exactly once per epoch (the last batch is short unless ``drop_last``; ranks may get
one batch more than others at the end of an epoch).

Length bucketing (``bucket_window=K``, for variable-length shards such as ``prepare --mode
document``): the order above is cut into windows of K global batches; inside each window the rows
are sorted by length (ties by their place in the window) and cut into K batches, and these batches
are shuffled by a generator seeded with ``(seed, epoch)``, so a batch holds rows of similar length
(less padding) while lengths do not come in sorted order. The short last batch, when the row count
is not a multiple of the batch size, keeps the same rows as without bucketing (the order's last
rows) and stays last, so ``drop_last`` drops the same rows. It only reorders rows within a
window, so every guarantee above holds as it is: the order is a pure function of ``(seed,
epoch)``, every row comes once per epoch, global batch ``i`` is the same for any world size and
worker count, and resume starts at the exact next batch. Larger windows pad less and mix less.

Resume. ``state_dict()`` is ``{"epoch", "seed", "num_batches_consumed", ...}``: the number of
*global* batches already delivered, counted in the process that consumes them (``start +
delivered_on_this_rank * world_size``; ranks step in lockstep). With DataLoader workers the
dataset copies in the workers run ahead (prefetch), so ask the loader returned by
:func:`make_loader` (it counts the batches it hands out) or, with ``num_workers=0``, the stream
itself. ``load_state_dict`` makes the *next* iteration start at that global batch; it may be
loaded into a different world size or worker count (elastic resume). ``set_epoch`` to another
epoch discards a loaded position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mlmfast.collator import DataCollatorForLanguageModeling
from mlmfast.data.batching import Batcher
from mlmfast.data.shards import ShardSet, open_shards

__all__ = ["ShardStream", "StreamLoader", "make_loader"]


def _dist_rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_BUCKET_STREAM = 0x62756B74  # "bukt": the bucketing generator's extra seed word


class ShardStream(IterableDataset):
    """Batches from a shard directory made by ``mlmfast prepare``.

    Yields dicts of tensors: ``input_ids`` ``[B, L]`` int64 right-padded with the tokenizer's pad
    id, ``attention_mask`` ``[B, L]`` int64, ``sample_id`` ``[B]`` int64 and, when the shards
    have them, ``word_ids`` (int32, ``-1`` on specials and padding), ``pos_ids`` (uint8 POS
    class, ``mlmfast.pos.SPECIAL`` on specials and padding; shards made with ``prepare --pos``)
    and ``token_type_ids``. ``pos_class_frequencies`` holds the manifest's class frequencies
    (None without ``pos_ids``), for ``DataCollatorForLanguageModeling(tok, pos_weights=...,
    pos_frequencies=stream.pos_class_frequencies)``.
    With ``collator`` (e.g. ``mlmfast.DataCollatorForLanguageModeling``) each batch dict is
    passed through it; without, batches stay unmasked so masking can run on the GPU with
    ``mlmfast.mask_tokens(..., sample_ids=batch["sample_id"])``. mlmfast's own collator is
    handed the shards' int32 ids (it writes the int64 masked ids and labels in one pass) and, for
    batches of full rows, a private flag that spares it reading the all-ones attention mask; the
    result is the same as collating the int64 batch. Any other collator gets the int64 batch.

    Args:
        path: shard directory, or ``s3://bucket/prefix`` / ``gs://bucket/prefix``.
        batch_size: rows per global batch (per rank, per step).
        shuffle, seed, epoch: the order of an epoch is a pure function of ``(seed, epoch)``.
        drop_last: drop the last, short global batch.
        rank, world_size: default from ``torch.distributed`` when initialised, else 0 and 1.
        pad_to_max_length: pad to the manifest's ``max_length`` instead of the longest row.
        verify, tokenizer: passed to :func:`~mlmfast.data.shards.open_shards`: each shard's
            sha256 is checked on its first use on this machine (``"once"``, the default),
            every time it is mapped (``"always"``/True) or never (``"never"``/False); its
            structure is checked every time, whatever ``verify`` says.
        bucket_window: group rows of similar length into batches, sorting windows of this many
            global batches (see the module docstring); None (default) does not.
        cache_dir, cache_limit, prefetch_shards: for a set on object storage (``path`` is
            ``s3://bucket/prefix`` or ``gs://bucket/prefix``): where shards are cached, the
            cache's size bound and how many shards each process downloads ahead of its reads
            (see :mod:`mlmfast.data.storage`); ignored for a local directory.
    """

    def __init__(
        self,
        path: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        collator: Callable[[dict], Any] | None = None,
        pad_to_max_length: bool = False,
        verify: bool | str = "once",
        tokenizer: Any = None,
        bucket_window: int | None = None,
        cache_dir: str | None = None,
        cache_limit: int | str | None = None,
        prefetch_shards: int | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if bucket_window is not None and (
            isinstance(bucket_window, bool)
            or not isinstance(bucket_window, int | np.integer)
            or bucket_window < 1
        ):
            raise ValueError(
                f"bucket_window must be None (no length bucketing) or a number of batches >= 1, "
                f"got {bucket_window!r}; e.g. bucket_window=64"
            )
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        self.shards: ShardSet = open_shards(
            path,
            verify=verify,
            tokenizer=tokenizer,
            cache_dir=cache_dir,
            cache_limit=cache_limit,
            prefetch_shards=prefetch_shards,
        )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.drop_last = drop_last
        self.collator = collator
        self.pad_to_max_length = pad_to_max_length
        self.bucket_window = None if bucket_window is None else int(bucket_window)
        self.pad_token_id = self.shards.pad_token_id
        freqs = self.shards.manifest.get("pos_class_frequencies")
        self.pos_class_frequencies: list[float] | None = (
            [float(f) for f in freqs] if freqs is not None else None
        )
        self._counts = np.asarray(self.shards.rows_per_shard, dtype=np.int64)
        self._batcher = Batcher(self.shards, pad_to_max_length)
        self._starts = self._batcher.starts
        self._next_start = 0  # global batch the next iteration starts at
        self._cur_start: int | None = None  # start of the iteration in progress, if any
        self._delivered = 0
        self._lengths: np.ndarray | None = None  # every row's length, for bucketing

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lengths"] = None  # N entries: a spawned worker rereads them from its maps
        return state

    # -- order --
    @property
    def num_rows(self) -> int:
        return int(self._starts[-1])

    @property
    def num_batches(self) -> int:
        """Global batches per epoch (over all ranks)."""
        n, b = self.num_rows, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        """Batches this rank gets in a full epoch."""
        n = self.num_batches
        return max(0, -(-(n - self.rank) // self.world_size))

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """Global row indices of the epoch, in delivery order."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            order = np.arange(self.num_rows, dtype=np.int64)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            parts = []
            for k in rng.permutation(len(self._counts)):
                parts.append(self._starts[k] + rng.permutation(self._counts[k]))
            order = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if self.bucket_window is not None:
            order = self._bucketed(order, epoch)
        return order

    def row_lengths(self) -> np.ndarray:
        """The length (tokens) of every row, by global row index (read once per process)."""
        if self._lengths is None:
            parts = [self._batcher.shard(k).row_lengths() for k in range(len(self._counts))]
            self._lengths = np.concatenate(parts) if parts else np.empty(0, np.int32)
        return self._lengths

    def _bucketed(self, order: np.ndarray, epoch: int) -> np.ndarray:
        b = self.batch_size
        full = len(order) // b * b  # the short last batch keeps its rows and its place
        window = self.bucket_window * b
        lengths = self.row_lengths()[order[:full]]
        # a stream of its own: the row order without bucketing stays what it was
        rng = np.random.default_rng([self.seed, epoch, _BUCKET_STREAM])
        out = order.copy()
        for s in range(0, full, window):
            e = min(s + window, full)
            # stable: equal lengths keep their shuffled order, so ties are broken by the seed
            rows = order[s:e][np.argsort(lengths[s:e], kind="stable")]
            batches = rows.reshape(-1, b)[rng.permutation((e - s) // b)]
            # a batch's rows of one shard together: the batch is gathered in one run per shard
            shard_of = np.searchsorted(self._starts, batches, side="right")
            batches = np.take_along_axis(batches, np.argsort(shard_of, axis=1, kind="stable"), 1)
            out[s:e] = batches.ravel()
        return out

    def batch_indices(self, start: int = 0) -> list[int]:
        """Global batch indices this rank and DataLoader worker deliver, in order."""
        mine = range(start + self.rank, self.num_batches, self.world_size)
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id :: info.num_workers]
        return list(mine)

    # -- batches --
    def iter_batches(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """This rank's (and worker's) batches of the current epoch from global batch ``start``,
        without the bookkeeping of ``__iter__``."""
        order = self.global_order()
        b = self.batch_size
        # mlmfast's collator takes the shards' int32 ids and writes int64 masked ids and labels
        # in the same pass: the unmasked batch never exists in int64
        narrow = isinstance(self.collator, DataCollatorForLanguageModeling)
        indices = self.batch_indices(start)
        if self.shards.remote:  # downloads run ahead in the order this process reads shards
            self.shards.plan(self._shards_in_order(order, indices))
        for i in indices:
            batch = self._batcher.make_batch(order[i * b : (i + 1) * b], narrow)
            if self.collator is not None:
                # drop the unmasked batch now, not at the next step: its memory is then reused
                # (cache-warm) by the next batch
                batch = self.collator(batch)
            yield batch

    def _shards_in_order(self, order: np.ndarray, indices: list[int]) -> list[int]:
        """The shards that the batches ``indices`` read, in reading order, each run once."""
        if not indices:
            return []
        b = self.batch_size
        at = (np.asarray(indices, dtype=np.int64)[:, None] * b + np.arange(b)).ravel()
        shard_of = np.searchsorted(self._starts, order[at[at < len(order)]], side="right") - 1
        runs = np.concatenate([[True], shard_of[1:] != shard_of[:-1]])
        return shard_of[runs].tolist()

    def _begin(self) -> int:
        start, self._next_start = self._next_start, 0
        self._cur_start, self._delivered = start, 0
        return start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if get_worker_info() is not None:  # a worker's copy: the main process keeps count
            yield from self.iter_batches(self._next_start)
            return
        for batch in self.iter_batches(self._begin()):
            self._delivered += 1
            yield batch

    # -- epochs and resume --
    def set_epoch(self, epoch: int) -> None:
        """A new epoch gives a new order; a position loaded for another epoch is discarded."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._next_start, self._cur_start, self._delivered = 0, None, 0

    def state_dict(self) -> dict[str, Any]:
        if self._cur_start is None:
            consumed = self._next_start
        else:
            consumed = min(self.num_batches, self._cur_start + self._delivered * self.world_size)
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "num_batches_consumed": int(consumed),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "num_rows": self.num_rows,
            "bucket_window": self.bucket_window,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("batch_size", "shuffle", "num_rows", "bucket_window"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"load_state_dict: {key} is {state[key]!r} in the state but "
                    f"{getattr(self, key)!r} here; resume needs the same shards, batch_size, "
                    "shuffle and bucket_window"
                )
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: expected the dict of state_dict(), got {state!r}")
        missing = [k for k in ("seed", "epoch", "num_batches_consumed") if k not in state]
        if missing:
            raise ValueError(f"load_state_dict: the state lacks {missing}; pass state_dict()'s")
        for key, low in (("epoch", 0), ("num_batches_consumed", 0)):
            v = state[key]
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                raise ValueError(f"load_state_dict: {key} must be an integer >= {low}, got {v!r}")
        if state["num_batches_consumed"] > self.num_batches:
            raise ValueError(
                f"load_state_dict: num_batches_consumed is {state['num_batches_consumed']} but "
                f"an epoch has {self.num_batches} batches; was the state saved for other shards?"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._next_start = int(state["num_batches_consumed"])
        self._cur_start, self._delivered = None, 0


class StreamLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that counts the batches it hands out, so that
    ``state_dict()`` is right with workers prefetching ahead."""

    def __iter__(self):
        stream: ShardStream = self.dataset
        if self.num_workers == 0:
            yield from super().__iter__()  # the stream counts itself in this process
            return
        it = super().__iter__()  # workers start here and copy the stream's start position
        stream._begin()
        for batch in it:
            stream._delivered += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def make_loader(
    path: str,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: Any = None,
    **stream_options: Any,
) -> StreamLoader:
    """A :class:`StreamLoader` (``DataLoader(batch_size=None)``) over ``ShardStream(path,
    batch_size, **stream_options)``. Workers are not persistent (each epoch forks fresh ones
    that copy the epoch and start position) and open their memory maps after the fork."""
    stream = ShardStream(path, batch_size, **stream_options)
    extra = {}
    if num_workers > 0:
        extra["prefetch_factor"] = prefetch_factor or 2
        extra["multiprocessing_context"] = multiprocessing_context
    return StreamLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        **extra,
    )
