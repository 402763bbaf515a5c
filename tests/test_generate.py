"""mlmfast.generate: slot filling with each strategy, seeds, batching, PLL, CLI, errors."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch

from mlmfast.generate import STRATEGIES, generate, load_mlm, pseudo_log_likelihood

# Different lengths, a template with slots in the middle, an empty-ish prompt.
PROMPTS = ["the movie was", "a long and [MASK] film about [MASK] people who", "so"]


def _tiny_config(tok, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **kw,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Models this small spend more time synchronising threads than computing, and the CPU is
    # shared with other test processes: one thread is several times faster here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    from transformers import BertForMaskedLM

    # fork_rng: a module-scoped fixture runs outside the per-test RNG guard of conftest.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # A wide init spreads the random model's logits, so argmax ties cannot occur.
        model = BertForMaskedLM(_tiny_config(tok, initializer_range=0.2))
    path = tmp_path_factory.mktemp("mlm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def mlm(model_dir):
    return load_mlm(model_dir)


def _banned_ids(tok) -> set[int]:
    placeholders = {
        i
        for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok)))))
        if re.fullmatch(r"\[unused\d+\]", t)
    }
    return set(tok.all_special_ids) | placeholders


def _expected_ids(tok, prompt, num_masks, suffix=None):
    tail = " [MASK]" * num_masks + (f" {suffix}" if suffix else "")
    return tok(prompt + tail)["input_ids"]


def _ids(outputs):
    return [o.input_ids for o in outputs]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fills_every_slot_with_a_real_token_and_keeps_the_prompt(mlm, strategy):
    model, tok = mlm
    banned = _banned_ids(tok)
    outs = generate(
        model,
        tok,
        PROMPTS,
        num_masks=3,
        suffix=".",
        strategy=strategy,
        iterations=3,
        seed=0,
        num_samples=2,
    )
    assert [(o.prompt_index, o.sample_index) for o in outs] == [
        (p, s) for p in range(3) for s in range(2)
    ]
    for o in outs:
        expected = _expected_ids(tok, PROMPTS[o.prompt_index], 3, ".")
        slots = [j for j, t in enumerate(expected) if t == tok.mask_token_id]
        assert o.prompt == PROMPTS[o.prompt_index]
        assert o.mask_positions == slots
        assert len(slots) == (5 if o.prompt_index == 1 else 3)
        assert len(o.input_ids) == len(expected)
        for j, (got, want) in enumerate(zip(o.input_ids, expected, strict=True)):
            if j in slots:
                assert got not in banned and 0 <= got < len(tok), (j, got)
            else:
                assert got == want
        assert o.filled_ids == [o.input_ids[j] for j in slots]
        assert o.text == tok.decode(o.input_ids, skip_special_tokens=True)
        assert "[MASK]" not in o.text
        assert math.isfinite(o.pseudo_log_likelihood) and o.pseudo_log_likelihood < 0


def test_never_chooses_special_or_placeholder_tokens_even_when_the_model_prefers_them(mlm):
    model, tok = mlm
    biased = copy.deepcopy(model)
    favourite = sorted(_banned_ids(tok))
    with torch.no_grad():
        biased.cls.predictions.decoder.bias[favourite] += 1e4
    banned = set(favourite)
    with torch.no_grad():
        raw = biased(input_ids=torch.tensor([_expected_ids(tok, "the movie was", 2)])).logits
    assert int(raw[0, 4].argmax()) in banned  # the bias really makes them the favourites
    for strategy in STRATEGIES:
        for temperature in (0.0, 1.0):
            outs = generate(
                biased,
                tok,
                PROMPTS,
                num_masks=2,
                strategy=strategy,
                iterations=2,
                temperature=temperature,
                seed=1,
            )
            for o in outs:
                assert not banned & set(o.filled_ids), (strategy, temperature, o.filled_ids)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_output_other_seed_other_output(mlm, strategy):
    model, tok = mlm
    kw = dict(num_masks=4, strategy=strategy, iterations=2, temperature=1.5, score=False)
    a = generate(model, tok, PROMPTS, seed=3, **kw)
    torch.manual_seed(12345)  # the global RNG must not matter
    torch.rand(7)
    b = generate(model, tok, PROMPTS, seed=3, **kw)
    c = generate(model, tok, PROMPTS, seed=4, **kw)
    assert _ids(a) == _ids(b)
    assert _ids(a) != _ids(c)
    # Samples of one prompt draw from different generators, so they differ too.
    d = generate(model, tok, PROMPTS[:1], seed=3, num_samples=2, **kw)
    assert d[0].input_ids != d[1].input_ids


def test_seed_none_follows_torch_manual_seed(mlm):
    model, tok = mlm
    kw = dict(num_masks=4, strategy="mask-predict", iterations=2, score=False)
    torch.manual_seed(5)
    a = generate(model, tok, PROMPTS, **kw)
    torch.manual_seed(5)
    b = generate(model, tok, PROMPTS, **kw)
    torch.manual_seed(6)
    c = generate(model, tok, PROMPTS, **kw)
    assert a[0].seed == b[0].seed != c[0].seed
    assert _ids(a) == _ids(b) != _ids(c)


def _naive_argmax(model, tok, ids: list[int], pos: int) -> int:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, pos].clone()
    logits[sorted(_banned_ids(tok))] = float("-inf")
    return int(logits.argmax())


def test_greedy_left_to_right_equals_a_naive_argmax_loop(mlm):
    model, tok = mlm
    outs = generate(
        model, tok, PROMPTS, num_masks=3, suffix="!", strategy="left-to-right", temperature=0
    )
    for o in outs:
        ids = _expected_ids(tok, o.prompt, 3, "!")
        while tok.mask_token_id in ids:
            j = ids.index(tok.mask_token_id)
            ids[j] = _naive_argmax(model, tok, ids, j)
        assert o.input_ids == ids


def test_greedy_mask_predict_single_iteration_equals_one_argmax_pass(mlm):
    model, tok = mlm
    outs = generate(model, tok, PROMPTS, num_masks=3, strategy="mask-predict", iterations=1,
                    temperature=0)  # fmt: skip
    for o in outs:
        ids = _expected_ids(tok, o.prompt, 3)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logits[:, sorted(_banned_ids(tok))] = float("-inf")
        want = [int(logits[j].argmax()) if t == tok.mask_token_id else t for j, t in enumerate(ids)]
        assert o.input_ids == want


class _MaskCounter:
    """Records the input ids of every forward pass of the encoder."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self.handle = model.bert.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(kwargs["input_ids"].clone())

    def masks_per_call(self, mask_id):
        return [int((ids == mask_id).sum()) for ids in self.calls]


def test_mask_predict_remasks_the_least_confident_per_schedule(mlm):
    model, tok = mlm
    prompt = "the movie was"
    counter = _MaskCounter(model)
    try:
        out = generate(model, tok, [prompt], num_masks=5, strategy="mask-predict", iterations=4,
                       temperature=0, score=False)[0]  # fmt: skip
    finally:
        counter.handle.remove()
    # n * (T - t) // T re-masked for t = 1..T-1: 5*3//4, 5*2//4, 5*1//4.
    assert counter.masks_per_call(tok.mask_token_id) == [5, 3, 2, 1]
    # Round 1 re-masks the 3 slots whose first argmax had the lowest probability.
    ids = _expected_ids(tok, prompt, 5)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logits[:, sorted(_banned_ids(tok))] = float("-inf")
    probs = logits.softmax(-1).max(-1).values
    slots = out.mask_positions
    least = sorted(sorted(slots, key=lambda j: float(probs[j]))[:3])
    remasked = (counter.calls[1][0] == tok.mask_token_id).nonzero().squeeze(1).tolist()
    assert remasked == least


def test_left_to_right_and_gibbs_schedules(mlm):
    model, tok = mlm
    counter = _MaskCounter(model)
    try:
        generate(model, tok, ["the movie was"], num_masks=5, strategy="left-to-right", score=False)
        l2r = counter.masks_per_call(tok.mask_token_id)
        counter.calls.clear()
        generate(model, tok, ["the movie was"], num_masks=5, strategy="gibbs", iterations=2,
                 block_size=2, score=False)  # fmt: skip
        gibbs = counter.masks_per_call(tok.mask_token_id)
    finally:
        counter.handle.remove()
    assert l2r == [5, 4, 3, 2, 1]
    # A left-to-right fill, then 2 sweeps over blocks of 2, 2 and 1 slots.
    assert gibbs == [5, 4, 3, 2, 1] + [2, 2, 1] * 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_top_k_1_equals_greedy(mlm, strategy):
    model, tok = mlm
    kw = dict(num_masks=3, strategy=strategy, iterations=3, score=False)
    greedy = generate(model, tok, PROMPTS, temperature=0, **kw)
    top1 = generate(model, tok, PROMPTS, temperature=2.0, top_k=1, seed=9, **kw)
    assert _ids(top1) == _ids(greedy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batched_equals_one_by_one(mlm, strategy):
    model, tok = mlm
    kw = dict(num_masks=3, strategy=strategy, iterations=3, temperature=1.0, seed=11,
              num_samples=2)  # fmt: skip
    batched = generate(model, tok, PROMPTS, batch_size=6, **kw)
    one_by_one = generate(model, tok, PROMPTS, batch_size=1, **kw)
    pairs = generate(model, tok, PROMPTS, batch_size=4, **kw)
    assert _ids(batched) == _ids(one_by_one) == _ids(pairs)
    for a, b in zip(batched, one_by_one, strict=True):
        assert a.pseudo_log_likelihood == pytest.approx(b.pseudo_log_likelihood, abs=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_matches_cpu(model_dir, strategy):
    """The uniforms come from CPU generators on either device, so outputs agree."""
    cpu_model, tok = load_mlm(model_dir)
    cuda_model, _ = load_mlm(model_dir, device="cuda")
    kw = dict(num_masks=3, strategy=strategy, iterations=3, seed=5, num_samples=2, top_k=50)
    for temperature in (0.0, 1.0):
        a = generate(cpu_model, tok, PROMPTS, temperature=temperature, **kw)
        b = generate(cuda_model, tok, PROMPTS, temperature=temperature, **kw)
        assert _ids(a) == _ids(b)
        for x, y in zip(a, b, strict=True):
            assert x.pseudo_log_likelihood == pytest.approx(y.pseudo_log_likelihood, abs=1e-2)


def _naive_pll(model, tok, ids: list[int]) -> float:
    total = 0.0
    for j, t in enumerate(ids):
        if t in tok.all_special_ids:
            continue
        masked = list(ids)
        masked[j] = tok.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0, j]
        total += float(logits.log_softmax(-1)[t])
    return total


def test_pll_equals_a_naive_one_token_at_a_time_computation(mlm):
    model, tok = mlm
    texts = ["the movie was great .", "a b", "an utterly forgettable film about nothing"]
    got = pseudo_log_likelihood(model, tok, texts, batch_size=3)
    want = [_naive_pll(model, tok, tok(t)["input_ids"]) for t in texts]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-3)
    assert all(v <= 0 for v in got)
    ids = [tok(t)["input_ids"] for t in texts]
    assert pseudo_log_likelihood(model, tok, ids, batch_size=100) == pytest.approx(got, abs=1e-3)
    assert pseudo_log_likelihood(model, tok, texts[0]) == pytest.approx(got[:1], abs=1e-3)
    # generate's score is the PLL of exactly the ids it returns.
    out = generate(model, tok, ["the movie was"], num_masks=2, seed=0)[0]
    assert out.pseudo_log_likelihood == pytest.approx(
        _naive_pll(model, tok, out.input_ids), rel=1e-5, abs=1e-3
    )


def test_any_masked_lm_directory_works(tok, tmp_path):
    """A non-BERT MLM (DistilBERT) goes through the generic full-logits path."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    cfg = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64)  # fmt: skip
    DistilBertForMaskedLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = load_mlm(tmp_path)
    texts = ["the movie was great .", "so"]
    want = [_naive_pll(model, tok2, tok2(t)["input_ids"]) for t in texts]
    assert pseudo_log_likelihood(model, tok2, texts, batch_size=4) == pytest.approx(
        want, rel=1e-5, abs=1e-3
    )
    outs = generate(str(tmp_path), None, PROMPTS, num_masks=2, seed=0, iterations=2)
    banned = _banned_ids(tok2)
    assert all(not banned & set(o.filled_ids) and len(o.filled_ids) >= 2 for o in outs)


def test_cli_end_to_end(model_dir, mlm, tmp_path, capsys):
    from mlmfast.cli import main

    model, tok = mlm
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a [MASK] day\n\nthe end of the\n")
    out_json = tmp_path / "out.json"
    argv = ["generate", "--model", model_dir, "--prompt", "the movie was", "--prompts-file",
            str(prompts_file), "--num-masks", "2", "--strategy", "left-to-right",
            "--num-samples", "2", "--seed", "4", "--device", "cpu", "--json", str(out_json),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    record = json.loads(out_json.read_text())
    prompts = ["the movie was", "a [MASK] day", "the end of the"]
    assert record["settings"]["seed"] == 4 and record["settings"]["strategy"] == "left-to-right"
    assert record["settings"]["num_samples"] == 2 and record["settings"]["iterations"] == 1
    outputs = record["outputs"]
    assert [(o["prompt_index"], o["sample_index"]) for o in outputs] == [
        (p, s) for p in range(3) for s in range(2)
    ]
    assert [o["prompt"] for o in outputs] == [p for p in prompts for _ in range(2)]
    api = generate(model, tok, prompts, num_masks=2, strategy="left-to-right", num_samples=2,
                   seed=4)  # fmt: skip
    assert [o["input_ids"] for o in outputs] == _ids(api)
    assert [o["text"] for o in outputs] == [a.text for a in api]
    assert all(o["pseudo_log_likelihood"] <= 0 for o in outputs)
    assert len(printed) == 6
    for line, o in zip(printed, outputs, strict=True):
        assert "PLL" in line and line.endswith(o["text"])
        assert f"{o['pseudo_log_likelihood']:.3f}" in line


def test_cli_errors_exit_2_with_a_message(model_dir, tmp_path, capsys):
    from mlmfast.cli import main

    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x [MASK]"]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["generate", "--model", model_dir, "--prompt", "no slots"]) == 2
    assert "num_masks" in capsys.readouterr().err
    assert main(["generate", "--model", model_dir]) == 2
    assert "--prompt" in capsys.readouterr().err
    argv = ["generate", "--model", model_dir, "--prompt", "a", "--num-masks", "1"]
    assert main([*argv, "--top-k", "-1"]) == 2
    assert "top_k" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(strategy="beam"), "strategy"),
        (dict(num_masks=-1), "num_masks"),
        (dict(iterations=0), "iterations"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(num_samples=0), "num_samples"),
        (dict(batch_size=0), "batch_size"),
        (dict(block_size=0), "block_size"),
        (dict(num_masks=0), "num_masks"),  # the prompt has no [MASK]
    ],
)
def test_option_errors_name_the_argument(mlm, kwargs, name):
    model, tok = mlm
    kw = dict(num_masks=2) | kwargs
    with pytest.raises(ValueError, match=name):
        generate(model, tok, ["no slots here"], **kw)


def test_prompt_errors(mlm):
    model, tok = mlm
    with pytest.raises(ValueError, match=r"prompts\[1\] 'plain' has no \[MASK\]"):
        generate(model, tok, ["a [MASK]", "plain"])
    with pytest.raises(ValueError, match=r"prompts\[0\].*at most 64"):
        generate(model, tok, ["word " * 70], num_masks=1)
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        generate(model, tok, [123], num_masks=1)
    with pytest.raises(ValueError, match="batch_size"):
        pseudo_log_likelihood(model, tok, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, None, ["a"], num_masks=1)


def test_load_errors_name_what_is_missing(tok, tmp_path):
    from transformers import BertForMaskedLM, BertModel

    with pytest.raises(FileNotFoundError, match="model: .* is not a directory"):
        load_mlm(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model: .* is not a directory"):
        generate(str(tmp_path / "missing"), None, ["a [MASK]"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_mlm(tmp_path / "empty")

    cfg = _tiny_config(tok)
    encoder = tmp_path / "encoder"
    BertModel(cfg).save_pretrained(encoder)
    tok.save_pretrained(encoder)
    with pytest.raises(ValueError, match="no MLM head weights"):
        load_mlm(encoder)

    bare = tmp_path / "bare"
    BertForMaskedLM(cfg).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_mlm(bare)
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    for given in (tok, str(tok_dir)):
        model, tok2 = load_mlm(bare, tokenizer=given)
        assert len(tok2) == len(tok) and not model.training
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_mlm(bare, tokenizer=str(tmp_path / "nowhere"))


def test_a_trained_model_fills_the_slot_it_learned(tok):
    """Eighty steps on three sentences teach the tiny model to fill their blanks."""
    from transformers import BertForMaskedLM

    sentences = ["the sky is blue .", "the grass is green .", "the snow is white ."]
    rows = [tok(s)["input_ids"] for s in sentences]
    # Every single-token masking of every sentence: one batch of equal-length rows.
    inputs, cols, targets = [], [], []
    for ids in rows:
        for j in range(1, len(ids) - 1):
            masked = list(ids)
            masked[j] = tok.mask_token_id
            inputs.append(masked)
            cols.append(j)
            targets.append(ids[j])
    inputs, cols, targets = torch.tensor(inputs), torch.tensor(cols), torch.tensor(targets)
    cfg = _tiny_config(
        tok, initializer_range=0.1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForMaskedLM(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(80):
            hidden = model.bert(input_ids=inputs).last_hidden_state
            logits = model.cls(hidden[torch.arange(len(cols)), cols])
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
    assert float(loss.detach().max()) < 0.1
    templates = ["the grass is [MASK] .", "the [MASK] is white .", "the sky [MASK] blue ."]
    for strategy in STRATEGIES:
        outs = generate(model, tok, templates, strategy=strategy, temperature=0)
        assert [o.text for o in outs] == [
            "the grass is green.",
            "the snow is white.",
            "the sky is blue.",
        ]
