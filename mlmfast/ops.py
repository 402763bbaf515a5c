"""Typed Python surface of the mlmfast op family (``torch.ops.mlmfast.*``).

The ops are registered with the PyTorch dispatcher by the compiled extension ``mlmfast._C``
(CPU always, CUDA when built with it) and have fake (meta) implementations here, so they trace
under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import NamedTuple

import torch

from mlmfast import _C  # noqa: F401  (loads the shared object, which registers the ops)

__all__ = [
    "MODES",
    "MaskOutput",
    "draw_seed",
    "mask_tokens",
    "mask_tokens_",
    "mask_tokens_into",
    "philox4x32_10",
]

MODES = ("bernoulli", "exact")

# The overloads, looked up once (each torch.ops attribute access costs a dictionary walk).
_MASK_TOKENS = torch.ops.mlmfast.mask_tokens.default
_MASK_TOKENS_INPLACE = torch.ops.mlmfast.mask_tokens_.default
_MASK_TOKENS_INTO = torch.ops.mlmfast.mask_tokens_into.default


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
