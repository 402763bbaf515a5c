"""Typed Python surface of the mlmfast op family (``torch.ops.mlmfast.*``).

The ops are registered with the PyTorch dispatcher by the compiled extension ``mlmfast._C``
(CPU always, CUDA when built with it) and have fake (meta) implementations here, so they trace
under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from mlmfast import _C  # noqa: F401  (loads the shared object, which registers the ops)

__all__ = [
    "MODES",
    "MaskOutput",
    "SpanCorruptOutput",
    "compute_input_and_target_lengths",
    "draw_seed",
    "mask_tokens",
    "mask_tokens_",
    "mask_tokens_into",
    "philox4x32_10",
    "span_corrupt",
    "span_corruption_lengths",
    "span_length_thresholds",
]

MODES = ("bernoulli", "exact", "span")
SPAN_REPLACE = ("span", "token")
MAX_SPAN_WORDS = 64  # csrc/masking.h kMaxSpanWords

# The overloads, looked up once (each torch.ops attribute access costs a dictionary walk).
_MASK_TOKENS = torch.ops.mlmfast.mask_tokens.default
_MASK_TOKENS_INPLACE = torch.ops.mlmfast.mask_tokens_.default
_MASK_TOKENS_INTO = torch.ops.mlmfast.mask_tokens_into.default
_SPAN_CORRUPT = torch.ops.mlmfast.span_corrupt.default


class MaskOutput(NamedTuple):
    """Result of :func:`mask_tokens`.

    ``input_ids``: the batch with selected tokens replaced (80/10/10 by default);
    ``labels``: the original id where a token was selected, -100 elsewhere (same dtype as ids);
    ``positions``: flat indices (into ``input_ids.view(-1)``) of the selected tokens, in
    row-major order, when ``return_positions=True``, else None.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor | None = None


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 64-bit seed from torch's default generator (so ``torch.manual_seed`` controls it)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator))


def _check_mode(mode: str) -> bool:
    if mode not in MODES:
        raise ValueError(f"mask_tokens: mode must be one of {MODES}, got {mode!r}")
    return mode == "exact"


def span_length_thresholds(
    span_p: float = 0.2, span_max: int = 10, span_lengths: Sequence[float] | None = None
) -> list[int]:
    """The span-length distribution of ``mode="span"`` as the op reads it: ``span_max - 1``
    (fewer when the longest lengths have weight 0) cumulative uint32 thresholds ``floor(F(l) * 2^32)`` for l = 1 .. span_max - 1, where F is
    the distribution function of the span length in words (a draw u gives the length
    ``1 + #{l : u >= threshold_l}``). F is the geometric distribution with parameter ``span_p``
    truncated to ``[1, span_max]`` (SpanBERT: 0.2 and 10, mean 3.8), or, given ``span_lengths``,
    proportional to those weights of the lengths 1, 2, ... (Megatron's n-grams: ``[1, 1/2, 1/3]``).
    Computed in exact rational arithmetic, once, so CPU, CUDA and reference compare the same
    integers."""
    if span_lengths is not None:
        try:
            weights = [float(w) for w in span_lengths]
        except (TypeError, ValueError):
            raise ValueError(
                f"mask_tokens: span_lengths must be a sequence of weights, got {span_lengths!r}"
            ) from None
        if not 1 <= len(weights) <= MAX_SPAN_WORDS or not all(
            math.isfinite(w) and w >= 0 for w in weights
        ):
            raise ValueError(
                f"mask_tokens: span_lengths must hold 1 to {MAX_SPAN_WORDS} finite weights >= 0 "
                f"(of the lengths 1, 2, ...), got {span_lengths!r}"
            )
        if sum(weights) <= 0:
            raise ValueError(
                f"mask_tokens: span_lengths must have a positive weight, got {weights}"
            )
        return list(_span_cdf(tuple(weights), None, 0))
    p = float(span_p)
    if not 0.0 < p <= 1.0:  # NaN fails too
        raise ValueError(f"mask_tokens: span_p must be in (0, 1], got {span_p!r}")
    if isinstance(span_max, bool) or int(span_max) != span_max:
        raise ValueError(f"mask_tokens: span_max must be an integer, got {span_max!r}")
    if not 1 <= int(span_max) <= MAX_SPAN_WORDS:
        raise ValueError(
            f"mask_tokens: span_max must be in [1, {MAX_SPAN_WORDS}], got {span_max!r}"
        )
    return list(_span_cdf(None, p, int(span_max)))


@torch.compiler.assume_constant_result
def _span_cdf(weights: tuple[float, ...] | None, p: float | None, n: int) -> tuple[int, ...]:
    """_cdf_of_weights, a constant of the arguments for torch.compile (not traced)."""
    return _cdf_of_weights(weights, p, n)


@functools.lru_cache(maxsize=64)
def _cdf_of_weights(weights: tuple[float, ...] | None, p: float | None, n: int) -> tuple[int, ...]:
    """The thresholds of span_length_thresholds, in exact rational arithmetic (a fraction of a
    millisecond, hence cached: the op's wrapper asks on every call)."""
    from fractions import Fraction

    if weights is not None:
        w = [Fraction(x) for x in weights]
    else:
        q = Fraction(p)
        w = [q * (1 - q) ** i for i in range(n)]
    while w[-1] == 0:  # lengths past the last possible one: dropped, so every F(l) < 1
        w.pop()
    total, acc, out = sum(w), Fraction(0), []
    for x in w[:-1]:
        acc += x
        out.append(int(acc * 2**32 / total))  # floor of a non-negative rational
    return tuple(out)


def _span_schema_args(mode, span_p, span_max, span_lengths, span_replace, pos_ids, pos_probs):
    """(span_cdf, span_token_replace) of the schema: None, False outside span mode."""
    if mode != "span":
        return None, False
    if span_replace not in SPAN_REPLACE:
        raise ValueError(
            f"mask_tokens: span_replace must be one of {SPAN_REPLACE}, got {span_replace!r}"
        )
    if pos_ids is not None or pos_probs is not None:
        raise ValueError(
            "mask_tokens: mode='span' does not take pos_ids/pos_probs (spans are drawn by length "
            "and a uniform start word); pass pos_ids=None, pos_probs=None"
        )
    return span_length_thresholds(span_p, span_max, span_lengths), span_replace == "token"


def schema_seed(seed: int) -> int:
    """A 64-bit seed (signed or unsigned) as the schema's int64: the same 64 key bits."""
    seed = int(seed)
    return seed - 2**64 if seed >= 2**63 else seed


def _schema_args(
    input_ids,
    mask_token_id,
    vocab_size,
    special_ids,
    attention_mask,
    special_tokens_mask,
    word_ids,
    pos_ids,
    pos_probs,
    sample_ids,
    mlm_probability,
    mask_replace_prob,
    random_replace_prob,
    seed,
    epoch,
    mode,
    exclude_special_from_random,
    rng_state,
    span_p=0.2,
    span_max=10,
    span_lengths=None,
    span_replace="span",
) -> tuple:
    """The schema's arguments after input_ids, checked and converted (the keyword arguments of
    mask_tokens without return_positions, in its order)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"mask_tokens: input_ids must be a torch.Tensor, got {type(input_ids).__name__}"
        )
    if mask_token_id is None:
        raise ValueError(
            "mask_tokens: mask_token_id is required (the tokenizer has no mask token?)"
        )
    if vocab_size is None:
        raise ValueError("mask_tokens: vocab_size is required")
    seed = draw_seed() if seed is None else int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"mask_tokens: seed must fit in 64 bits, got {seed}")
    return (
        attention_mask,
        special_tokens_mask,
        word_ids,
        pos_ids,
        None if pos_probs is None else [float(p) for p in pos_probs],
        sample_ids,
        rng_state,
        [int(s) for s in special_ids],
        float(mlm_probability),
        float(mask_replace_prob),
        float(random_replace_prob),
        int(mask_token_id),
        int(vocab_size),
        schema_seed(seed),
        int(epoch),
        _check_mode(mode),
        bool(exclude_special_from_random),
        *_span_schema_args(mode, span_p, span_max, span_lengths, span_replace, pos_ids, pos_probs),
    )


def _args(input_ids, options: dict) -> tuple:
    """_schema_args from the keyword arguments of the preallocated forms (defaults filled)."""
    return _schema_args(input_ids, **{**_OPTIONS, **options})


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    special_tokens_mask: torch.Tensor | None = None,
    word_ids: torch.Tensor | None = None,
    pos_ids: torch.Tensor | None = None,
    pos_probs: Sequence[float] | None = None,
    sample_ids: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    seed: int | None = None,
    epoch: int = 0,
    mode: str = "bernoulli",
    exclude_special_from_random: bool = True,
    return_positions: bool = False,
    rng_state: torch.Tensor | None = None,
    span_p: float = 0.2,
    span_max: int = 10,
    span_lengths: Sequence[float] | None = None,
    span_replace: str = "span",
) -> MaskOutput:
    """Select tokens for masked-language modelling and apply the 80/10/10 replacement, fused.

    Args:
        input_ids: ``[B, L]`` (or ``[L]``) int64 or int32 token ids, on the CPU or a CUDA device.
        mask_token_id: id written for the "mask" share of selected tokens.
        vocab_size: ids are in ``[0, vocab_size)``; random replacements are drawn from it.
        special_ids: ids that are never selected (pad, cls, sep, mask, unk...).
        attention_mask: tokens where it is 0 are never selected; positions are counted from the
            first attended token, so left padding does not change the mask.
        special_tokens_mask: 1 marks further tokens that are never selected.
        word_ids: whole-word masking: tokens with the same word id ``>= 0`` in a row are
            selected together (one draw per word); ``-1`` = not part of a word.
        pos_ids, pos_probs: uint8 class per token and the selection probability of each class
            (replaces ``mlm_probability``). Give all tokens of a word the same class.
        sample_ids: ``[B]`` int64 stable ids of the examples (default: the row index). With them
            the mask of an example is independent of the batch it is in.
        mlm_probability: selection probability of an eligible token.
        mask_replace_prob, random_replace_prob: shares of selected tokens replaced by the mask
            token and by a random id; the rest stay unchanged.
        seed: 64-bit seed; None draws one from torch's default generator.
        epoch: a new epoch gives new masks; the same epoch reproduces them.
        mode: ``"bernoulli"`` (each token independently, HF semantics) or ``"exact"``:
            ``k = (n_eligible * floor(p * 2^32) + 2^31) >> 32`` per row (``round(p * n)``, halves
            rounded by the binary value of ``p``: 0.15 * 10 gives 1), at least one. With whole
            words, words are taken while they fit in ``k`` tokens (one word alone if none fits).
        exclude_special_from_random: random replacements never produce a special id
            (False reproduces transformers, which can draw [PAD] or [CLS]).
        return_positions: also return the flat indices of the selected tokens.
        rng_state: optional int64 ``[seed, epoch]`` tensor on the device of ``input_ids``; it
            overrides ``seed``/``epoch`` and is read by the kernel, so the call can be captured
            in a CUDA graph and replayed with new values.
        span_p, span_max: ``mode="span"``: span lengths in words ~ Geometric(span_p) truncated
            to ``[1, span_max]`` (SpanBERT: 0.2, 10; mean 3.8 words).
        span_lengths: ``mode="span"``: weights of the lengths 1, 2, ... instead (Megatron's
            n-gram masking: ``[1, 1/2, 1/3]``).
        span_replace: ``mode="span"``: ``"span"`` (one 80/10/10 decision per span, as SpanBERT)
            or ``"token"`` (per token).
    """
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"mask_tokens: input_ids must be a torch.Tensor, got {type(input_ids).__name__}"
        )
    if input_ids.dim() == 1:  # one row: as a batch of one
        options = dict(locals())
        del options["input_ids"]
        for key in ("attention_mask", "special_tokens_mask", "word_ids", "pos_ids"):
            if options[key] is not None:
                options[key] = options[key].unsqueeze(0)
        out, labels, positions = mask_tokens(input_ids.unsqueeze(0), **options)
        return MaskOutput(out.squeeze(0), labels.squeeze(0), positions)
    out, labels = _MASK_TOKENS(
        input_ids,
        *_schema_args(
            input_ids,
            mask_token_id,
            vocab_size,
            special_ids,
            attention_mask,
            special_tokens_mask,
            word_ids,
            pos_ids,
            pos_probs,
            sample_ids,
            mlm_probability,
            mask_replace_prob,
            random_replace_prob,
            seed,
            epoch,
            mode,
            exclude_special_from_random,
            rng_state,
            span_p,
            span_max,
            span_lengths,
            span_replace,
        ),
    )
    if return_positions:
        return MaskOutput(out, labels, torch.nonzero(labels.reshape(-1) != -100).squeeze(1))
    return MaskOutput(out, labels, None)


def mask_tokens_(input_ids: torch.Tensor, labels: torch.Tensor, **options) -> None:
    """In-place/out= form of :func:`mask_tokens` (same keyword arguments, without
    ``return_positions``): masks ``input_ids`` in place and writes the labels into ``labels``
    (same shape and dtype, contiguous). No allocation. On the CPU a batch with ids outside the
    vocabulary (or POS classes / word ids the op rejects) is reported before anything is
    written."""
    _check_keywords("mask_tokens_", options)
    _MASK_TOKENS_INPLACE(input_ids, labels, *_args(input_ids, options))


def mask_tokens_into(
    input_ids: torch.Tensor, out: torch.Tensor, labels: torch.Tensor, **options
) -> None:
    """out= form of :func:`mask_tokens` (same keyword arguments, without ``return_positions``):
    writes the masked ids into ``out`` and the labels into ``labels``, preallocated, contiguous
    and of ``input_ids``' shape and device. Their dtype is the ids' or, for int32 ids, int64:
    int32 ids (as stored in shards, half the bytes) come out as the int64 that embeddings and
    the loss take, in one pass, with the same values as ``mask_tokens(ids.long(), ...)``.
    ``out`` may be ``input_ids`` itself (the in-place form); ``labels`` shares no memory with
    either. No allocation on the CPU; on CUDA the widening is a copy after the int32 kernel."""
    _check_keywords("mask_tokens_into", options)
    for name, t in (("out", out), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"mask_tokens_into: {name} must be a torch.Tensor, got {type(t).__name__}"
            )
    _MASK_TOKENS_INTO(input_ids, out, labels, *_args(input_ids, options))


def _check_keywords(name: str, options: dict) -> None:
    """The keyword arguments of the preallocated forms: mask_tokens' own, the required ones
    present."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"{name}: unexpected keyword arguments {unknown}")
    missing = [k for k in ("mask_token_id", "vocab_size") if k not in options]
    if missing:
        raise TypeError(f"{name}: missing required keyword arguments {missing}")


# The keyword arguments of mask_tokens and their defaults (mask_tokens_ takes the same).
_OPTIONS = {
    name: (None if p.default is inspect.Parameter.empty else p.default)
    for name, p in inspect.signature(mask_tokens).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "return_positions"
}


def philox4x32_10(counters: torch.Tensor, seed: int) -> torch.Tensor:
    """Raw Philox4x32-10 blocks: ``counters`` int64 ``[N, 4]`` (values < 2^32), key = the 64-bit
    seed (low word first). Returns int64 ``[N, 4]`` of uint32 values. CPU only; for tests."""
    return torch.ops.mlmfast.philox4x32_10.default(counters, schema_seed(seed))


# ---- span corruption (T5) ------------------------------------------------------------------


class SpanCorruptOutput(NamedTuple):
    """Result of :func:`span_corrupt`, int64 tensors.

    ``input_ids``: ``[B, inputs_length]`` encoder inputs (each noise span replaced by one
    sentinel, then EOS), padded with ``pad_token_id``; ``attention_mask``: 1 on those tokens, 0
    on the padding; ``labels``: ``[B, targets_length]`` (each sentinel followed by its span's
    tokens, then EOS), padded with -100, which the loss ignores (T5's ``_shift_right`` turns it
    into the pad id when it builds ``decoder_input_ids``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def _check_span_args(noise_density: float, mean_noise_span_length: float) -> tuple[float, float]:
    d, m = float(noise_density), float(mean_noise_span_length)
    if not 0.0 < d < 1.0:  # NaN fails too
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}")
    if not (m >= 1.0 and m != float("inf")):
        raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}")
    return d, m


def span_counts(
    length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` of a row of ``length >= 2`` tokens, as the op
    computes them (csrc/span_corrupt.h): ``round(length * noise_density)`` clamped to
    ``[1, length - 1]``, and ``round(noise / mean_noise_span_length)`` clamped to
    ``[1, min(noise, length - noise)]``; round = half to even, in binary64 (T5's arithmetic)."""
    d, m = _check_span_args(noise_density, mean_noise_span_length)
    n = int(length)
    if n < 2:
        raise ValueError(f"length must be >= 2 (a noise and a non-noise token), got {length}")
    noise = min(max(round(n * d), 1), n - 1)
    spans = min(max(round(noise / m), 1), noise, n - noise)
    return noise, spans


def span_corruption_lengths(
    length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """``(inputs_length, targets_length)`` of a row of ``length`` tokens after span corruption,
    EOS included: ``length - noise + spans + 1`` and ``noise + spans + 1``. Both never decrease
    as ``length`` grows, so these lengths for the longest (packed) row fit every shorter row."""
    noise, spans = span_counts(length, noise_density, mean_noise_span_length)
    return int(length) - noise + spans + 1, noise + spans + 1


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """T5's ``random_spans_helper``: ``(tokens_length, targets_length)`` where ``tokens_length``
    is the longest row whose corrupted input (EOS included) has at most ``inputs_length``
    tokens, and ``targets_length`` that row's label length. Pack rows to ``tokens_length`` and
    every batch has inputs of ``inputs_length`` (padding only where a row falls a token short)
    and labels of ``targets_length``. Unlike T5 there is no special case for a density of 0.5:
    the lengths returned are exactly those of the op."""
    _check_span_args(noise_density, mean_noise_span_length)
    if int(inputs_length) < 2:
        raise ValueError(f"inputs_length must be >= 2, got {inputs_length}")
    n = 2
    if span_corruption_lengths(n, noise_density, mean_noise_span_length)[0] > inputs_length:
        raise ValueError(f"inputs_length={inputs_length} is too short for any row")
    while span_corruption_lengths(n + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        n += 1
    return n, span_corruption_lengths(n, noise_density, mean_noise_span_length)[1]


def _row_lengths(input_ids, attention_mask, lengths) -> torch.Tensor | None:
    """Per-row lengths from ``lengths`` or a prefix ``attention_mask`` (None: every row full)."""
    if attention_mask is not None and lengths is not None:
        raise ValueError("span_corrupt: give attention_mask or lengths, not both")
    if attention_mask is None:
        return lengths
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"span_corrupt: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}"
            f", got {tuple(attention_mask.shape)}"
        )
    att = attention_mask != 0
    n = att.sum(1)
    prefix = torch.arange(att.shape[1], device=att.device) < n.unsqueeze(1)
    bad = (att != prefix).any(1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            "span_corrupt: attention_mask must be 1 on a prefix of each row (padding after), "
            f"row {row} is not"
        )
    return n


def span_corrupt(
    input_ids: torch.Tensor,
    *,
    sentinel_start: int,
    eos_token_id: int,
    pad_token_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    inputs_length: int | None = None,
    targets_length: int | None = None,
    sentinel_step: int = -1,
    num_sentinels: int = 100,
    attention_mask: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    seed: int | None = None,
    epoch: int = 0,
) -> SpanCorruptOutput:
    """T5 span corruption, fused: noise spans of each row replaced by one sentinel each in the
    encoder input, the labels made of each sentinel followed by its span, both ended by EOS.

    Per row of ``n`` tokens: ``noise = round(n * noise_density)`` tokens (clamped to
    ``[1, n - 1]``) in ``round(noise / mean_noise_span_length)`` spans (at least one, at most
    ``min(noise, n - noise)``); noise and non-noise tokens are each cut into that many non-empty
    segments, every segmentation equally likely, interleaved starting with non-noise tokens (the
    rule of T5's ``random_spans_noise_mask``). The i-th span's sentinel is
    ``sentinel_start + i * sentinel_step``: T5's ``<extra_id_0>`` is the last id of its vocabulary
    and the others count down, hence ``sentinel_step=-1`` by default.

    Args:
        input_ids: ``[B, L]`` int64/int32 token ids, CPU or CUDA; each row's tokens first, then
            padding (its length from ``attention_mask`` or ``lengths``; else all ``L``).
        sentinel_start, sentinel_step, num_sentinels: the sentinel ids, ``sentinel_start`` and
            the ``num_sentinels - 1`` after it going by ``sentinel_step`` (-1 or 1). None may
            occur in the rows (checked on the CPU), be negative, or be the EOS or pad id; a row
            with more spans than sentinels is an error.
        eos_token_id: ends inputs and labels. pad_token_id: pads ``input_ids``.
        inputs_length, targets_length: output widths; None takes those of the longest row
            (:func:`span_corruption_lengths`). A row that does not fit is a ValueError naming it.
        attention_mask: ``[B, L]``, 1 on a prefix of each row. lengths: ``[B]`` row lengths.
        sample_ids: ``[B]`` int64 stable ids of the examples (default: the row index): the
            corruption of a row is a function of (seed, epoch, sample id, its length, its
            tokens), whatever batch it is in, on CPU and CUDA alike.
        seed: 64-bit seed; None draws one from torch's default generator. epoch: new epoch, new
            spans.
    """
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"span_corrupt: input_ids must be a torch.Tensor, got {type(input_ids).__name__}"
        )
    d, m = _check_span_args(noise_density, mean_noise_span_length)
    if input_ids.dim() != 2:
        raise ValueError(
            f"span_corrupt: input_ids must be 2-D [batch, length], got {tuple(input_ids.shape)}"
        )
    n = _row_lengths(input_ids, attention_mask, lengths)
    if inputs_length is None or targets_length is None:
        widths = {int(x) for x in n.unique().tolist()} if n is not None else {input_ids.shape[1]}
        fits = [span_corruption_lengths(w, d, m) for w in widths if w >= 2]
        if inputs_length is None:
            inputs_length = max((f[0] for f in fits), default=1)
        if targets_length is None:
            targets_length = max((f[1] for f in fits), default=1)
    seed = draw_seed() if seed is None else int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"span_corrupt: seed must fit in 64 bits, got {seed}")
    out = _SPAN_CORRUPT(
        input_ids,
        n,
        sample_ids,
        d,
        m,
        int(inputs_length),
        int(targets_length),
        int(sentinel_start),
        int(sentinel_step),
        int(num_sentinels),
        int(eos_token_id),
        int(pad_token_id),
        schema_seed(seed),
        int(epoch),
    )
    return SpanCorruptOutput(*out)


@torch.library.register_fake("mlmfast::span_corrupt")
def _span_corrupt_fake(input_ids, lengths, sample_ids, d, m, inputs_length, targets_length, *args):
    torch._check(input_ids.dim() == 2, lambda: "span_corrupt: input_ids must be 2-D")
    B = input_ids.shape[0]
    new = input_ids.new_empty
    return (
        new((B, inputs_length), dtype=torch.int64),
        new((B, inputs_length), dtype=torch.int64),
        new((B, targets_length), dtype=torch.int64),
    )


@torch.library.register_fake("mlmfast::mask_tokens")
def _mask_tokens_fake(input_ids, *args):
    torch._check(input_ids.dim() == 2, lambda: "mask_tokens: input_ids must be 2-D")
    return torch.empty_like(input_ids), torch.empty_like(input_ids)


@torch.library.register_fake("mlmfast::mask_tokens_")
def _mask_tokens_inplace_fake(input_ids, labels, *args):
    return None


@torch.library.register_fake("mlmfast::mask_tokens_into")
def _mask_tokens_into_fake(input_ids, out, labels, *args):
    return None


@torch.library.register_fake("mlmfast::philox4x32_10")
def _philox_fake(counters, seed):
    return torch.empty_like(counters)
