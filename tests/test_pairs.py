"""Sentence pairs and text pairs in mlmfast prepare (token_type_ids), the sentence splitter, and
the BBC News corpus by name."""

from __future__ import annotations

import csv
import json
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmfast.data import open_shards, prepare
from mlmfast.data.prepare import FAIL_AFTER_ENV, split_sentences

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
]


def sentence_docs(n: int, seed: int = 0) -> list[str]:
    """Documents of 1-12 sentences of 1-40 words; some sentences are longer than a row."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(1, 12)):
            words = [rng.choice(WORDS) for _ in range(rng.choice([1, 3, 8, 15, 40]))]
            sentences.append(words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice(".!?"))
        docs.append(" ".join(s.replace(" .", ".") for s in sentences))
    return docs


def table_rows(directory) -> dict[str, list]:
    import pyarrow as pa

    out: dict[str, list] = {}
    for path in open_shards(directory, verify=True).paths:
        with pa.memory_map(path) as src:
            t = pa.ipc.open_file(src).read_all()
        for name in t.column_names:
            out.setdefault(name, []).extend(t.column(name).to_pylist())
    return out


def write_txt(path, docs) -> str:
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def sentence_starts(tok, text: str) -> set[int]:
    """Token indices where the sentences of ``text`` start (the splitter's boundaries)."""
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    token_starts = np.array([s for s, _ in offsets])
    return {int(np.searchsorted(token_starts, c)) for c in split_sentences(text)}


# ----------------------------------------------------------------------------- splitter


def test_split_sentences_rules():
    def parts(text):
        starts = split_sentences(text)
        return [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]

    assert parts('Mr. Smith met Dr. J. K. Rowling. She said: "Hi!" Then 3 left.') == [
        "Mr. Smith met Dr. J. K. Rowling.",
        'She said: "Hi!"',
        "Then 3 left.",
    ]
    # lower case after a period, decimals and U.S. do not split; <br /> and blank lines do
    assert parts("It cost $1.5m in the U.S. Army. e.g. this.") == [
        "It cost $1.5m in the U.S. Army. e.g. this."
    ]
    assert parts("Bad film.<br /><br />The end") == ["Bad film.<br /><br />", "The end"]
    assert parts("Title line\n\nBody one. Body two?") == ["Title line", "Body one.", "Body two?"]
    assert parts("Wrapped\nline. Next") == ["Wrapped\nline.", "Next"]
    assert split_sentences("  \n ") == [] and split_sentences("one") == [0]
    assert split_sentences("  Lead. In") == [2, 8]


# ----------------------------------------------------------------------------- sentence pairs


def check_pair_row(tok, ids, types, L):
    """One [CLS] first, two [SEP] (one in the middle, one last), types 0 then 1 from after the
    first [SEP]; -> (A content, B content)."""
    assert len(ids) <= L and len(ids) == len(types)
    assert ids[0] == tok.cls_token_id and ids.count(tok.cls_token_id) == 1
    seps = [i for i, t in enumerate(ids) if t == tok.sep_token_id]
    assert len(seps) == 2 and seps[1] == len(ids) - 1
    first = seps[0]
    assert 1 < first < len(ids) - 2, "A and B are never empty"
    assert types == [0] * (first + 1) + [1] * (len(ids) - first - 1)
    return ids[1:first], ids[first + 1 : -1]


@pytest.mark.parametrize("L", [16, 64])
def test_sentence_pairs_rows_recover_each_document(tmp_path, tok, L):
    docs = sentence_docs(120, seed=L)
    docs.insert(3, "Hi")  # one token: too short for a pair
    src = write_txt(tmp_path / "docs.txt", docs)
    m = prepare(src, str(tmp_path / "o"), max_length=L, mode="sentence-pairs", progress=False)
    assert m["mode"] == "sentence-pairs" and "token_type_ids" in m["columns"]
    assert m["documents"]["too_short"] == 1
    rows = table_rows(tmp_path / "o")
    assert "word_ids" not in rows
    k = 0
    cut_at_sentence = cut_inside = 0
    for doc in docs:
        tokens = tok(doc, add_special_tokens=False)["input_ids"]
        if len(tokens) < 2:
            continue
        bounds = sentence_starts(tok, doc)
        got, p = [], 0
        while len(got) < len(tokens):  # rows never span documents
            a, b = check_pair_row(tok, rows["input_ids"][k], rows["token_type_ids"][k], L)
            e = p + len(a) + len(b)
            inner = {s for s in bounds if p < s < e}
            if inner:  # a row holding a sentence boundary is cut at one
                assert p + len(a) in inner
                cut_at_sentence += 1
            else:
                cut_inside += 1
            if e < len(tokens):  # every row but a document's last is at least half full
                assert e - p >= (L - 3) // 2
            got += a + b
            p, k = e, k + 1
        assert got == tokens  # A then B, row after row: the document's tokens in order
    assert k == len(rows["input_ids"]) == m["rows"]
    assert cut_at_sentence > 0 and cut_inside > 0


def test_sentence_pairs_cut_varies_and_fills_rows(tmp_path, tok):
    sentence = "The same short sentence is here."
    per = len(tok(sentence, add_special_tokens=False)["input_ids"])
    src = write_txt(tmp_path / "d.txt", [" ".join([sentence] * 80)])
    L = 64
    prepare(src, str(tmp_path / "o"), max_length=L, mode="sentence-pairs", progress=False)
    rows = table_rows(tmp_path / "o")
    first_sep = [r.index(tok.sep_token_id) for r in rows["input_ids"]]
    assert len(set(first_sep)) > 2  # A ends at different sentences, not always the middle
    assert all((f - 1) % per == 0 for f in first_sep)  # and always at a sentence end
    # whole sentences, as many as fit in L - 3 content tokens
    assert all(len(r) == (L - 3) // per * per + 3 for r in rows["input_ids"][:-1])


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 400),
    L=st.integers(6, 48),
    data=st.data(),
)
def test_sentence_pair_rows_partition_any_document(n, L, data):
    """Any token count, sentence starts and word starts: rows cover the document in order, A and
    B are never empty, rows fit, a row with an inner sentence start is cut at one, every row but
    the last is at least half full, and a resumed packer (from any row end) cuts the same rows."""
    from mlmfast.data.prepare import Encoded, _Packer

    starts = data.draw(st.sets(st.integers(1, n - 1), max_size=n // 2))
    bounds = np.array(sorted({0, *starts}), dtype=np.int64)
    word_start = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    word_start[0] = True
    enc = Encoded(
        np.arange(1000, 1000 + n, dtype=np.int32), sentences=bounds, word_start=word_start
    )
    packer = _Packer("sentence-pairs", L, False, cls=1, sep=2)
    rows, ends, p = list(packer.sentence_pairs(7, enc, 0)), [], 0
    got = []
    for ids, _, _, types in rows:
        assert len(ids) <= L and ids[0] == 1 and ids[-1] == 2 and (ids == 2).sum() == 2
        c = int(np.flatnonzero(ids == 2)[0])
        a, b = ids[1:c], ids[c + 1 : -1]
        assert len(a) and len(b)
        assert types.tolist() == [0] * (c + 1) + [1] * (len(ids) - c - 1)
        e = p + len(a) + len(b)
        inner = bounds[(bounds > p) & (bounds < e)]
        if len(inner):
            assert p + len(a) in inner
        if e < n:
            assert e - p >= (L - 3) // 2
        got += [*a, *b]
        ends.append(e)
        p = e
    assert got == list(range(1000, 1000 + n))
    assert packer.end == (8, 0)
    k = data.draw(st.integers(0, len(rows) - 1))
    resumed = list(
        _Packer("sentence-pairs", L, False, 1, 2).sentence_pairs(7, enc, ([0] + ends)[k])
    )
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(resumed, rows[k:], strict=True))


@pytest.mark.parametrize("pos", [False, True], ids=["words", "pos"])
def test_sentence_pairs_keep_word_ids_and_pos_aligned(tmp_path, tok, pos):
    docs = [
        "The director's unbelievable cinematography won. Critics were thrilled! "
        "Audiences, however, stayed home. Nobody knows why.",
        "A wonderful performance. The script is weak, and the ending drags on forever. Go see "
        "it anyway.",
    ] * 3
    src = write_txt(tmp_path / "d.txt", docs)
    kw = dict(max_length=16, word_ids=True, pos=pos, progress=False)
    prepare(src, str(tmp_path / "pairs"), mode="sentence-pairs", **kw)
    prepare(src, str(tmp_path / "doc"), mode="document", **{**kw, "max_length": 128})
    pairs, whole = table_rows(tmp_path / "pairs"), table_rows(tmp_path / "doc")
    k = 0
    for d in range(len(docs)):
        doc_words = np.array(whole["word_ids"][d][1:-1])
        doc_pos = np.array(whole["pos_ids"][d][1:-1]) if pos else None
        p = 0
        while p < len(doc_words):
            ids, words = pairs["input_ids"][k], np.array(pairs["word_ids"][k])
            assert len(ids) == len(words)
            special = np.isin(ids, [tok.cls_token_id, tok.sep_token_id])
            assert (words[special] == -1).all()
            live = words[~special]
            e = p + len(live)
            # the row's words are the document's, renumbered from 0 (A then B continue)
            np.testing.assert_array_equal(live, doc_words[p:e] - doc_words[p:e].min())
            if pos:
                from mlmfast.pos import SPECIAL

                classes = np.array(pairs["pos_ids"][k])
                assert (classes[special] == SPECIAL).all()
                np.testing.assert_array_equal(classes[~special], doc_pos[p:e])
            p, k = e, k + 1
    assert k == len(pairs["input_ids"])


@pytest.mark.parametrize("mode", ["sentence-pairs", "text-pairs"])
def test_pairs_resume_and_num_proc_are_byte_identical(tmp_path, monkeypatch, mode):
    docs = sentence_docs(150, seed=7)
    docs += docs[:20]  # duplicates for dedup
    if mode == "text-pairs":
        src = str(tmp_path / "pairs.jsonl")
        with open(src, "w", encoding="utf-8") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"text": d, "other": docs[(i * 7) % len(docs)]}) + "\n")
        extra = {"text_pair_column": "other"}
    else:
        src = write_txt(tmp_path / "docs.txt", docs)
        extra = {"mode": mode}
    kw = dict(max_length=24, shard_rows=40, batch_docs=37, dedup=True, word_ids=True, **extra)
    full = prepare(src, str(tmp_path / "full"), progress=False, **kw)
    assert len(full["shards"]) > 4 and full["mode"] == mode
    assert full["documents"]["duplicates"] == 20 or mode == "text-pairs"
    monkeypatch.setenv(FAIL_AFTER_ENV, "3")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        prepare(src, str(tmp_path / "cut"), progress=False, **kw)
    monkeypatch.delenv(FAIL_AFTER_ENV)
    resumed = prepare(src, str(tmp_path / "cut"), progress=False, **kw)
    parallel = prepare(src, str(tmp_path / "np2"), progress=False, num_proc=2, **kw)
    hashes = [s["sha256"] for s in full["shards"]]
    assert [s["sha256"] for s in resumed["shards"]] == hashes
    assert [s["sha256"] for s in parallel["shards"]] == hashes
    assert resumed["documents"] == full["documents"]


# ----------------------------------------------------------------------------- text pairs

PAIRS = [
    ("Is the film any good?", "Unbelievable cinematography, wonderful!"),
    ("The plot", "was boring and the ending awful."),
    ("Short.", ""),  # an empty B: [CLS] A [SEP] [SEP], as tokenizer([a], [b]) gives
    ("", "Only the second text."),
    ("  ", " "),  # both blank: skipped
    (" ".join(WORDS * 4), "music " * 30),  # longer than max_length: longest-first truncation
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_text_pairs_reproduce_the_tokenizer(tmp_path, tok, fmt):
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["question", "answer", "label"])
            w.writerows([[a, b, 1] for a, b in PAIRS])
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"question": a, "answer": b}) + "\n" for a, b in PAIRS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.table({"question": [a for a, _ in PAIRS], "answer": [b for _, b in PAIRS]}), path
        )
    L = 40
    m = prepare(
        str(path),
        str(tmp_path / "o"),
        text_column="question",
        text_pair_column="answer",
        max_length=L,
        word_ids=True,
        progress=False,
    )
    assert m["mode"] == "text-pairs" and m["options"]["text_pair_column"] == "answer"
    assert m["columns"] == ["input_ids", "sample_id", "word_ids", "token_type_ids"]
    kept = [(a, b) for a, b in PAIRS if a.strip() or b.strip()]
    assert m["documents"]["read"] == m["rows"] == len(kept)
    rows = table_rows(tmp_path / "o")
    for k, (a, b) in enumerate(kept):
        enc = tok([a], [b], truncation=True, max_length=L)
        assert rows["input_ids"][k] == enc["input_ids"][0]
        assert rows["token_type_ids"][k] == enc["token_type_ids"][0]
        if b:  # the single-pair call agrees where B is not empty
            assert rows["input_ids"][k] == tok(a, b, truncation=True, max_length=L)["input_ids"]
        words = np.array(rows["word_ids"][k])
        special = np.isin(rows["input_ids"][k], tok.all_special_ids)
        assert (words[special] == -1).all()
        live = words[~special]
        assert (np.diff(live) >= 0).all()  # B's words continue after A's, never restart at 0
        types = np.array(rows["token_type_ids"][k])[~special]
        if (types == 1).any() and (types == 0).any():
            assert live[types == 1].min() > live[types == 0].max()
    assert len(rows["input_ids"][-1]) == L


def test_text_pairs_pos_match_each_text_tagged_alone(tmp_path, tok):
    from mlmfast.pos import SPECIAL

    pairs = [(a, b) for a, b in PAIRS[:4] if a and b]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"text": a, "b": b}) + "\n" for a, b in pairs))
    prepare(str(src), str(tmp_path / "o"), text_pair_column="b", pos=True, progress=False)
    alone = [t for pair in pairs for t in pair]
    prepare(
        write_txt(tmp_path / "alone.txt", alone),
        str(tmp_path / "alone"),
        mode="document",
        pos=True,
        progress=False,
    )
    rows, single = table_rows(tmp_path / "o"), table_rows(tmp_path / "alone")
    for k in range(len(pairs)):
        ids, classes = rows["input_ids"][k], np.array(rows["pos_ids"][k])
        types = np.array(rows["token_type_ids"][k])
        special = np.isin(ids, tok.all_special_ids)
        assert (classes[special] == SPECIAL).all()
        for side in (0, 1):
            want = single["pos_ids"][2 * k + side][1:-1]
            assert classes[(types == side) & ~special].tolist() == want


def test_pair_errors(tmp_path):
    src = write_txt(tmp_path / "d.txt", ["A text. Another one."])
    with pytest.raises(ValueError, match="needs JSONL/CSV/Parquet inputs"):
        prepare(src, str(tmp_path / "o"), text_pair_column="b", progress=False)
    with pytest.raises(ValueError, match="needs text_pair_column"):
        prepare(src, str(tmp_path / "o"), mode="text-pairs", progress=False)
    with pytest.raises(ValueError, match="max_length >= 6"):
        prepare(src, str(tmp_path / "o"), mode="sentence-pairs", max_length=5, progress=False)
    with pytest.raises(ValueError, match="cross_document"):
        prepare(src, str(tmp_path / "o"), mode="sentence-pairs", cross_document=True)
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("text,answer\nq,a\n")
    with pytest.raises(ValueError, match="no column 'b'.*--text-pair-column"):
        prepare(str(csv_path), str(tmp_path / "o"), text_pair_column="b", progress=False)
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


# ----------------------------------------------------------------------------- BBC News


def test_bbc_news_examples_sorted_with_labels():
    from mlmfast.data import bbc_news_examples, read_texts

    examples = bbc_news_examples()
    assert len(examples) == 2225
    labels = [y for _, y in examples]
    assert labels == sorted(labels)  # topic folders in sorted order
    counts = {y: labels.count(y) for y in set(labels)}
    assert counts == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert examples[0][0].startswith("Ad sales boost Time Warner profit\n\n")
    assert all(t == t.strip() and t for t, _ in examples)
    assert any("\u00a315.8m" in t for t, y in examples if y == "sports")  # the cp1252 file
    assert list(read_texts("bbc-news", limit=25)) == [t for t, _ in examples[:25]]
    assert sum(1 for _ in read_texts("bbc-news")) == 2225


def test_bbc_news_by_name_in_prepare_cli(tmp_path, tok, capsys):
    from mlmfast.cli import main
    from mlmfast.data import bbc_news_examples

    out = str(tmp_path / "bbc")
    args = ["prepare", "bbc-news", "-o", out, "--limit", "30", "--max-length", "64"]
    assert main([*args, "--mode", "sentence-pairs", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"]["read"] == 30 and summary["mode"] == "sentence-pairs"
    rows = table_rows(out)
    got = []
    for ids, types in zip(rows["input_ids"], rows["token_type_ids"], strict=True):
        a, b = check_pair_row(tok, ids, types, 64)
        got += a + b
    want = []
    for text, _ in bbc_news_examples()[:30]:  # one document per article, in sorted order
        want += tok(text, add_special_tokens=False)["input_ids"]
    assert got == want


def test_stream_yields_token_type_ids_of_pair_rows(tmp_path, tok):
    import torch

    import mlmfast
    from mlmfast.data import ShardStream

    src = write_txt(tmp_path / "d.txt", sentence_docs(60, seed=3))
    out = str(tmp_path / "o")
    prepare(src, out, max_length=32, mode="sentence-pairs", shard_rows=25, progress=False)
    rows = table_rows(out)
    by_id = dict(zip(rows["sample_id"], rows["token_type_ids"], strict=True))
    n = 0
    for b in ShardStream(out, 8, seed=1):
        types, att = b["token_type_ids"], b["attention_mask"]
        assert types.dtype == torch.int64 and types.shape == b["input_ids"].shape
        for r, sid in enumerate(b["sample_id"].tolist()):
            k = int(att[r].sum())
            assert types[r, :k].tolist() == by_id[sid] and not types[r, k:].any()
        n += len(b["sample_id"])
    assert n == len(by_id)
    collator = mlmfast.DataCollatorForLanguageModeling(tok, seed=0)
    raw = next(iter(ShardStream(out, 8, seed=1)))
    masked = next(iter(ShardStream(out, 8, seed=1, collator=collator)))
    assert torch.equal(masked["token_type_ids"], raw["token_type_ids"])
    # [SEP] between A and B is special: never masked
    assert (masked["labels"][raw["input_ids"] == tok.sep_token_id] == -100).all()
