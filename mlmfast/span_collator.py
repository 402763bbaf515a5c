"""A collator for T5-style span-corruption pre-training (``T5ForConditionalGeneration``), on the
fused op :func:`mlmfast.span_corrupt`: the role of ``DataCollatorForT5MLM`` in transformers'
``run_t5_mlm_flax.py`` example, with its rule (noise density, mean span length, sentinels from
``<extra_id_0>`` down), and mlmfast's seeds: the corruption of an example is a function of
(seed, epoch, sample id, its tokens), or each DataLoader worker and rank gets its own stream
(as :class:`mlmfast.DataCollatorForLanguageModeling`, whose seed handling it shares).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import torch

from mlmfast.collator import SeedStreams, _lengths, _pad_rows, epoch_property
from mlmfast.ops import (
    _check_span_args,
    compute_input_and_target_lengths,
    span_corrupt,
    span_corruption_lengths,
)

__all__ = ["DataCollatorForSpanCorruption", "sentinel_ids"]


def sentinel_ids(tokenizer: Any) -> tuple[int, int, int]:
    """``(sentinel_start, sentinel_step, num_sentinels)`` of a tokenizer with T5's sentinel
    tokens ``<extra_id_0>``, ``<extra_id_1>``, ...: the id of ``<extra_id_0>``, the direction
    of the following ones (-1 in T5's vocabularies, where ``<extra_id_0>`` is the last id) and
    how many follow it in that direction without a gap."""
    vocab = tokenizer.get_vocab()
    start = vocab.get("<extra_id_0>")
    if start is None:
        raise ValueError(
            "the tokenizer has no <extra_id_0> token: span corruption needs T5's sentinel tokens "
            "<extra_id_0>, <extra_id_1>, ... (tokenizer.add_special_tokens(...) adds them)"
        )
    second = vocab.get("<extra_id_1>")
    step = second - start if second is not None and abs(second - start) == 1 else -1
    count = 1
    while vocab.get(f"<extra_id_{count}>") == start + count * step:
        count += 1
    return start, step, count


@dataclass
class DataCollatorForSpanCorruption(SeedStreams):
    """Batches for T5 span-corruption pre-training: ``input_ids`` (each noise span replaced by
    one sentinel, then EOS, padded with the pad id), ``attention_mask``, ``labels`` (each
    sentinel followed by its span's tokens, then EOS, padded with -100, which the loss ignores),
    int64; ``decoder_input_ids`` too when ``return_decoder_input_ids`` (T5's models build them
    from ``labels`` themselves: ``labels`` shifted right after ``decoder_start_token_id``, -100
    as the pad id).

    Examples: dicts with ``input_ids`` (lists, arrays or tensors; any length >= 2) and
    optionally ``sample_id``, bare id sequences, or a dict of padded columns (``input_ids`` with
    an optional prefix ``attention_mask``). The examples carry no EOS of their own: it is added
    after the corruption, as in T5.

    Output widths: ``input_length`` and ``target_length`` when given; from ``tokens_length``
    (the length of packed rows, :func:`mlmfast.span_corruption_lengths`) for those not given;
    with ``input_length`` alone, ``target_length`` of the longest row that fits it
    (:func:`mlmfast.compute_input_and_target_lengths`, T5's helper: pack rows to its
    ``tokens_length``); else those of the batch's longest row. A row that does not fit is a
    ValueError naming it.

    Seeds: as :class:`mlmfast.DataCollatorForLanguageModeling` (``seed``, ``epoch``,
    ``set_epoch``, ``sample_id``, one stream per DataLoader worker and rank).
    """

    tokenizer: Any
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    input_length: int | None = None
    target_length: int | None = None
    seed: int | None = None
    _: KW_ONLY
    tokens_length: int | None = None
    return_decoder_input_ids: bool = False
    decoder_start_token_id: int | None = None
    return_tensors: str = "pt"
    epoch: int = 0  # a property (below): the value lives in shared memory

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.noise_density, self.mean_noise_span_length = _check_span_args(
            self.noise_density, self.mean_noise_span_length
        )
        self.sentinel_start, self.sentinel_step, self.num_sentinels = sentinel_ids(tok)
        self.eos_token_id = getattr(tok, "eos_token_id", None)
        self.pad_token_id = getattr(tok, "pad_token_id", None)
        for name in ("eos_token_id", "pad_token_id"):
            if getattr(self, name) is None:
                raise ValueError(f"the tokenizer has no {name[:-3]} (T5's </s> and <pad>)")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id  # T5's convention
        if self.return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {self.return_tensors!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int | np.integer)
            or not -(2**63) <= int(self.seed) < 2**64
        ):
            raise ValueError(
                f"seed must be None or an integer that fits in 64 bits, got {self.seed!r}"
            )
        for name in ("input_length", "target_length", "tokens_length"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) < 2):
                raise ValueError(f"{name} must be None or an int >= 2, got {v!r}")
        d, m = self.noise_density, self.mean_noise_span_length
        if self.tokens_length is not None:
            il, tl = span_corruption_lengths(self.tokens_length, d, m)
            self.input_length = il if self.input_length is None else self.input_length
            self.target_length = tl if self.target_length is None else self.target_length
        elif self.input_length is not None and self.target_length is None:
            self.target_length = compute_input_and_target_lengths(self.input_length, d, m)[1]
        self._init_streams()

    def __call__(self, examples: Any, return_tensors: str | None = None) -> dict[str, Any]:
        return_tensors = return_tensors or self.return_tensors
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        ids, lengths, sample_ids = self._rows(examples)
        seed, sids = self._seed_and_ids(ids.shape[0], sample_ids)
        out = span_corrupt(
            ids,
            sentinel_start=self.sentinel_start,
            sentinel_step=self.sentinel_step,
            num_sentinels=self.num_sentinels,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
            inputs_length=self.input_length,
            targets_length=self.target_length,
            lengths=lengths,
            sample_ids=sids,
            seed=seed,
            epoch=self.epoch,
        )
        batch = {
            "input_ids": out.input_ids,
            "attention_mask": out.attention_mask,
            "labels": out.labels,
        }
        if self.return_decoder_input_ids:
            dec = torch.full_like(out.labels, self.decoder_start_token_id)
            dec[:, 1:] = out.labels[:, :-1]
            batch["decoder_input_ids"] = dec.masked_fill_(dec == -100, self.pad_token_id)
        if return_tensors == "np":
            return {k: v.numpy() for k, v in batch.items()}
        return batch

    def _rows(self, examples: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(ids [B, L] right-padded, lengths [B], sample ids [B] or None)."""
        if isinstance(examples, Mapping):  # padded columns
            if "input_ids" not in examples:
                raise KeyError("a batch dict needs an 'input_ids' column")
            ids = torch.as_tensor(examples["input_ids"])
            att = examples.get("attention_mask")
            if ids.dim() != 2:
                raise ValueError(f"input_ids must be 2-D [batch, length], got {tuple(ids.shape)}")
            lengths = (
                torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
                if att is None
                else torch.as_tensor(att).ne(0).sum(1)
            )
            sid = examples.get("sample_id")
            return ids, lengths, None if sid is None else torch.as_tensor(sid, dtype=torch.long)
        examples = list(examples)
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        if isinstance(examples[0], Mapping):
            if any("input_ids" not in ex for ex in examples):
                raise KeyError("examples need an 'input_ids' key")
            rows = [ex["input_ids"] for ex in examples]
            with_id = ["sample_id" in ex for ex in examples]
            if any(with_id) and not all(with_id):
                raise ValueError("some examples have a sample_id and others do not")
            sids = (
                torch.tensor([int(ex["sample_id"]) for ex in examples], dtype=torch.long)
                if all(with_id)
                else None
            )
        else:
            rows, sids = examples, None
        lengths = _lengths(rows)
        L = int(lengths.max())
        ids = _pad_rows(rows, lengths, L, self.pad_token_id, False, torch.int64, "input_ids")
        return ids, torch.from_numpy(lengths), sids


DataCollatorForSpanCorruption.epoch = epoch_property()  # type: ignore[assignment]
