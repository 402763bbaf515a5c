"""Tests of the fused masking op ``mlmfast.mask_tokens`` (and its in-place form).

In the style of pytorch/extension-cpp's test_extension.py: ``sample_inputs`` builds inputs, one
class per concern. Every test that can run on a GPU takes the ``device`` fixture (conftest.py):
on a CUDA machine the CUDA output is compared bit for bit with the CPU op and with the
pure-PyTorch reference (mlmfast/reference.py), which is the oracle of the rule in masking.h.

Statistical tests use fixed seeds, so they are deterministic; their tolerances are sound
(p-value > 1e-3 under the exact expected distribution), not tuned to the seeds.
"""

from __future__ import annotations

import pytest
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlmfast
from mlmfast import reference

ONE = 1 << 32  # threshold of probability 1
P_VALUE = 1e-3

# A BERT-like vocabulary for the realistic cases.
VOCAB = 30522
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
BERT = {"mask_token_id": MASK, "vocab_size": VOCAB, "special_ids": SPECIALS}
MODES = ["bernoulli", "exact"]

# `mlm_probability`-style thresholds, as masking.h computes them.
threshold = reference.threshold_of

# The function-scoped fixtures (device, RNG state) are harmless to share across examples.
HYPOTHESIS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


# ---- helpers ----------------------------------------------------------------------------------


def on(device: str, kwargs: dict) -> dict:
    """kwargs with every tensor moved to `device`."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def assert_same(got, want) -> None:
    """Bit equality of two MaskOutputs (values and dtypes), wherever they live."""
    assert got.input_ids.dtype == want.input_ids.dtype
    assert got.labels.dtype == want.labels.dtype
    torch.testing.assert_close(got.input_ids.cpu(), want.input_ids.cpu(), rtol=0, atol=0)
    torch.testing.assert_close(got.labels.cpu(), want.labels.cpu(), rtol=0, atol=0)


def oracle(input_ids: torch.Tensor, **kwargs):
    """reference.mask_tokens on one thread: its many small elementwise ops gain nothing from
    intra-op threads and, on a loaded machine, lose a lot to thread synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return reference.mask_tokens(input_ids.cpu(), **on("cpu", kwargs))
    finally:
        torch.set_num_threads(threads)


def run_op(device: str, input_ids: torch.Tensor, **kwargs):
    """The op on `device`. Every call is also checked against the reference (the oracle is cheap
    next to the statistics drawn from it), and on a GPU against the CPU op, bit for bit."""
    got = mlmfast.mask_tokens(input_ids.to(device), **on(device, kwargs))
    assert_same(got, oracle(input_ids, **kwargs))
    if device != "cpu":
        assert got.input_ids.device.type == torch.device(device).type
        assert_same(got, mlmfast.mask_tokens(input_ids.cpu(), **on("cpu", kwargs)))
    return MaskResult(input_ids, got.input_ids.cpu(), got.labels.cpu())


class MaskResult:
    """Inputs and outputs of a call, on the CPU, with the selection spelled out."""

    def __init__(self, ids, out, labels):
        self.ids, self.out, self.labels = ids.cpu(), out, labels
        self.selected = labels != -100

    def check_labels(self) -> None:
        assert torch.equal(self.labels[self.selected], self.ids[self.selected])
        assert torch.equal(self.out[~self.selected], self.ids[~self.selected])


def bert_batch(
    batch: int,
    length: int,
    *,
    seed: int,
    vocab_size: int = VOCAB,
    min_len: int = 3,
    ragged: bool = True,
):
    """[CLS] tokens [SEP] [PAD]...: int64 ids and the attention mask, right padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length), generator=g)
    lengths = (
        torch.randint(min(min_len, length), length + 1, (batch,), generator=g)
        if ragged
        else torch.full((batch,), length)
    )
    pos = torch.arange(length).expand(batch, length)
    lengths_ = lengths.unsqueeze(1)
    attended = pos < lengths_
    ids[pos == 0] = CLS
    ids[(pos == lengths_ - 1) & (lengths_ > 1)] = SEP
    ids[~attended] = PAD
    return ids, attended.long()


def eligible_of(ids, attention_mask=None, special_ids=SPECIALS, special_tokens_mask=None):
    eligible = ~torch.isin(ids, torch.tensor(list(special_ids), dtype=ids.dtype))
    if attention_mask is not None:
        eligible &= attention_mask.cpu() != 0
    if special_tokens_mask is not None:
        eligible &= special_tokens_mask.cpu() == 0
    return eligible


def runs_word_ids(word_mask: torch.Tensor, g: torch.Generator, *, p_new=0.6, restart_at=None):
    """Sorted runs of word ids over `word_mask` (-1 elsewhere): each word token starts a new
    word with probability p_new. With `restart_at` the numbering starts again from 0 at that
    column, like the second sentence of a pair (the same word id twice in a row)."""
    starts = (torch.rand(word_mask.shape, generator=g) < p_new) & word_mask
    prev = torch.zeros_like(word_mask)
    prev[:, 1:] = word_mask[:, :-1]
    starts |= word_mask & ~prev
    if restart_at is not None and restart_at < word_mask.shape[1]:
        starts[:, restart_at] = word_mask[:, restart_at]
    wid = starts.long().cumsum(1) - 1
    if restart_at is not None and restart_at < word_mask.shape[1]:
        wid[:, restart_at:] -= starts[:, :restart_at].long().sum(1, keepdim=True)
    return torch.where(word_mask, wid, torch.full_like(wid, -1))


def exact_k(n_eligible: torch.Tensor, p: float) -> torch.Tensor:
    """The exact-mode budget of masking.h: round-half-up of n * floor(p * 2^32) / 2^32, at least
    1 when a token is eligible and p > 0."""
    t = threshold(p)
    k = (n_eligible * t + (ONE >> 1)) >> 32
    return torch.where((k == 0) & (n_eligible > 0) & (t > 0), torch.ones_like(k), k)


def word_groups(word_ids: torch.Tensor, eligible: torch.Tensor):
    """(key of each eligible word token, number of keys): a key per (row, word id)."""
    B = word_ids.shape[0]
    in_word = eligible & (word_ids >= 0)
    width = int(word_ids.max()) + 1 if word_ids.numel() else 1
    key = torch.arange(B).unsqueeze(1) * width + word_ids.clamp(min=0)
    return key[in_word], in_word, B * width


def assert_whole_words(word_ids, eligible, selected):
    """Every word is selected entirely or not at all. Returns (words, selected words)."""
    keys, in_word, n_keys = word_groups(word_ids, eligible)
    size = torch.bincount(keys, minlength=n_keys)
    hit = torch.bincount(keys, weights=selected[in_word].double(), minlength=n_keys).long()
    present = size > 0
    assert torch.all((hit[present] == 0) | (hit[present] == size[present]))
    return int(present.sum()), int((hit[present] > 0).sum())


def binom_ok(k: int, n: int, p: float) -> None:
    pvalue = scipy.stats.binomtest(k, n, p).pvalue
    assert pvalue > P_VALUE, (
        f"{k}/{n} = {k / max(n, 1):.5f}, expected {p:.5f} (p-value {pvalue:.2e})"
    )


def chisquare_ok(observed: torch.Tensor, expected_probs) -> None:
    obs = observed.double()
    exp = torch.as_tensor(expected_probs, dtype=torch.float64)
    exp = exp / exp.sum() * obs.sum()
    pvalue = scipy.stats.chisquare(obs.numpy(), exp.numpy()).pvalue
    assert pvalue > P_VALUE, f"chi-square p-value {pvalue:.2e}: observed {obs.tolist()}"


def schema_args(input_ids, **kw):
    """Positional arguments of torch.ops.mlmfast.mask_tokens in schema order (after ids)."""
    return (
        kw.get("attention_mask"),
        kw.get("special_tokens_mask"),
        kw.get("word_ids"),
        kw.get("pos_ids"),
        kw.get("pos_probs"),
        kw.get("sample_ids"),
        kw.get("rng_state"),
        list(kw.get("special_ids", SPECIALS)),
        kw.get("mlm_probability", 0.15),
        kw.get("mask_replace_prob", 0.8),
        kw.get("random_replace_prob", 0.1),
        kw.get("mask_token_id", MASK),
        kw.get("vocab_size", VOCAB),
        kw.get("seed", 1234),
        kw.get("epoch", 0),
        kw.get("exact", False),
        kw.get("exclude_special_from_random", True),
    )


def sample_inputs(device: str) -> list[tuple]:
    """A few (input_ids, kwargs) pairs covering the optional inputs, for opcheck and compile."""
    ids, att = bert_batch(4, 24, seed=0)
    g = torch.Generator().manual_seed(1)
    eligible = eligible_of(ids, att)
    words = runs_word_ids(eligible, g)
    pos = torch.randint(0, 17, ids.shape, generator=g, dtype=torch.uint8)
    samples = [
        (ids, {}),
        (ids.int(), {"attention_mask": att, "exact": True, "seed": -5, "epoch": 3}),
        (
            ids,
            {
                "attention_mask": att.bool(),
                "special_tokens_mask": (ids == CLS).to(torch.uint8),
                "word_ids": words,
                "pos_ids": pos,
                "pos_probs": [0.0, 1.0] + [0.2] * 15,
                "sample_ids": torch.tensor([7, -3, 2**40, 0]),
                "mlm_probability": 0.3,
            },
        ),
        (
            ids,
            {
                "attention_mask": att,
                "word_ids": words.int(),
                "rng_state": torch.tensor([2**62 + 7, 11]),
                "exact": True,
                "mask_replace_prob": 0.5,
                "random_replace_prob": 0.5,
                "exclude_special_from_random": False,
            },
        ),
        (torch.empty(0, 5, dtype=torch.int64), {}),
        (torch.empty(3, 0, dtype=torch.int64), {"exact": True}),
    ]
    return [(i.to(device), on(device, kw)) for i, kw in samples]


# ---- hypothesis: arbitrary batches ------------------------------------------------------------

SPLITS = [(0.8, 0.1), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.5, 0.5)]
probabilities = st.sampled_from([0.0, 0.15, 1.0]) | st.floats(0.0, 1.0)


@st.composite
def mask_cases(draw, max_batch=6, min_length=0, max_length=70):
    """(input_ids, kwargs of mask_tokens) for a small random batch with every optional input."""
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    B = draw(st.integers(0, max_batch))
    L = draw(st.integers(min_length, max_length))
    # Small vocabularies make random replacements land on (and skip) special ids often.
    vocab_size = draw(st.sampled_from([7, 12, 64, 1000, VOCAB]))
    low = list(range(min(vocab_size, 12)))
    specials = draw(
        st.lists(st.sampled_from([*low, vocab_size // 2, vocab_size - 1]), max_size=5, unique=True)
    )
    mask_token_id = draw(
        st.sampled_from(specials)
        if specials and draw(st.booleans())
        else st.integers(0, vocab_size - 1)
    )
    pad_id = specials[0] if specials else 0
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))

    ids = torch.randint(0, vocab_size, (B, L), generator=g)
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    if B and draw(st.booleans()):
        lengths[0] = L  # a full row
    col = torch.arange(L).expand(B, L)
    use_attention = draw(st.booleans())
    left = use_attention and draw(st.booleans())
    start = (L - lengths).unsqueeze(1) if left else torch.zeros(B, 1, dtype=torch.long)
    content = (col >= start) & (col < start + lengths.unsqueeze(1))
    if specials:
        # [CLS] ... [SEP]-like specials around and inside the content.
        ids[col == start] = specials[-1]
        sprinkle = torch.rand(B, L, generator=g) < 0.1
        ids[sprinkle] = torch.tensor(specials)[
            torch.randint(0, len(specials), (B, L), generator=g)
        ][sprinkle]
    pad_value = -1 if use_attention and draw(st.booleans()) else pad_id  # unattended: not checked
    ids[~content] = pad_value

    kw = {
        "mask_token_id": mask_token_id,
        "vocab_size": vocab_size,
        "special_ids": specials,
        "seed": draw(st.integers(-(2**63), 2**64 - 1)),
        "epoch": draw(st.integers(0, 2**32 - 1)),
        "mode": draw(st.sampled_from(["bernoulli", "exact"])),
        "mlm_probability": draw(probabilities),
        "exclude_special_from_random": draw(st.booleans()),
    }
    kw["mask_replace_prob"], kw["random_replace_prob"] = draw(st.sampled_from(SPLITS))
    if use_attention:
        att = content.clone()
        if draw(st.booleans()):  # occasional holes inside the attended span
            att &= torch.rand(B, L, generator=g) > 0.05
        kw["attention_mask"] = att.to(
            draw(st.sampled_from([torch.bool, torch.uint8, torch.int32, torch.int64]))
        )
    if draw(st.booleans()):
        stm = torch.isin(ids, torch.tensor(specials, dtype=torch.long)) | (
            torch.rand(B, L, generator=g) < 0.05
        )
        kw["special_tokens_mask"] = stm.to(
            draw(st.sampled_from([torch.bool, torch.uint8, torch.int64]))
        )
    word_ids = None
    if draw(st.booleans()):
        restart_at = draw(st.none() | st.integers(0, max(L - 1, 0)))
        word_mask = content & ~torch.isin(ids, torch.tensor(specials, dtype=torch.long))
        word_ids = runs_word_ids(
            word_mask, g, p_new=draw(st.sampled_from([0.3, 0.7, 1.0])), restart_at=restart_at
        )
        kw["word_ids"] = word_ids.to(draw(st.sampled_from([torch.int64, torch.int32])))
    if draw(st.booleans()):
        n_pos = draw(st.integers(1, 17))
        kw["pos_probs"] = draw(st.lists(probabilities, min_size=n_pos, max_size=n_pos))
        pos = torch.randint(0, n_pos, (B, L), generator=g)
        if word_ids is not None and draw(st.booleans()):  # one class per word, as documented
            width = int(word_ids.max()) + 1 if word_ids.numel() else 1
            per_word = torch.randint(0, n_pos, (B, max(width, 1)), generator=g)
            pos = torch.where(word_ids >= 0, per_word.gather(1, word_ids.clamp(min=0)), pos)
        kw["pos_ids"] = pos.to(torch.uint8)
    if draw(st.booleans()):
        kw["sample_ids"] = torch.randint(-(2**63), 2**63 - 1, (B,), generator=g)
    if draw(st.integers(0, 3)) == 0:
        # The tensor form of (seed, epoch), read by the kernel; it overrides the arguments.
        seed = kw["seed"]
        kw["rng_state"] = torch.tensor([seed - 2**64 if seed >= 2**63 else seed, kw["epoch"]])
        kw["seed"], kw["epoch"] = draw(st.integers(0, 2**63 - 1)), 0
    return ids.to(dtype), kw


class TestMatchesReference:
    """The op is bit-identical to mlmfast/reference.py (and, on a GPU, to the CPU op)."""

    @settings(max_examples=150, **HYPOTHESIS)
    @given(case=mask_cases())
    def test_bit_equal(self, device, case):
        ids, kw = case
        want = oracle(ids, **kw)
        got = mlmfast.mask_tokens(ids.to(device), **on(device, kw))
        assert got.input_ids.shape == ids.shape
        assert_same(got, want)
        if device != "cpu":
            assert_same(got, mlmfast.mask_tokens(ids, **kw))

    @settings(max_examples=30, **HYPOTHESIS)
    @given(case=mask_cases(max_batch=3, min_length=200, max_length=1100))
    def test_bit_equal_long_rows(self, device, case):
        # Rows spanning several of the CPU kernel's 256-token chunks (and CUDA's 512-token blocks).
        ids, kw = case
        assert_same(mlmfast.mask_tokens(ids.to(device), **on(device, kw)), oracle(ids, **kw))

    @pytest.mark.parametrize("length", [255, 257, 513, 1030])
    @pytest.mark.parametrize("padding", ["none", "right", "left"])
    @pytest.mark.parametrize("mode", MODES)
    def test_plain_long_rows(self, device, length, padding, mode):
        # The plain path (no words, POS or special_tokens_mask) over several chunks/blocks.
        ids, att = bert_batch(6, length, seed=length, min_len=length // 3)
        if padding == "left":
            idx = (torch.arange(length) - (length - att.sum(1, keepdim=True))) % length
            ids, att = ids.gather(1, idx), att.gather(1, idx)
        kw = {**BERT, "mlm_probability": 0.4, "seed": 2**63 + length, "epoch": 7, "mode": mode}
        if padding != "none":
            kw["attention_mask"] = att
        for dtype in (torch.int64, torch.int32):
            run_op(device, ids.to(dtype), **kw)  # checks the reference and the CPU op
            run_op(device, ids.to(dtype), **kw, sample_ids=torch.arange(6) * (2**40 + 1))

    @settings(max_examples=60, **HYPOTHESIS)
    @given(case=mask_cases())
    def test_inplace_and_positions(self, device, case):
        ids, kw = case
        ids = ids.to(device)
        kw = on(device, kw)
        out = mlmfast.mask_tokens(ids, return_positions=True, **kw)
        masked, labels = ids.clone(), torch.empty_like(ids)
        mlmfast.mask_tokens_(masked, labels, **kw)
        assert_same(mlmfast.MaskOutput(masked, labels), out)
        # out= form: into fresh outputs of the ids' dtype, into int64 ones (int32 ids widened,
        # same values), and into the ids themselves (in place)
        wide = torch.int64
        for dtype in {ids.dtype, wide}:
            o = torch.full_like(ids, -7, dtype=dtype)
            lab = torch.full_like(ids, -7, dtype=dtype)
            mlmfast.mask_tokens_into(ids, o, lab, **kw)
            assert o.dtype == lab.dtype == dtype
            assert_same(
                mlmfast.MaskOutput(o, lab), mlmfast.MaskOutput(*(t.to(dtype) for t in out[:2]))
            )
        masked2, labels2 = ids.clone(), torch.empty_like(ids)
        mlmfast.mask_tokens_into(masked2, masked2, labels2, **kw)
        assert_same(mlmfast.MaskOutput(masked2, labels2), out)
        want_positions = torch.nonzero(out.labels.reshape(-1) != -100).squeeze(1)
        assert out.positions.dtype == torch.int64
        assert torch.equal(out.positions.cpu(), want_positions.cpu())

    @pytest.mark.parametrize("exclude", [True, False])
    def test_random_pool_with_scattered_specials(self, device, exclude):
        # Every selected token becomes a random id: the j-th id of the vocabulary without the
        # specials, which sit at both ends and in the middle here.
        vocab, specials = 16, (0, 5, 6, 15)
        ids = torch.tensor([i for i in range(vocab) if i not in specials]).repeat(64, 4)
        kw = {
            "mask_token_id": 5,
            "vocab_size": vocab,
            "special_ids": specials,
            "mlm_probability": 1.0,
            "mask_replace_prob": 0.0,
            "random_replace_prob": 1.0,
            "exclude_special_from_random": exclude,
            "seed": 3,
        }
        got = run_op(device, ids, **kw)  # run_op checks the reference
        drawn = torch.bincount(got.out.flatten(), minlength=vocab)
        is_special = torch.isin(torch.arange(vocab), torch.tensor(specials))
        assert torch.all(drawn[~is_special] > 0)
        assert torch.all(drawn[is_special] == 0) if exclude else torch.all(drawn[is_special] > 0)

    @pytest.mark.parametrize("mode", MODES)
    def test_edge_values(self, device, mode):
        g = torch.Generator().manual_seed(7)
        # The largest vocabulary (2^32 - 1) with specials spread over it.
        ids = torch.randint(0, 2**32 - 1, (4, 50), generator=g)
        kw = {
            "mask_token_id": 5,
            "vocab_size": 2**32 - 1,
            "special_ids": [0, 2**31, 2**32 - 2],
            "mlm_probability": 0.5,
            "mask_replace_prob": 0.0,
            "random_replace_prob": 1.0,
            "seed": 3,
            "mode": mode,
        }
        assert run_op(device, ids, **kw).selected.any()  # run_op checks the reference
        # Any negative word id means "no word"; 64 POS classes (the most); masks holding 2s.
        ids = torch.randint(0, 100, (4, 50), generator=g)
        kw = {
            "mask_token_id": 5,
            "vocab_size": 100,
            "special_ids": [0, 5],
            "seed": 4,
            "mode": mode,
            "word_ids": torch.randint(-5, 6, (4, 50), generator=g),
            "pos_ids": torch.randint(0, 64, (4, 50), generator=g, dtype=torch.uint8),
            "pos_probs": [i / 63 for i in range(64)],
            "attention_mask": torch.randint(0, 3, (4, 50), generator=g),
            "special_tokens_mask": torch.randint(0, 3, (4, 50), generator=g) * 2,
        }
        assert run_op(device, ids, **kw).selected.any()

    @pytest.mark.parametrize("mode", MODES)
    def test_realistic_batch(self, device, mode):
        """A BERT-sized batch with whole words and POS: the bigger sibling of the property."""
        ids, att = bert_batch(16, 128, seed=3)
        g = torch.Generator().manual_seed(4)
        words = runs_word_ids(eligible_of(ids, att), g)
        kw = {
            **BERT,
            "attention_mask": att,
            "word_ids": words,
            "pos_ids": torch.randint(0, 17, ids.shape, generator=g, dtype=torch.uint8),
            "pos_probs": [i / 16 for i in range(17)],
            "sample_ids": torch.arange(100, 116),
            "seed": 99,
            "epoch": 2,
            "mode": mode,
        }
        got = run_op(device, ids, **kw)  # run_op checks the reference
        assert got.selected.any()

    def test_one_dimensional_input(self, device):
        ids, att = bert_batch(1, 40, seed=5)
        kw = {**BERT, "seed": 8}
        row = mlmfast.mask_tokens(ids[0].to(device), attention_mask=att[0].to(device), **kw)
        batch = mlmfast.mask_tokens(ids.to(device), attention_mask=att.to(device), **kw)
        assert row.input_ids.shape == (40,)
        assert torch.equal(row.input_ids, batch.input_ids[0])
        assert torch.equal(row.labels, batch.labels[0])

    def test_non_contiguous_inputs(self, device):
        ids, att = bert_batch(32, 16, seed=6)
        ids_t, att_t = ids.t().contiguous().to(device).t(), att.t().contiguous().to(device).t()
        assert not ids_t.is_contiguous()
        kw = {**BERT, "seed": 9}
        got = mlmfast.mask_tokens(ids_t, attention_mask=att_t, mlm_probability=0.5, **kw)
        want = mlmfast.mask_tokens(ids, attention_mask=att, mlm_probability=0.5, **kw)
        assert_same(got, want)


# ---- the selection rule, deterministic consequences --------------------------------------------


class TestSelectionRule:
    @pytest.mark.parametrize("mode", MODES)
    def test_probability_one_selects_every_eligible_token(self, device, mode):
        ids, att = bert_batch(64, 48, seed=10)
        stm = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(11)) < 0.1).long()
        r = run_op(
            device,
            ids,
            **BERT,
            attention_mask=att,
            special_tokens_mask=stm,
            mlm_probability=1.0,
            seed=12,
            mode=mode,
        )
        eligible = eligible_of(ids, att, special_tokens_mask=stm)
        assert torch.equal(r.selected, eligible)
        r.check_labels()

    @pytest.mark.parametrize("mode", MODES)
    def test_probability_zero_selects_nothing(self, device, mode):
        ids, att = bert_batch(16, 32, seed=13)
        r = run_op(device, ids, **BERT, attention_mask=att, mlm_probability=0.0, seed=1, mode=mode)
        assert not r.selected.any()
        assert torch.equal(r.out, ids)

    @pytest.mark.parametrize("mode", MODES)
    def test_specials_and_padding_never_selected(self, device, mode):
        ids, att = bert_batch(128, 64, seed=14)
        # Unattended positions hold a non-special id: the attention mask alone excludes them.
        ids[att == 0] = 7
        r = run_op(device, ids, **BERT, attention_mask=att, mlm_probability=0.9, seed=15, mode=mode)
        assert r.selected.any()
        assert not r.selected[~eligible_of(ids, att)].any()
        assert torch.equal(r.out[att == 0], ids[att == 0])
        r.check_labels()

    @pytest.mark.parametrize(
        ("split", "expect"), [((1.0, 0.0), "mask"), ((0.0, 0.0), "keep"), ((0.0, 1.0), "random")]
    )
    def test_degenerate_splits(self, device, split, expect):
        ids, att = bert_batch(32, 64, seed=16)
        r = run_op(
            device,
            ids,
            **BERT,
            attention_mask=att,
            mlm_probability=0.5,
            mask_replace_prob=split[0],
            random_replace_prob=split[1],
            seed=17,
        )
        sel = r.selected
        assert sel.any()
        if expect == "mask":
            assert torch.all(r.out[sel] == MASK)
        elif expect == "keep":
            assert torch.equal(r.out, ids)
        else:
            assert not torch.isin(r.out[sel], torch.tensor(SPECIALS)).any()
            # A random id equals the original with probability 1/30517 per token.
            assert (r.out[sel] != ids[sel]).float().mean() > 0.99
        r.check_labels()

    def test_labels_dtype_follows_ids(self, device):
        ids, att = bert_batch(4, 16, seed=18)
        for dtype in (torch.int32, torch.int64):
            out = mlmfast.mask_tokens(
                ids.to(device, dtype),
                attention_mask=att.to(device),
                mask_token_id=MASK,
                vocab_size=VOCAB,
                seed=1,
            )
            assert out.input_ids.dtype == dtype and out.labels.dtype == dtype
            assert out.input_ids.device == out.labels.device == ids.to(device).device


# ---- statistics --------------------------------------------------------------------------------


class TestStatistics:
    @pytest.mark.parametrize("p", [0.15, 0.6])
    def test_mask_rate(self, device, p):
        ids, att = bert_batch(512, 256, seed=20)
        r = run_op(device, ids, **BERT, attention_mask=att, mlm_probability=p, seed=21)
        eligible = eligible_of(ids, att)
        assert not r.selected[~eligible].any()
        binom_ok(int(r.selected.sum()), int(eligible.sum()), threshold(p) / ONE)

    @pytest.mark.parametrize("mode", MODES)
    def test_no_position_bias(self, device, mode):
        # Full rows without specials: every position is equally likely to be selected, so the
        # (position x selected) table is independent (the four-lane draw blocks, the exact-mode
        # tie-break by position, must not favour any position).
        g = torch.Generator().manual_seed(22)
        ids = torch.randint(200, VOCAB, (2048, 64), generator=g)
        r = run_op(device, ids, **BERT, mlm_probability=0.25, seed=23, mode=mode)
        rows, n = ids.shape
        # Known per-token probability q: Bernoulli cells are independent Binomial(rows, q), so the
        # statistic is chi2(n). In exact mode each row is a uniform k-subset of its n positions,
        # q = k/n, the column sums are fixed and the statistic is n/(n-1) * chi2(n-1).
        if mode == "bernoulli":
            q, dof, scale = threshold(0.25) / ONE, n, 1.0
        else:
            q, dof, scale = int(exact_k(torch.tensor(n), 0.25)) / n, n - 1, n / (n - 1)
            assert torch.all(r.selected.sum(1) == q * n)
        hits = r.selected.sum(0).double()
        stat = float(((hits - rows * q) ** 2).sum() / (rows * q * (1 - q)))
        pvalue = scipy.stats.chi2.sf(stat / scale, dof)
        assert pvalue > P_VALUE, f"position bias: chi-square p-value {pvalue:.2e}"

    @pytest.mark.parametrize("split", [(0.8, 0.1), (0.5, 0.3)])
    def test_replacement_split(self, device, split):
        ids, att = bert_batch(256, 256, seed=24)
        pm, pr = split
        r = run_op(
            device,
            ids,
            **BERT,
            attention_mask=att,
            mlm_probability=1.0,
            mask_replace_prob=pm,
            random_replace_prob=pr,
            seed=25,
        )
        orig, new = ids[r.selected], r.out[r.selected]
        masked = new == MASK
        kept = new == orig
        random = ~masked & ~kept
        counts = torch.stack([masked.sum(), random.sum(), kept.sum()])
        # A random draw hits the original id with probability 1 / (vocabulary without specials).
        n_pool = VOCAB - len(SPECIALS)
        pm, pr = threshold(pm) / ONE, threshold(pr) / ONE
        chisquare_ok(counts, [pm, pr * (1 - 1 / n_pool), 1 - pm - pr + pr / n_pool])

    def test_random_replacements_uniform_without_specials(self, device):
        vocab, specials = 64, (0, 1, 2, 3)
        ids = torch.randint(4, vocab, (256, 256), generator=torch.Generator().manual_seed(26))
        r = run_op(
            device,
            ids,
            mask_token_id=3,
            vocab_size=vocab,
            special_ids=specials,
            mlm_probability=1.0,
            mask_replace_prob=0.0,
            random_replace_prob=1.0,
            seed=27,
        )
        assert r.selected.all()
        counts = torch.bincount(r.out.flatten(), minlength=vocab)
        assert counts[:4].sum() == 0, "a special id was drawn although excluded"
        chisquare_ok(counts[4:], [1.0] * 60)

    def test_random_replacements_with_specials_hf_behaviour(self, device):
        vocab, specials = 64, (0, 1, 2, 3)
        ids = torch.randint(4, vocab, (256, 256), generator=torch.Generator().manual_seed(28))
        r = run_op(
            device,
            ids,
            mask_token_id=3,
            vocab_size=vocab,
            special_ids=specials,
            mlm_probability=1.0,
            mask_replace_prob=0.0,
            random_replace_prob=1.0,
            exclude_special_from_random=False,
            seed=29,
        )
        counts = torch.bincount(r.out.flatten(), minlength=vocab)
        assert torch.all(counts[:4] > 0), (
            "special ids never drawn with exclude_special_from_random=False"
        )
        chisquare_ok(counts, [1.0] * vocab)

    def test_pos_class_rates(self, device):
        probs = [0.0, 1.0, 0.01, 0.05, 0.15, 1 / 3, 0.95, 0.99] + [i / 10 for i in range(1, 10)]
        ids, att = bert_batch(512, 256, seed=30)
        g = torch.Generator().manual_seed(31)
        pos = torch.randint(0, len(probs), ids.shape, generator=g, dtype=torch.uint8)
        r = run_op(
            device,
            ids,
            **BERT,
            attention_mask=att,
            pos_ids=pos,
            pos_probs=probs,
            mlm_probability=0.15,
            seed=32,
        )
        eligible = eligible_of(ids, att)
        for c, p in enumerate(probs):
            in_class = eligible & (pos == c)
            k, n = int(r.selected[in_class].sum()), int(in_class.sum())
            if p in (0.0, 1.0):
                assert k == n * p, f"class {c} (p={p}): {k}/{n}"
            else:
                binom_ok(k, n, threshold(p) / ONE)
        assert not r.selected[~eligible].any()

    @pytest.mark.parametrize("p", [0.15, 0.5])
    def test_whole_word_rate(self, device, p):
        ids, att = bert_batch(512, 256, seed=33)
        eligible = eligible_of(ids, att)
        words = runs_word_ids(eligible, torch.Generator().manual_seed(34), restart_at=128)
        r = run_op(
            device, ids, **BERT, attention_mask=att, word_ids=words, mlm_probability=p, seed=35
        )
        n_words, n_hit = assert_whole_words(words, eligible, r.selected)
        binom_ok(n_hit, n_words, threshold(p) / ONE)

    def test_whole_word_with_pos(self, device):
        probs = [0.0, 0.1, 0.3, 0.6, 1.0]
        ids, att = bert_batch(512, 256, seed=36)
        eligible = eligible_of(ids, att)
        g = torch.Generator().manual_seed(37)
        words = runs_word_ids(eligible, g)
        per_word = torch.randint(0, len(probs), (ids.shape[0], int(words.max()) + 1), generator=g)
        pos = torch.where(words >= 0, per_word.gather(1, words.clamp(min=0)), 0).to(torch.uint8)
        r = run_op(
            device,
            ids,
            **BERT,
            attention_mask=att,
            word_ids=words,
            pos_ids=pos,
            pos_probs=probs,
            seed=38,
        )
        assert_whole_words(words, eligible, r.selected)
        for c, p in enumerate(probs):
            n_words, n_hit = assert_whole_words(words, eligible & (pos == c), r.selected)
            if p in (0.0, 1.0):
                assert n_hit == n_words * p
            else:
                binom_ok(n_hit, n_words, threshold(p) / ONE)


# ---- exact mode -------------------------------------------------------------------------------


class TestExactMode:
    @pytest.mark.parametrize("p", [0.15, 0.01, 0.5, 0.999, 1 / 3])
    def test_exact_count_per_row(self, device, p):
        ids, att = bert_batch(256, 96, seed=40, min_len=0)
        r = run_op(
            device, ids, **BERT, attention_mask=att, mlm_probability=p, seed=41, mode="exact"
        )
        n_eligible = eligible_of(ids, att).sum(1)
        assert (n_eligible == 0).any() and (n_eligible > 50).any()
        assert torch.equal(r.selected.sum(1), exact_k(n_eligible, p))
        assert not r.selected[~eligible_of(ids, att)].any()
        r.check_labels()

    def test_budget_formula_examples(self):
        # Round half up of n * floor(p * 2^32) / 2^32, at least one. 0.5 * 3 = 1.5 -> 2, but
        # 0.15 * 10 -> 1: the double 0.15 and the floored threshold are a hair below 0.15, so the
        # product is a hair below 1.5. 0.15 * 3 = 0.45 -> 0 -> at least 1; nothing eligible -> 0.
        assert exact_k(torch.tensor([3, 1, 0]), 0.5).tolist() == [2, 1, 0]
        assert exact_k(torch.tensor([10, 3, 100, 0]), 0.15).tolist() == [1, 1, 15, 0]
        assert exact_k(torch.tensor([20, 2**20]), 0.01).tolist() == [1, 10486]
        assert exact_k(torch.tensor([20]), 0.0).tolist() == [0]

    def test_budget_matches_op_on_edge_rows(self, device):
        # Rows of n eligible tokens (n = 0..40) for probabilities whose n * p hits .5 exactly.
        n_max = 40
        ids = torch.full((n_max + 1, n_max), 7)
        att = (torch.arange(n_max).unsqueeze(0) < torch.arange(n_max + 1).unsqueeze(1)).long()
        for p in (0.5, 0.25, 0.125, 0.15, 0.1, 0.9, 1 / 3):
            r = run_op(
                device, ids, **BERT, attention_mask=att, mlm_probability=p, seed=48, mode="exact"
            )
            assert torch.equal(r.selected.sum(1), exact_k(att.sum(1), p)), p

    @pytest.mark.parametrize("p", [0.15, 0.05, 0.5])
    def test_exact_whole_words(self, device, p):
        ids, att = bert_batch(256, 96, seed=42, min_len=0)
        eligible = eligible_of(ids, att)
        words = runs_word_ids(eligible, torch.Generator().manual_seed(43), p_new=0.4)
        r = run_op(
            device,
            ids,
            **BERT,
            attention_mask=att,
            word_ids=words,
            mlm_probability=p,
            seed=44,
            mode="exact",
        )
        assert_whole_words(words, eligible, r.selected)
        n_eligible = eligible.sum(1)
        k = exact_k(n_eligible, p)
        count = r.selected.sum(1)
        assert torch.all(count[n_eligible > 0] >= 1)
        assert torch.all(count[n_eligible == 0] == 0)
        # Whole words are taken while they fit in the budget k. When even the best-ranked word
        # does not fit (every word is longer than k), masking.h takes that one word alone.
        for b in torch.nonzero(count > k).flatten().tolist():
            row_words = words[b][eligible[b]]
            sizes = torch.bincount(row_words)
            sizes = sizes[sizes > 0]
            chosen = torch.unique(words[b][r.selected[b]])
            assert chosen.numel() == 1 and int(sizes.min()) > int(k[b]), (
                f"row {b}: {count[b]} > k={k[b]}"
            )
        assert (count == k).any()

    @pytest.mark.parametrize("layout", ["regular", "lone", "cut", "restart", "long_words"])
    @pytest.mark.parametrize("p", [0.15, 0.02, 0.6])
    def test_exact_word_layouts(self, device, layout, p):
        # The CPU's exact-with-words rows take a linear path when every word is one run of
        # eligible tokens in increasing id order, and the general one otherwise; both must be
        # the reference bit for bit. Rows span several 256-token chunks.
        ids, att = bert_batch(24, 700, seed=7, min_len=0)
        eligible = eligible_of(ids, att)
        g = torch.Generator().manual_seed(8)
        words = runs_word_ids(
            eligible,
            g,
            p_new=0.05 if layout == "long_words" else 0.6,
            restart_at=350 if layout == "restart" else None,
        )
        if layout == "lone":  # eligible tokens outside any word
            words[torch.rand(words.shape, generator=g) < 0.2] = -1
        if layout == "cut":  # a word interrupted by an unattended token comes back
            att = att.clone()
            att[:, 301] = 0
            att[:, 5] = 0
        kw = {**BERT, "attention_mask": att, "mlm_probability": p, "mode": "exact", "seed": 9}
        for w in (words, words.to(torch.int32)):
            run_op(device, ids, word_ids=w, **kw)
            run_op(device, ids.to(torch.int32), word_ids=w, sample_ids=torch.arange(24) * 3, **kw)

    def test_exact_with_pos(self, device):
        probs = [0.0, 0.05, 0.15, 0.4, 1.0, 0.7]
        ids, att = bert_batch(256, 96, seed=45, min_len=0)
        pos = torch.randint(
            0, len(probs), ids.shape, generator=torch.Generator().manual_seed(46), dtype=torch.uint8
        )
        r = run_op(
            device,
            ids,
            **BERT,
            attention_mask=att,
            pos_ids=pos,
            pos_probs=probs,
            seed=47,
            mode="exact",
        )
        eligible = eligible_of(ids, att)
        t = torch.tensor([threshold(p) for p in probs])[pos.long()]
        tsum = torch.where(eligible, t, 0).sum(1)
        any_positive = (eligible & (t > 0)).any(1)
        want = (tsum + (ONE >> 1)) >> 32
        want = torch.where((want == 0) & any_positive, 1, want)
        assert torch.equal(r.selected.sum(1), want)
        assert not r.selected[pos == 0].any()  # class probability 0 is never selected


# ---- invariance: the mask is a function of (seed, epoch, sample id, tokens) --------------------


def rich_kwargs(ids, att, *, seed=50, mode="bernoulli", g_seed=51):
    """Whole words + POS + sample ids: the full counter addressing."""
    g = torch.Generator().manual_seed(g_seed)
    eligible = eligible_of(ids, att)
    words = runs_word_ids(eligible, g, restart_at=ids.shape[1] // 2)
    pos = torch.randint(0, 4, ids.shape, generator=g, dtype=torch.uint8)
    return {
        **BERT,
        "attention_mask": att,
        "word_ids": words,
        "pos_ids": pos,
        "pos_probs": [0.1, 0.2, 0.3, 0.5],
        "seed": seed,
        "epoch": 1,
        "mode": mode,
    }


def take_rows(kwargs: dict, rows: torch.Tensor) -> dict:
    return {
        k: v[rows] if isinstance(v, torch.Tensor) and k != "rng_state" else v
        for k, v in kwargs.items()
    }


class TestInvariance:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("rich", [False, True], ids=["plain", "words+pos"])
    def test_batch_composition(self, device, mode, rich):
        ids, att = bert_batch(12, 40, seed=52)
        kw = (
            rich_kwargs(ids, att, mode=mode)
            if rich
            else {**BERT, "attention_mask": att, "seed": 53, "mode": mode, "mlm_probability": 0.3}
        )
        sample_ids = torch.arange(1000, 1012) * 7919
        full = run_op(device, ids, sample_ids=sample_ids, **kw)
        # Rows in another order, a subset, and in batches of one.
        for rows in (torch.arange(11, -1, -1), torch.tensor([5, 0, 9]), torch.tensor([3])):
            part = run_op(device, ids[rows], sample_ids=sample_ids[rows], **take_rows(kw, rows))
            assert torch.equal(part.out, full.out[rows])
            assert torch.equal(part.labels, full.labels[rows])

    def test_default_sample_ids_are_row_indices(self, device):
        ids, att = bert_batch(6, 32, seed=54)
        kw = rich_kwargs(ids, att)
        a = run_op(device, ids, **kw)
        b = run_op(device, ids, sample_ids=torch.arange(6), **kw)
        assert torch.equal(a.out, b.out) and torch.equal(a.labels, b.labels)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("with_attention", [True, False])
    def test_padded_length(self, device, mode, with_attention):
        ids, att = bert_batch(8, 30, seed=55)
        kw = rich_kwargs(ids, att, mode=mode)
        if not with_attention:
            kw.pop("attention_mask")  # [PAD] is special: padding is excluded all the same
        short = run_op(device, ids, **kw)
        extra = 97 - 30
        pad = {"input_ids": PAD, "attention_mask": 0, "word_ids": -1, "pos_ids": 0}
        long_kw = {
            k: torch.nn.functional.pad(v, (0, extra), value=pad[k]) if k in pad else v
            for k, v in kw.items()
        }
        long_ids = torch.nn.functional.pad(ids, (0, extra), value=PAD)
        long = run_op(device, long_ids, **long_kw)
        assert torch.equal(long.out[:, :30], short.out)
        assert torch.equal(long.labels[:, :30], short.labels)
        assert torch.equal(long.out[:, 30:], long_ids[:, 30:])
        assert not long.selected[:, 30:].any()

    @pytest.mark.parametrize("mode", MODES)
    def test_left_vs_right_padding(self, device, mode):
        right_ids, right_att = bert_batch(16, 48, seed=56)
        lengths = right_att.sum(1)
        shift = 48 - lengths
        # The same rows, left padded: roll each row right by its padding.
        idx = (torch.arange(48).unsqueeze(0) - shift.unsqueeze(1)) % 48
        left_ids, left_att = right_ids.gather(1, idx), right_att.gather(1, idx)
        assert torch.all(left_att[:, -1] == 1)
        kw = rich_kwargs(right_ids, right_att, mode=mode)
        left_kw = {
            **kw,
            "attention_mask": left_att,
            "word_ids": kw["word_ids"].gather(1, idx),
            "pos_ids": kw["pos_ids"].gather(1, idx),
        }
        right = run_op(device, right_ids, **kw)
        left = run_op(device, left_ids, **left_kw)
        assert torch.equal(left.out, right.out.gather(1, idx))
        assert torch.equal(left.labels, right.labels.gather(1, idx))
        assert right.selected.any()

    @pytest.mark.parametrize("mode", MODES)
    def test_thread_count(self, mode):
        # 256 rows of 128 tokens: several parallel chunks with 2 threads.
        ids, att = bert_batch(256, 128, seed=57)
        kw = rich_kwargs(ids, att, mode=mode)
        kw_plain = {**BERT, "attention_mask": att, "seed": 58, "mode": mode}
        threads = torch.get_num_threads()
        try:
            results = []
            for n in (1, 2):
                torch.set_num_threads(n)
                results.append(
                    (mlmfast.mask_tokens(ids, **kw), mlmfast.mask_tokens(ids, **kw_plain))
                )
        finally:
            torch.set_num_threads(threads)
        for a, b in zip(*results, strict=True):
            assert_same(a, b)

    @pytest.mark.parametrize("mode", MODES)
    def test_epoch_and_seed(self, device, mode):
        ids, att = bert_batch(32, 64, seed=59)
        kw = rich_kwargs(ids, att, mode=mode)
        base = run_op(device, ids, **kw)
        again = run_op(device, ids, **kw)
        assert torch.equal(base.out, again.out) and torch.equal(base.labels, again.labels)
        for change in ({"epoch": 2}, {"seed": kw["seed"] + 1}, {"seed": kw["seed"] + 2**32}):
            other = run_op(device, ids, **{**kw, **change})
            assert not torch.equal(other.selected, base.selected), change

    def test_rng_state_tensor(self, device):
        ids, att = bert_batch(8, 64, seed=60)
        kw = rich_kwargs(ids, att)
        for seed, epoch in ((0, 0), (12345, 7), (2**63 + 11, 2**32 - 1), (-3, 4)):
            signed = seed - 2**64 if seed >= 2**63 else seed
            state = torch.tensor([signed, epoch], dtype=torch.int64)
            # rng_state overrides the seed/epoch arguments.
            via_state = run_op(device, ids, **{**kw, "seed": 1, "epoch": 0}, rng_state=state)
            via_args = run_op(device, ids, **{**kw, "seed": seed, "epoch": epoch})
            assert torch.equal(via_state.out, via_args.out)
            assert torch.equal(via_state.labels, via_args.labels)

    def test_seed_is_64_bit(self, device):
        # seed and seed - 2^64 are the same 64 key bits.
        ids, att = bert_batch(8, 64, seed=61)
        kw = {
            "mask_token_id": MASK,
            "vocab_size": VOCAB,
            "attention_mask": att,
            "mlm_probability": 0.5,
        }
        a = run_op(device, ids, seed=2**64 - 5, **kw)
        b = run_op(device, ids, seed=-5, **kw)
        assert torch.equal(a.labels, b.labels)

    def test_seed_none_follows_torch_manual_seed(self, device):
        ids, att = bert_batch(8, 64, seed=62)
        kw = {**BERT, "attention_mask": att.to(device), "mlm_probability": 0.5}
        ids = ids.to(device)
        torch.manual_seed(0)
        a = mlmfast.mask_tokens(ids, **kw)
        torch.manual_seed(0)
        b = mlmfast.mask_tokens(ids, **kw)
        torch.manual_seed(0)
        c = mlmfast.mask_tokens(ids, seed=mlmfast.ops.draw_seed(), **kw)
        torch.manual_seed(1)
        d = mlmfast.mask_tokens(ids, **kw)
        assert_same(a, b)
        assert_same(a, c)
        assert not torch.equal(a.labels, d.labels)
        # Successive calls draw successive seeds.
        torch.manual_seed(0)
        first, second = mlmfast.mask_tokens(ids, **kw), mlmfast.mask_tokens(ids, **kw)
        assert not torch.equal(first.labels, second.labels)


# ---- argument checking ------------------------------------------------------------------------


def call(ids=None, **overrides):
    ids = bert_batch(2, 8, seed=70)[0] if ids is None else ids
    kw = {**BERT, "seed": 1}
    return mlmfast.mask_tokens(ids, **{**kw, **overrides})


class TestErrors:
    def test_ids_dtype(self):
        with pytest.raises(RuntimeError, match="input_ids must be int64 or int32"):
            call(torch.ones(2, 8))

    def test_ids_rank(self):
        with pytest.raises(RuntimeError, match="input_ids must be 2-D"):
            call(torch.ones(2, 3, 4, dtype=torch.long))

    def test_ids_not_a_tensor_inplace(self):
        with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
            mlmfast.mask_tokens_(
                [[1, 2, 3]], torch.empty(1, 3), mask_token_id=MASK, vocab_size=VOCAB
            )

    def test_ids_not_a_tensor(self):
        with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
            call([[1, 2, 3]])

    def test_attention_mask_shape(self):
        with pytest.raises(RuntimeError, match="attention_mask must have the shape of input_ids"):
            call(attention_mask=torch.ones(2, 7, dtype=torch.long))

    def test_attention_mask_dtype(self):
        with pytest.raises(RuntimeError, match="attention_mask must be"):
            call(attention_mask=torch.ones(2, 8))

    def test_special_tokens_mask_shape(self):
        with pytest.raises(RuntimeError, match="special_tokens_mask"):
            call(special_tokens_mask=torch.ones(8, dtype=torch.long))

    @pytest.mark.parametrize(
        "name", ["mlm_probability", "mask_replace_prob", "random_replace_prob"]
    )
    @pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf")])
    def test_probability_range(self, name, value):
        others = {"mask_replace_prob": 0.0, "random_replace_prob": 0.0}
        with pytest.raises(RuntimeError, match=f"{name} must be a probability in \\[0, 1\\]"):
            call(**{**others, name: value})

    def test_split_sum(self):
        with pytest.raises(
            RuntimeError, match=r"mask_replace_prob \+ random_replace_prob must be <= 1"
        ):
            call(mask_replace_prob=0.8, random_replace_prob=0.3)
        call(mask_replace_prob=0.8, random_replace_prob=0.2)  # 1.0000000000000002 is fine

    @pytest.mark.parametrize("vocab_size", [0, -5])
    def test_vocab_size(self, vocab_size):
        with pytest.raises(RuntimeError, match="vocab_size must be in"):
            call(vocab_size=vocab_size, special_ids=(), mask_token_id=0)

    def test_ids_outside_vocabulary(self):
        ids = bert_batch(3, 8, seed=71, ragged=False)[0]
        ids[1, 3] = VOCAB
        ids[2, 0] = -7
        with pytest.raises(
            RuntimeError, match=r"input_ids\[1, 3\] = 30522 is outside the vocabulary"
        ):
            call(ids)
        ids[1, 3] = 5
        with pytest.raises(RuntimeError, match=r"input_ids\[2, 0\] = -7 is outside the vocabulary"):
            call(ids, mode="exact", word_ids=torch.zeros_like(ids))

    @pytest.mark.parametrize("length", [8, 40])
    def test_flagged_ids_are_checked(self, length):
        # No attention mask: every token counts as attended, also the ones special_tokens_mask
        # flags after the last selectable token (the kernels draw no numbers for those).
        ids = bert_batch(3, length, seed=73, ragged=False)[0]
        ids[1, -1] = VOCAB + 3
        stm = torch.zeros_like(ids)
        stm[1, length // 2 :] = 1
        with pytest.raises(RuntimeError, match=rf"input_ids\[1, {length - 1}\] = 30525 is outside"):
            call(ids, special_tokens_mask=stm)

    def test_unattended_ids_are_not_checked(self):
        ids, att = bert_batch(3, 8, seed=72, ragged=False)
        ids[1, 3], att[1, 3] = -1, 0
        out = call(ids, attention_mask=att)
        assert out.input_ids[1, 3] == -1 and out.labels[1, 3] == -100

    @pytest.mark.parametrize("mask_token_id", [VOCAB, -1])
    def test_mask_token_id(self, mask_token_id):
        with pytest.raises(RuntimeError, match="mask_token_id must be in"):
            call(mask_token_id=mask_token_id)

    def test_special_ids_range(self):
        with pytest.raises(RuntimeError, match="special_ids must be in"):
            call(special_ids=(0, VOCAB))

    def test_all_special_vocabulary_with_random_replacement(self):
        with pytest.raises(RuntimeError, match="random_replace_prob > 0"):
            call(
                torch.zeros(1, 4, dtype=torch.long),
                vocab_size=2,
                special_ids=(0, 1),
                mask_token_id=1,
            )

    @pytest.mark.parametrize("bad", [-0.5, float("nan"), 1.01])
    def test_pos_probs_values(self, bad):
        pos = torch.zeros(2, 8, dtype=torch.uint8)
        with pytest.raises(RuntimeError, match=r"pos_probs\[2\] must be a probability"):
            call(pos_ids=pos, pos_probs=[0.1, 0.2, bad])

    def test_pos_ids_without_pos_probs(self):
        with pytest.raises(RuntimeError, match="pos_ids and pos_probs go together"):
            call(pos_ids=torch.zeros(2, 8, dtype=torch.uint8))
        with pytest.raises(RuntimeError, match="pos_ids and pos_probs go together"):
            call(pos_probs=[0.1])

    def test_limits(self):
        pos = torch.zeros(2, 8, dtype=torch.uint8)
        with pytest.raises(RuntimeError, match="pos_probs must have 1 to 64 entries, got 65"):
            call(pos_ids=pos, pos_probs=[0.1] * 65)
        with pytest.raises(RuntimeError, match="at most 256 distinct special_ids"):
            call(special_ids=range(257))
        call(special_ids=list(range(256)) * 2)  # duplicates count once

    def test_pos_class_beyond_table(self):
        pos = torch.zeros(2, 8, dtype=torch.uint8)
        pos[1, 5] = 3
        with pytest.raises(RuntimeError, match=r"pos_ids\[1, 5\] = 3 has no entry in pos_probs"):
            call(pos_ids=pos, pos_probs=[0.1, 0.2, 0.3])

    def test_pos_class_beyond_table_in_left_padding(self):
        # Classes are checked on every token, also unattended ones before the first attended.
        ids = bert_batch(2, 8, seed=74, ragged=False)[0]
        att = torch.ones_like(ids)
        att[1, :3] = 0
        pos = torch.zeros(2, 8, dtype=torch.uint8)
        pos[1, 1] = 5
        with pytest.raises(RuntimeError, match=r"pos_ids\[1, 1\] = 5 has no entry in pos_probs"):
            call(ids, attention_mask=att, pos_ids=pos, pos_probs=[0.1, 0.2, 0.3])

    def test_pos_ids_dtype(self):
        with pytest.raises(RuntimeError, match="pos_ids must be uint8"):
            call(pos_ids=torch.zeros(2, 8, dtype=torch.long), pos_probs=[0.1])

    def test_pos_probs_empty(self):
        with pytest.raises(RuntimeError, match="pos_probs must have"):
            call(pos_ids=torch.zeros(2, 8, dtype=torch.uint8), pos_probs=[])

    def test_word_ids_shape(self):
        with pytest.raises(RuntimeError, match="word_ids must have the shape of input_ids"):
            call(word_ids=torch.zeros(2, 9, dtype=torch.long))

    def test_word_ids_dtype(self):
        with pytest.raises(RuntimeError, match="word_ids must be int64 or int32"):
            call(word_ids=torch.zeros(2, 8))

    def test_word_ids_range(self):
        words = torch.zeros(2, 8, dtype=torch.long)
        words[0, 2] = 2**32
        with pytest.raises(RuntimeError, match=r"word_ids\[0, 2\]"):
            call(word_ids=words)

    @pytest.mark.parametrize(
        "sample_ids",
        [torch.arange(3), torch.arange(2).int(), torch.zeros(2, 1, dtype=torch.long)],
        ids=["length", "dtype", "rank"],
    )
    def test_sample_ids(self, sample_ids):
        with pytest.raises(RuntimeError, match="sample_ids must be int64 of shape"):
            call(sample_ids=sample_ids)

    @pytest.mark.parametrize(
        "state", [torch.tensor([1, 2, 3]), torch.tensor([1.0, 2.0])], ids=["shape", "dtype"]
    )
    def test_rng_state(self, state):
        with pytest.raises(RuntimeError, match="rng_state must be int64"):
            call(rng_state=state)

    @pytest.mark.parametrize("epoch", [-1, 2**32])
    def test_epoch_range(self, epoch):
        with pytest.raises(RuntimeError, match="epoch must be in"):
            call(epoch=epoch)

    @pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
    def test_seed_range(self, seed):
        with pytest.raises(ValueError, match="seed must fit in 64 bits"):
            call(seed=seed)

    @pytest.mark.parametrize("mode", ["Exact", "random", ""])
    def test_mode(self, mode):
        with pytest.raises(ValueError, match="mode must be one of"):
            call(mode=mode)

    def test_missing_mask_token(self):
        with pytest.raises(ValueError, match="mask_token_id is required"):
            call(mask_token_id=None)

    def test_inplace_bad_id_leaves_input_unchanged(self):
        for dtype in (torch.int64, torch.int32):
            ids = bert_batch(4, 16, seed=73, ragged=False)[0].to(dtype)
            ids[2, 9] = VOCAB + 3
            before = ids.clone()
            labels = torch.empty_like(ids)
            with pytest.raises(RuntimeError, match=r"input_ids\[2, 9\] is outside the vocabulary"):
                mlmfast.mask_tokens_(ids, labels, **BERT, mlm_probability=1.0, seed=1)
            assert torch.equal(ids, before)

    @pytest.mark.parametrize("bad", ["pos", "word"])
    def test_inplace_bad_batch_leaves_input_unchanged(self, bad):
        ids = bert_batch(4, 16, seed=74, ragged=False)[0]
        before = ids.clone()
        kw = {"pos_ids": torch.zeros_like(ids, dtype=torch.uint8), "pos_probs": [1.0]}
        if bad == "pos":
            kw["pos_ids"][3, 15] = 1
        else:
            kw["word_ids"] = torch.full_like(ids, -1)
            kw["word_ids"][3, 15] = 2**32
        with pytest.raises(RuntimeError, match=r"\[3, 15\]"):
            mlmfast.mask_tokens_(ids, torch.empty_like(ids), **BERT, seed=1, **kw)
        assert torch.equal(ids, before)

    def test_inplace_labels(self):
        ids = bert_batch(2, 8, seed=75)[0]
        kw = {"mask_token_id": MASK, "vocab_size": VOCAB, "seed": 1}
        with pytest.raises(RuntimeError, match="labels must match input_ids"):
            mlmfast.mask_tokens_(ids, torch.empty(2, 8, dtype=torch.int32), **kw)
        with pytest.raises(RuntimeError, match="labels must match input_ids"):
            mlmfast.mask_tokens_(ids, torch.empty(2, 7, dtype=torch.long), **kw)
        with pytest.raises(RuntimeError, match="labels must share no memory with input_ids"):
            mlmfast.mask_tokens_(ids, ids, **kw)
        with pytest.raises(RuntimeError, match="must be contiguous"):
            mlmfast.mask_tokens_(ids.t(), torch.empty(8, 2, dtype=torch.long), **kw)

    def test_inplace_outputs_share_no_memory_with_inputs(self):
        """Views that overlap input_ids or an input are refused before anything is written
        (they used to be taken: the op wrote half the ids, then failed on what it had written)."""
        ids, att = bert_batch(4, 16, seed=79, ragged=True)
        kw = {**BERT, "seed": 1}
        buf = torch.empty(5, 16, dtype=torch.long)
        buf[:4] = ids
        before = buf.clone()
        with pytest.raises(RuntimeError, match="labels must share no memory with input_ids"):
            mlmfast.mask_tokens_(buf[:4], buf[1:], attention_mask=att, **kw)
        assert torch.equal(buf, before)
        both = torch.stack([att, torch.zeros_like(att)])  # labels a view of the mask's storage
        for labels in (both[1], both[0]):
            x = ids.clone()
            with pytest.raises(
                RuntimeError, match="labels must share no memory with attention_mask"
            ):
                mlmfast.mask_tokens_(x, labels, attention_mask=both[0], **kw)
            assert torch.equal(x, ids) and torch.equal(both[0], att)
        flat = ids.clone()
        with pytest.raises(RuntimeError, match="input_ids must share no memory with word_ids"):
            mlmfast.mask_tokens_(flat, torch.empty_like(ids), word_ids=flat, **kw)
        special = torch.zeros(2, 4, 16, dtype=torch.long)
        with pytest.raises(
            RuntimeError, match="mask_tokens_into: out must share no memory with special_tokens"
        ):
            mlmfast.mask_tokens_into(
                ids, special[0], torch.empty_like(ids), special_tokens_mask=special[1], **kw
            )
        out, labels = mlmfast.mask_tokens(ids, attention_mask=att, **kw)[:2]  # valid forms
        x, y = ids.clone(), torch.empty_like(ids)
        mlmfast.mask_tokens_(x, y, attention_mask=att.clone(), **kw)
        assert torch.equal(x, out) and torch.equal(y, labels)

    def test_into_outputs(self):
        ids = bert_batch(2, 8, seed=77)[0]
        kw = {"mask_token_id": MASK, "vocab_size": VOCAB, "seed": 1}
        into = mlmfast.mask_tokens_into
        long_ = lambda *shape: torch.empty(*shape, dtype=torch.long)  # noqa: E731
        with pytest.raises(RuntimeError, match=r"out must be Long like input_ids, got Int"):
            into(ids, torch.empty(2, 8, dtype=torch.int32), long_(2, 8), **kw)
        with pytest.raises(RuntimeError, match=r"labels must be Int or int64 \(widened\)"):
            into(ids.int(), torch.empty(2, 8, dtype=torch.int32), torch.empty(2, 8), **kw)
        with pytest.raises(RuntimeError, match="out and labels must have one dtype"):
            into(ids.int(), long_(2, 8), torch.empty(2, 8, dtype=torch.int32), **kw)
        with pytest.raises(RuntimeError, match=r"labels must have the shape of input_ids"):
            into(ids, long_(2, 8), long_(2, 7), **kw)
        with pytest.raises(RuntimeError, match="out must be contiguous"):
            into(ids, long_(8, 2).t(), long_(2, 8), **kw)
        with pytest.raises(RuntimeError, match="labels must share no memory"):
            into(ids, long_(2, 8), ids, **kw)
        o = long_(2, 8)
        with pytest.raises(RuntimeError, match="labels must share no memory"):
            into(ids, o, o, **kw)
        buf = long_(3, 8)
        with pytest.raises(RuntimeError, match="out must be input_ids itself"):
            into(buf[:2], buf[1:], long_(2, 8), **kw)
        with pytest.raises(TypeError, match="out must be a torch.Tensor"):
            into(ids, None, long_(2, 8), **kw)
        with pytest.raises(TypeError, match="unexpected keyword arguments"):
            into(ids, long_(2, 8), long_(2, 8), return_positions=True, **kw)

    def test_into_bad_id_in_place_leaves_input_unchanged(self):
        ids = bert_batch(4, 16, seed=78, ragged=False)[0]
        ids[1, 3] = -1
        before = ids.clone()
        with pytest.raises(RuntimeError, match=r"input_ids\[1, 3\] is outside the vocabulary"):
            mlmfast.mask_tokens_into(ids, ids, torch.empty_like(ids), **BERT, seed=1)
        assert torch.equal(ids, before)
        with pytest.raises(RuntimeError, match=r"input_ids\[1, 3\] = -1 is outside the vocab"):
            mlmfast.mask_tokens_into(
                ids.int(), torch.empty_like(ids), torch.empty_like(ids), **BERT, seed=1
            )

    @pytest.mark.cuda
    def test_device_mismatch(self, cuda_device):
        ids = bert_batch(2, 8, seed=76)[0].to(cuda_device)
        for name, t in [
            ("attention_mask", torch.ones(2, 8, dtype=torch.long)),
            ("word_ids", torch.zeros(2, 8, dtype=torch.long)),
            ("sample_ids", torch.arange(2)),
            ("rng_state", torch.tensor([1, 2])),
        ]:
            with pytest.raises(RuntimeError, match=f"{name} is on"):
                call(ids, **{name: t})


class TestEmpty:
    @pytest.mark.parametrize("shape", [(0, 16), (4, 0), (0, 0)])
    @pytest.mark.parametrize("mode", MODES)
    def test_empty(self, device, shape, mode):
        ids = torch.empty(shape, dtype=torch.int64, device=device)
        kw = {
            **BERT,
            "seed": 1,
            "mode": mode,
            "attention_mask": torch.ones_like(ids),
            "word_ids": torch.zeros_like(ids),
        }
        out = mlmfast.mask_tokens(ids, return_positions=True, **kw)
        assert out.input_ids.shape == shape and out.labels.shape == shape
        assert out.positions.numel() == 0
        labels = torch.empty_like(ids)
        mlmfast.mask_tokens_(ids, labels, **kw)
        assert labels.shape == shape
        mlmfast.mask_tokens_into(ids.int(), torch.empty_like(ids), labels, **kw)


# ---- PyTorch integration ------------------------------------------------------------------------


class TestOpcheck:
    # The default test_utils (schema, autograd registration, fake tensor, AOT dispatch dynamic)
    # all apply: the outputs are integer tensors, so nothing is differentiable, which the
    # autograd-registration and AOT checks handle without special casing.
    def test_mask_tokens(self, device):
        for ids, kw in sample_inputs(device):
            torch.library.opcheck(
                torch.ops.mlmfast.mask_tokens.default, (ids, *schema_args(ids, **kw))
            )

    def test_mask_tokens_inplace(self, device):
        for ids, kw in sample_inputs(device):
            args = (ids.clone(), torch.empty_like(ids), *schema_args(ids, **kw))
            torch.library.opcheck(torch.ops.mlmfast.mask_tokens_.default, args)

    def test_mask_tokens_into(self, device):
        for ids, kw in sample_inputs(device):
            out = torch.empty_like(ids, dtype=torch.int64)  # int32 samples: the widening form
            args = (ids, out, torch.empty_like(out), *schema_args(ids, **kw))
            torch.library.opcheck(torch.ops.mlmfast.mask_tokens_into.default, args)

    def test_philox(self):
        counters = torch.randint(0, 2**32, (16, 4), generator=torch.Generator().manual_seed(0))
        torch.library.opcheck(torch.ops.mlmfast.philox4x32_10.default, (counters, -12345))


class TestCompile:
    def test_fullgraph_matches_eager(self, device):
        torch._dynamo.reset()

        def fn(ids, attention_mask, word_ids):
            return mlmfast.mask_tokens(
                ids,
                attention_mask=attention_mask,
                word_ids=word_ids,
                **BERT,
                mlm_probability=0.3,
                seed=2**63 + 17,
                epoch=5,
            )

        compiled = torch.compile(fn, fullgraph=True)
        for ids, kw in sample_inputs(device)[:3]:
            att = kw.get("attention_mask", torch.ones_like(ids))
            words = kw.get("word_ids", torch.full_like(ids, -1))
            got = compiled(ids, att, words)
            want = fn(ids, att, words)
            assert_same(got, want)
            assert got.input_ids.device == ids.device

    def test_fullgraph_into_matches_eager(self, device):
        # the out= form (a mutating op) traces too; int32 ids widened into int64 outputs
        torch._dynamo.reset()

        def fn(ids, attention_mask):
            out = torch.empty(ids.shape, dtype=torch.int64, device=ids.device)
            labels = torch.empty(ids.shape, dtype=torch.int64, device=ids.device)
            mlmfast.mask_tokens_into(
                ids, out, labels, attention_mask=attention_mask, **BERT, seed=2**63 + 3, epoch=2
            )
            return out, labels

        compiled = torch.compile(fn, fullgraph=True)
        ids, att = bert_batch(6, 40, seed=86)
        ids, att = ids.to(device).int(), att.to(device)
        got, want = compiled(ids, att), fn(ids, att)
        assert got[0].dtype == torch.int64
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        ref = mlmfast.mask_tokens(ids.long(), attention_mask=att, **BERT, seed=2**63 + 3, epoch=2)
        assert torch.equal(got[0], ref.input_ids) and torch.equal(got[1], ref.labels)

    def test_fullgraph_rng_state_input(self, device):
        # With the seed in a tensor, new seeds are new data, not new constants of the graph.
        torch._dynamo.reset()
        ids, att = bert_batch(8, 32, seed=85)
        ids, att = ids.to(device), att.to(device)

        def fn(ids, attention_mask, rng_state):
            out = mlmfast.mask_tokens(
                ids, attention_mask=attention_mask, rng_state=rng_state, seed=0, **BERT
            )
            return out.input_ids, out.labels

        compiled = torch.compile(fn, fullgraph=True)
        for seed, epoch in ((1, 0), (-(2**60), 9)):
            state = torch.tensor([seed, epoch], device=device)
            eager = mlmfast.mask_tokens(ids, attention_mask=att, seed=seed, epoch=epoch, **BERT)
            assert_same(mlmfast.MaskOutput(*compiled(ids, att, state)), eager)


# ---- CUDA specifics -----------------------------------------------------------------------------


@pytest.mark.cuda
class TestCuda:
    @pytest.mark.parametrize("length", [1, 513, 4095, 4096])
    @pytest.mark.parametrize("rich", [False, True], ids=["plain", "words+pos"])
    def test_exact_long_rows(self, cuda_device, length, rich):
        # CUDA's exact mode: rows in shared memory; the result equals the CPU op.
        ids, att = bert_batch(6, length, seed=80, min_len=0)
        if rich:
            kw = rich_kwargs(ids, att, mode="exact")
        else:
            kw = {**BERT, "attention_mask": att, "seed": 81, "mode": "exact"}
        for p in (0.15, 0.5):
            r = run_op(cuda_device, ids, **{**kw, "mlm_probability": p})  # compares to the CPU op
            if not rich:
                assert torch.equal(r.selected.sum(1), exact_k(eligible_of(ids, att).sum(1), p))

    @pytest.mark.parametrize("length", [8192, 12000])
    def test_exact_rows_beyond_shared_memory(self, cuda_device, length):
        # Rows whose working memory exceeds a block's shared memory use a global scratch buffer.
        ids, att = bert_batch(2, length, seed=83)
        run_op(cuda_device, ids, **BERT, attention_mask=att, seed=84, mode="exact")

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
    def test_cuda_graph_replay(self, cuda_device, mode, inplace):
        ids, att = bert_batch(32, 128, seed=82)
        kw = on(cuda_device, rich_kwargs(ids, att, mode=mode))
        del kw["seed"], kw["epoch"]
        static_ids = ids.to(cuda_device)
        rng_state = torch.tensor([0, 0], dtype=torch.int64, device=cuda_device)
        work, labels = torch.empty_like(static_ids), torch.empty_like(static_ids)

        def step():
            # seed=0 is ignored: the kernel reads seed and epoch from rng_state at replay time.
            if inplace:
                work.copy_(static_ids)
                mlmfast.mask_tokens_(work, labels, rng_state=rng_state, seed=0, **kw)
                return work, labels
            out = mlmfast.mask_tokens(static_ids, rng_state=rng_state, seed=0, **kw)
            return out.input_ids, out.labels

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graph_out, graph_labels = step()

        for seed, epoch in ((1, 0), (2**63 + 5, 3), (-77, 2**32 - 1), (1, 1)):
            signed = seed - 2**64 if seed >= 2**63 else seed
            rng_state.copy_(torch.tensor([signed, epoch], dtype=torch.int64))
            graph.replay()
            torch.cuda.synchronize()
            eager = mlmfast.mask_tokens(static_ids, seed=seed, epoch=epoch, **kw)
            assert_same(mlmfast.MaskOutput(graph_out, graph_labels), eager)
            cpu = mlmfast.mask_tokens(ids, seed=seed, epoch=epoch, **on("cpu", kw))
            assert_same(eager, cpu)

    def test_current_stream(self, cuda_device):
        # The kernel runs on the current stream: on a side stream held busy, it must wait for the
        # copies queued before it (a kernel on another stream would read the ids too early).
        ids, att = bert_batch(64, 256, seed=83)
        kw = {**BERT, "seed": 84}
        want = mlmfast.mask_tokens(ids, attention_mask=att, **kw)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            torch.cuda._sleep(100_000_000)
            d_ids = ids.pin_memory().to(cuda_device, non_blocking=True)
            d_att = att.pin_memory().to(cuda_device, non_blocking=True)
            got = mlmfast.mask_tokens(d_ids, attention_mask=d_att, **kw)
        stream.synchronize()
        assert_same(got, want)
