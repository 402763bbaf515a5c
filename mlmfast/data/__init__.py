"""Data helpers of mlmfast: the embedded corpora and tokenizer (no network at run time), the
Arrow shard format, ``prepare`` (text -> shards) and the streaming loader."""

from mlmfast.data.embedded import (
    bbc_news_examples,
    default_tokenizer_path,
    load_tokenizer,
    read_texts,
)
from mlmfast.data.prepare import iter_documents, prepare
from mlmfast.data.shards import ShardError, ShardSet, ShardWriter, open_shards
from mlmfast.data.stream import ShardStream, StreamLoader, make_loader

__all__ = [
    "ShardError",
    "ShardSet",
    "ShardStream",
    "ShardWriter",
    "StreamLoader",
    "bbc_news_examples",
    "default_tokenizer_path",
    "iter_documents",
    "load_tokenizer",
    "make_loader",
    "open_shards",
    "prepare",
    "read_texts",
]
