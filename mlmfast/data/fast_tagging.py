"""A fast part-of-speech tagger distilled from spaCy, for ``mlmfast prepare --pos fast``.

It tags BERT words (the pieces of ``tokenizers``' ``BertPreTokenizer``: runs of letters and
digits, and single punctuation characters) with the class that :func:`~mlmfast.data.tagging.align`
gives the word's first subword under spaCy's tagging, so ``align`` turns its output into
per-subword classes with the same meaning as the spaCy tagger's. It needs numpy and
``tokenizers``, not spaCy.

Model (spaCy's tok2vec architecture, small): each word's hashed string features (lowercase form,
2-character prefix, 2- and 3-character suffixes, shape; two hash rows each) sum to an embedding;
to it are added embeddings of the word's place (glue to its neighbours, and the shape, lowercase
form and suffix of the chunk of glued words it is in, from which spaCy cuts its tokens); then
window-3 convolutions with ReLU over the words of one document and a linear layer to the 18
classes. Weights are int8 with one float scale per output channel, activations uint8: every
matrix product runs in float32 on integer values whose partial sums stay below 2**24, so it is
exact whatever the summation order (BLAS blocking, threads, batch composition), and the
rescaling between layers is elementwise. One document's classes therefore never depend on the
other documents of its batch or on the thread count. The per-word part is a pure function of
the word's string and is kept per word, so a word seen before costs one dictionary lookup.

The weights (``fast_tagger.npz``, package data, 1.2 MB) are made by
``scripts/train_pos_tagger.py``, which documents the recipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mlmfast import pos
from mlmfast.data.tagging import TaggedDoc

UPOS_SPECIAL = (*pos.UPOS, "SPECIAL")

WEIGHTS = os.path.join(os.path.dirname(__file__), "fast_tagger.npz")
FORMAT = 1
# hashed string features: (name, table rows); every feature takes HASHES rows of its table
FEATURES = (("norm", 8192), ("prefix", 1024), ("suffix3", 4096), ("suffix2", 1024), ("shape", 512))
HASHES = 2
OFFSETS = np.cumsum([0] + [rows for _, rows in FEATURES])[:-1]
ROWS = int(sum(rows for _, rows in FEATURES))
# per-position features (see context_of): (name, table rows)
CONTEXT = (("glue", 4), ("chunk_shape", 1024), ("chunk_norm", 4096), ("chunk_suffix3", 1024))
CONTEXT_OFFSETS = np.cumsum([0] + [rows for _, rows in CONTEXT])[:-1]
CONTEXT_ROWS = int(sum(rows for _, rows in CONTEXT))
ACT_MAX = 255  # activations are uint8
CACHE_WORDS = 1 << 18  # words whose per-word part is kept (a pure function: speed only)
BLOCK = 1 << 15  # rows (words) per matrix product

__all__ = ["FastPosTagger", "WEIGHTS", "agreement", "context_of", "word_features", "words_of"]


_ASCII_CLASSES = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "X" * 26 + "x" * 26 + "d" * 10
)
_RUNS = re.compile(r"(.)\1{3,}", re.DOTALL)


def _three(run: re.Match) -> str:
    return run.group()[:3]


def _shape(word: str) -> str:
    """Character classes (X upper, x lower, d digit, the character itself otherwise), runs of
    one class cut at 3."""
    if word.isascii():  # the same classes, by table
        return _RUNS.sub(_three, word.translate(_ASCII_CLASSES))
    out = []
    last, run = "", 0
    for c in word:
        k = "X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c
        run = run + 1 if k == last else 1
        last = k
        if run <= 3:
            out.append(k)
    return "".join(out)


def word_features(word: str) -> np.ndarray:
    """Row indices (into the concatenated embedding table) of ``word``'s hashed features."""
    low = word.lower()
    values = (low, low[:2], low[-3:], low[-2:], _shape(word))
    out = np.empty(len(FEATURES) * HASHES, dtype=np.int64)
    for f, (value, (_, rows)) in enumerate(zip(values, FEATURES, strict=True)):
        for h in range(HASHES):
            out[f * HASHES + h] = OFFSETS[f] + _hash(value, f * HASHES + h + 1) % rows
    return out


_PRETOKENIZER: Any = None


def words_of(text: str) -> tuple[list[str], np.ndarray]:
    """BERT's words of ``text`` and their character spans ``[n, 2]`` (int64)."""
    global _PRETOKENIZER
    if _PRETOKENIZER is None:
        from tokenizers.pre_tokenizers import BertPreTokenizer

        _PRETOKENIZER = BertPreTokenizer()
    pieces = _PRETOKENIZER.pre_tokenize_str(text)
    if not pieces:
        return [], np.zeros((0, 2), dtype=np.int64)
    words, offsets = zip(*pieces, strict=True)
    flat = itertools.chain.from_iterable(offsets)
    return list(words), np.fromiter(flat, dtype=np.int64, count=2 * len(words)).reshape(-1, 2)


def glue_of(spans: np.ndarray) -> np.ndarray:
    """Per word: 1 if it touches the previous word (no space between) + 2 if it touches the next."""
    n = len(spans)
    touch = np.zeros(n + 1, dtype=np.int64)
    if n > 1:
        touch[1:n] = spans[1:, 0] == spans[:-1, 1]
    return touch[:n] + 2 * touch[1:]


def context_of(words: Sequence[str], spans: np.ndarray) -> np.ndarray:
    """Per word, ``len(CONTEXT)`` rows of the context table ``[n, 4]``: its glue
    (:func:`glue_of`), and features of the chunk it is in (the words glued together, as
    whitespace delimits them: spaCy's tokens are cut from such chunks): the chunk's shape with
    the word's place in it (first, inside, last), its lowercase form and its last 3 characters;
    a row of their own for a word alone."""
    glue = glue_of(spans)
    out = np.empty((len(glue), len(CONTEXT)), dtype=np.int64)
    out[:, 0] = glue
    out[:, 1:] = CONTEXT_OFFSETS[1:]  # a word alone
    starts = np.flatnonzero(glue == 2)  # first words of chunks of two or more
    if len(starts):
        ends = np.flatnonzero(glue == 1)  # last words of such chunks, in the same order
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            chunk = "".join(words[a : b + 1])
            rows = _CHUNKS.get(chunk) or _chunk_rows(chunk)
            out[a : b + 1, 1:] = rows[1]
            out[a, 1], out[b, 1] = rows[0], rows[2]
    return out


_CHUNKS: dict[str, tuple] = {}  # chunk -> its rows (a pure function: speed only)


def _chunk_rows(chunk: str) -> tuple:
    """Context rows of a chunk of glued words: (shape row of its first word, [shape row inside,
    lowercase row, suffix row], shape row of its last word)."""
    (_, r1), (_, r2), (_, r3) = CONTEXT[1:]
    o1, o2, o3 = CONTEXT_OFFSETS[1:].tolist()
    shape, low = _shape(chunk), chunk.lower()
    place = [o1 + 1 + _hash(p + shape, 7) % (r1 - 1) for p in "bie"]
    inner = [place[1], o2 + 1 + _hash(low, 8) % (r2 - 1), o3 + 1 + _hash(low[-3:], 9) % (r3 - 1)]
    rows = (place[0], inner, place[2])
    if len(_CHUNKS) < CACHE_WORDS:
        _CHUNKS[chunk] = rows
    return rows


def _hash(value: str, seed: int) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogatepass"), 0x9E3779B1 * seed & 0xFFFFFFFF)


class FastPosTagger:
    """The distilled tagger. Picklable (weights load lazily in each process).

    Args:
        weights: path of the ``.npz`` weights (default: the packaged ``fast_tagger.npz``).
    """

    name = "fast"

    def __init__(self, weights: str | None = None):
        self.weights = os.path.abspath(weights) if weights is not None else WEIGHTS
        self._w: dict[str, Any] | None = None
        self._cache: dict[str, int] = {}
        self._store = np.zeros((0, 0), dtype=np.float32)
        self._sha256: str | None = None

    @property
    def model(self) -> str:
        """What a prepare run's options record (identifies the tagger and its weights)."""
        return f"fast:{self.sha256[:16]}"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_w=None, _cache={}, _store=np.zeros((0, 0), np.float32))
        return state

    def __repr__(self) -> str:
        return f"FastPosTagger(weights={self.weights!r})"

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            try:
                with open(self.weights, "rb") as f:
                    self._sha256 = hashlib.sha256(f.read()).hexdigest()
            except OSError as e:
                raise OSError(f"fast POS tagger weights {self.weights!r}: {e.strerror}") from None
        return self._sha256

    def info(self) -> dict[str, Any]:
        """What a manifest records about the tagger."""
        w = self.params
        return {
            "tagger": "fast",
            "model": os.path.basename(self.weights),
            "sha256": self.sha256,
            "version": str(w["version"]),
            "agreement": {
                k[len("agreement_") :]: float(w[k]) for k in w if k.startswith("agreement_")
            },
        }

    def load(self) -> FastPosTagger:
        """Load (and check) the weights now rather than on first use; returns self."""
        self.params  # noqa: B018
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The loaded weights (loads them on first use in each process)."""
        if self._w is None:
            self._w = load_weights(self.weights)
        return self._w

    def _word_vectors(self, words: list[str]) -> np.ndarray:
        """:meth:`_compute` of each of ``words``, kept per word up to ``CACHE_WORDS`` words (a
        pure function of the word: the cache saves time only)."""
        cache = self._cache
        idx = np.array([cache.get(w, -1) for w in words], dtype=np.int64)
        missing = np.flatnonzero(idx < 0)
        if not len(missing):
            return self._store[idx]
        new = list(dict.fromkeys(words[k] for k in missing.tolist()))
        vecs = self._compute(new)
        room = max(0, min(len(new), CACHE_WORDS - len(cache)))
        if room:
            start = len(cache)
            if start + room > len(self._store):  # grow by doubling
                grown = np.zeros((max(4096, 2 * (start + room)), vecs.shape[1]), np.float32)
                if start:
                    grown[:start] = self._store[:start]
                self._store = grown
            self._store[start : start + room] = vecs[:room]
            cache.update(zip(new[:room], range(start, start + room), strict=True))
        out = self._store[np.maximum(idx, 0)]
        if room < len(new):  # the cache is full: the rest is used once
            where = {w: k for k, w in enumerate(new)}
            for k in missing.tolist():
                if words[k] not in cache:
                    out[k] = vecs[where[words[k]]]
        else:
            out[missing] = self._store[[cache[words[k]] for k in missing.tolist()]]
        return out

    def _compute(self, words: list[str]) -> np.ndarray:
        """The per-word part of the model: float32 ``[n, d]`` pre-activations of the first
        layer on its uint8 grid, before the glue is added (exact integer sums, then
        elementwise scaling: a pure function of the word)."""
        w = self.params
        feats = np.stack([word_features(x) for x in words])
        h = w["embed"][feats].sum(1, dtype=np.int32).astype(np.float32)
        h *= w["m0"]
        h += w["b0"]
        with _one_blas_thread():
            for k in range(int(w["lexical"])):
                u = np.clip(np.rint(h), 0, ACT_MAX)
                h = u @ w[f"lex{k}"]
                h *= w[f"lex{k}_m"]
                h += w[f"lex{k}_b"]
        return h

    def tag(self, texts: Iterable[str], **_: Any) -> list[TaggedDoc]:
        """Tag ``texts``; one :class:`TaggedDoc` per text (spans: its BERT words), in order."""
        docs = [words_of(t) for t in texts]
        classes = self.predict([w for w, _ in docs], [s for _, s in docs])
        tags = [tuple(UPOS_SPECIAL[c] for c in cl) for cl in classes]
        return [TaggedDoc(s, t, c) for (_, s), t, c in zip(docs, tags, classes, strict=True)]

    def tag_words(self, texts: Sequence[str], spans: Sequence[np.ndarray]) -> list[TaggedDoc]:
        """Tag words the caller has found: ``spans[k]`` the character spans ``[n, 2]`` of the
        words of ``texts[k]`` (prepare passes a BERT tokenizer's own words, which it has already
        computed; they are :func:`words_of`'s except where its normalizer drops control
        characters)."""
        words = [[t[a:b] for a, b in s.tolist()] for t, s in zip(texts, spans, strict=True)]
        classes = self.predict(words, spans)
        return [
            TaggedDoc(s, tuple(UPOS_SPECIAL[c] for c in cl), cl)
            for s, cl in zip(spans, classes, strict=True)
        ]

    def predict(self, words: Sequence[list[str]], spans: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Classes (uint8) of the words of each document (``spans`` their character spans).

        The documents are laid out one after another with an empty row before each and after
        the last, so that a window never reaches into another document, and run in blocks of
        about ``BLOCK`` rows."""
        out: list[np.ndarray] = []
        start = 0
        while start < len(words):
            stop, rows = start, 1
            while stop < len(words) and (stop == start or rows + len(words[stop]) + 1 <= BLOCK):
                rows += len(words[stop]) + 1
                stop += 1
            out.extend(self._run(words[start:stop], spans[start:stop]))
            start = stop
        return out

    @staticmethod
    def _alone(w: dict[str, Any]) -> np.ndarray:
        """The context vector of a word with spaces on both sides."""
        rows = CONTEXT_OFFSETS.copy()
        rows[0] = 0  # glue 0
        return w["context"][rows].sum(0, dtype=np.int32).astype(np.float32) * w["context_m"]

    def _run(self, words: Sequence[list[str]], spans: Sequence[np.ndarray]) -> list[np.ndarray]:
        w = self.params
        lengths = np.array([len(x) for x in words], dtype=np.int64)
        n = int(lengths.sum()) + len(words) + 1
        pads = np.concatenate([[0], np.cumsum(lengths + 1)])  # the empty rows
        rows = np.repeat(pads[:-1] + 1, lengths) + _ranks(lengths)  # the words' rows
        flat = [x for doc in words for x in doc]
        x = np.zeros((n, w["context"].shape[1]), dtype=np.float32)
        if flat:
            ctx = np.concatenate([context_of(a, b) for a, b in zip(words, spans, strict=True)])
            # a word alone (most words) has the same context rows: one vector for all of them
            alone = self._alone(w)
            c = np.empty((len(ctx), len(alone)), dtype=np.float32)
            c[:] = alone
            glued = np.flatnonzero(ctx[:, 0])
            c[glued] = w["context"][ctx[glued]].sum(1, dtype=np.int32)  # exact
            c[glued] *= w["context_m"]
            x[rows] = self._word_vectors(flat)
            x[rows] += c
            np.rint(x, out=x)
            np.clip(x, 0, ACT_MAX, out=x)
        with _one_blas_thread():
            for layer in range(int(w["layers"])):
                k = w[f"conv{layer}"]
                h = k.shape[1] // 3
                y = x @ k  # exact: integer products, partial sums below 2**24
                acc = y[:, h : 2 * h].copy()
                acc[1:] += y[:-1, :h]  # the previous word through tap 0
                acc[:-1] += y[1:, 2 * h :]  # the next word through tap 2
                x = _requant(acc, w[f"conv{layer}_m"], w[f"conv{layer}_b"])
                x[pads] = 0
            logits = x @ w["out"]
        logits *= w["out_m"]
        logits += w["out_b"]
        classes = logits.argmax(1).astype(np.uint8)[rows]
        return np.split(classes, np.cumsum(lengths)[:-1])


_BLAS: Any = None


def _one_blas_thread() -> Any:
    """One BLAS thread for the products (one process is one core; prepare scales by processes);
    the result is exact with any number, so without threadpoolctl nothing is limited."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:
            _BLAS = False
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., n_k - 1 for each length n_k, concatenated."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def _requant(acc: np.ndarray, m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ReLU and rounding to the uint8 grid of the next layer (elementwise: exact per element)."""
    x = acc * m
    x += b
    np.rint(x, out=x)
    return np.clip(x, 0, ACT_MAX, out=x)


def load_weights(path: str) -> dict[str, Any]:
    """The arrays of a weights file, checked; a clear error naming the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            w = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(
            f"fast POS tagger weights not found: {path!r} (reinstall mlmfast, or regenerate "
            "them with scripts/train_pos_tagger.py)"
        ) from None
    except Exception as e:  # a truncated or foreign file: zipfile, pickle or value errors
        raise ValueError(
            f"fast POS tagger weights {path!r} are corrupt or not a weights file ({e})"
        ) from None
    problem = _check(w)
    if problem:
        raise ValueError(f"fast POS tagger weights {path!r} are not usable: {problem}")
    return w


def _check(w: dict[str, Any]) -> str | None:
    """What is wrong with a weights dict (None: nothing)."""
    base = (
        "format",
        "version",
        "lexical",
        "layers",
        "embed",
        "m0",
        "b0",
        "context",
        "context_m",
        "out",
        "out_m",
        "out_b",
    )
    missing = [k for k in base if k not in w]
    if missing:
        return f"missing arrays {missing}"
    if int(w["format"]) != FORMAT:
        return f"format {int(w['format'])}, this mlmfast reads format {FORMAT}"
    names = [f"lex{i}" for i in range(int(w["lexical"]))]
    names += [f"conv{i}" for i in range(int(w["layers"]))]
    missing = [k for n in names for k in (n, f"{n}_m", f"{n}_b") if k not in w]
    if missing:
        return f"missing arrays {missing}"
    if w["embed"].ndim != 2 or w["embed"].shape[0] != ROWS or w["embed"].dtype != np.int8:
        return f"embedding table of shape {w['embed'].shape} ({w['embed'].dtype})"
    width = w["embed"].shape[1]
    for n in names:
        k = w[n]
        taps = 3 if n.startswith("conv") else 1
        if n == "conv0" and w["context"].shape != (CONTEXT_ROWS, width):
            return f"context of shape {w['context'].shape}, expected {(CONTEXT_ROWS, width)}"
        if k.ndim != 2 or k.shape[0] != width or k.shape[1] % taps:
            return f"{n} of shape {k.shape} after a layer of width {width}"
        width = k.shape[1] // taps
    if w["out"].shape != (width, pos.NUM_CLASSES):
        return f"output layer of shape {w['out'].shape}, expected {(width, pos.NUM_CLASSES)}"
    return None


CONTENT = np.array([t in pos.CONTENT for t in UPOS_SPECIAL])


def agreement(tokenizer: Any, texts: Sequence[str], reference: Sequence[Any], other: Sequence[Any]):
    """Agreement of two taggings of ``texts`` per subword of ``tokenizer`` (a fast tokenizer),
    both aligned with :func:`~mlmfast.data.tagging.align` and the word rule: ``(share of tokens
    with the same class, share with the same content/function side, tokens)``. ``reference``
    and ``other`` hold one :class:`TaggedDoc` (or ``(spans, classes)``) per text."""
    from mlmfast.data.tagging import align

    enc = tokenizer(
        list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    same = side = total = 0
    for k, text in enumerate(texts):
        offsets = enc["offset_mapping"][k]
        if not offsets:
            continue
        words = np.array([-1 if w is None else w for w in enc.word_ids(k)], dtype=np.int64)
        none = np.zeros(len(words), dtype=bool)
        a = align(offsets, none, reference[k][0], reference[k][-1], words, text=text)
        b = align(offsets, none, other[k][0], other[k][-1], words, text=text)
        same += int((a == b).sum())
        side += int((CONTENT[a] == CONTENT[b]).sum())
        total += len(a)
    return same / max(total, 1), side / max(total, 1), total
