"""Weight drift per block, linear CKA per layer, the report and its plot."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from mlmfast.train.analysis import (
    canonical_name,
    drift_report,
    layer_cka,
    layer_weight_drift,
    linear_cka,
    plot_drift,
)

BLOCKS = ["embeddings", "layer.0", "layer.1", "pooler"]


def tiny_config(**kw):
    from transformers import BertConfig

    sizes = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    return BertConfig(**{**sizes, **kw})


def tiny_bert(seed=0, cls=None, **kw):
    from transformers import BertModel

    torch.manual_seed(seed)
    return (cls or BertModel)(tiny_config(**kw)).eval()


def probe_batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 64, (4, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        mask[3, 4:] = 0
        ids[mask == 0] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(4)})
    return out


# ----------------------------------------------------------------------------- drift


def test_identical_models_have_zero_drift():
    model = tiny_bert()
    drift = layer_weight_drift(model, copy.deepcopy(model))
    assert list(drift) == BLOCKS and all(v == 0.0 for v in drift.values())


def test_drift_of_a_known_perturbation():
    before = tiny_bert()
    after = copy.deepcopy(before)
    with torch.no_grad():
        for p in after.encoder.layer[0].parameters():
            p.mul_(1.25)  # the whole block scaled: drift is exactly 0.25
        w = after.encoder.layer[1].output.dense.weight
        delta = torch.randn_like(w) * 0.01
        w.add_(delta)
    layer1 = torch.cat(
        [p.detach().double().reshape(-1) for p in before.encoder.layer[1].parameters()]
    )
    drift = layer_weight_drift(before, after)
    assert drift["layer.0"] == pytest.approx(0.25, rel=1e-6)
    assert drift["layer.1"] == pytest.approx(float(delta.double().norm() / layer1.norm()), rel=1e-6)
    assert drift["embeddings"] == 0.0 and drift["pooler"] == 0.0
    per = layer_weight_drift(before, after, granularity="parameter")
    changed = {n for n, v in per.items() if v > 0}
    assert "encoder.layer.1.output.dense.weight" in changed
    assert all(
        n.startswith("encoder.layer.0.") for n in changed - {"encoder.layer.1.output.dense.weight"}
    )
    # state dicts work as well as modules
    assert layer_weight_drift(before.state_dict(), after.state_dict()) == pytest.approx(drift)


def test_task_model_matches_the_encoder_it_came_from(tmp_path):
    from transformers import BertForMaskedLM, BertForSequenceClassification

    base = tiny_bert(seed=1)
    base.save_pretrained(tmp_path / "base")
    clf = BertForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    drift = layer_weight_drift(base, clf)
    assert list(drift) == BLOCKS and all(v == 0.0 for v in drift.values())  # no common head
    with torch.no_grad():
        clf.bert.encoder.layer[1].attention.self.query.weight.mul_(2.0)
        clf.classifier.weight.mul_(3.0)
    drift = layer_weight_drift(base, clf)
    assert drift["layer.1"] > 0 and drift["layer.0"] == 0.0
    clf2 = copy.deepcopy(clf)
    with torch.no_grad():
        clf2.classifier.weight.mul_(2.0)
    both = layer_weight_drift(clf, clf2)
    assert list(both) == [*BLOCKS, "head"] and both["head"] > 0 and both["layer.1"] == 0.0
    mlm = BertForMaskedLM.from_pretrained(tmp_path / "base")
    assert list(layer_weight_drift(mlm, copy.deepcopy(mlm))) == [
        "embeddings",
        "layer.0",
        "layer.1",
        "head",
    ]


def test_canonical_names():
    assert (
        canonical_name("bert.encoder.layer.3.output.dense.weight")
        == "encoder.layer.3.output.dense.weight"
    )
    assert canonical_name("module._orig_mod.bert.embeddings.word_embeddings.weight") == (
        "embeddings.word_embeddings.weight"
    )
    assert (
        canonical_name(
            "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"
        )
        == "encoder.layer.0.attention.self.query.weight"
    )
    assert (
        canonical_name(
            "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
        )
        is None
    )
    assert (
        canonical_name("base_model.model.classifier.modules_to_save.default.weight")
        == "classifier.weight"
    )
    assert canonical_name("base_model.model.classifier.original_module.weight") is None
    assert (
        canonical_name("cls.predictions.transform.dense.weight")
        == "cls.predictions.transform.dense.weight"
    )


def test_lora_unmerged_reads_like_merged():
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    before = tiny_bert(seed=2, cls=BertForSequenceClassification, num_labels=2)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    peft_model = get_peft_model(copy.deepcopy(before), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapters an effect
                p.normal_(0, 0.05)
            if "modules_to_save" in name and name.endswith("weight"):
                p.mul_(1.5)
    unmerged = layer_weight_drift(before, peft_model)
    merged_model = copy.deepcopy(peft_model).merge_and_unload()
    merged = layer_weight_drift(before, merged_model)
    assert list(unmerged) == [*BLOCKS, "head"]
    assert unmerged == pytest.approx(merged, rel=1e-6, abs=1e-12)
    assert unmerged["embeddings"] == 0.0 and unmerged["pooler"] == 0.0
    assert unmerged["layer.0"] > 0 and unmerged["layer.1"] > 0 and unmerged["head"] > 0
    per = layer_weight_drift(before, peft_model, granularity="parameter")
    moved = {n for n, v in per.items() if v > 0}
    assert moved == {
        f"encoder.layer.{i}.attention.self.{m}.weight" for i in (0, 1) for m in ("query", "value")
    } | {"classifier.weight"}
    # layer_cka looks through the PEFT wrapper to the encoder with its adapters on
    cka = layer_cka(before, peft_model, probe_batches(1))
    assert cka["embeddings"] == pytest.approx(1.0) and cka["layer.1"] < 1.0 - 1e-6


def test_drift_errors():
    before = tiny_bert()
    with pytest.raises(ValueError, match="no parameters in common"):
        layer_weight_drift(before, {"foo.weight": torch.ones(2)})
    other = before.state_dict()
    other["pooler.dense.weight"] = torch.ones(3, 3)
    with pytest.raises(
        ValueError, match=r"'pooler.dense.weight' has shape \(32, 32\) before and \(3, 3\)"
    ):
        layer_weight_drift(before, other)
    with pytest.raises(ValueError, match="granularity must be"):
        layer_weight_drift(before, before, granularity="layer")
    with pytest.raises(TypeError, match="expected a torch.nn.Module or a state dict"):
        layer_weight_drift(before, 3)


# ----------------------------------------------------------------------------- CKA


def cka_reference(x, y):
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with Gram matrices, in numpy."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * (x.double() @ q)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-12)  # centring
    y = x[:, :8] + 0.5 * torch.randn(200, 8, generator=g)
    value = linear_cka(x, y)
    assert 0.0 < value < 1.0 and value == pytest.approx(cka_reference(x, y), rel=1e-10)
    # the n x n path (fewer examples than features) agrees with the reference too
    a, b = torch.randn(20, 50, generator=g), torch.randn(20, 30, generator=g)
    assert linear_cka(a, b) == pytest.approx(cka_reference(a, b), rel=1e-10)
    assert linear_cka(a.numpy(), b.numpy()) == pytest.approx(linear_cka(a, b), rel=1e-12)
    # independent random features: near 0
    u, v = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g)
    assert linear_cka(u, v) < 0.02
    for _ in range(5):
        p, r = torch.randn(30, 6, generator=g), torch.randn(30, 4, generator=g) ** 3
        assert 0.0 <= linear_cka(p, r) <= 1.0


def test_linear_cka_errors():
    with pytest.raises(ValueError, match="same examples, got 5 and 4 rows"):
        linear_cka(torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"x must be \[n, features\], got shape \(5,\)"):
        linear_cka(torch.randn(5), torch.randn(5, 3))
    with pytest.raises(ValueError, match="y has no variance"):
        linear_cka(torch.randn(5, 3), torch.ones(5, 3))


def test_layer_cka_of_a_model_with_itself_is_one_and_streaming_matches_direct():
    model = tiny_bert(seed=3)
    model.train()
    batches = probe_batches()
    same = layer_cka(model, copy.deepcopy(model), batches)
    assert list(same) == ["embeddings", "layer.0", "layer.1"]
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in same.values())
    assert model.training  # eval mode was only for the probe

    other = tiny_bert(seed=4)
    got = layer_cka(model, other, batches)
    with torch.no_grad():
        model.eval()
        hs = [[], []]
        for b in batches:
            keep = b["attention_mask"].bool()
            for k, m in enumerate((model, other)):
                out = m(
                    input_ids=b["input_ids"],
                    attention_mask=b["attention_mask"],
                    output_hidden_states=True,
                )
                hs[k].append([h[keep] for h in out.hidden_states])
    for i, name in enumerate(got):
        x = torch.cat([layers[i] for layers in hs[0]])
        y = torch.cat([layers[i] for layers in hs[1]])
        assert got[name] == pytest.approx(linear_cka(x, y), rel=1e-8)
        assert 0.0 < got[name] < 1.0
    # padding is left out: changing what sits under the mask changes nothing
    repadded = [
        dict(b, input_ids=b["input_ids"].masked_fill(b["attention_mask"] == 0, 9)) for b in batches
    ]
    assert layer_cka(model, other, repadded) == pytest.approx(got, rel=1e-9)


def test_layer_cka_max_tokens_and_errors():
    a, b = tiny_bert(seed=5), tiny_bert(seed=6)
    batches = probe_batches(3)
    first = layer_cka(a, b, batches[:1])
    n_first = int(batches[0]["attention_mask"].sum())
    assert layer_cka(a, b, batches, max_tokens=n_first) == pytest.approx(first, rel=1e-9)
    assert drift_report(a, b, batches, max_tokens=n_first)["num_tokens"] == n_first
    with pytest.raises(ValueError, match="no probe batches"):
        layer_cka(a, b, [])
    deeper = tiny_bert(seed=7, num_hidden_layers=3)
    with pytest.raises(ValueError, match="before has 2 layers and after 3"):
        layer_cka(a, deeper, batches)


# ----------------------------------------------------------------------------- report and plot


def test_report_is_json_and_plot_draws_it(tmp_path):
    from transformers import BertForSequenceClassification

    before = tiny_bert(seed=8, cls=BertForSequenceClassification, num_labels=2)
    full, lora = copy.deepcopy(before), copy.deepcopy(before)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.02 * torch.randn_like(p))
        w = lora.bert.encoder.layer[1].attention.self.query.weight
        w.add_(0.5 * torch.randn_like(w))
    reports = {
        "full": drift_report(before, full, probe_batches(2)),
        "lora": drift_report(before, lora, probe_batches(2)),
    }
    again = json.loads(json.dumps(reports))
    assert again == reports and set(again["full"]) == {"weight_drift", "cka", "num_tokens"}
    assert list(again["full"]["weight_drift"]) == [*BLOCKS, "head"]
    assert again["lora"]["cka"]["embeddings"] == pytest.approx(1.0)
    assert again["lora"]["cka"]["layer.1"] < 1.0 - 1e-9

    path = tmp_path / "drift.png"
    fig = plot_drift(again, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    heights = [round(p.get_height(), 12) for p in ax.patches]
    expected = [round(v, 12) for r in again.values() for v in r["weight_drift"].values()]
    assert heights == expected
    lines = fig.axes[1].get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_ydata(), [1 - v for v in again["full"]["cka"].values()])
    assert [t.get_text() for t in ax.get_xticklabels()] == [*BLOCKS, "head"]

    single = plot_drift({"weight_drift": again["full"]["weight_drift"]}, str(tmp_path / "one.png"))
    assert len(single.axes) == 1 and (tmp_path / "one.png").stat().st_size > 0
    with pytest.raises(ValueError, match="run 'x' is not a drift report"):
        plot_drift({"x": {"cka": {}}}, str(tmp_path / "bad.png"))


def test_embedded_minilm_blocks():
    from transformers import BertModel

    from mlmfast.data.embedded import default_tokenizer_path

    try:
        path = default_tokenizer_path()
    except RuntimeError:
        pytest.skip("the embedded MiniLM encoder is not installed")
    model = BertModel.from_pretrained(path)
    drift = layer_weight_drift(model, model.state_dict())
    assert list(drift) == ["embeddings", *[f"layer.{i}" for i in range(6)], "pooler"]
    assert all(v == 0.0 for v in drift.values())
