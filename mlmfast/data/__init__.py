"""Data helpers of mlmfast: the embedded corpora and tokenizer (no network at run time)."""

from mlmfast.data.embedded import default_tokenizer_path, load_tokenizer, read_texts

__all__ = ["default_tokenizer_path", "load_tokenizer", "read_texts"]
