"""The task data of a fine-tuning run: classification sets tokenised, or POS rows of shards with
their token labels, split train/validation/test; the batches of an epoch; the probe batches of
the CKA measurement."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlmfast.train.finetune.config import FinetuneConfig

LENGTH_WINDOW = 50  # batches per window sorted by length (group_by_length)


@dataclass
class TaskData:
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


class EpochOrder:
    """:func:`epoch_batches` of the training set, kept for the epoch being trained."""

    def __init__(self, cfg: FinetuneConfig, data: TaskData):
        self.n, self.batch_size, self.seed = len(data.train), cfg.batch_size, cfg.seed
        self.lengths = _lengths(data.train) if cfg.group_by_length else None
        self._epoch, self._batches = -1, []

    def __call__(self, epoch: int) -> list[np.ndarray]:
        if self._epoch != epoch:
            self._epoch = epoch
            self._batches = epoch_batches(self.n, self.batch_size, self.seed, epoch, self.lengths)
        return self._batches


def _lengths(dataset) -> np.ndarray:
    return np.asarray(dataset.lengths, dtype=np.int64)


def probe_batches(data: TaskData, cfg: FinetuneConfig) -> list[dict[str, torch.Tensor]]:
    """Fixed probe batches for CKA: the first ones of validation (else test, else train)."""
    ds = next((d for d in (data.validation, data.test, data.train) if len(d)), data.train)
    n = min(len(ds), cfg.probe_batches * cfg.eval_batch_size)
    return [
        data.collate([ds[i] for i in range(s, min(s + cfg.eval_batch_size, n))])
        for s in range(0, n, cfg.eval_batch_size)
    ]


# -- classification ------------------------------------------------------------------------------


def read_classification(cfg: FinetuneConfig):
    """The checked, split rows of a classification set (before a tokenizer is needed)."""
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


def encode_classification(cfg: FinetuneConfig, data, tokenizer) -> TaskData:
    from mlmfast.train import tasks

    enc = {
        s.name: tasks.encode_classification(s, tokenizer, cfg.max_length)
        for s in (data.train, data.validation, data.test)
    }
    return TaskData(
        train=enc["train"],
        validation=enc["validation"],
        test=enc["test"],
        collate=enc["train"].collator(),
        label_names=[str(x) for x in data.label_names],
        description=data.describe(),
        token_level=False,
    )


# -- part-of-speech tagging ----------------------------------------------------------------------


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


def pos_data(cfg: FinetuneConfig, tokenizer) -> TaskData:
    """Rows of POS shards with their labels, split by a keyed hash of ``sample_id``."""
    from mlmfast.data.shards import open_shards
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
    rows, sample_ids = _labelled_rows(cfg.data, tokenizer)
    parts = _split_by_sample_id(cfg, sample_ids)
    sets = {k: _TokenDataset([rows[i] for i in v], shards.pad_token_id) for k, v in parts.items()}
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
    return TaskData(
        train=sets["train"],
        validation=sets["validation"],
        test=sets["test"],
        collate=_TokenCollator(shards.pad_token_id),
        label_names=list(tasks.POS_LABEL_NAMES),
        description=description,
        token_level=True,
    )


def _labelled_rows(data: str, tokenizer) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Every row of the shards that has a labelled token, unpadded, and its ``sample_id``."""
    from mlmfast.data.stream import ShardStream
    from mlmfast.train import tasks

    continuation = tasks.subword_continuations(tokenizer)
    stream = ShardStream(data, 256, shuffle=False, rank=0, world_size=1)
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
    return rows, ids


def _split_by_sample_id(cfg: FinetuneConfig, sample_ids: list[int]) -> dict[str, np.ndarray]:
    """Row positions per split: ordered by a keyed hash of the sample id (``split_seed``), so the
    split depends on nothing else; test first, then validation, train takes the rest."""
    key = str(cfg.split_seed).encode()

    def hashed(s: int) -> int:
        digest = hashlib.blake2b(s.to_bytes(8, "little", signed=True), digest_size=8, key=key)
        return int.from_bytes(digest.digest(), "little")

    keys = np.array([hashed(s) for s in sample_ids], dtype=np.uint64)
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
    return {
        "test": np.sort(order[:n_test]),
        "validation": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }
