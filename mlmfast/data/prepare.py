"""``mlmfast prepare``: text -> tokenised, packed Arrow shards (see :mod:`mlmfast.data.shards`).

Pipeline: read documents (text files, JSONL/CSV/Parquet columns, directories, globs, or the
embedded corpora ``movie-reviews`` and ``bbc-news``) -> optional exact dedup -> tokenise in
batches, in one or ``num_proc`` processes (output order never depends on it) -> drop documents
under ``min_tokens`` -> pack into rows -> :class:`ShardWriter`.

Packing (``max_length`` = L, C = L - 2 content tokens per row):

* ``pack`` (default): each document's tokens are cut into chunks of C; every chunk becomes a
  row ``[CLS] chunk [SEP]``. A row never holds two documents, so the last chunk of a document
  is usually short (the shard is then ``list<int32>``, padded by the loader).
* ``pack`` with ``cross_document``: documents form one token stream, each followed by a
  ``[SEP]``; the stream is cut into rows of exactly L, so all rows but the very last have the
  full length (``fixed_size_list`` shards).
* ``document``: one row per document, truncated to C tokens.
* ``sentence-pairs``: BERT's pre-training rows ``[CLS] A [SEP] B [SEP]``, ``token_type_ids`` 0
  on ``[CLS] A [SEP]`` and 1 on ``B [SEP]``. Each document is split into sentences
  (:func:`split_sentences`) and cut into rows of at most L - 3 content tokens: a row takes
  whole sentences while they fit; when the next one does not fit and the row is less than half
  full (a long sentence), that sentence is cut inside, at a word start in the second half of
  the row where there is one. A row with several sentences is cut into
  A and B at one of its inner sentence boundaries, chosen by a hash of (document index, first
  token) (BERT draws it at random; the hash keeps reruns and resume byte-identical); a row with
  one sentence is cut at the word start nearest its middle. A and B are never empty, rows never
  span documents and never drop a token: the rows of a document, A then B, are its tokens in
  order. No next-sentence prediction: B always follows A. Documents of fewer than 2 tokens
  count as too short.
* ``text-pairs`` (``text_pair_column``): inputs that come in pairs (two columns of a
  JSONL/CSV/Parquet file); one row per pair, ``tokenizer(text, text_pair, truncation=True,
  max_length=L)`` (longest-first truncation) with its ``token_type_ids``. A pair is skipped when
  both texts are blank; ``min_tokens`` counts the tokens of both texts.

``word_ids`` are the tokenizer's word indices, renumbered from 0 within each row (in pair rows
B's words continue after A's), ``-1`` on special tokens. Pair rows store ``token_type_ids``; the
manifest records the packing ``mode``.

``pos`` (``--pos``): each batch of documents is also tagged with spaCy in the same process
(:mod:`mlmfast.data.tagging`), tokenised with offsets, and every token gets the Universal POS
class of its word (``pos_ids``, ``SPECIAL`` on [CLS]/[SEP]); it implies ``word_ids``. The
manifest records ``pos_class_frequencies`` (the share of each class among non-special tokens,
from per-shard ``pos_counts``) and the tagger (``pos_tagger``). Sentence pairs are cut from the
tagged document, text pairs tag each text on its own, so tags, word ids and tokens stay aligned.

Resume: after each shard, ``progress.json`` records the shards so far and the stream position
(input document index, token offset inside it) where the next row starts. A rerun of the same
command skips the documents before that point (hashing them for ``dedup``, without tokenising),
drops the first ``offset`` tokens of the document it restarts in, and writes the remaining shards;
because packing is a pure function of the token stream the result is byte-identical to an
uninterrupted run. Batches of ``batch_docs`` documents are aligned to absolute document indices
(a resumed run re-reads the start of the batch it restarts in), so the tagger sees the same
batches as in the first run and its output cannot differ by batch composition. ``manifest.json``
is written last and ``progress.json`` removed.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

from mlmfast._faults import kill_point
from mlmfast.data.embedded import CORPORA, read_texts
from mlmfast.data.shards import (
    FORMAT_VERSION,
    MANIFEST,
    ShardError,
    ShardWriter,
    atomic_write_json,
    file_sha256,
    tokenizer_info,
    write_manifest,
)
from mlmfast.locking import DirectoryLock
from mlmfast.pos import NUM_CLASSES, SPECIAL, UPOS

PROGRESS = "progress.json"
MODES = ("pack", "document", "sentence-pairs", "text-pairs")
PAIR_MODES = ("sentence-pairs", "text-pairs")
TEXT_SUFFIXES = (".txt", ".text")
COLUMN_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
KNOWN_SUFFIXES = (*TEXT_SUFFIXES, *COLUMN_SUFFIXES)
# Test hook: raise after this many shards are on disk, to exercise resume.
FAIL_AFTER_ENV = "MLMFAST_PREPARE_FAIL_AFTER_SHARDS"

__all__ = ["MODES", "iter_documents", "prepare", "resolve_inputs", "split_sentences"]


# ----------------------------------------------------------------------------- inputs


def resolve_inputs(inputs: Sequence[str]) -> list[str]:
    """Input names -> a list of files (sorted within each directory or glob) or corpus names."""
    if isinstance(inputs, str):
        inputs = [inputs]
    out: list[str] = []
    for item in inputs:
        if item in CORPORA:
            out.append(item)
        elif os.path.isdir(item):
            found = sorted(
                os.path.join(root, f)
                for root, _, files in os.walk(item)
                for f in files
                if f.lower().endswith(KNOWN_SUFFIXES)
            )
            if not found:
                raise FileNotFoundError(f"input {item!r}: directory has no {KNOWN_SUFFIXES} files")
            out.extend(os.path.abspath(f) for f in found)
        elif os.path.isfile(item):
            out.append(os.path.abspath(item))
        elif glob.has_magic(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
            if not found:
                raise FileNotFoundError(f"input {item!r}: the glob matches no file")
            out.extend(os.path.abspath(f) for f in found)
        else:
            raise FileNotFoundError(
                f"input {item!r}: not a file, directory, glob or embedded corpus {CORPORA}"
            )
    return out


_FLAGS = ("--text-column", "--text-pair-column")


def _column(path: str, row: dict, column: str, flag: str, where: str) -> str:
    if column not in row:
        raise ValueError(f"{path}: no column {column!r} ({where}); pass {flag}")
    value = row[column]
    return "" if value is None else str(value)


def _missing(path: str, columns: Sequence[str], names: Sequence[str]) -> None:
    for column, flag in zip(columns, _FLAGS, strict=False):
        if column not in names:
            raise ValueError(f"{path}: no column {column!r} (has {list(names)}); pass {flag}")


def _json_row(path: str, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise ValueError(
            f"{path}: line {n} is not valid JSON ({getattr(e, 'msg', e)} at column "
            f"{getattr(e, 'colno', '?')}); .jsonl/.json inputs hold one JSON object per line"
        ) from None
    if not isinstance(row, dict):
        raise ValueError(
            f"{path}: line {n} holds a JSON {type(row).__name__}, expected an object with the "
            "text column(s); .jsonl/.json inputs hold one JSON object per line"
        )
    return row


def _read_columns(path: str, columns: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Rows of a JSONL/CSV/Parquet file as tuples of the ``columns`` (None -> "")."""
    lower = path.lower()
    if lower.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row = _json_row(path, n, line)
                    yield tuple(
                        _column(path, row, c, flag, f"line {n}")
                        for c, flag in zip(columns, _FLAGS, strict=False)
                    )
    elif lower.endswith(".csv"):
        csv.field_size_limit(2**31 - 1)  # reviews and articles exceed the 128 KiB default
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            try:
                _missing(path, columns, reader.fieldnames or [])
                for row in reader:
                    yield tuple("" if row[c] is None else row[c] for c in columns)
            except csv.Error as e:
                raise ValueError(f"{path}: line {reader.line_num} is not valid CSV ({e})") from None
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        _missing(path, columns, pf.schema_arrow.names)
        for batch in pf.iter_batches(columns=list(columns)):
            values = [batch.column(c).to_pylist() for c in columns]
            for row in zip(*values, strict=True):
                yield tuple("" if v is None else str(v) for v in row)


def _read_file(path: str, text_column: str, blank_line_docs: bool) -> Iterator[str]:
    if path.lower().endswith(COLUMN_SUFFIXES):
        for (text,) in _read_columns(path, (text_column,)):
            yield text
        return
    with open(path, encoding="utf-8") as f:
        if not blank_line_docs:
            for line in f:
                yield line.rstrip("\n")
            return
        para: list[str] = []
        for line in f:
            if line.strip():
                para.append(line.rstrip("\n"))
            elif para:
                yield "\n".join(para)
                para = []
        if para:
            yield "\n".join(para)


def iter_documents(
    inputs: Sequence[str],
    text_column: str = "text",
    blank_line_docs: bool = False,
    limit: int | None = None,
    text_pair_column: str | None = None,
    skip: int = 0,
) -> Iterator[str] | Iterator[tuple[str, str]]:
    """The non-blank documents of ``inputs`` in order, after the first ``skip``, at most
    ``limit``. With
    ``text_pair_column``, ``(text, text_pair)`` tuples from the two columns of JSONL/CSV/Parquet
    inputs, skipping pairs whose texts are both blank."""
    files = resolve_inputs(inputs)
    if text_pair_column is not None:
        other = [f for f in files if not f.lower().endswith(COLUMN_SUFFIXES)]
        if other:
            raise ValueError(
                f"text_pair_column={text_pair_column!r} needs JSONL/CSV/Parquet inputs with two "
                f"text columns, got {other[0]!r}; convert it to a file with both columns"
            )
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    n = -skip
    for item in files:
        if text_pair_column is not None:
            source: Iterator = _read_columns(item, (text_column, text_pair_column))
        elif item in CORPORA:
            source = read_texts(item)
        else:
            source = _read_file(item, text_column, blank_line_docs)
        try:
            for doc in source:
                if limit is not None and n >= limit:
                    return
                if doc.strip() if isinstance(doc, str) else (doc[0].strip() or doc[1].strip()):
                    n += 1
                    if n > 0:
                        yield doc
        except UnicodeDecodeError as e:
            raise _decode_error(item, e) from None


def _decode_error(path: str, error: UnicodeDecodeError) -> ValueError:
    """The first line of ``path`` that is not UTF-8, found when decoding failed (the text
    reader decodes in blocks, so its error knows no line)."""
    fix = "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return ValueError(
                    f"{path}: line {n} is not valid UTF-8 ({e.reason} at byte {e.start} of the "
                    f"line: {raw[max(0, e.start - 10) : e.start + 10]!r}); {fix}"
                )
    return ValueError(f"{path}: not valid UTF-8 ({error}); {fix}")


# ----------------------------------------------------------------------------- sentences

# Words before a "." that do not end a sentence (lower case, inner dots kept: "u.s").
_ABBREVIATION_LIST = (
    "mr mrs ms dr prof sr jr st mt rev hon gen col lt sgt capt cpl adm gov sen rep pres vs etc "
    "inc ltd co corp plc no nos vol fig approx dept est e.g i.e cf al jan feb mar apr jun jul "
    "aug sep sept oct nov dec u.s u.k u.n a.m p.m"
)
ABBREVIATIONS = frozenset(_ABBREVIATION_LIST.split())
SPLITTER = "rules-v1"  # recorded in the options: another splitter gives other rows
# A paragraph break (blank line) or HTML line breaks (IMDB reviews hold "<br /><br />").
_HARD_BREAK = re.compile(r"\n[^\S\n]*\n\s*|(?:\s*<br\s*/?>)+\s*", re.IGNORECASE)
# Terminal punctuation, closing quotes/brackets, whitespace.
_SOFT_BREAK = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+")
_OPENERS = "\"'\u201c\u2018(["


def split_sentences(text: str) -> list[int]:
    """Character offsets where the sentences of ``text`` start (the first is its first
    non-space character; empty for a blank text). Rule-based and fast (two regular expressions,
    no model): a sentence ends at a blank line or an HTML ``<br>``, and after ``.``, ``!``,
    ``?`` or an ellipsis (with closing quotes or brackets) followed by whitespace and an upper
    case letter, a digit or an opening quote or bracket - unless the ``.`` follows a single
    letter (an initial: "J. K. Rowling") or a word of :data:`ABBREVIATIONS` ("Mr.", "U.S.").

    Limits: a sentence starting in lower case ("... ended. iPhone sales ...") is not split off;
    an abbreviation outside the list followed by a capitalised word ("Ave. Maria") splits, one in
    the list that really ends a sentence ("... in the U.S. The ...") does not; a single line
    break is a space (hard-wrapped text), so a title followed by one newline joins the next
    sentence; quotes and lists without terminal punctuation stay one sentence; English rules.
    Sentence pairs only need boundaries that are usually right: a wrong one moves where A ends.
    """
    n = len(text)
    first = len(text) - len(text.lstrip())
    if first == n:
        return []
    starts = {first}
    for m in _HARD_BREAK.finditer(text):
        if m.end() < n:
            starts.add(m.end())
    for m in _SOFT_BREAK.finditer(text):
        e = m.end()
        if e >= n:
            continue
        nxt = text[e]
        if not (nxt.isupper() or nxt.isdigit() or nxt in _OPENERS):
            continue
        s = m.start()
        if text[s] == "." and text[s + 1 : s + 2] != ".":  # a single dot: an abbreviation?
            word = text[text.rfind(" ", 0, s) + 1 : s].lstrip(_OPENERS).lower()
            if (len(word) == 1 and word.isalpha()) or word in ABBREVIATIONS:
                continue
        starts.add(e)
    return sorted(starts)


def _sentence_tokens(text: str, offsets: Any) -> np.ndarray:
    """Token index where each sentence starts (int64, the first is 0; empty for no tokens)."""
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if len(offs) == 0:
        return np.empty(0, np.int64)
    chars = np.asarray(split_sentences(text), dtype=np.int64)
    first = np.searchsorted(offs[:, 0], chars, side="left")
    return np.unique(np.concatenate([[0], first[first < len(offs)]]))


# ----------------------------------------------------------------------------- tokenising

_WORKER_TOKENIZER: Any = None
_WORKER_WORDS = False
_WORKER_TAGGER: Any = None
_WORKER_MODE = "pack"
_WORKER_MAX_LENGTH = 0


class Encoded(NamedTuple):
    """One tokenised document (or text pair). ``ids`` without special tokens, except for text
    pairs (``tokenizer(text, text_pair)`` with them, and ``types`` its token_type_ids);
    ``words`` word ids (-1: none) when asked for; ``classes`` POS classes with ``--pos``;
    ``sentences`` the token index where each sentence starts and ``word_start`` the tokens that
    start a word (sentence pairs); ``special`` the special tokens of a text pair."""

    ids: np.ndarray
    words: np.ndarray | None = None
    classes: np.ndarray | None = None
    sentences: np.ndarray | None = None
    word_start: np.ndarray | None = None
    types: np.ndarray | None = None
    special: np.ndarray | None = None

    @property
    def content(self) -> int:
        """Tokens that are not special (what ``min_tokens`` counts)."""
        return len(self.ids) if self.special is None else int((~self.special).sum())


def _init_worker(
    tokenizer: Any,
    words: bool,
    pooled: bool = False,
    tagger: Any = None,
    mode: str = "pack",
    max_length: int = 0,
) -> None:
    global _WORKER_TOKENIZER, _WORKER_WORDS, _WORKER_TAGGER, _WORKER_MODE, _WORKER_MAX_LENGTH
    if pooled:  # N processes of one thread each, not N thread pools competing for the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER, _WORKER_WORDS, _WORKER_TAGGER = tokenizer, words, tagger
    _WORKER_MODE, _WORKER_MAX_LENGTH = mode, max_length


def _word_array(word_ids: list) -> np.ndarray:
    return np.array([-1 if w is None else w for w in word_ids], dtype=np.int64)


def _encode(texts: list) -> list[Encoded | None]:
    """Tokenise (and with a tagger, tag) a batch; None entries, the duplicates, stay None."""
    if _WORKER_MODE == "text-pairs":
        return _encode_pairs(texts)
    from mlmfast.data.tagging import align

    live = [t for t in texts if t is not None]
    tagger = _WORKER_TAGGER
    sentences = _WORKER_MODE == "sentence-pairs"
    enc = (
        _WORKER_TOKENIZER(
            live,
            add_special_tokens=False,
            return_offsets_mapping=tagger is not None or sentences,
            verbose=False,
        )
        if live
        else {"input_ids": []}
    )
    tagged = tagger.tag(live) if tagger is not None and live else []
    out: list[Encoded | None] = []
    k = 0
    for t in texts:
        if t is None:
            out.append(None)
            continue
        ids = np.asarray(enc["input_ids"][k], dtype=np.int32)
        words = classes = starts = word_start = None
        if _WORKER_WORDS or tagger is not None or sentences:
            words = _word_array(enc.word_ids(k))
        if tagger is not None:
            doc = tagged[k]
            no_special = np.zeros(len(ids), dtype=bool)
            offsets = enc["offset_mapping"][k]
            classes = align(offsets, no_special, doc.spans, doc.classes, words, text=t)
        if sentences:
            starts = _sentence_tokens(t, enc["offset_mapping"][k])
            word_start = np.ones(len(ids), dtype=bool)
            word_start[1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
        out.append(Encoded(ids, words if _WORKER_WORDS else None, classes, starts, word_start))
        k += 1
    return out


def _encode_pairs(pairs: list) -> list[Encoded | None]:
    """``tokenizer(text, text_pair, truncation=True, max_length=L)`` per pair; word ids
    numbered across the row, POS tags from each text tagged on its own."""
    from mlmfast import pos
    from mlmfast.data.tagging import align

    live = [p for p in pairs if p is not None]
    tagger = _WORKER_TAGGER
    enc = (
        _WORKER_TOKENIZER(
            [a for a, _ in live],
            [b for _, b in live],
            truncation=True,
            max_length=_WORKER_MAX_LENGTH,
            return_token_type_ids=True,
            return_special_tokens_mask=True,
            return_offsets_mapping=tagger is not None,
            verbose=False,
        )
        if live
        else {"input_ids": []}
    )
    tagged = (
        (tagger.tag([a for a, _ in live]), tagger.tag([b for _, b in live]))
        if tagger is not None and live
        else ()
    )
    out: list[Encoded | None] = []
    k = 0
    for p in pairs:
        if p is None:
            out.append(None)
            continue
        ids = np.asarray(enc["input_ids"][k], dtype=np.int32)
        types = np.asarray(enc["token_type_ids"][k], dtype=np.int32)
        special = np.asarray(enc["special_tokens_mask"][k], dtype=bool)
        words = classes = None
        if _WORKER_WORDS or tagger is not None:
            words = _word_array(enc.word_ids(k))
            side = np.array([-1 if s is None else s for s in enc.sequence_ids(k)], np.int64)
            words[special] = -1
            first = words[side == 0]
            shift = int(first.max(initial=-1)) + 1
            words[(side == 1) & (words >= 0)] += shift  # B's words continue after A's
        if tagger is not None:
            classes = np.full(len(ids), pos.SPECIAL, dtype=np.uint8)
            offsets = np.asarray(enc["offset_mapping"][k], dtype=np.int64).reshape(-1, 2)
            for s in (0, 1):
                where = (side == s) & ~special
                if where.any():
                    doc = tagged[s][k]
                    classes[where] = align(
                        offsets[where],
                        np.zeros(int(where.sum()), dtype=bool),
                        doc.spans,
                        doc.classes,
                        words[where],
                        text=p[s],
                    )
        out.append(
            Encoded(ids, words if _WORKER_WORDS else None, classes, types=types, special=special)
        )
        k += 1
    return out


# ----------------------------------------------------------------------------- packing


def _mix(a: int, b: int) -> int:
    """splitmix64 of two integers: a fixed, well-spread choice per (document, row)."""
    z = (a * 0x9E3779B97F4A7C15 + b + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


_MASK64 = (1 << 64) - 1


def _rebase(words: np.ndarray) -> np.ndarray:
    """Word ids of one row renumbered from 0 (the row may start mid-document)."""
    words = words.copy()
    live = words >= 0
    if live.any():
        words[live] -= words[live].min()
    return words.astype(np.int32)


class _Packer:
    """Turns documents into rows; remembers where the last row ended for resume."""

    def __init__(self, mode: str, max_length: int, cross_document: bool, cls: int, sep: int):
        self.mode, self.L, self.cross = mode, max_length, cross_document
        self.C = max_length - 2
        self.cls, self.sep = cls, sep
        self.end = (0, 0)  # (document index, offset) where the stream continues
        self._buf_ids: list[np.ndarray] = []
        self._buf_words: list[np.ndarray] = []
        self._buf_pos: list[np.ndarray] = []
        self._buf_len = 0
        self._word_base = 0

    def _row(
        self,
        ids: np.ndarray,
        words: np.ndarray | None,
        classes: np.ndarray | None = None,
        close: bool = True,
    ):
        """-> (input_ids, word_ids or None, pos_ids or None) of a row ``[CLS] ids [SEP]``."""
        head = np.array([self.cls], np.int32)
        tail = np.array([self.sep], np.int32) if close else np.empty(0, np.int32)
        row = np.concatenate([head, ids.astype(np.int32), tail])
        w = p = None
        if words is not None:
            w = np.concatenate([[-1], _rebase(words), [-1] * len(tail)]).astype(np.int32)
        if classes is not None:
            special = np.array([SPECIAL], np.uint8)
            p = np.concatenate([special, classes, special[: len(tail)]]).astype(np.uint8)
        return row, w, p

    def document(
        self,
        doc: int,
        ids: np.ndarray,
        words: np.ndarray | None,
        offset: int,
        classes: np.ndarray | None = None,
    ):
        """Rows from one kept document, starting at token ``offset`` (resume)."""
        n = len(ids)

        def cut(a, s, e):
            return None if a is None else a[s:e]

        if self.mode == "document":
            self.end = (doc + 1, 0)
            yield self._row(ids[: self.C], cut(words, 0, self.C), cut(classes, 0, self.C))
            return
        if not self.cross:
            for s in range(offset, n, self.C):
                e = min(s + self.C, n)
                self.end = (doc + 1, 0) if e == n else (doc, e)
                yield self._row(ids[s:e], cut(words, s, e), cut(classes, s, e))
            return
        # one stream; the document's own [SEP] counts as its last token
        ids = np.concatenate([ids, np.array([self.sep], np.int32)])
        if words is not None:
            w = words + self._word_base
            self._word_base += int(words.max(initial=-1)) + 1
            words = np.concatenate([w, [-1]])
        if classes is not None:
            classes = np.concatenate([classes, np.array([SPECIAL], np.uint8)])
        ids = ids[offset:]
        words = cut(words, offset, None)
        classes = cut(classes, offset, None)
        pos = offset
        total = n + 1
        while self._buf_len + len(ids) >= self.C:
            take = self.C - self._buf_len
            row_ids = np.concatenate([*self._buf_ids, ids[:take]])
            row_words = row_classes = None
            if words is not None:
                row_words = np.concatenate([*self._buf_words, words[:take]])
            if classes is not None:
                row_classes = np.concatenate([*self._buf_pos, classes[:take]])
            ids = ids[take:]
            words = cut(words, take, None)
            classes = cut(classes, take, None)
            pos += take
            self._buf_ids, self._buf_words, self._buf_pos, self._buf_len = [], [], [], 0
            self.end = (doc + 1, 0) if pos == total else (doc, pos)
            yield self._row(row_ids, row_words, row_classes)
        if len(ids):
            self._buf_ids.append(ids)
            if words is not None:
                self._buf_words.append(words)
            if classes is not None:
                self._buf_pos.append(classes)
            self._buf_len += len(ids)

    def finish(self):
        """The last, short row of a cross-document stream (its [SEP] is already there)."""
        if self.cross and self._buf_len:
            ids = np.concatenate(self._buf_ids)
            if len(ids) == 1:  # only the last document's [SEP]: no content left
                return
            words = np.concatenate(self._buf_words) if self._buf_words else None
            classes = np.concatenate(self._buf_pos) if self._buf_pos else None
            self._buf_ids, self._buf_words, self._buf_pos, self._buf_len = [], [], [], 0
            yield self._row(ids, words, classes, close=ids[-1] != self.sep)

    # -- sentence pairs and text pairs: rows [CLS] A [SEP] B [SEP] with token_type_ids --

    def sentence_pairs(self, doc: int, enc: Encoded, offset: int):
        """Rows ``[CLS] A [SEP] B [SEP]`` of one document from token ``offset`` (resume; rows
        depend only on where they start, so a resumed run cuts the same rows) -> (input_ids,
        word_ids or None, pos_ids or None, token_type_ids)."""
        n, p = len(enc.ids), offset
        while p < n:
            e = self._pair_end(p, n, enc.sentences, enc.word_start)
            c = self._pair_cut(doc, p, e, enc.sentences, enc.word_start)
            self.end = (doc + 1, 0) if e == n else (doc, e)
            yield self._pair_row(enc, p, c, e)
            p = e

    def _pair_end(self, p: int, n: int, bounds: np.ndarray, word_start: np.ndarray) -> int:
        """End of the row starting at token ``p``: the last sentence start that fits (when the
        row is then at least half full), else inside the sentence that does not fit, at a word
        start in the second half of the row. Never leaves a single token for the next row."""
        C = self.L - 3
        if n - p <= C:
            return n
        lo = int(np.searchsorted(bounds, p + max(2, C // 2), side="left"))
        hi = int(np.searchsorted(bounds, min(p + C, n - 2), side="right"))
        if hi > lo:
            return int(bounds[hi - 1])
        e = min(p + C, n - 2)
        half = p + max(2, (e - p) // 2 + 1)
        starts = np.flatnonzero(word_start[half : e + 1])
        return half + int(starts[-1]) if len(starts) else e

    @staticmethod
    def _pair_cut(doc: int, p: int, e: int, bounds: np.ndarray, word_start: np.ndarray) -> int:
        """Where B starts in the row [p, e): an inner sentence start picked by a hash of (doc,
        p), else the word start nearest the middle, else the middle."""
        inner = bounds[int(np.searchsorted(bounds, p, "right")) : int(np.searchsorted(bounds, e))]
        if len(inner):
            return int(inner[_mix(doc, p) % len(inner)])
        mid = p + (e - p) // 2
        starts = p + 1 + np.flatnonzero(word_start[p + 1 : e])
        if len(starts):
            return int(starts[np.argmin(np.abs(starts - mid))])
        return mid

    def _pair_row(self, enc: Encoded, p: int, c: int, e: int):
        cls, sep = np.array([self.cls], np.int32), np.array([self.sep], np.int32)
        ids = np.concatenate([cls, enc.ids[p:c], sep, enc.ids[c:e], sep]).astype(np.int32)
        types = np.zeros(len(ids), np.int32)
        types[c - p + 2 :] = 1
        words = classes = None
        if enc.words is not None:
            none = np.array([-1], np.int64)
            words = _rebase(np.concatenate([none, enc.words[p:c], none, enc.words[c:e], none]))
        if enc.classes is not None:
            sp = np.array([SPECIAL], np.uint8)
            classes = np.concatenate([sp, enc.classes[p:c], sp, enc.classes[c:e], sp])
        return ids, words, classes, types

    def text_pair(self, doc: int, enc: Encoded):
        """The row of one encoded text pair (its special tokens already in place)."""
        self.end = (doc + 1, 0)
        words = None if enc.words is None else _rebase(enc.words)
        yield enc.ids, words, enc.classes, enc.types


# ----------------------------------------------------------------------------- driver


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_temporary(name: str) -> bool:
    """A temporary file of an atomic write (``.<final name>.<random>``) that a killed run left."""
    return name.startswith((".shard-", f".{MANIFEST}.", f".{PROGRESS}."))


def _clean(directory: str, everything: bool) -> None:
    """Remove what earlier runs left: their temporary files, and with ``everything`` (for
    ``overwrite``) their shards, progress and manifest. Only under the directory's lock."""
    for name in os.listdir(directory):
        if _is_temporary(name) or (
            everything
            and (
                name in (MANIFEST, PROGRESS)
                or (name.startswith("shard-") and name.endswith(".arrow"))
            )
        ):
            os.unlink(os.path.join(directory, name))


def _load_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_output(out: str, options: dict, overwrite: bool) -> tuple[str, dict | None]:
    """-> ("fresh" | "done" | "resume", progress or manifest)."""
    _clean(out, everything=overwrite)
    if overwrite:
        return "fresh", None
    manifest = _load_json(os.path.join(out, MANIFEST))
    progress = _load_json(os.path.join(out, PROGRESS))
    shards = [n for n in os.listdir(out) if n.startswith("shard-") and n.endswith(".arrow")]
    if manifest is None and progress is not None and not progress.get("shards"):
        # a run that stopped before recording a shard: nothing of it can be resumed, whatever
        # its options (its unrecorded shards would be dropped by its own rerun too)
        _clean(out, everything=True)
        return "fresh", None
    found = manifest or progress
    if found is not None and found.get("options") == options:
        if manifest is None:
            return "resume", progress
        if progress is not None:  # killed after the manifest, before removing its progress
            os.unlink(os.path.join(out, PROGRESS))
        return "done", manifest
    if found is not None or shards:
        what = MANIFEST if manifest else PROGRESS if progress else f"{len(shards)} shard files"
        diff = ""
        if found is not None and isinstance(found.get("options"), dict):
            keys = sorted(
                k
                for k in set(options) | set(found["options"])
                if options.get(k) != found["options"].get(k)
            )
            diff = f" (options that differ: {', '.join(keys)})"
        raise ShardError(
            f"{out}: holds shards from other prepare options ({what}){diff}; pass --overwrite "
            "to replace them, or choose another --output"
        )
    return "fresh", None


def _resume_state(out: str, progress: dict) -> dict:
    """Keep the longest prefix of recorded shards that are intact on disk."""
    good = []
    for entry in progress.get("shards", []):
        path = os.path.join(out, entry["file"])
        if not (
            os.path.isfile(path)
            and os.path.getsize(path) == entry["bytes"]
            and file_sha256(path) == entry["sha256"]
        ):
            break
        good.append(entry)
    kept = {e["file"] for e in good}
    for name in os.listdir(out):  # shards written after the last progress record
        if name.startswith("shard-") and name.endswith(".arrow") and name not in kept:
            os.unlink(os.path.join(out, name))
    if good:
        return {"shards": good, **good[-1]["state"]}
    return {"shards": [], "next": [0, 0], "rows": 0, "counts": None}


def prepare(
    inputs: Sequence[str] | str,
    output: str,
    *,
    tokenizer: Any = None,
    max_length: int = 128,
    mode: str | None = None,
    cross_document: bool = False,
    shard_rows: int = 65536,
    text_column: str = "text",
    text_pair_column: str | None = None,
    blank_line_docs: bool = False,
    dedup: bool = False,
    min_tokens: int = 0,
    limit: int | None = None,
    skip: int = 0,
    word_ids: bool = False,
    pos: bool = False,
    pos_model: str | None = None,
    num_proc: int = 1,
    batch_docs: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenise and pack ``inputs`` into a shard directory ``output``; returns the manifest.

    ``tokenizer``: a fast tokenizer, a tokenizer directory, or None for the embedded one.
    ``mode``: ``pack`` (default), ``document``, ``sentence-pairs`` or ``text-pairs`` (the
    default with ``text_pair_column``, the second text column); see the module docstring.
    ``pos``: tag with spaCy (``pos_model``, default the embedded small English model) and store
    ``pos_ids`` (implies ``word_ids``).
    A finished directory made with the same options is left as it is; one made with other
    options is refused unless ``overwrite``; an interrupted one is resumed.
    """
    from mlmfast.data.embedded import load_tokenizer

    if mode is None:
        mode = "text-pairs" if text_pair_column is not None else "pack"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (mode == "text-pairs") != (text_pair_column is not None):
        raise ValueError(
            f"mode={mode!r} with text_pair_column={text_pair_column!r}: rows from two text "
            "columns are mode 'text-pairs', which needs text_pair_column (--text-pair-column); "
            "for pairs cut from documents use mode 'sentence-pairs' without it"
        )
    if skip < 0:
        raise ValueError(f"skip must be >= 0 (documents to skip), got {skip}")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] token [SEP]), got {max_length}")
    if mode in PAIR_MODES and max_length < 6:
        raise ValueError(
            f"mode={mode!r} needs max_length >= 6 ([CLS] A [SEP] B [SEP] with room to cut A "
            f"and B), got {max_length}"
        )
    if cross_document and mode != "pack":
        raise ValueError("cross_document applies to mode='pack' only")
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    tok_path = tokenizer if isinstance(tokenizer, str) else None
    tok = (
        load_tokenizer(tokenizer) if tokenizer is None or isinstance(tokenizer, str) else tokenizer
    )
    if tok.cls_token_id is None or tok.sep_token_id is None:
        raise ValueError("tokenizer: packing needs cls and sep tokens")
    info = tokenizer_info(tok, tok_path)
    files = resolve_inputs(inputs)
    tagger = None
    if pos:
        from mlmfast.data.tagging import DEFAULT_MODEL, PosTagger

        if not getattr(tok, "is_fast", False):
            raise ValueError("pos: aligning tags to tokens needs a fast tokenizer (offsets)")
        tagger = PosTagger(pos_model or DEFAULT_MODEL)
        word_ids = True
    elif pos_model is not None:
        raise ValueError("pos_model is given without pos=True")
    options = {
        "inputs": files,
        "text_column": text_column,
        "blank_line_docs": blank_line_docs,
        "vocab_hash": info["vocab_hash"],
        "max_length": max_length,
        "mode": mode,
        "cross_document": cross_document,
        "shard_rows": shard_rows,
        "dedup": dedup,
        "min_tokens": min_tokens,
        "limit": limit,
        "word_ids": word_ids,
    }
    # only when used, so that shard sets made before these options existed keep their options
    if tagger is not None:
        options["pos"] = tagger.model
    if text_pair_column is not None:
        options["text_pair_column"] = text_pair_column
    if skip:
        options["skip"] = skip
    if mode == "sentence-pairs":
        options["sentence_splitter"] = SPLITTER
    os.makedirs(output, exist_ok=True)
    # one run per directory: a second one would interleave its shards with ours
    with DirectoryLock(output, "mlmfast prepare"):
        kill_point("prepare locked")
        state, found = _check_output(output, options, overwrite)
        if state == "done":
            return found
        resume = (
            _resume_state(output, found)
            if state == "resume"
            else {"shards": [], "next": [0, 0], "rows": 0, "counts": None}
        )
        start_doc, start_offset = resume["next"]
        counts = resume["counts"] or {"read": 0, "kept": 0, "duplicates": 0, "too_short": 0}
        counts = dict(counts)

        packer = _Packer(mode, max_length, cross_document, tok.cls_token_id, tok.sep_token_id)
        packer.end = (start_doc, start_offset)
        shards = list(resume["shards"])
        fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)

        def write_progress() -> None:
            atomic_write_json(
                os.path.join(output, PROGRESS),
                {"format_version": FORMAT_VERSION, "options": options, "shards": shards},
            )

        def on_shard(entry: dict) -> None:
            entry = dict(entry)
            entry["state"] = {
                "next": list(packer.end),
                "rows": sum(s["rows"] for s in shards) + entry["rows"],
                "counts": dict(counts),
            }
            shards.append(entry)
            write_progress()
            if fail_after and len(shards) == fail_after:
                raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: simulated interruption")

        if state == "fresh":
            # before the first shard: a run killed after writing it is then recognised as
            # this run's (and resumed), not taken for shards of other options
            write_progress()

        writer = ShardWriter(
            output,
            max_length,
            shard_rows,
            word_ids=word_ids,
            token_type_ids=mode in PAIR_MODES,
            pos_ids=tagger is not None,
            first_shard=len(shards),
            first_row=resume["rows"],
            on_shard=on_shard,
        )

        seen: set[bytes] = set()
        # resume re-reads the batch it restarts in, so batches stay aligned to document indices
        first_doc = start_doc - start_doc % batch_docs

        def docs() -> Iterator[tuple[int, str | tuple[str, str] | None]]:
            items = iter_documents(
                files, text_column, blank_line_docs, limit, text_pair_column, skip=skip
            )
            for i, text in enumerate(items):
                if dedup:
                    key = text if isinstance(text, str) else f"{len(text[0])}:{text[0]}{text[1]}"
                    h = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
                    dup = h in seen
                    seen.add(h)
                else:
                    dup = False
                if i < first_doc:
                    continue  # already in a finished shard (hashed above for dedup)
                yield i, None if dup else text

        tokens_done = 0
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=limit, unit="doc", desc="prepare", file=sys.stderr)

        def tokenised() -> Iterator[tuple[list[int], list]]:
            batches = _batched(docs(), batch_docs)
            split = ((b, [t for _, t in b]) for b in batches)
            if num_proc == 1:
                _init_worker(tok, word_ids, False, tagger, mode, max_length)
                for b, texts in split:
                    yield [i for i, _ in b], _encode(texts)
                return
            import multiprocessing as mp

            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp
            pending: list[list[int]] = []

            def texts_only():
                for b, texts in split:
                    pending.append([i for i, _ in b])
                    yield texts

            init = (tok, word_ids, True, tagger, mode, max_length)
            with ctx.Pool(num_proc, initializer=_init_worker, initargs=init) as pool:
                for encoded in pool.imap(_encode, texts_only()):
                    yield pending.pop(0), encoded

        for idxs, encoded in tokenised():
            for i, enc in zip(idxs, encoded, strict=True):
                if i < start_doc:
                    continue  # the part of the first batch of a resumed run already written
                resumed_mid_doc = i == start_doc and start_offset > 0
                if not resumed_mid_doc:
                    counts["read"] += 1
                if enc is None:
                    counts["duplicates"] += 1
                    continue
                if enc.content < max(min_tokens, 2 if mode == "sentence-pairs" else 1):
                    counts["too_short"] += 1
                    continue
                if not resumed_mid_doc:
                    counts["kept"] += 1
                offset = start_offset if i == start_doc else 0
                if mode == "sentence-pairs":
                    rows = packer.sentence_pairs(i, enc, offset)
                elif mode == "text-pairs":
                    rows = packer.text_pair(i, enc)
                else:
                    rows = (
                        (*r, None)
                        for r in packer.document(i, enc.ids, enc.words, offset, enc.classes)
                    )
                for row, row_words, row_pos, row_types in rows:
                    tokens_done += len(row)
                    writer.add(row, row_words, token_type_ids=row_types, pos_ids=row_pos)
            if bar is not None:
                bar.update(len(idxs))
                dt = time.perf_counter() - t0
                bar.set_postfix(tok_s=f"{tokens_done / max(dt, 1e-9):,.0f}", refresh=False)
        for row, row_words, row_pos in packer.finish():
            tokens_done += len(row)
            writer.add(row, row_words, pos_ids=row_pos)
        writer.close()
        if bar is not None:
            bar.close()

        entries = [{k: v for k, v in s.items() if k != "state"} for s in shards]
        if not entries:
            raise ValueError(
                f"prepare: no rows from {files}: {counts['read']} documents read, "
                f"{counts['duplicates']} duplicates, {counts['too_short']} shorter than "
                f"{max(min_tokens, 1)} tokens (skip={skip}, limit={limit}); check the inputs, "
                "--text-column, --skip and --min-tokens"
            )
        frequencies = tagger_info = None
        if tagger is not None:
            frequencies = _class_frequencies(entries)
            tagger_info = tagger.info()
        from mlmfast import __version__

        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "mlmfast_version": __version__,
            "tokenizer": info,
            "max_length": max_length,
            "mode": mode,
            "cross_document": cross_document,
            "columns": [
                "input_ids",
                "sample_id",
                *(["word_ids"] if word_ids else []),
                *(["pos_ids"] if tagger is not None else []),
                *(["token_type_ids"] if mode in PAIR_MODES else []),
            ],
            "rows": sum(s["rows"] for s in entries),
            "tokens": sum(s["tokens"] for s in entries),
            "documents": counts,
            "pos_class_frequencies": frequencies,
            **({"pos_classes": [*UPOS, "SPECIAL"], "pos_tagger": tagger_info} if tagger else {}),
            "shards": entries,
            "options": options,
            "seconds": time.perf_counter() - t0,
        }
        write_manifest(output, manifest)
        progress_path = os.path.join(output, PROGRESS)
        if os.path.exists(progress_path):
            os.unlink(progress_path)
        return manifest


def _class_frequencies(entries: list[dict]) -> list[float]:
    """Share of each POS class among the non-special tokens of all shards (``SPECIAL`` 0)."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for e in entries:
        counts += np.asarray(e["pos_counts"], dtype=np.int64)
    counts[SPECIAL] = 0
    total = int(counts.sum())
    return [float(c) / total if total else 0.0 for c in counts]


def remove_shards(directory: str) -> None:
    """Delete a shard directory made by :func:`prepare` (manifest required, as a guard)."""
    if not os.path.isfile(os.path.join(directory, MANIFEST)):
        raise ShardError(f"{directory}: no {MANIFEST}; refusing to delete a non-shard directory")
    shutil.rmtree(directory)
