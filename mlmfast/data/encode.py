"""Tokenising (and POS tagging) batches of documents for ``mlmfast prepare``, in this process or
in the workers of a pool (the worker state lives in module globals set by ``_init_worker``)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from mlmfast.data.packing import _sentence_tokens

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
    if None not in word_ids:  # no special token (the usual case): no per-token Python
        return np.array(word_ids, dtype=np.int64)
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
    tagged = _tag(tagger, live, enc) if tagger is not None and live else []
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


def _tag(tagger: Any, texts: list[str], enc: Any) -> list:
    """Tag a batch. The fast tagger tags BERT words: with a tokenizer whose pre-tokenizer is
    BERT's, the words of its encoding (offsets and word ids, already there) instead of
    finding them again."""
    words_of_encoding = getattr(tagger, "tag_words", None) is not None and _bert_words(
        _WORKER_TOKENIZER
    )
    if not words_of_encoding:
        return tagger.tag(texts)
    spans = []
    for k in range(len(texts)):
        offsets = np.asarray(enc["offset_mapping"][k], dtype=np.int64).reshape(-1, 2)
        words = _word_array(enc.word_ids(k))
        first = np.ones(len(words), dtype=bool)
        first[1:] = words[1:] != words[:-1]
        last = np.ones(len(words), dtype=bool)
        last[:-1] = first[1:]
        spans.append(np.stack([offsets[first, 0], offsets[last, 1]], 1))
    return tagger.tag_words(texts, spans)


def _bert_words(tokenizer: Any) -> bool:
    """Whether the tokenizer's words are BERT's (its pre-tokenizer is ``BertPreTokenizer``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(getattr(backend, "pre_tokenizer", None)).__name__ == "BertPreTokenizer"


def _encode_piece(piece: tuple[int, list]) -> tuple[int, list[Encoded | None]]:
    """``_encode`` of one piece of a batch (in a pool), with the piece's index."""
    return piece[0], _encode(piece[1])


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
