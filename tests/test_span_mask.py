"""mask_tokens(mode="span"): SpanBERT span masking (csrc/span_mask.h, mirrored in
mlmfast/reference.py).

The reference is tested for the rule's properties (span lengths, budget, runs, whole words, the
80/10/10 per span, invariances), statistically where the property is random: fixed seeds, and
tolerances that are sound (p-value > 1e-3 under the exact expected distribution). The op (CPU,
and CUDA where a GPU exists) must equal the reference bit for bit in every form.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cuda_emulated import (
    DEVICE_LIMITS,
    emu,  # noqa: F401  (the fixture)
)
from test_cuda_emulated import check as check_emulated
from test_mask_tokens import (
    BERT,
    CLS,
    HYPOTHESIS,
    MASK,
    PAD,
    SEP,
    SPECIALS,
    VOCAB,
    assert_same,
    bert_batch,
    binom_ok,
    chisquare_ok,
    eligible_of,
    exact_k,
    oracle,
    runs_word_ids,
)

import mlmfast
from mlmfast import reference
from mlmfast.ops import _args, span_length_thresholds

SPAN = {**BERT, "mode": "span"}


def length_probs(cdf: list[int]) -> list[float]:
    """P(length = l), l = 1 .. len(cdf) + 1, of the op's draw against the threshold table."""
    edges = [0, *cdf, 1 << 32]
    return [(b - a) / 2**32 for a, b in zip(edges[:-1], edges[1:], strict=True)]


def logged(ids, **kwargs):
    """The reference's output and its per-row span log."""
    log: list = []
    out = reference.mask_tokens(ids, span_log=log, **kwargs)
    return out, log


def word_rows(B, L, *, seed, p_new=0.6):
    """A BERT batch with word ids over its non-special tokens."""
    ids, att = bert_batch(B, L, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    words = runs_word_ids(eligible_of(ids, att), g, p_new=p_new)
    return ids, att, words


# ---- the length table ---------------------------------------------------------------------------


class TestLengthTable:
    def test_spanbert_default(self):
        cdf = span_length_thresholds()
        assert len(cdf) == 9
        q = Fraction(0.2)
        total = 1 - (1 - q) ** 10
        for j, t in enumerate(cdf):  # exact floor(F(j + 1) * 2^32)
            assert t == int((1 - (1 - q) ** (j + 1)) / total * 2**32)
        mean = sum((i + 1) * p for i, p in enumerate(length_probs(cdf)))
        exact = sum((i + 1) * q * (1 - q) ** i for i in range(10)) / total
        assert abs(mean - float(exact)) < 1e-8
        assert round(mean, 1) == 3.8  # SpanBERT's mean span length

    def test_weights(self):
        assert span_length_thresholds(span_lengths=[1, 1]) == [1 << 31]
        assert span_length_thresholds(span_lengths=[0, 1, 0]) == [0]  # always 2
        assert span_length_thresholds(span_lengths=[5]) == []
        assert span_length_thresholds(span_p=1.0) == []  # always 1
        assert all(t < 1 << 32 for t in span_length_thresholds(span_p=0.9, span_max=64))

    @pytest.mark.parametrize(
        "kwargs, name",
        [
            ({"span_p": 0.0}, "span_p"),
            ({"span_p": float("nan")}, "span_p"),
            ({"span_p": 1.5}, "span_p"),
            ({"span_max": 0}, "span_max"),
            ({"span_max": 65}, "span_max"),
            ({"span_max": 2.5}, "span_max"),
            ({"span_lengths": []}, "span_lengths"),
            ({"span_lengths": [1, -1]}, "span_lengths"),
            ({"span_lengths": [0, 0]}, "span_lengths"),
            ({"span_lengths": [float("inf")]}, "span_lengths"),
            ({"span_lengths": [1] * 65}, "span_lengths"),
            ({"span_lengths": "ab"}, "span_lengths"),
        ],
    )
    def test_bad_arguments(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            span_length_thresholds(**kwargs)
        ids, att = bert_batch(2, 16, seed=1)
        with pytest.raises(ValueError, match=name):
            mlmfast.mask_tokens(ids, attention_mask=att, seed=1, **SPAN, **kwargs)


# ---- the rule, on the reference -------------------------------------------------------------------


class TestReferenceRule:
    def test_first_span_lengths(self):
        """The first accepted span of a row of W single-token words, budget >= span_max: attempts
        are independent until one is accepted, and an attempt of length l is accepted with
        probability (W - l + 1) / W, so P(l) is proportional to g(l) (W - l + 1) exactly."""
        B, L, W = 600, 34, 32
        ids, att = bert_batch(B, L, seed=3, ragged=False)
        kwargs = {**SPAN, "attention_mask": att, "mlm_probability": 0.35, "seed": 7}
        _, log = logged(ids, **kwargs)
        counts = torch.zeros(10)
        for row in log:
            assert row["budget"] >= 10
            _, words, tokens, truncated = row["spans"][0]
            assert not truncated and words == tokens
            counts[words - 1] += 1
        g = length_probs(span_length_thresholds())
        chisquare_ok(counts, [g[i] * (W - i) for i in range(10)])

    def test_first_span_lengths_megatron_weights(self):
        B, L, W = 400, 34, 32
        ids, att = bert_batch(B, L, seed=4, ragged=False)
        weights = [1, 1 / 2, 1 / 3]
        kwargs = {**SPAN, "attention_mask": att, "seed": 8, "span_lengths": weights}
        _, log = logged(ids, **kwargs)
        counts = torch.zeros(3)
        for row in log:
            counts[row["spans"][0][1] - 1] += 1
        g = length_probs(span_length_thresholds(span_lengths=weights))
        chisquare_ok(counts, [g[i] * (W - i) for i in range(3)])

    @pytest.mark.parametrize("p", [0.15, 0.3])
    def test_budget_met_runs_and_whole_words(self, p):
        """Every row masks exactly round(p x eligible) tokens; every span is whole words inside
        one run of eligible tokens; spans do not overlap."""
        ids, att, words = word_rows(64, 96, seed=11)
        ids[5, 20:24] = SEP  # a few specials inside rows: runs end there
        ids[9, 3::7] = CLS
        eligible = eligible_of(ids, att)
        words = torch.where(eligible, words, torch.full_like(words, -1))
        out, log = logged(
            ids, attention_mask=att, word_ids=words, mlm_probability=p, seed=12, **SPAN
        )
        selected = out.labels != -100
        k = exact_k(eligible.sum(1), p)
        assert torch.equal(selected.sum(1), k)
        assert not (selected & ~eligible).any()
        for b, row in enumerate(log):
            assert row["masked"] == int(k[b]) == row["budget"]
            cover = torch.zeros(ids.shape[1], dtype=torch.long)
            for first, _, tokens, _ in row["spans"]:
                assert eligible[b, first : first + tokens].all()  # one run
                cover[first : first + tokens] += 1
                # whole words: the span starts and ends at word boundaries
                w = words[b]
                if first > 0 and w[first] >= 0:
                    assert w[first - 1] != w[first] or not eligible[b, first - 1]
                end = first + tokens
                if end < ids.shape[1] and w[end - 1] >= 0:
                    assert w[end] != w[end - 1] or not eligible[b, end]
            assert cover.max() <= 1
            assert torch.equal(cover.bool(), selected[b])

    def test_attempt_bound(self):
        """Rows made of single eligible tokens between specials: only length-1 draws fit, the
        attempt bound 64 + 16 k holds, and the row ends with at most k tokens."""
        L = 40
        ids = torch.full((30, L), SEP)
        ids[:, 1::2] = torch.randint(1000, 2000, (30, L // 2), generator=torch.Generator())
        out, log = logged(ids, mlm_probability=0.9, seed=5, **SPAN)
        for b, row in enumerate(log):
            assert row["attempts"] <= 64 + 16 * row["budget"]
            assert all(words == 1 for _, words, _, _ in row["spans"])
            assert row["masked"] <= row["budget"]
            assert int((out.labels[b] != -100).sum()) == row["masked"]

    def test_per_span_replacement(self):
        """One 80/10/10 decision per span: a span is all [MASK] or has none; the shares of
        spans follow the split."""
        ids, att = bert_batch(400, 64, seed=21, ragged=False)
        out, log = logged(ids, attention_mask=att, mlm_probability=0.3, seed=22, **SPAN)
        n = masked = kept = 0
        for b, row in enumerate(log):
            for first, _, tokens, _ in row["spans"]:
                got = out.input_ids[b, first : first + tokens]
                orig = ids[b, first : first + tokens]
                is_mask = got == MASK
                assert is_mask.all() or not is_mask.any()
                n += 1
                masked += int(is_mask.all())
                kept += int(torch.equal(got, orig))
                assert not torch.isin(got[~is_mask], torch.tensor(SPECIALS)).any()
        binom_ok(masked, n, 0.8)
        # a random span equals its original only with probability ~tokens / vocab: ignored here
        # is the chance of it, below 1e-3 of the spans
        binom_ok(kept, n, 0.1)

    def test_per_token_replacement(self):
        ids, att = bert_batch(200, 64, seed=23, ragged=False)
        kwargs = {"attention_mask": att, "mlm_probability": 0.3, "seed": 24, **SPAN}
        out, log = logged(ids, span_replace="token", **kwargs)
        selected = out.labels != -100
        binom_ok(int((out.input_ids[selected] == MASK).sum()), int(selected.sum()), 0.8)
        mixed = 0
        for b, row in enumerate(log):
            for first, _, tokens, _ in row["spans"]:
                is_mask = out.input_ids[b, first : first + tokens] == MASK
                mixed += int(is_mask.any() and not is_mask.all())
        assert mixed > 0
        # same spans as per span: the replacement draws do not move the selection
        other = reference.mask_tokens(ids, **kwargs)
        assert torch.equal(other.labels, out.labels)

    def test_batch_padding_and_epoch_invariance(self):
        ids, att, words = word_rows(12, 48, seed=31)
        sids = torch.arange(100, 112)
        kw = {"mlm_probability": 0.2, "seed": 32, **SPAN}
        full = reference.mask_tokens(ids, attention_mask=att, word_ids=words, sample_ids=sids, **kw)
        part = reference.mask_tokens(
            ids[5:9], attention_mask=att[5:9], word_ids=words[5:9], sample_ids=sids[5:9], **kw
        )
        assert torch.equal(part.labels, full.labels[5:9])
        assert torch.equal(part.input_ids, full.input_ids[5:9])
        # left padding: the same row, shifted
        lengths = att.sum(1)
        for b in range(12):
            n = int(lengths[b])
            left_ids = torch.cat([torch.full((48 - n,), PAD), ids[b, :n]]).unsqueeze(0)
            left_att = torch.cat([torch.zeros(48 - n, dtype=torch.long), att[b, :n]]).unsqueeze(0)
            left_w = torch.cat([torch.full((48 - n,), -1), words[b, :n]]).unsqueeze(0)
            left = reference.mask_tokens(
                left_ids, attention_mask=left_att, word_ids=left_w, sample_ids=sids[b : b + 1], **kw
            )
            assert torch.equal(left.labels[0, 48 - n :], full.labels[b, :n])
            assert torch.equal(left.input_ids[0, 48 - n :], full.input_ids[b, :n])
        other = reference.mask_tokens(
            ids, attention_mask=att, word_ids=words, sample_ids=sids, epoch=1, **kw
        )
        assert not torch.equal(other.labels, full.labels)


# ---- the op equals the reference ------------------------------------------------------------------


@st.composite
def span_cases(draw, max_batch=5, max_length=60):
    B = draw(st.integers(0, max_batch))
    L = draw(st.integers(0, max_length))
    seed = draw(st.integers(0, 2**32))
    ids, att = (
        bert_batch(B, L, seed=seed % 2**31, vocab_size=200)
        if L
        else (
            torch.zeros(B, 0, dtype=torch.long),
            torch.zeros(B, 0, dtype=torch.long),
        )
    )
    kwargs = {
        "mask_token_id": 3,
        "vocab_size": 200,
        "special_ids": draw(
            st.sampled_from([(PAD, 1, 2, 3), (PAD, 3), (), (PAD, 1, 2, 3, *range(10, 200, 19))])
        ),
        "mode": "span",
        "seed": draw(st.integers(-(2**63), 2**64 - 1)),
        "epoch": draw(st.integers(0, 5)),
        "mlm_probability": draw(st.sampled_from([0.0, 0.05, 0.15, 0.4, 1.0])),
        "span_replace": draw(st.sampled_from(["span", "token"])),
    }
    split = draw(st.sampled_from([(0.8, 0.1), (1.0, 0.0), (0.0, 0.0), (0.5, 0.5), (0.0, 1.0)]))
    kwargs["mask_replace_prob"], kwargs["random_replace_prob"] = split
    ids = torch.where(ids >= 200, ids % 200, ids)
    ids[(ids == CLS % 200) | (ids == SEP % 200)] = 1
    choice = draw(st.sampled_from(["geometric", "weights", "short"]))
    if choice == "geometric":
        kwargs["span_p"] = draw(st.sampled_from([0.2, 0.5, 1.0]))
        kwargs["span_max"] = draw(st.integers(1, 12))
    elif choice == "weights":
        kwargs["span_lengths"] = [1, 1 / 2, 1 / 3]
    if draw(st.booleans()) and L:
        kwargs["attention_mask"] = att
    if draw(st.booleans()) and L:
        g = torch.Generator().manual_seed(seed % 2**31)
        kwargs["word_ids"] = runs_word_ids(
            torch.rand(B, L, generator=g) < 0.8, g, p_new=draw(st.sampled_from([0.3, 0.9]))
        )
    if draw(st.booleans()) and L:
        kwargs["special_tokens_mask"] = (torch.rand(B, L) < 0.1).long()
    if draw(st.booleans()) and B:
        kwargs["sample_ids"] = torch.randint(-(2**62), 2**62, (B,))
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    return ids.to(dtype), kwargs


def run_form(device, ids, kwargs, form):
    ids = ids.to(device)
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if form == "out":
        return mlmfast.mask_tokens(ids, **kw)
    if form == "inplace":
        out, labels = ids.clone(), torch.empty_like(ids)
        mlmfast.mask_tokens_(out, labels, **kw)
        return mlmfast.MaskOutput(out, labels)
    out = torch.empty(ids.shape, dtype=torch.int64, device=device)
    labels = torch.empty_like(out)
    mlmfast.mask_tokens_into(ids, out, labels, **kw)
    return mlmfast.MaskOutput(out, labels)


def widened(want, form):
    if form != "widen":
        return want
    return mlmfast.MaskOutput(want.input_ids.long(), want.labels.long())


class TestOpMatchesReference:
    @settings(max_examples=150, **HYPOTHESIS)
    @given(case=span_cases(), form=st.sampled_from(["out", "inplace", "widen"]))
    def test_bit_equal(self, device, case, form):
        ids, kwargs = case
        want = oracle(ids, **kwargs)
        got = run_form(device, ids, kwargs, form)
        assert_same(got, widened(want, form))

    def test_realistic_batch(self, device):
        ids, att, words = word_rows(32, 256, seed=41)
        kwargs = {"attention_mask": att, "word_ids": words, "seed": 42, **SPAN}
        assert_same(
            mlmfast.mask_tokens(
                ids.to(device),
                **{
                    k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
                },
            ),
            oracle(ids, **kwargs),
        )

    def test_thread_count(self):
        ids, att, words = word_rows(64, 128, seed=43)
        kwargs = {"attention_mask": att, "word_ids": words, "seed": 44, **SPAN}
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = mlmfast.mask_tokens(ids, **kwargs)
            torch.set_num_threads(max(2, threads))
            many = mlmfast.mask_tokens(ids, **kwargs)
        finally:
            torch.set_num_threads(threads)
        assert_same(one, many)

    def test_return_positions(self):
        ids, att = bert_batch(4, 40, seed=45)
        out = mlmfast.mask_tokens(ids, attention_mask=att, seed=1, return_positions=True, **SPAN)
        assert torch.equal(out.positions, torch.nonzero(out.labels.reshape(-1) != -100)[:, 0])


# ---- the CUDA kernel through the CPU emulation (tests/cuda_emu) ---------------------------------


@settings(max_examples=100, **HYPOTHESIS)
@given(case=span_cases(max_batch=4), form=st.sampled_from(["out", "inplace", "widen"]))
def test_emulated_cuda_matches_reference(emu, case, form):  # noqa: F811
    ids, kwargs = case
    check_emulated(emu, ids, kwargs, form if form != "widen" or ids.dtype == torch.int32 else "out")


def test_emulated_cuda_many_blocks_long_rows_rng_state(emu):  # noqa: F811
    """More rows than a block's 128 threads, left padding, long rows, the device rng_state."""
    ids, att, words = word_rows(300, 40, seed=51)
    kwargs = {"attention_mask": att, "word_ids": words, "seed": 52, **SPAN}
    check_emulated(emu, ids, kwargs)
    check_emulated(emu, ids.int(), kwargs, "widen")
    shifts = (40 - att.sum(1)).tolist()
    left = {
        "attention_mask": torch.stack([r.roll(s) for r, s in zip(att, shifts, strict=True)]),
        "word_ids": torch.stack([r.roll(s) for r, s in zip(words, shifts, strict=True)]),
    }
    left_ids = torch.stack([r.roll(s) for r, s in zip(ids, shifts, strict=True)])
    check_emulated(emu, left_ids, {**kwargs, **left}, "inplace")
    ids, att, words = word_rows(2, 3000, seed=53)
    check_emulated(emu, ids, {"attention_mask": att, "word_ids": words, "seed": 54, **SPAN})
    ids, att = bert_batch(4, 40, seed=55)
    state = torch.tensor([2**62 + 7, 11])
    check_emulated(emu, ids, {"attention_mask": att, "rng_state": state, **SPAN})
    for shape in ((0, 5), (3, 0)):
        check_emulated(emu, torch.empty(shape, dtype=torch.int64), SPAN)


def test_emulated_cuda_global_scratch(emu):  # noqa: F811
    """Rows whose working memory does not fit in shared memory use a global scratch buffer:
    forced here (no shared memory at all), with rows shorter and longer than a block."""
    emu.set_limits(DEVICE_LIMITS[0], 0)
    try:
        for L in (1, 40, 700):
            ids, att, words = word_rows(3, L, seed=L)
            kwargs = {"attention_mask": att, "word_ids": words, "seed": 56, **SPAN}
            check_emulated(emu, ids, kwargs)
            check_emulated(emu, ids.int(), {**kwargs, "span_replace": "token"}, "widen")
    finally:
        emu.set_limits(*DEVICE_LIMITS)


def test_compile_fullgraph(device):
    """mode="span" traces under torch.compile(fullgraph=True): the length table is a constant."""
    torch._dynamo.reset()

    def fn(ids, attention_mask, word_ids):
        return mlmfast.mask_tokens(
            ids, attention_mask=attention_mask, word_ids=word_ids, seed=9, span_max=6, **SPAN
        )

    ids, att, words = word_rows(4, 50, seed=61)
    ids, att, words = ids.to(device), att.to(device), words.to(device)
    assert_same(torch.compile(fn, fullgraph=True)(ids, att, words), fn(ids, att, words))


class TestOpErrors:
    def test_pos_ids_refused(self):
        ids, att = bert_batch(2, 16, seed=1)
        with pytest.raises(ValueError, match="pos_ids"):
            mlmfast.mask_tokens(
                ids, pos_ids=torch.zeros_like(ids, dtype=torch.uint8), pos_probs=[0.1], **SPAN
            )

    def test_span_replace(self):
        ids, _ = bert_batch(2, 16, seed=1)
        with pytest.raises(ValueError, match="span_replace"):
            mlmfast.mask_tokens(ids, span_replace="word", **SPAN)

    def test_schema_checks(self):
        ids, _ = bert_batch(2, 16, seed=1)
        args = list(_args(ids, {**SPAN, "seed": 1}))
        assert args[-2] == span_length_thresholds() and args[-1] is False
        bad = list(args)
        bad[-2] = [5, 3]
        with pytest.raises(ValueError, match="non-decreasing"):
            torch.ops.mlmfast.mask_tokens(ids, *bad)
        bad[-2] = [0] * 64
        with pytest.raises(ValueError, match="at most 63"):
            torch.ops.mlmfast.mask_tokens(ids, *bad)
        bad = list(args)
        bad[-4] = True  # exact
        with pytest.raises(ValueError, match="exact"):
            torch.ops.mlmfast.mask_tokens(ids, *bad)

    def test_ids_outside_vocabulary(self):
        ids, att = bert_batch(2, 16, seed=1)
        ids[1, 4] = VOCAB + 5
        with pytest.raises(RuntimeError, match=r"input_ids\[1, 4\]"):
            mlmfast.mask_tokens(ids, attention_mask=att, seed=1, **SPAN)
        before = ids.clone()
        with pytest.raises(RuntimeError, match="left unchanged"):
            mlmfast.mask_tokens_(ids, torch.empty_like(ids), attention_mask=att, seed=1, **SPAN)
        assert torch.equal(ids, before)

    def test_opcheck(self):
        ids, att, words = word_rows(3, 20, seed=2)
        for kw in ({}, {"word_ids": words}, {"span_replace": "token"}):
            args = _args(ids, {**SPAN, "attention_mask": att, "seed": 5, **kw})
            torch.library.opcheck(torch.ops.mlmfast.mask_tokens.default, (ids, *args))
            out, labels = ids.clone(), torch.empty_like(ids)
            torch.library.opcheck(torch.ops.mlmfast.mask_tokens_.default, (out, labels, *args))
