"""A drop-in ``transformers.DataCollatorForLanguageModeling``: the same dataclass fields, the same
call chain (``__call__`` -> ``torch_call``/``numpy_call`` -> ``torch_mask_tokens``/
``numpy_mask_tokens``, so a subclass's override takes effect), the same outputs; padding in C (no
Python loop per row or token) and masking by the fused op, on the CPU in a DataLoader worker or on
the GPU (``device="cuda"``).

Beyond transformers:

* masks are a pure function of (seed, epoch, sample id, tokens): examples that carry a
  ``sample_id`` get the same mask whatever batch, worker or rank they land in; without one, each
  DataLoader worker and each distributed rank gets its own stream, derived from (seed, rank,
  worker id, the worker's launch) and so reproducible from ``seed`` alone;
* random replacements never produce special tokens (``exclude_special_from_random``), added
  special tokens are never masked, ``exact_count`` guarantees a mask in every row;
* whole-word masking from ``word_ids`` or ``offset_mapping`` on variable-length examples, with
  random replacement; POS-weighted masking from ``pos_ids``; ``return_positions`` for sparse
  prediction heads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import torch

from mlmfast import _C, pos
from mlmfast.ops import SPAN_REPLACE, draw_seed, schema_seed, span_length_thresholds

__all__ = ["CollatorWarning", "DataCollatorForLanguageModeling", "DataCollatorForWholeWordMask"]

# Per-token inputs the collator uses and does not return (not model inputs).
CONSUMED = ("special_tokens_mask", "offset_mapping", "word_ids", "pos_ids", "sample_id")
_KNOWN_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", *CONSUMED)
_PRIVATE_ATTENTION = "_mlmfast_attention"  # used for masking, not returned
# Set (True) by ShardStream on batches whose attention mask is all ones: the op then skips
# reading it (the same masks: positions count from 0 either way). Consumed, not returned.
FULL_ROWS_KEY = "_mlmfast_full_rows"
_CONSUMED_DTYPES = {
    "special_tokens_mask": torch.uint8,
    "pos_ids": torch.uint8,
    "word_ids": torch.int32,
}
# DataLoader worker slots whose launches are counted (worker id modulo this): a fresh worker
# process continues its slot's count, so non-persistent workers get a new stream every epoch.
_WORKER_SLOTS = 512


class CollatorWarning(UserWarning):
    """Something about a collator's inputs or configuration a run should know (issued once per
    collator object and process)."""


def _mix_seed(seed: int, *streams: int) -> int:
    """A 64-bit seed for a sub-stream (worker, rank) of `seed` (splitmix64 finaliser)."""
    x = seed % 2**64
    for s in streams:
        x = (x + 0x9E3779B97F4A7C15 * (s + 1)) % 2**64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
        x ^= x >> 31
    return x


def _current_rank() -> int | None:
    """This process's rank: the process group's when one is initialised, else torchrun's RANK;
    None when neither says (a DataLoader worker started by spawn sees neither)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and rank.strip().lstrip("-").isdigit() else None


def _untensor(rows: list) -> list:
    """Tensor rows as numpy arrays, so a mix of tensors and lists goes through one C loop."""
    return [r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else r for r in rows]


def _check_whole_word_mask(value: Any) -> None:
    # transformers 4.x took mlm_probability third; 5.x (and this class) takes whole_word_mask
    if not isinstance(value, bool | np.bool_) and value not in (0, 1):
        raise TypeError(
            f"whole_word_mask must be a bool, got {value!r}: it is the third positional "
            "argument, as in transformers 5.x; pass mlm_probability by keyword"
        )


def _as_tensor_on(x: Any, device: torch.device) -> torch.Tensor:
    """A tensor, numpy array or nested list as a tensor on ``device``."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device)


def _is_row(x: Any) -> bool:
    return isinstance(x, list | tuple | np.ndarray | torch.Tensor)


def _pad_rows(
    rows: list,
    lengths: np.ndarray,
    length: int,
    pad_value: int,
    left: bool,
    dtype: torch.dtype,
    name: str,
    none_is_pad: bool = False,
) -> torch.Tensor:
    """rows (lists/tuples of ints, 1-D numpy arrays or tensors; ``lengths`` = their lengths, as
    :func:`_lengths` gives) -> a ``[B, length]`` tensor. Lists and numpy arrays go through one C
    loop (arrays by the buffer protocol); tensors through one concatenation and a memcpy per row
    in C."""
    n = len(rows)
    first = rows[0] if n else []
    if isinstance(first, list | tuple | np.ndarray):
        # lists/tuples item by item, numpy arrays through the buffer protocol: one C loop
        if isinstance(first, np.ndarray) and first.ndim != 1:
            raise ValueError(
                f"{name}: each example must be a 1-D sequence, got {first.ndim}-D rows"
            )
        out = torch.empty((n, length), dtype=dtype)
        try:
            _C.pack_rows(
                rows, out.data_ptr(), length, out.element_size(), pad_value, left, none_is_pad
            )
        except (TypeError, ValueError) as e:
            if any(isinstance(r, torch.Tensor) for r in rows):  # lists mixed with tensors
                return _pad_rows(
                    _untensor(rows), lengths, length, pad_value, left, dtype, name, none_is_pad
                )
            raise type(e)(f"{name}: {e}") from None
        return out
    if not isinstance(first, torch.Tensor):
        raise TypeError(
            f"{name}: rows must be lists, tuples, numpy arrays or tensors, got {type(first).__name__}"
        )
    # tensors: one concatenation, then a memcpy per row in C
    try:
        flat = torch.cat(rows) if n > 1 else first
    except TypeError:  # tensors mixed with lists or arrays
        return _pad_rows(
            _untensor(rows), lengths, length, pad_value, left, dtype, name, none_is_pad
        )
    if flat.dim() != 1:
        raise ValueError(f"{name}: each example must be a 1-D sequence, got {flat.dim()}-D rows")
    if flat.dtype.is_floating_point or flat.dtype.is_complex:
        raise TypeError(f"{name}: expected integer values, got {flat.dtype}")
    longest = int(lengths.max()) if n else 0
    if longest > length:
        raise ValueError(f"{name}: a row has {longest} tokens, more than the length {length}")
    flat = flat.to(device="cpu", dtype=dtype).contiguous()
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    out = torch.empty((n, length), dtype=dtype)
    _C.gather_rows(
        flat.data_ptr(),
        flat.numel(),
        starts.ctypes.data,
        lengths.ctypes.data,
        n,
        out.data_ptr(),
        length,
        out.element_size(),
        pad_value,
        left,
    )
    return out


def _lengths(rows: list) -> np.ndarray:
    """len() of every row, in one C loop (numel() for 1-D tensors: their len() is Python code)."""
    if rows and isinstance(rows[0], torch.Tensor):
        try:
            return np.fromiter(map(torch.Tensor.numel, rows), dtype=np.int64, count=len(rows))
        except TypeError:
            pass  # tensors mixed with lists or arrays: the C loop takes len() of each
    return _row_lengths(rows)


def _row_lengths(rows: list) -> np.ndarray:
    """len() of every row in one C loop: the first dimension (a [L, 2] offset_mapping has L)."""
    out = np.empty(len(rows), dtype=np.int64)
    if len(rows):
        _C.row_lengths(rows, out.ctypes.data)
    return out


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _word_ids_from_offsets(offsets: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """transformers' rule: a token starts a word unless it touches the previous token (its start
    equals the previous end) and the previous token is not special. Specials/padding: -1."""
    starts, ends = offsets[..., 0], offsets[..., 1]
    prev_end = torch.roll(ends, 1, dims=1)
    prev_end[:, 0] = -1
    prev_special = torch.roll(special, 1, dims=1)
    prev_special[:, 0] = False
    new_word = ~special & ((starts != prev_end) | prev_special)
    word_ids = torch.cumsum(new_word.long(), dim=1)
    return word_ids.masked_fill(special, -1)


def _word_runs(word_ids: torch.Tensor) -> torch.Tensor:
    """Word ids as given (e.g. encoding.word_ids(), which restarts at 0 for the second sentence
    of a pair) -> one id per run of equal ids, so distinct words never share a draw."""
    w = word_ids.long()
    prev = torch.roll(w, 1, dims=1)
    prev[:, 0] = -1
    starts = (w >= 0) & ((w != prev) | (prev < 0))
    return (torch.cumsum(starts.long(), dim=1) - 1).masked_fill(w < 0, -1)


def _stack_key(key: str, rows: list) -> torch.Tensor:
    """A key that is not per-token (a label, a score) stacked over the examples."""
    first = rows[0]
    try:
        try:
            value = torch.stack(rows) if isinstance(first, torch.Tensor) else None
        except TypeError:  # tensors mixed with numbers or lists: numpy takes both
            value = None
        if value is None:
            value = torch.as_tensor(np.asarray(rows))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"cannot batch the key {key!r}: {e}") from None
    if value.dtype == torch.float64 and not isinstance(first, np.ndarray | torch.Tensor):
        value = value.to(torch.get_default_dtype())  # Python floats, as transformers
    return value


class SeedStreams:
    """The seeds of a collator's batches, shared by the collators of this package (a mixin for a
    dataclass with a ``seed`` field; ``_init_streams`` in its ``__post_init__``, the ``epoch``
    property set on the class as below).

    Examples with a ``sample_id`` draw from (seed, epoch, sample id) alone. Without sample ids
    and with a seed, each process (main, DataLoader worker, rank) has its own stream derived
    from (seed, rank, worker id, the worker's launch). Without either, seeds come from torch's
    default generator."""

    def _init_streams(self) -> None:
        # The stream of seeded batches without sample ids: what it was derived for (see
        # _seed_and_ids), its seed, and the examples it has masked.
        self._stream_key: tuple[int, Any, bool] | None = None
        self._stream_seed: int | None = None
        self._seen = 0
        # Launches of each DataLoader worker slot, in shared memory so that every worker process
        # (forked, spawned) counts with the others.
        self._launches = torch.zeros(_WORKER_SLOTS, dtype=torch.int64).share_memory_()
        # The rank, captured here and whenever the object is pickled in a main process: spawned
        # DataLoader workers see no process group, so it travels in the object's state.
        self._rank = _current_rank()
        # Without a seed, examples with sample ids still need one for the whole run, the same in
        # every worker: taken here, in the main process, from torch's default generator (its
        # initial seed, which torch.manual_seed sets; nothing is drawn, so creating a collator
        # leaves torch's random stream where it was).
        self._run_seed = torch.initial_seed()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if torch.utils.data.get_worker_info() is None:
            rank = _current_rank()
            if rank is not None:
                state["_rank"] = rank
        return state

    def set_epoch(self, epoch: int) -> None:
        """New masks for a new epoch (same seed, same sample ids -> the same masks again). The
        value lives in shared memory: DataLoader workers, persistent or not, see it."""
        self.epoch = epoch

    # -- randomness ------------------------------------------------------------------------
    def _seed_and_ids(
        self, n: int, sample_ids: torch.Tensor | None
    ) -> tuple[int, torch.Tensor | None]:
        if sample_ids is not None:
            # elastic determinism: the mask depends on the example, not on who collates it
            return (self.seed if self.seed is not None else self._run_seed), sample_ids
        if self.seed is None:
            return draw_seed(), None  # torch's generator: seeded per DataLoader worker by torch
        info = torch.utils.data.get_worker_info()
        dist = torch.distributed
        # what the stream depends on and may change between calls: the process (a fork starts
        # its own stream), the seed, and in a main process whether a process group exists yet
        key = (
            os.getpid(),
            self.seed,
            info is None and dist.is_available() and dist.is_initialized(),
        )
        if key != self._stream_key:
            if info is None:
                rank = _current_rank()
                if rank is None:
                    rank = self._rank or 0
                else:
                    self._rank = rank
            else:
                rank = self._rank if self._rank is not None else (_current_rank() or 0)
            launch = 0
            if info is not None:
                # the launches of this worker slot so far, counted in shared memory: a worker
                # started for a new epoch takes the next stream (persistent workers keep theirs)
                slot = info.id % _WORKER_SLOTS
                launch = int(self._launches[slot].item())
                self._launches[slot] = launch + 1
            worker = 0 if info is None else 1 + info.id
            seed = _mix_seed(int(self.seed), rank, worker, launch)
            new_process = self._stream_key is None or self._stream_key[0] != key[0]
            if new_process or seed != self._stream_seed:  # else the same stream goes on
                self._stream_seed, self._seen = seed, 0
            self._stream_key = key
        ids = torch.arange(self._seen, self._seen + n, dtype=torch.long)
        self._seen += n
        return self._stream_seed, ids


@dataclass
class DataCollatorForLanguageModeling(SeedStreams):
    """Drop-in for ``transformers.DataCollatorForLanguageModeling``: a dataclass with its fields
    (in its order, with its defaults), its call chain and its outputs, with the fused mlmfast op
    doing padding and masking.

    ``__call__`` -> ``torch_call`` / ``numpy_call`` -> ``torch_mask_tokens`` /
    ``numpy_mask_tokens`` as in transformers: a subclass that overrides one of them sees it
    called with the same arguments (the padded ``input_ids``, ``special_tokens_mask``,
    ``offset_mapping``) and returns ``(inputs, labels)``. Without an override the batch goes
    straight to the fused op.

    Extra keyword-only fields:
        device: mask there (e.g. ``"cuda"``): padding on the CPU, one copy, masking on the
            device; for the main process (not DataLoader workers).
        exact_count: exactly ``round(p * n)`` masked tokens per row (at least one).
        span_masking: SpanBERT's span masking (``mask_tokens(mode="span")``): ``round(p * n)``
            tokens per row in spans of whole words (words from ``whole_word_mask``'s sources when
            it is set, else each token is a word), span lengths ~ Geometric(``span_p``) clipped
            at ``span_max`` words, or weighted by ``span_lengths``; one 80/10/10 decision per
            span (``span_replace="token"``: per token). Not with ``exact_count`` or
            ``pos_weights``.
        pos_weights: POS-weighted masking (a preset of :mod:`mlmfast.pos` or a dict UPOS ->
            weight); examples then carry ``pos_ids``. ``pos_frequencies`` gives the class
            frequencies (e.g. from a shard manifest); else they are measured on each batch.
        exclude_special_from_random: random replacements never produce special tokens (True;
            False reproduces transformers).
        return_positions: add ``masked_positions``, the flat indices of the masked tokens.
        max_length: pad every batch to this length (else the longest example, rounded up to
            ``pad_to_multiple_of``).
        epoch: start epoch; ``set_epoch`` changes it (new masks per epoch, reproducible).

    Seeds: examples with a ``sample_id`` are masked as a function of (seed, epoch, sample id,
    tokens) only; with ``seed=None`` that seed is torch's initial seed when the collator is made
    (``torch.manual_seed`` / ``transformers.set_seed`` before construction fixes it). Without
    sample ids and with a seed, each process (main, DataLoader worker, rank) has its own stream
    derived from (seed, rank, worker id, the worker's launch): ``seed`` alone reproduces a run,
    and fresh workers (each epoch) get fresh streams. Without either, masks follow torch's
    default generator, as in transformers.

    ``input_ids`` and ``labels`` come out int64 (what embeddings and the loss take) whatever the
    integer type of the examples: int32 ids, as shards store them, are widened by the op as it
    writes the masked batch.
    """

    tokenizer: Any
    mlm: bool = True
    whole_word_mask: bool = False
    mlm_probability: float | None = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    seed: int | None = None
    _: KW_ONLY
    device: str | torch.device | None = None
    exact_count: bool = False
    span_masking: bool = False
    span_p: float = 0.2
    span_max: int = 10
    span_lengths: Sequence[float] | None = None
    span_replace: str = "span"
    pos_weights: str | Mapping[str, float] | None = None
    pos_frequencies: Sequence[float] | None = None
    exclude_special_from_random: bool = True
    return_positions: bool = False
    max_length: int | None = None
    epoch: int = 0  # a property (below): the value lives in shared memory

    def __post_init__(self) -> None:
        self._check()
        tok = self.tokenizer
        self.mask_replace_prob = float(self.mask_replace_prob)
        self.random_replace_prob = float(self.random_replace_prob)
        if self.device is not None:
            self.device = torch.device(self.device)
        self.mask_token_id = getattr(tok, "mask_token_id", None)
        self.pad_token_id = tok.pad_token_id
        self.pad_token_type_id = getattr(tok, "pad_token_type_id", 0) or 0
        self.vocab_size = len(tok)
        self.special_ids = self._special_ids(tok)
        self.left_padding = getattr(tok, "padding_side", "right") == "left"
        self._pos_table = (
            pos.resolve_weights(self.pos_weights) if self.pos_weights is not None else None
        )
        if self.pos_frequencies is not None:
            freqs = [float(f) for f in self.pos_frequencies]
            if len(freqs) != pos.NUM_CLASSES:
                raise ValueError(
                    f"pos_frequencies must have {pos.NUM_CLASSES} entries (UPOS + special), "
                    f"got {len(freqs)}"
                )
            self.pos_frequencies = freqs
        self._continuation: torch.Tensor | None = None  # "##" pieces, for whole words
        self._warned: set[str] = set()
        self._hook_context: tuple[tuple[int, ...], dict[str, Any]] | None = None
        self._exclude_special = bool(self.exclude_special_from_random)
        self._span = (None, False)  # the op's span_cdf and span_token_replace
        if self.span_masking:
            self._span = (
                span_length_thresholds(self.span_p, self.span_max, self.span_lengths),
                self.span_replace == "token",
            )
        if self.mlm and len(self.special_ids) >= self.vocab_size:
            # Nothing ordinary to select or to draw. transformers returns batches here (with
            # labels all -100 for in-vocabulary ids), so do the same, drawing replacements (never
            # used) from the whole vocabulary rather than failing on an empty one.
            self._exclude_special = False
            self._warn_once(
                "all-special",
                f"every id of this tokenizer's vocabulary ({self.vocab_size} ids) is special: no "
                "token can be masked, so every label will be -100 (and random replacements, "
                "which cannot avoid special tokens, would come from the whole vocabulary). Is "
                "this the tokenizer the examples were made with?",
                stacklevel=3,
            )
        self._init_streams()

    # -- configuration ---------------------------------------------------------------------
    def _check(self) -> None:
        tok = self.tokenizer
        _check_whole_word_mask(self.whole_word_mask)
        if self.mlm:
            if getattr(tok, "mask_token", None) is None or tok.mask_token_id is None:
                raise ValueError(
                    "This tokenizer does not have a mask token, which masked language modeling "
                    "needs; pass mlm=False for causal language modeling labels."
                )
            p = self.mlm_probability
            if p is None or not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"mlm_probability must be in [0, 1], got {p}")
            self.mlm_probability = float(p)
        elif self.whole_word_mask:
            raise ValueError("whole_word_mask=True needs mlm=True")
        for name in ("mask_replace_prob", "random_replace_prob"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if float(self.mask_replace_prob) + float(self.random_replace_prob) > 1.0 + 1e-12:
            raise ValueError(
                "mask_replace_prob + random_replace_prob must not exceed 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int | np.integer)
            or not -(2**63) <= int(self.seed) < 2**64
        ):
            raise ValueError(
                f"seed must be None or an integer that fits in 64 bits, got {self.seed!r}"
            )
        if self.span_masking:
            if not self.mlm:
                raise ValueError("span_masking=True needs mlm=True")
            if self.exact_count:
                raise ValueError(
                    "span_masking=True and exact_count=True exclude each other (span masking "
                    "already masks round(p * n) tokens per row)"
                )
            if self.pos_weights is not None:
                raise ValueError("span_masking=True does not take pos_weights")
            if self.span_replace not in SPAN_REPLACE:
                raise ValueError(
                    f"span_replace must be one of {SPAN_REPLACE}, got {self.span_replace!r}"
                )
        if self.return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {self.return_tensors!r}")
        if self.pad_to_multiple_of is not None and int(self.pad_to_multiple_of) <= 0:
            raise ValueError(
                f"pad_to_multiple_of must be a positive int, got {self.pad_to_multiple_of}"
            )
        if self.max_length is not None and int(self.max_length) <= 0:
            raise ValueError(f"max_length must be a positive int, got {self.max_length}")

    @staticmethod
    def _special_ids(tokenizer: Any) -> list[int]:
        ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        # tokens added with special=True (tokenizer.add_tokens(..., special_tokens=True)) are not
        # always in all_special_ids; they must never be masked either
        decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
        ids.update(i for i, t in decoder.items() if getattr(t, "special", False))
        return sorted(i for i in ids if i is not None and i >= 0)

    def _warn_once(self, key: str, message: str, stacklevel: int) -> None:
        """``stacklevel`` counts from the caller of this method, as warnings.warn does."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, CollatorWarning, stacklevel=stacklevel + 1)

    # -- collation ---------------------------------------------------------------------------
    def __call__(self, features: Any, return_tensors: str | None = None) -> dict[str, Any]:
        if return_tensors is None:
            return_tensors = self.return_tensors
        if return_tensors == "pt":
            return self.torch_call(features)
        if return_tensors == "np":
            return self.numpy_call(features)
        raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")

    def torch_call(self, examples: Any) -> dict[str, Any]:
        """Pad and mask ``examples`` into a batch of tensors (transformers' hook)."""
        # ShardStream's flag (batches of full rows): read here, dropped by _pad
        full_rows = isinstance(examples, Mapping) and examples.get(FULL_ROWS_KEY) is True
        batch = self._pad(examples)
        if self.mlm and type(self).torch_mask_tokens is not _TORCH_MASK_TOKENS:
            return self._mask_by_hook(batch, numpy=False)
        return self._mask(batch, full_rows)

    def numpy_call(self, examples: Any) -> dict[str, Any]:
        """Pad and mask ``examples`` into a batch of numpy arrays (transformers' hook)."""
        full_rows = isinstance(examples, Mapping) and examples.get(FULL_ROWS_KEY) is True
        batch = self._pad(examples)
        if self.mlm and type(self).numpy_mask_tokens is not _NUMPY_MASK_TOKENS:
            out = self._mask_by_hook(batch, numpy=True)
        else:
            out = self._mask(batch, full_rows)
        return {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}

    def _columns(self, examples: Any) -> tuple[dict[str, list], str]:
        """Column lists from the examples, and their kind: "padded" (a dict of padded columns),
        "dicts" (a list of dict examples) or "rows" (a list of id sequences)."""
        if isinstance(examples, Mapping):  # a dict of already padded columns
            cols = dict(examples)
            if "input_ids" not in cols:
                raise KeyError("a batch dict needs an 'input_ids' column")
            return cols, "padded"
        if isinstance(examples, torch.Tensor | np.ndarray):
            return {"input_ids": list(examples)}, "rows"
        examples = list(examples)
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        first = examples[0]
        if isinstance(first, Mapping):
            keys = list(first.keys())
            if "input_ids" not in keys:
                raise KeyError(f"examples need an 'input_ids' key, got {keys}")
            # Same number of keys everywhere (one C-level pass) and every key present (the
            # column gathering raises KeyError otherwise): the key sets are then identical.
            try:
                if set(map(len, examples)) != {len(keys)}:
                    raise KeyError
                return {k: list(map(itemgetter(k), examples)) for k in keys}, "dicts"
            except KeyError:
                i = next(i for i, ex in enumerate(examples) if set(ex.keys()) != set(keys))
                raise ValueError(
                    f"examples have different keys: example 0 has {sorted(keys)}, "
                    f"example {i} has {sorted(examples[i].keys())}"
                ) from None
        if _is_row(first):
            return {"input_ids": examples}, "rows"
        raise TypeError(
            "examples must be a list of dicts, a list of token-id sequences, or a dict of padded "
            f"columns; got a list of {type(first).__name__}"
        )

    def _pad(self, examples: Any) -> dict[str, Any]:
        """Examples -> a padded batch: tokenizer.pad's keys in the examples' order, per-token
        keys padded in C, other keys stacked; an attention mask for the op either way."""
        cols, kind = self._columns(examples)
        if kind == "padded":
            return self._padded_batch(cols)
        ids_rows = cols["input_ids"]
        if not ids_rows or not _is_row(ids_rows[0]):
            raise TypeError("input_ids of each example must be a sequence of token ids")
        lengths_np = _lengths(ids_rows)
        L = self._pad_width(lengths_np)
        batch: dict[str, Any] = {}  # keys in the examples' order, as tokenizer.pad does
        for key, rows in cols.items():
            batch[key] = self._pad_key(key, rows, lengths_np, L)
        # transformers adds an attention mask to dict examples (tokenizer.pad), not to bare rows;
        # the op gets one either way (positions count from the first real token)
        if "attention_mask" not in batch:
            lengths = torch.from_numpy(lengths_np)
            ar = torch.arange(L)
            left = self.left_padding
            att = ar >= (L - lengths).unsqueeze(1) if left else ar < lengths.unsqueeze(1)
            wanted = kind == "dicts" and self._wants_attention_mask()
            batch["attention_mask" if wanted else _PRIVATE_ATTENTION] = att.long()
        return batch

    def _padded_batch(self, cols: dict[str, Any]) -> dict[str, Any]:
        """A batch that comes padded (a dict of [B, L] tensors or arrays)."""
        cols.pop(FULL_ROWS_KEY, None)  # consumed by __call__
        batch = {
            k: (torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v)
            for k, v in cols.items()
        }
        ids = batch["input_ids"]
        if ids.dim() != 2:
            raise ValueError(
                f"input_ids of a padded batch must be 2-D, got shape {tuple(ids.shape)}"
            )
        if "attention_mask" not in batch and self.pad_token_id is not None:
            batch["attention_mask"] = (ids != self.pad_token_id).long()
        return batch

    def _pad_width(self, lengths: np.ndarray) -> int:
        """The batch's padded length: the longest example's, or max_length, rounded up."""
        longest = int(lengths.max()) if len(lengths) else 0
        if self.max_length is not None:
            if longest > self.max_length:
                raise ValueError(
                    f"an example has {longest} tokens, more than max_length={self.max_length}"
                )
            L = _round_up(int(self.max_length), self.pad_to_multiple_of)
        else:
            L = _round_up(longest, self.pad_to_multiple_of)
        if self.pad_token_id is None and (lengths != L).any():
            raise ValueError(
                "the examples have different lengths and the tokenizer has no pad token; "
                "set tokenizer.pad_token or pass examples of equal length"
            )
        return L

    def _pad_key(self, key: str, rows: list, lengths: np.ndarray, L: int) -> Any:
        """One key of the examples as a batch value."""
        first, left = rows[0], self.left_padding
        if key == "input_ids":
            pad_id = self.pad_token_id if self.pad_token_id is not None else 0
            return _pad_rows(rows, lengths, L, pad_id, left, torch.long, key)
        if key == "sample_id":
            try:  # ints, or 0-d arrays/tensors (a Dataset returning torch.tensor(idx))
                ids = np.fromiter(map(int, rows), dtype=np.int64, count=len(rows))
            except (TypeError, ValueError) as e:
                raise ValueError(f"sample_id must be one integer per example: {e}") from None
            return torch.from_numpy(ids)
        if key == "offset_mapping":
            self._check_lengths(key, _row_lengths(rows), lengths)
            return self._pad_offsets(rows, lengths, L, left)
        pads = self._per_token_pad
        if (
            _is_row(first)
            and getattr(first, "ndim", 1) == 1
            and (key in _KNOWN_PER_TOKEN or key in pads or self._same_lengths(rows, lengths))
        ):
            self._check_lengths(key, _lengths(rows), lengths)
            # consumed keys in the narrowest type the op takes; returned keys as int64
            dtype = _CONSUMED_DTYPES.get(key, torch.long)
            return _pad_rows(
                rows, lengths, L, pads.get(key, 0), left, dtype, key, key == "word_ids"
            )
        return _stack_key(key, rows)

    @property
    def _per_token_pad(self) -> dict[str, int]:
        return {
            "attention_mask": 0,
            "token_type_ids": self.pad_token_type_id,
            "special_tokens_mask": 1,
            "word_ids": -1,
            "pos_ids": pos.SPECIAL,
            "labels": -100,
        }

    def _word_ids_from_pieces(self, ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        """WordPiece words (transformers 4.x's whole-word rule): a token continues a word when
        its piece starts with "##"."""
        if self._continuation is None:
            vocab = self.tokenizer.get_vocab()
            table = torch.zeros(
                max(self.vocab_size, max(vocab.values(), default=0) + 1), dtype=torch.bool
            )
            cont = [i for t, i in vocab.items() if t.startswith("##")]
            if not cont:
                raise ValueError(
                    "whole_word_mask=True needs word ids: give examples 'word_ids' (e.g. from "
                    "encoding.word_ids()) or 'offset_mapping' (return_offsets_mapping=True); this "
                    "tokenizer has no '##' continuation pieces to infer words from"
                )
            table[torch.tensor(cont)] = True
            self._continuation = table
        if self._continuation.device != ids.device:  # the hooks may be given CUDA ids
            self._continuation = self._continuation.to(ids.device)
        cont = self._continuation[ids.clamp(0, len(self._continuation) - 1)] & ~special
        prev_special = torch.roll(special, 1, dims=1)
        prev_special[:, 0] = True
        starts = ~special & (~cont | prev_special)
        return (torch.cumsum(starts.long(), dim=1) - 1).masked_fill(special, -1)

    @staticmethod
    def _check_lengths(key: str, row_lengths: np.ndarray, lengths: np.ndarray) -> None:
        if not np.array_equal(row_lengths, lengths):
            i = int(np.flatnonzero(row_lengths != lengths)[0])
            raise ValueError(
                f"{key} of example {i} has {row_lengths[i]} entries but its input_ids has "
                f"{lengths[i]}; per-token keys must match input_ids in length"
            )

    @staticmethod
    def _same_lengths(rows: list, lengths: np.ndarray) -> bool:
        try:
            return np.array_equal(_lengths(rows), lengths)
        except TypeError:
            return False

    def _wants_attention_mask(self) -> bool:
        names = getattr(self.tokenizer, "model_input_names", None) or ["attention_mask"]
        return "attention_mask" in names

    @staticmethod
    def _pad_offsets(rows: list, lengths: np.ndarray, L: int, left: bool) -> torch.Tensor:
        n = len(rows)
        flat = (
            np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1, 2) for r in rows])
            if n
            else np.zeros((0, 2), np.int64)
        )
        out = torch.zeros((n, L, 2), dtype=torch.long)
        ar = torch.arange(L)
        lt = torch.from_numpy(lengths)
        mask = ar >= (L - lt).unsqueeze(1) if left else ar < lt.unsqueeze(1)
        out[mask] = torch.from_numpy(flat)
        return out

    def _mask(self, batch: dict[str, Any], full_rows: bool = False) -> dict[str, Any]:
        special_tokens_mask = batch.pop("special_tokens_mask", None)
        offsets = batch.pop("offset_mapping", None)
        word_ids = batch.pop("word_ids", None)
        pos_ids = batch.pop("pos_ids", None)
        sample_ids = batch.pop("sample_id", None)
        private_att = batch.pop(_PRIVATE_ATTENTION, None)
        ids = batch["input_ids"]
        if not self.mlm:
            if ids.dtype == torch.int32:  # int64 out, as from int32 ids when mlm=True
                ids = batch["input_ids"] = ids.long()
            labels = ids.clone()
            if self.pad_token_id is not None:
                labels[labels == self.pad_token_id] = -100
            batch["labels"] = labels
            return batch

        att = batch.get("attention_mask", private_att)
        masked, labels = self._mask_ids(
            ids, att, special_tokens_mask, offsets, word_ids, pos_ids, sample_ids, full_rows, batch
        )
        batch["input_ids"], batch["labels"] = masked, labels
        if self.return_positions:
            batch["masked_positions"] = torch.nonzero(labels.reshape(-1) != -100).squeeze(1)
        return batch

    def _whole_words(self, ids, att, special_tokens_mask, offsets, word_ids):
        """The op's word ids for whole-word masking (None without it): the examples' own,
        else from offset mappings, else from WordPiece '##' pieces (with a warning, once)."""
        if not self.whole_word_mask:
            return None
        if word_ids is not None:
            return _word_runs(word_ids)
        special = torch.isin(
            ids, torch.tensor(self.special_ids, dtype=ids.dtype, device=ids.device)
        )
        if special_tokens_mask is not None:
            special |= special_tokens_mask.bool()
        if att is not None:
            special |= att == 0
        if offsets is not None:
            return _word_ids_from_offsets(offsets, special)
        word_ids = self._word_ids_from_pieces(ids, special)
        self._warn_once(
            "pieces",
            "whole_word_mask=True but the examples carry neither 'word_ids' nor "
            "'offset_mapping': words are guessed from WordPiece '##' pieces (a token "
            "whose piece does not start with '##' starts a word). Under "
            "transformers' Trainer, remove_unused_columns=True (its default) drops "
            "these columns before the collator sees them: pass "
            "remove_unused_columns=False to keep them.",
            stacklevel=6,
        )
        return word_ids

    def _pos_classes(self, pos_ids, att):
        """(pos_ids, per-class probabilities) for POS-weighted masking, (None, None) without."""
        if self._pos_table is None:
            return None, None
        if pos_ids is None:
            raise ValueError("pos_weights is set but the examples carry no 'pos_ids'")
        freqs = self.pos_frequencies
        if freqs is None:
            eligible = att.bool() if att is not None else None
            freqs = pos.class_frequencies(pos_ids, eligible)
        return pos_ids, pos.class_probabilities(self.mlm_probability, self._pos_table, freqs)

    def _mask_ids(
        self,
        ids: torch.Tensor,
        att: torch.Tensor | None,
        special_tokens_mask: torch.Tensor | None,
        offsets: torch.Tensor | None,
        word_ids: torch.Tensor | None,
        pos_ids: torch.Tensor | None,
        sample_ids: torch.Tensor | None,
        full_rows: bool = False,
        batch: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused op on a padded batch -> (masked input_ids, labels), both int64. Words, POS
        probabilities and the seed are worked out where the ids are; with ``device`` set, the
        op's inputs (and the other tensors of ``batch``) then move there."""
        if self.mask_token_id is None:
            raise ValueError(
                "masking needs a mask token and this tokenizer has none; pass mlm=False for "
                "causal language modeling labels"
            )
        word_ids = self._whole_words(ids, att, special_tokens_mask, offsets, word_ids)
        pos_ids, pos_probs = self._pos_classes(pos_ids, att)
        seed, sids = self._seed_and_ids(ids.shape[0], sample_ids)
        device = self.device
        if device is not None and device != ids.device:
            nb = device.type == "cuda"
            move = lambda t: None if t is None else t.to(device, non_blocking=nb)  # noqa: E731
            if batch is not None:  # the tensors returned with the masked ids
                for k, v in batch.items():
                    if isinstance(v, torch.Tensor):
                        batch[k] = move(v)
            ids, att, special_tokens_mask, word_ids, pos_ids, sids = map(
                move, (ids, att, special_tokens_mask, word_ids, pos_ids, sids)
            )
        # the op's arguments in schema order (mlmfast.ops.mask_tokens documents them), built
        # here rather than through its keyword wrapper: this runs once per batch
        args = (
            None if full_rows else att,
            special_tokens_mask,
            word_ids,
            pos_ids,
            pos_probs,
            sids,
            None,  # rng_state
            self.special_ids,
            self.mlm_probability,
            self.mask_replace_prob,
            self.random_replace_prob,
            self.mask_token_id,
            self.vocab_size,
            schema_seed(seed),
            self.epoch,
            bool(self.exact_count),
            self._exclude_special,
            *self._span,
        )
        try:
            if ids.dtype == torch.int32:
                # int32 ids (shards store them so) come out as the int64 that embeddings and the
                # loss take, widened by the op as it writes (no int64 copy of the unmasked batch)
                masked = torch.empty_like(
                    ids, dtype=torch.int64, memory_format=torch.contiguous_format
                )
                labels = torch.empty_like(
                    ids, dtype=torch.int64, memory_format=torch.contiguous_format
                )
                torch.ops.mlmfast.mask_tokens_into.default(ids, masked, labels, *args)
            else:
                masked, labels = torch.ops.mlmfast.mask_tokens.default(ids, *args)
        except RuntimeError as e:
            if "outside the vocabulary" not in str(e):
                raise
            raise ValueError(
                f"{str(e).splitlines()[0]}: the examples hold ids that this tokenizer "
                f"(len(tokenizer) = {self.vocab_size}) does not have, so they were tokenised with "
                "another tokenizer: a tokenizer/model mismatch. Give the collator the tokenizer "
                "that produced the examples (and a model whose vocabulary it matches)."
            ) from None
        return masked, labels

    # -- transformers' hooks -----------------------------------------------------------------
    def _mask_by_hook(self, batch: dict[str, Any], numpy: bool) -> dict[str, Any]:
        """transformers' route: ``torch_mask_tokens`` / ``numpy_mask_tokens`` (overridden by a
        subclass) on the padded ``input_ids`` with ``special_tokens_mask`` and
        ``offset_mapping``, as transformers passes them (int64). mlmfast's own per-token inputs
        (``word_ids``, ``pos_ids``, ``sample_id``, the attention mask) reach the base method
        when the override calls it on a batch of the same shape."""
        special_tokens_mask = batch.pop("special_tokens_mask", None)
        offsets = batch.pop("offset_mapping", None)
        private_att = batch.pop(_PRIVATE_ATTENTION, None)
        context = {
            "word_ids": batch.pop("word_ids", None),
            "pos_ids": batch.pop("pos_ids", None),
            "sample_id": batch.pop("sample_id", None),
        }
        device = self.device if not numpy else None
        if device is not None and device != batch["input_ids"].device:
            nb = device.type == "cuda"
            for d in (batch, context):
                for k, v in d.items():
                    if isinstance(v, torch.Tensor):
                        d[k] = v.to(device, non_blocking=nb)
            special_tokens_mask, offsets, private_att = (
                None if t is None else t.to(device, non_blocking=nb)
                for t in (special_tokens_mask, offsets, private_att)
            )
        ids = batch["input_ids"].long()
        context["attention"] = batch.get("attention_mask", private_att)
        if special_tokens_mask is not None:
            special_tokens_mask = special_tokens_mask.long()
        self._hook_context = (tuple(ids.shape), context)
        try:
            if numpy:
                inputs, labels = self.numpy_mask_tokens(
                    ids.numpy(),
                    special_tokens_mask=None
                    if special_tokens_mask is None
                    else special_tokens_mask.numpy(),
                    offset_mapping=None if offsets is None else offsets.numpy(),
                )
            else:
                inputs, labels = self.torch_mask_tokens(
                    ids, special_tokens_mask=special_tokens_mask, offset_mapping=offsets
                )
        finally:
            self._hook_context = None
        batch["input_ids"], batch["labels"] = inputs, labels
        if self.return_positions:
            flat = torch.as_tensor(labels).reshape(-1)
            batch["masked_positions"] = torch.nonzero(flat != -100).squeeze(1)
        return batch

    def _hook_inputs(
        self, ids: torch.Tensor, special_tokens_mask: Any, offset_mapping: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused op for the hooks: transformers' arguments, plus this batch's own per-token
        inputs when ``torch_call`` / ``numpy_call`` set them aside for a batch of this shape."""
        one_row = ids.dim() == 1
        as_2d = (lambda t: t.unsqueeze(0)) if one_row else (lambda t: t)  # noqa: E731
        ids = as_2d(ids)
        if ids.dim() != 2:
            raise ValueError(
                f"inputs must be a [batch, length] array of token ids, got shape {tuple(ids.shape)}"
            )
        if ids.dtype not in (torch.int64, torch.int32):
            if ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise TypeError(f"inputs must hold integer token ids, got {ids.dtype}")
            ids = ids.long()
        special = offsets = None
        if special_tokens_mask is not None:
            special = as_2d(_as_tensor_on(special_tokens_mask, ids.device))
        if offset_mapping is not None:
            offsets = _as_tensor_on(offset_mapping, ids.device)
            offsets = offsets.unsqueeze(0) if one_row else offsets
        context: dict[str, Any] = {}
        if self._hook_context is not None and self._hook_context[0] == tuple(ids.shape):
            context = self._hook_context[1]
        masked, labels = self._mask_ids(
            ids,
            context.get("attention"),
            special,
            offsets,
            context.get("word_ids"),
            context.get("pos_ids"),
            context.get("sample_id"),
        )
        if one_row:
            masked, labels = masked[0], labels[0]
        return masked, labels

    def torch_mask_tokens(
        self,
        inputs: Any,
        special_tokens_mask: Any | None = None,
        offset_mapping: Any | None = None,
    ) -> tuple[Any, Any]:
        """Mask a padded batch of token ids (transformers' hook): returns ``(inputs, labels)``,
        ``inputs`` masked in place (as transformers does) when it is a tensor, ``labels`` the
        original id where a token was selected and -100 elsewhere. Special tokens (the
        tokenizer's and those ``special_tokens_mask`` marks) are never selected;
        ``offset_mapping`` gives the words under ``whole_word_mask``."""
        ids = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
        masked, labels = self._hook_inputs(ids, special_tokens_mask, offset_mapping)
        if isinstance(inputs, torch.Tensor):
            inputs.copy_(masked)
            return inputs, labels.to(inputs.dtype)
        return masked, labels

    def numpy_mask_tokens(
        self,
        inputs: Any,
        special_tokens_mask: Any | None = None,
        offset_mapping: Any | None = None,
    ) -> tuple[Any, Any]:
        """``torch_mask_tokens`` for numpy arrays (transformers' hook): ``(inputs, labels)`` as
        arrays, ``inputs`` masked in place when it is a writeable array."""
        array = np.asarray(inputs)
        ids = torch.from_numpy(np.ascontiguousarray(array))
        masked, labels = self._hook_inputs(ids, special_tokens_mask, offset_mapping)
        masked_np, labels_np = masked.numpy(), labels.numpy()
        if isinstance(inputs, np.ndarray) and inputs.flags.writeable:
            inputs[...] = masked_np
            return inputs, labels_np.astype(inputs.dtype, copy=False)
        return masked_np, labels_np


# The base hooks, for spotting a subclass's override: only then does a batch take their route.
_TORCH_MASK_TOKENS = DataCollatorForLanguageModeling.torch_mask_tokens
_NUMPY_MASK_TOKENS = DataCollatorForLanguageModeling.numpy_mask_tokens


def _get_epoch(self: SeedStreams) -> int:
    return int(self._epoch.item())  # .item(): indexing a tensor costs microseconds


def _set_epoch(self: SeedStreams, epoch: int) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or not 0 <= epoch < 2**32:
        raise ValueError(f"epoch must be an integer in [0, 2^32), got {epoch!r}")
    shared = self.__dict__.get("_epoch")
    if shared is None:
        # in shared memory, so that set_epoch reaches DataLoader workers (persistent ones too)
        shared = self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
    shared[0] = int(epoch)


def epoch_property() -> property:
    """The ``epoch`` of a :class:`SeedStreams` dataclass, in shared memory. Set on the class after
    @dataclass, which would otherwise take it for the field's default: the generated __init__
    and dataclasses.replace go through it."""
    return property(
        _get_epoch, _set_epoch, doc="The epoch masks are drawn for (``set_epoch`` changes it)."
    )


DataCollatorForLanguageModeling.epoch = epoch_property()  # type: ignore[assignment]


@dataclass
class DataCollatorForWholeWordMask(DataCollatorForLanguageModeling):
    """transformers' whole-word collator: ``DataCollatorForLanguageModeling`` with
    ``whole_word_mask=True`` (same fields, same order). Random replacement stays on (80/10/10);
    ``mask_replace_prob=1.0, random_replace_prob=0.0`` gives transformers' all-``[MASK]`` rule."""

    whole_word_mask: bool = True

    def __post_init__(self) -> None:
        _check_whole_word_mask(self.whole_word_mask)
        self.whole_word_mask = True
        super().__post_init__()
