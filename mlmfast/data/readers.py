"""The inputs of ``mlmfast prepare``: names -> files, files -> documents (text files, JSONL,
CSV, Parquet, the embedded corpora); decoding errors name the file and line."""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator, Sequence

from mlmfast.data.embedded import CORPORA, read_texts

TEXT_SUFFIXES = (".txt", ".text")
COLUMN_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
KNOWN_SUFFIXES = (*TEXT_SUFFIXES, *COLUMN_SUFFIXES)

__all__ = ["COLUMN_SUFFIXES", "KNOWN_SUFFIXES", "TEXT_SUFFIXES", "iter_documents", "resolve_inputs"]


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
