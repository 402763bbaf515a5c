"""The MLM objective on the training device: the fused op masks the batch after the copy, and
the prediction head runs only on the selected positions (sparse prediction).

Dense prediction computes ``[B, L, vocab]`` logits and throws away the ~85% of them that have
label -100; sparse prediction gathers the hidden states of the selected tokens (the op's
``positions``) first, so the head's matmul and the softmax shrink by ~1/mlm_probability. Both
give the same loss up to float rounding (sum of per-token cross-entropies / selected tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mlmfast import ops, pos
from mlmfast.ops import MODES


@dataclass
class MaskingConfig:
    """How batches are masked. ``static=True`` masks every epoch as epoch 0 (the original BERT's
    static masking, for comparison); the default is dynamic (RoBERTa): new masks each epoch."""

    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word: bool = False
    pos_weights: str | dict[str, float] | None = None
    mode: str = "bernoulli"  # "span": SpanBERT's spans (span_p, span_max), words if whole_word
    static: bool = False
    exclude_special_from_random: bool = True
    seed: int = 0
    span_p: float = 0.2
    span_max: int = 10

    def __post_init__(self) -> None:
        for name in ("mlm_probability", "mask_replace_prob", "random_replace_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            raise ValueError(
                f"mask_replace_prob + random_replace_prob must be <= 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}"
            )
        if self.mode not in MODES:
            raise ValueError(f"mask mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "span" and self.pos_weights is not None:
            raise ValueError("mask mode 'span' does not take pos_weights")


class DeviceMasker:
    """Masks a batch of the shard loader where it lies (CPU or GPU) with the fused op.

    The mask of an example is a function of ``(seed, epoch, sample_id, tokens)`` only, so it is
    the same whatever the batch, the rank count or the device, and a resumed run masks exactly
    as the uninterrupted one would have.
    """

    def __init__(
        self,
        tokenizer: Any,
        config: MaskingConfig,
        *,
        pos_frequencies: list[float] | None = None,
        columns: tuple[str, ...] | None = None,
    ):
        from mlmfast.collator import DataCollatorForLanguageModeling

        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; MLM training needs one")
        self.config = config
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        self.special_ids = DataCollatorForLanguageModeling._special_ids(tokenizer)
        self.pos_probs: list[float] | None = None
        if config.pos_weights is not None:
            if pos_frequencies is None:
                raise ValueError(
                    "pos_weights needs shards with part-of-speech classes: prepare them with "
                    "`mlmfast prepare --pos`"
                )
            weights = pos.resolve_weights(config.pos_weights)
            self.pos_probs = pos.class_probabilities(
                config.mlm_probability, weights, pos_frequencies
            )
        if config.whole_word and columns is not None and "word_ids" not in columns:
            raise ValueError(
                "whole_word masking needs shards with word ids: prepare them with "
                "`mlmfast prepare --word-ids` (or --pos)"
            )

    @classmethod
    def for_shards(cls, tokenizer: Any, config: MaskingConfig, manifest: Mapping[str, Any]):
        """A masker for the batches of a shard set: its manifest tells the POS class frequencies
        and the columns, so options the shards cannot serve fail here, before training."""
        freqs = manifest.get("pos_class_frequencies")
        return cls(
            tokenizer,
            config,
            pos_frequencies=None if freqs is None else [float(f) for f in freqs],
            columns=tuple(manifest.get("columns") or ()),
        )

    def __call__(self, batch: Mapping[str, torch.Tensor], epoch: int, *, seed: int | None = None):
        c = self.config
        word_ids = batch.get("word_ids") if c.whole_word else None
        if c.whole_word and word_ids is None:
            raise ValueError("whole_word masking: the batch has no word_ids")
        pos_ids = batch.get("pos_ids") if self.pos_probs is not None else None
        if self.pos_probs is not None and pos_ids is None:
            raise ValueError("pos_weights: the batch has no pos_ids")
        return ops.mask_tokens(
            batch["input_ids"],
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            attention_mask=batch.get("attention_mask"),
            word_ids=word_ids,
            pos_ids=pos_ids,
            pos_probs=self.pos_probs,
            sample_ids=batch.get("sample_id"),
            mlm_probability=c.mlm_probability,
            mask_replace_prob=c.mask_replace_prob,
            random_replace_prob=c.random_replace_prob,
            seed=c.seed if seed is None else seed,
            epoch=0 if c.static else epoch,
            mode=c.mode,
            exclude_special_from_random=c.exclude_special_from_random,
            return_positions=True,
            span_p=c.span_p,
            span_max=c.span_max,
        )


class MaskedLMObjective(torch.nn.Module):
    """``BertForMaskedLM`` + loss, as one module so DistributedDataParallel wraps the whole
    forward. Returns the mean cross-entropy over the selected tokens and, detached, the number
    of selected tokens and of correct argmax predictions among them."""

    def __init__(self, model: torch.nn.Module, *, sparse: bool = True):
        super().__init__()
        self.model = model
        self.sparse = sparse

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encoder = self.model.bert
        hidden = encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        flat_labels = labels.reshape(-1)
        if self.sparse:
            if positions is None:
                positions = torch.nonzero(flat_labels != -100).squeeze(1)
            selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            logits = self.model.cls(selected).float()
            target = flat_labels.index_select(0, positions).long()
        else:
            logits = self.model.cls(hidden).float().reshape(-1, self.model.config.vocab_size)
            target = flat_labels.long()
        loss_sum = F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        valid = target != -100
        count = valid.sum()
        # a batch without a selected token contributes 0 with a graph (DDP needs every rank's
        # backward), not the NaN of a mean over nothing
        loss = loss_sum / count.clamp(min=1)
        correct = ((logits.argmax(-1) == target) & valid).sum()
        return loss, count.detach(), correct.detach()


@dataclass
class MLMStats:
    loss_sum: float = 0.0
    tokens: int = 0
    correct: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, loss: torch.Tensor, count: torch.Tensor, correct: torch.Tensor) -> None:
        n = int(count)
        self.loss_sum += float(loss) * n
        self.tokens += n
        self.correct += int(correct)

    def summary(self) -> dict[str, float]:
        import math

        loss = self.loss_sum / max(1, self.tokens)
        return {
            "loss": loss,
            "accuracy": self.correct / max(1, self.tokens),
            "perplexity": math.exp(min(loss, 50.0)),
            "masked_tokens": self.tokens,
        }


EVAL_SEED = 20231  # fixed: every evaluation masks the same tokens, comparable across runs


@torch.no_grad()
def evaluate_mlm(
    model: torch.nn.Module,
    data: str | Any,
    *,
    tokenizer: Any,
    masking: MaskingConfig | None = None,
    batch_size: int = 64,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """MLM loss, masked-token accuracy and perplexity of a ``BertForMaskedLM`` on held-out
    shards, with a fixed evaluation mask (seed :data:`EVAL_SEED`, epoch 0, rows in shard order):
    the same tokens are masked every time, so numbers compare across checkpoints, runs and
    fine-tuning strategies. ``data`` is a shard directory or a ``ShardStream``."""
    from mlmfast.data.stream import ShardStream

    masking = masking or MaskingConfig()
    eval_masking = MaskingConfig(**{**masking.__dict__, "seed": EVAL_SEED, "static": True})
    stream = (
        data
        if isinstance(data, ShardStream)
        else ShardStream(data, batch_size, shuffle=False, rank=0, world_size=1, tokenizer=tokenizer)
    )
    masker = DeviceMasker.for_shards(tokenizer, eval_masking, stream.shards.manifest)
    objective = MaskedLMObjective(model, sparse=True)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    stats = MLMStats()
    try:
        for i, batch in enumerate(stream.iter_batches()):
            if max_batches is not None and i >= max_batches:
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            masked = masker(batch, 0)
            with torch.autocast(
                device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                loss, count, correct = objective(
                    masked.input_ids,
                    batch["attention_mask"],
                    masked.labels,
                    masked.positions,
                    batch.get("token_type_ids"),
                )
            stats.add(loss, count, correct)
    finally:
        model.train(was_training)
    return stats.summary()
