"""Documents -> rows: the packing modes of ``mlmfast prepare`` (see :mod:`mlmfast.data.prepare`)
and the rule-based sentence splitter that ``sentence-pairs`` cuts at."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from mlmfast.pos import SPECIAL

if TYPE_CHECKING:
    from mlmfast.data.encode import Encoded

MODES = ("pack", "document", "sentence-pairs", "text-pairs")
PAIR_MODES = ("sentence-pairs", "text-pairs")

__all__ = ["MODES", "PAIR_MODES", "SPLITTER", "split_sentences"]


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


def _mix(a: int, b: int) -> int:
    """splitmix64 of two integers: a fixed, well-spread choice per (document, row)."""
    z = (a * 0x9E3779B97F4A7C15 + b + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


_MASK64 = (1 << 64) - 1


def _rebase(words: np.ndarray) -> np.ndarray:
    """Word ids of one row renumbered from 0 (the row may start mid-document)."""
    if not len(words):
        return words.astype(np.int32)
    low = words.min()
    if low >= 0:  # no token without a word: one subtraction
        return (words - low).astype(np.int32)
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
        n = len(ids)
        size = n + 1 + int(close)
        row = np.empty(size, np.int32)
        row[0] = self.cls
        row[1 : n + 1] = ids
        if close:
            row[n + 1] = self.sep
        w = p = None
        if words is not None:
            w = np.full(size, -1, np.int32)
            w[1 : n + 1] = _rebase(words)
        if classes is not None:
            p = np.full(size, SPECIAL, np.uint8)
            p[1 : n + 1] = classes
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
