"""Tests of T5 span corruption, ``mlmfast.span_corrupt`` (csrc/span_corrupt.h).

Bit equality with the pure-Python reference (mlmfast/reference.py) for the CPU op, the CUDA op
where a GPU exists, and the CUDA kernel run through the CPU emulation (tests/cuda_emu); the
structure of the outputs checked on its own (the tokens of a row are exactly its inputs and
labels interleaved); statistics of the spans with fixed seeds against their exact distributions
(p-value > 1e-3); argument errors; opcheck.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cuda_emulated import emu  # noqa: F401  (the fixture)

import mlmfast
from mlmfast import reference

P_VALUE = 1e-3
# T5's layout: pad 0, EOS 1, ordinary ids below 1000, <extra_id_0> = 1099 counting down.
PAD, EOS, SENTINEL0, N_SENTINELS = 0, 1, 1099, 100
T5 = {"sentinel_start": SENTINEL0, "eos_token_id": EOS, "pad_token_id": PAD}
HYPOTHESIS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def oracle(ids: torch.Tensor, out: mlmfast.SpanCorruptOutput, **kwargs):
    """The reference with the op's output widths."""
    kwargs = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    kwargs.pop("num_sentinels", None)
    return reference.span_corrupt(
        ids.cpu(),
        inputs_length=out.input_ids.shape[1],
        targets_length=out.labels.shape[1],
        **kwargs,
    )


def assert_same(got, want) -> None:
    for name, g, w in zip(("input_ids", "attention_mask", "labels"), got, want, strict=True):
        assert g.dtype == torch.int64, name
        torch.testing.assert_close(g.cpu(), w.cpu(), rtol=0, atol=0, msg=name)


def random_rows(B: int, L: int, seed: int, min_len: int = 2, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 1000, (B, L), generator=g, dtype=dtype)
    lengths = torch.randint(min_len, L + 1, (B,), generator=g)
    return ids, lengths


@st.composite
def span_cases(draw, max_batch: int = 5, max_length: int = 80):
    """(input_ids, op keyword arguments): shapes, dtypes, lengths, seeds, densities, span means,
    sentinel directions, sample ids, row lengths given as lengths or attention_mask or not."""
    B = draw(st.integers(0, max_batch))
    L = draw(st.integers(2, max_length))
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    seed = draw(st.integers(0, 2**64 - 1))
    ids, lengths = random_rows(B, L, seed % 2**31, dtype=dtype)
    kwargs = {
        **T5,
        "noise_density": draw(st.floats(0.01, 0.99)),
        "mean_noise_span_length": draw(st.floats(1.0, 12.0)),
        "seed": seed,
        "epoch": draw(st.integers(0, 2**32 - 1)),
    }
    if draw(st.booleans()):
        kwargs.update(sentinel_start=1000, sentinel_step=1)
    how = draw(st.sampled_from(["full", "lengths", "attention_mask"]))
    if how == "lengths":
        kwargs["lengths"] = lengths.to(draw(st.sampled_from([torch.int64, torch.int32])))
    elif how == "attention_mask":
        kwargs["attention_mask"] = (torch.arange(L) < lengths.unsqueeze(1)).long()
    if draw(st.booleans()):
        kwargs["sample_ids"] = torch.randint(-(2**63), 2**63 - 1, (B,))
    if draw(st.booleans()):  # wider outputs than needed: more padding, the same tokens
        kwargs["inputs_length"] = L + 2
        kwargs["targets_length"] = L + 2
    return ids, kwargs


def reference_kwargs(ids: torch.Tensor, kwargs: dict) -> dict:
    """The op's keyword arguments as the reference takes them (lengths, not attention_mask)."""
    ref = {k: v for k, v in kwargs.items() if k not in ("inputs_length", "targets_length")}
    att = ref.pop("attention_mask", None)
    if att is not None:
        ref["lengths"] = att.sum(1)
    return ref


def run_op(device: str, ids: torch.Tensor, **kwargs):
    assert "seed" in kwargs, "the reference needs the op's seed"
    on = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    got = mlmfast.span_corrupt(ids.to(device), **on)
    assert got.input_ids.device.type == torch.device(device).type
    assert_same(got, oracle(ids, got, **reference_kwargs(ids, kwargs)))
    return mlmfast.SpanCorruptOutput(*(t.cpu() for t in got))


def check_structure(ids, lengths, out, kwargs) -> None:
    """What T5 span corruption means, checked without the reference: per row, the noise count and
    span count are span_counts', the spans are non-empty, the sentinels count by sentinel_step,
    and the inputs' kept segments interleaved with the labels' noise segments give back the row."""
    start = kwargs.get("sentinel_start", SENTINEL0)
    step = kwargs.get("sentinel_step", -1)
    d, m = kwargs.get("noise_density", 0.15), kwargs.get("mean_noise_span_length", 3.0)
    for b in range(ids.shape[0]):
        n = int(lengths[b])
        noise, spans = mlmfast.ops.span_counts(n, d, m)
        inp = out.input_ids[b][out.attention_mask[b] == 1].tolist()
        lab = out.labels[b][out.labels[b] != -100].tolist()
        assert inp[-1] == EOS and lab[-1] == EOS
        assert (out.input_ids[b][out.attention_mask[b] == 0] == PAD).all()
        sentinels = [start + i * step for i in range(spans)]
        is_sent = {s: i for i, s in enumerate(sentinels)}
        keep_segments, noise_segments, cur = [], [], []
        for t in inp[:-1]:
            if t in is_sent:
                keep_segments.append(cur)
                cur = []
            else:
                cur.append(t)
        assert cur == [], "inputs end with a sentinel before EOS"
        for t in lab[:-1]:
            if t in is_sent:
                cur = []
                noise_segments.append(cur)
            else:
                cur.append(t)
        assert [t for t in inp if t in is_sent] == sentinels
        assert [t for t in lab if t in is_sent] == sentinels
        assert len(keep_segments) == len(noise_segments) == spans
        assert all(keep_segments) and all(noise_segments), "empty span"
        assert sum(map(len, noise_segments)) == noise
        rebuilt = [t for k, z in zip(keep_segments, noise_segments, strict=True) for t in k + z]
        assert rebuilt == ids[b, :n].tolist()
        assert len(inp) == mlmfast.span_corruption_lengths(n, d, m)[0]
        assert len(lab) == mlmfast.span_corruption_lengths(n, d, m)[1]


# ---- equality with the reference ---------------------------------------------------------------


@settings(max_examples=200, **HYPOTHESIS)
@given(case=span_cases())
def test_matches_reference(device, case):
    ids, kwargs = case
    out = run_op(device, ids, **kwargs)
    lengths = reference_kwargs(ids, kwargs).get("lengths")
    check_structure(ids, lengths if lengths is not None else [ids.shape[1]] * len(ids), out, kwargs)


@settings(max_examples=60, **HYPOTHESIS)
@given(case=span_cases(max_batch=3, max_length=60))
def test_emulated_cuda_matches_reference(emu, case):  # noqa: F811
    ids, kwargs = case
    ref = reference_kwargs(ids, kwargs)
    op_kwargs = {k: v for k, v in kwargs.items() if k != "attention_mask"}
    if "attention_mask" in kwargs:
        op_kwargs["lengths"] = ref["lengths"]
    got = emulated(emu, ids, **op_kwargs)
    assert_same(got, oracle(ids, got, **ref))


def emulated(ops, ids, **kwargs) -> mlmfast.SpanCorruptOutput:
    """The CUDA kernel through the emulation, with the widths the op would pick."""
    d = kwargs.get("noise_density", 0.15)
    m = kwargs.get("mean_noise_span_length", 3.0)
    lengths = kwargs.get("lengths")
    widths = set(lengths.tolist()) if lengths is not None else {ids.shape[1]}
    fits = [mlmfast.span_corruption_lengths(w, d, m) for w in widths]
    il = kwargs.get("inputs_length") or max((f[0] for f in fits), default=1)
    tl = kwargs.get("targets_length") or max((f[1] for f in fits), default=1)
    out = ops.span_corrupt(
        ids,
        lengths,
        kwargs.get("sample_ids"),
        d,
        m,
        il,
        tl,
        kwargs["sentinel_start"],
        kwargs.get("sentinel_step", -1),
        kwargs.get("num_sentinels", N_SENTINELS),
        kwargs["eos_token_id"],
        kwargs["pad_token_id"],
        mlmfast.ops.schema_seed(kwargs.get("seed", 0)),
        kwargs.get("epoch", 0),
    )
    return mlmfast.SpanCorruptOutput(*out)


def test_emulated_cuda_many_blocks_and_long_rows(emu):  # noqa: F811
    """Rows beyond the first block of 128 threads, and rows long enough for multi-word bitmaps
    (garbage-filled scratch: each thread must clear its own words)."""
    for B, L, seed in ((300, 40, 1), (3, 2000, 2), (130, 569, 3)):
        for dtype in (torch.int64, torch.int32):
            ids, lengths = random_rows(B, L, seed, dtype=dtype)
            kwargs = {**T5, "lengths": lengths, "seed": 77 + seed, "epoch": seed}
            got = emulated(emu, ids, **kwargs)
            assert_same(got, oracle(ids, got, **kwargs))


def test_long_rows_and_thread_counts():
    """Packed 568-token rows (T5's 512/114) and long rows on several threads equal the
    reference; the result does not depend on the thread count."""
    ids, lengths = random_rows(9, 568, seed=5)
    full = run_op("cpu", ids, **T5, seed=1, inputs_length=512, targets_length=114)
    assert full.attention_mask.all() and (full.labels != -100).all()
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2):
            torch.set_num_threads(t)
            results.append(mlmfast.span_corrupt(ids, **T5, lengths=lengths, seed=3))
    finally:
        torch.set_num_threads(threads)
    assert_same(results[0], results[1])
    assert_same(results[0], oracle(ids, results[0], **T5, lengths=lengths, seed=3))


# ---- the RNG contract ----------------------------------------------------------------------------


def test_row_independent_of_batch_and_padding(device):
    """A row's corruption depends on (seed, epoch, sample id, its length, its tokens) only."""
    ids, lengths = random_rows(6, 50, seed=8)
    sids = torch.tensor([5, 2**40, -7, 3, 99, 12])
    kw = {**T5, "seed": 2**63 + 11, "epoch": 4, "inputs_length": 60, "targets_length": 40}
    whole = run_op(device, ids, lengths=lengths, sample_ids=sids, **kw)
    for b in range(6):
        n = int(lengths[b])
        wide = torch.cat([ids[b : b + 1, :n], torch.full((1, 70 - n), 7)], dim=1)
        alone = run_op(device, wide, lengths=lengths[b : b + 1], sample_ids=sids[b : b + 1], **kw)
        for w, a in zip(whole, alone, strict=True):
            assert torch.equal(w[b], a[0])


def test_seed_and_epoch(device):
    ids, lengths = random_rows(4, 64, seed=9)
    kw = {**T5, "lengths": lengths}
    a = run_op(device, ids, seed=1, epoch=0, **kw)
    assert_same(run_op(device, ids, seed=1, epoch=0, **kw), a)
    for other in ({"seed": 2, "epoch": 0}, {"seed": 1, "epoch": 1}):
        b = run_op(device, ids, **other, **kw)
        assert not torch.equal(a.labels, b.labels)
    torch.manual_seed(3)
    c = mlmfast.span_corrupt(ids.to(device), **kw)
    torch.manual_seed(3)
    assert_same(mlmfast.span_corrupt(ids.to(device), **kw), c)


def test_stream_apart_from_mask_tokens():
    """The span draws use their own Philox tag: the counter words of mask_tokens (tags 0, 1, 2 in
    the top two bits) never produce them."""
    assert reference.TAG_SPAN == 3 << 30
    assert reference.TAG_SPAN not in (
        reference.TAG_SELECT,
        reference.TAG_WORD,
        reference.TAG_REPLACE,
    )


# ---- statistics --------------------------------------------------------------------------------


def segment_lengths(out, b: int, spans: int, step: int = -1, start: int = SENTINEL0):
    """(kept segment lengths, noise segment lengths) of row b, read off the outputs."""
    sent = {start + i * step for i in range(spans)}
    inp = out.input_ids[b][out.attention_mask[b] == 1].tolist()[:-1]
    lab = out.labels[b][out.labels[b] != -100].tolist()[:-1]

    def runs(seq, lead):
        pos = [i for i, t in enumerate(seq) if t in sent]
        if lead:  # labels: sentinel, segment
            return [b - a - 1 for a, b in zip(pos, pos[1:] + [len(seq)], strict=True)]
        return [b - a - 1 for a, b in zip([-1] + pos[:-1], pos, strict=True)]

    return runs(inp, False), runs(lab, True)


def test_every_segmentation_equally_likely():
    """14 tokens, density 0.5, mean 7/3: 7 noise tokens in 3 spans, 7 kept in 3: each side has
    C(6, 2) = 15 segmentations, 225 jointly. 18,000 rows (sample ids 0..17,999, one seed):
    chi-square over the 225 joint patterns and over each side's 15."""
    n, rows = 14, 18000
    kw = {"noise_density": 0.5, "mean_noise_span_length": 7 / 3}
    assert mlmfast.ops.span_counts(n, **kw) == (7, 3)
    ids = torch.arange(2, 2 + n).repeat(rows, 1)
    out = mlmfast.span_corrupt(ids, **T5, **kw, seed=20240611, sample_ids=torch.arange(rows))
    counts = Counter()
    for b in range(rows):
        keep, noise = segment_lengths(out, b, 3)
        counts[(tuple(keep), tuple(noise))] += 1
    patterns = [c for c in itertools.product(range(1, 6), repeat=3) if sum(c) == 7]
    assert len(patterns) == math.comb(6, 2)
    joint = [counts[(k, z)] for k in patterns for z in patterns]
    assert sum(joint) == rows  # nothing outside the valid patterns
    assert scipy.stats.chisquare(joint).pvalue > P_VALUE
    for side in (0, 1):
        marginal = Counter(key[side] for key in counts.elements())
        assert scipy.stats.chisquare([marginal[p] for p in patterns]).pvalue > P_VALUE


def test_span_lengths_follow_their_distribution():
    """T5's packed rows (568 tokens: 85 noise tokens in 28 spans). A uniform segmentation of m
    items into k segments gives each segment length l with probability C(m-l-1, k-2)/C(m-1, k-1),
    mean m/k: the first noise span's length against that law (chi-square, tail pooled), and the
    mean of all span lengths (a z-test: segments of a row are exchangeable, so the rows' first
    spans are independent draws, and the mean over all spans has the same expectation)."""
    n, rows = 568, 3000
    noise, spans = mlmfast.ops.span_counts(n)
    assert (noise, spans) == (85, 28)
    ids = torch.randint(2, 1000, (rows, n), generator=torch.Generator().manual_seed(0))
    out = mlmfast.span_corrupt(ids, **T5, seed=7, epoch=2)
    first, every = [], []
    for b in range(rows):
        _, z = segment_lengths(out, b, spans)
        assert len(z) == spans and sum(z) == noise  # the exact noise share, every row
        first.append(z[0])
        every += z
    pmf = [
        math.comb(noise - ell - 1, spans - 2) / math.comb(noise - 1, spans - 1)
        for ell in range(1, noise)
    ]
    mean = sum(ell * p for ell, p in zip(range(1, noise), pmf, strict=True))
    assert mean == pytest.approx(noise / spans)
    var = sum((ell - mean) ** 2 * p for ell, p in zip(range(1, noise), pmf, strict=True))
    z = (sum(first) / rows - mean) / math.sqrt(var / rows)
    assert 2 * scipy.stats.norm.sf(abs(z)) > P_VALUE
    assert sum(every) / len(every) == pytest.approx(noise / spans)  # exact, by construction
    assert abs(noise / spans - 3.0) < 0.05  # T5's mean_noise_span_length, up to rounding
    # chi-square on the first span's length, cells with expectation < 5 pooled into the tail
    observed = Counter(first)
    cells, exp, obs = 0, [], []
    for ell, p in zip(range(1, noise), pmf, strict=True):
        if p * rows >= 5:
            exp.append(p * rows)
            obs.append(observed[ell])
            cells += 1
    exp.append(rows - sum(exp))
    obs.append(rows - sum(obs))
    assert scipy.stats.chisquare(obs, exp).pvalue > P_VALUE


# ---- lengths -------------------------------------------------------------------------------------


def test_lengths_helpers():
    # T5's standard pre-training figures: 568 raw tokens -> 512 inputs, 114 targets
    assert mlmfast.compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    assert mlmfast.span_corruption_lengths(568) == (512, 114)
    assert mlmfast.span_corruption_lengths(569)[0] == 513
    prev = (0, 0)
    for n in range(2, 3000):
        cur = mlmfast.span_corruption_lengths(n)
        assert cur[0] >= prev[0] and cur[1] >= prev[1], n  # so the longest row bounds the rest
        prev = cur
    for inputs_length in (8, 64, 100, 512):
        tokens, targets = mlmfast.compute_input_and_target_lengths(inputs_length)
        assert mlmfast.span_corruption_lengths(tokens) == (inputs_length, targets) or (
            mlmfast.span_corruption_lengths(tokens)[0] < inputs_length
        )
        assert mlmfast.span_corruption_lengths(tokens + 1)[0] > inputs_length
        ids, lengths = random_rows(5, tokens, seed=inputs_length, min_len=tokens // 2)
        out = run_op(
            "cpu",
            ids,
            **T5,
            lengths=lengths,
            inputs_length=inputs_length,
            targets_length=targets,
            seed=inputs_length,
        )
        assert out.input_ids.shape == (5, inputs_length) and out.labels.shape == (5, targets)
        check_structure(ids, lengths, out, T5)


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"noise_density": 0.0}, "noise_density must be in \\(0, 1\\)"),
        ({"noise_density": 1.0}, "noise_density must be in \\(0, 1\\)"),
        ({"noise_density": float("nan")}, "noise_density must be in \\(0, 1\\)"),
        ({"mean_noise_span_length": 0.5}, "mean_noise_span_length must be >= 1"),
        ({"sentinel_start": 50, "num_sentinels": 100}, "sentinels run below 0"),
        ({"sentinel_start": 500}, "input_ids\\[0, .*\\] = .* is a sentinel id"),
        ({"sentinel_start": 1, "sentinel_step": 1}, "eos_token_id=1 is one of the sentinel ids"),
        ({"num_sentinels": 1}, "row 0 .* has 2 noise spans but only num_sentinels=1"),
        ({"sentinel_step": 2}, "sentinel_step must be -1"),
        ({"inputs_length": 10}, "row 0 .* needs inputs_length >= 37 and targets_length >= 9"),
        ({"targets_length": 3}, "row 0 .* needs inputs_length >= 37 and targets_length >= 9"),
        ({"lengths": torch.tensor([40, 1])}, "row 1 has length 1"),
        ({"lengths": torch.tensor([40, 41])}, "row 1 has length 41"),
        ({"lengths": torch.tensor([40])}, "lengths must have shape \\[batch=2\\]"),
        ({"attention_mask": torch.tensor([[1] * 40, [0, 1] * 20])}, "row 1 is not"),
        ({"epoch": -1}, "epoch must be in"),
        ({"eos_token_id": -1}, "eos_token_id must be >= 0"),
    ],
)
def test_bad_arguments(change, match):
    ids, _ = random_rows(2, 40, seed=1)
    with pytest.raises(ValueError, match=match):
        mlmfast.span_corrupt(ids, **{**T5, "seed": 0, **change})


def test_bad_input_types():
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        mlmfast.span_corrupt(torch.arange(10), **T5)
    with pytest.raises(ValueError, match="input_ids must be int64 or int32"):
        mlmfast.span_corrupt(torch.ones(2, 10), **T5)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        mlmfast.span_corrupt([[1, 2, 3]], **T5)
    with pytest.raises(ValueError, match="length must be >= 2"):
        mlmfast.span_corruption_lengths(1)


# ---- dispatcher ----------------------------------------------------------------------------------


def test_opcheck(device):
    ids, lengths = random_rows(3, 30, seed=4)
    args = (
        ids.to(device),
        lengths.to(device),
        torch.tensor([3, 1, 2], device=device),
        0.15,
        3.0,
        30,
        12,
        SENTINEL0,
        -1,
        N_SENTINELS,
        EOS,
        PAD,
        123,
        1,
    )
    torch.library.opcheck(torch.ops.mlmfast.span_corrupt.default, args)


def test_torch_compile_fullgraph():
    ids, lengths = random_rows(3, 30, seed=6)

    def f(x, n):
        out = mlmfast.span_corrupt(
            x, **T5, lengths=n, inputs_length=30, targets_length=12, seed=5, epoch=1
        )
        return out.input_ids + 0, out.labels

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    got = compiled(ids, lengths)
    want = f(ids, lengths)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
