"""The masking op in plain PyTorch: slow, obviously right, and bit-exact with the C++ and CUDA
kernels. It mirrors ``csrc/masking.h`` line for line, and ``csrc/span_corrupt.h`` (T5 span
corruption, row by row in Python); the tests demand equality.

Philox4x32-10 runs here in int64 tensor arithmetic: a 32x32-bit product is formed from 16-bit
halves so that nothing overflows int64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from mlmfast.ops import MaskOutput, draw_seed, span_length_thresholds

__all__ = ["mask_tokens", "philox4x32_10", "span_corrupt", "span_counts", "threshold_of"]

_M32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85

TAG_SELECT, TAG_WORD, TAG_REPLACE = 0 << 30, 1 << 30, 2 << 30
SPAN_ATTEMPT = 1 << 29  # span masking: attempt a at TAG_SELECT | SPAN_ATTEMPT | a
MAX_SPAN_ATTEMPTS = 1 << 29
INDEX_MASK = (1 << 30) - 1
ONE = 1 << 32  # threshold of probability 1
IGNORE_INDEX = -100


def threshold_of(p: float) -> int:
    """floor(p * 2^32): exact in binary64, so every backend gets the same integer."""
    return int(float(p) * 4294967296.0)


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * b for int64 tensors holding uint32 values."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    p_hi = a * (b >> 16)  # < 2^48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (mid >> 32), mid & _M32


def philox4x32_10(
    counter: Sequence[torch.Tensor | int], key: tuple[int, int]
) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on broadcastable int64 tensors of uint32 values; key = (k0, k1)."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = key[0] & _M32, key[1] & _M32
    for r in range(10):
        if r:
            k0 = (k0 + _PHILOX_W0) & _M32
            k1 = (k1 + _PHILOX_W1) & _M32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _lane(words: tuple[torch.Tensor, ...], lane: torch.Tensor) -> torch.Tensor:
    return torch.stack(words, dim=-1).gather(-1, lane.unsqueeze(-1)).squeeze(-1)


def _random_token(y: torch.Tensor, n_random: int, skip: list[int]) -> torch.Tensor:
    hi, _ = _mulhilo(y, n_random)  # (y * n_random) >> 32
    tok = hi
    for s in skip:  # ascending: the j-th id of [0, vocab) without the skipped specials
        tok = tok + (tok >= s).long()
    return tok


def _ranks_before(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    (ua, ta, pa), (ub, tb, pb) = a, b
    lhs, rhs = ua * tb, ub * ta
    if lhs != rhs:
        return -1 if lhs < rhs else 1
    return -1 if pa < pb else (1 if pa > pb else 0)


def _exact_selection(eligible, u, t, words) -> torch.Tensor:
    """Exact-mode selection, row by row, as masking.h defines it."""
    B, L = eligible.shape
    selected = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        units: dict[object, list[int]] = {}  # key -> [u, t, first, size]
        unit_of: dict[int, object] = {}
        tsum, any_positive = 0, False
        for j in torch.nonzero(eligible[b]).flatten().tolist():
            tj = int(t[b, j])
            tsum += tj
            any_positive |= tj > 0
            w = int(words[b, j])
            key = ("w", w) if w >= 0 else ("t", j)
            if key not in units:
                units[key] = [int(u[b, j]), tj, j, 0]
            units[key][3] += 1
            unit_of[j] = key
        k = (tsum + (ONE >> 1)) >> 32
        if k == 0 and any_positive:
            k = 1

        def by_rank(a, c, units=units):
            return _ranks_before(units[a][:3], units[c][:3])

        ranked = sorted(
            (key for key, v in units.items() if v[1] > 0), key=functools.cmp_to_key(by_rank)
        )
        taken, count = set(), 0
        for key in ranked:
            if count >= k:
                break
            if count + units[key][3] <= k:
                taken.add(key)
                count += units[key][3]
        if count == 0 and k > 0 and ranked:
            taken.add(ranked[0])
        for j, key in unit_of.items():
            if key in taken:
                selected[b, j] = True
    return selected


def _span_selection(eligible, words, t_select, cdf, draws, span_log):
    """Span-mode selection row by row, as csrc/span_mask.h defines it. Returns the selected tokens
    and, for each token, the position of the first token of its span (its own elsewhere).
    draws(b, a, n): the Philox blocks of attempts a .. a + n - 1 of row b, as (x, y, z, w)."""
    B, L = eligible.shape
    selected = torch.zeros(B, L, dtype=torch.bool)
    head = torch.arange(L).repeat(B, 1)
    for b in range(B):
        el, wd = eligible[b].tolist(), words[b].tolist()
        ws: list[list[int]] = []  # the words: [first position, one past the last]
        prev_e, prev_w = False, -1
        for j in range(L):
            if el[j]:
                if prev_e and wd[j] >= 0 and wd[j] == prev_w:
                    ws[-1][1] = j + 1
                else:
                    ws.append([j, j + 1])
                prev_w = wd[j]
            prev_e = el[j]
        W, n = len(ws), sum(el)
        k = (n * t_select + (ONE >> 1)) >> 32
        if k == 0 and n > 0 and t_select > 0:
            k = 1
        attempts = min(64 + 16 * k, MAX_SPAN_ATTEMPTS)
        mark: list[int | None] = [None] * W
        count, a, spans, block = 0, 0, [], []
        while a < attempts and count < k:
            if a % 256 == 0:
                block = draws(b, a, 256)
            x, y, z, _ = block[a % 256]
            a += 1
            length = 1 + sum(x >= c for c in cdf)
            s = (((y << 32) | z) * W) >> 64
            e = s + length - 1
            if e >= W:  # leaves the row
                continue
            one_run = all(ws[w][0] == ws[w - 1][1] for w in range(s + 1, e + 1))
            if not one_run or any(mark[w] is not None for w in range(s, e + 1)):
                continue
            m = 0
            while m < length and ws[s + m][1] - ws[s][0] <= k - count:
                m += 1
            if m == 0:
                continue
            for w in range(s, s + m):
                mark[w] = ws[s][0]
            tokens = ws[s + m - 1][1] - ws[s][0]
            count += tokens
            spans.append((ws[s][0], m, tokens, m < length))
        for w, h in enumerate(mark):
            if h is not None:
                selected[b, ws[w][0] : ws[w][1]] = True
                head[b, ws[w][0] : ws[w][1]] = h
        if span_log is not None:
            span_log.append({"budget": k, "masked": count, "attempts": a, "spans": spans})
    return selected, head


def _eligibility(
    ids: torch.Tensor,
    att: torch.Tensor | None,
    stm: torch.Tensor | None,
    specials: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eligible [B, L] bool, rel [B, L]: position counted from the row's first attended token,
    0 before it): not a special id, attended, not flagged in special_tokens_mask."""
    B, L = ids.shape
    eligible = ~torch.isin(ids, torch.tensor(specials, dtype=torch.long))
    if att is not None:
        att = att != 0
        eligible &= att
        has = att.any(dim=1)
        first = att.long().argmax(dim=1) if L else torch.zeros(B, dtype=torch.long)
        start = torch.where(has, first, torch.full((B,), L))
    else:
        start = torch.zeros(B, dtype=torch.long)
    if stm is not None:
        eligible &= stm == 0
    rel = torch.arange(L).unsqueeze(0) - start.unsqueeze(1)
    eligible &= rel >= 0
    return eligible, rel.clamp(min=0)


def _replacements(
    ids: torch.Tensor,
    replace_draws: Callable[[], tuple[torch.Tensor, ...]],
    head: torch.Tensor | None,
    mask_token_id: int,
    vocab_size: int,
    skip: list[int],
    mask_replace_prob: float,
    random_replace_prob: float,
) -> torch.Tensor:
    """What each token becomes if selected (80/10/10): [MASK], a random id outside ``skip``, or
    itself, from the x / y words of its replacement block (``replace_draws()``); with ``head``
    (span mode), the decision of the token at ``head`` (its span's first token)."""
    t_mask = threshold_of(mask_replace_prob)
    t_random = min(threshold_of(random_replace_prob), ONE - t_mask)
    if t_mask >= ONE:
        return torch.full_like(ids, mask_token_id)
    if t_mask == 0 and t_random == 0:
        return ids
    x, y, _, _ = replace_draws()
    if head is not None:
        x = x.gather(1, head)
    random_ids = _random_token(y, vocab_size - len(skip), skip)
    return torch.where(
        x < t_mask,
        torch.full_like(ids, mask_token_id),
        torch.where(x < t_mask + t_random, random_ids, ids),
    )


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    special_tokens_mask: torch.Tensor | None = None,
    word_ids: torch.Tensor | None = None,
    pos_ids: torch.Tensor | None = None,
    pos_probs: Sequence[float] | None = None,
    sample_ids: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    seed: int | None = None,
    epoch: int = 0,
    mode: str = "bernoulli",
    exclude_special_from_random: bool = True,
    return_positions: bool = False,
    rng_state: torch.Tensor | None = None,
    span_p: float = 0.2,
    span_max: int = 10,
    span_lengths: Sequence[float] | None = None,
    span_replace: str = "span",
    span_log: list | None = None,
) -> MaskOutput:
    """Same contract as :func:`mlmfast.mask_tokens` (CPU tensors), computed in plain PyTorch.
    ``span_log`` (tests): in span mode, receives per row a dict of its budget, the tokens masked,
    the attempts made and its spans in acceptance order as (first position, words, tokens,
    truncated at the budget)."""
    device, dtype = input_ids.device, input_ids.dtype
    squeeze = input_ids.dim() == 1
    to2d = (
        (lambda x: None if x is None else x.cpu().reshape(1, -1))
        if squeeze
        else (lambda x: None if x is None else x.cpu())
    )
    ids = to2d(input_ids).long()
    B, L = ids.shape
    if seed is None:
        seed = draw_seed()
    if rng_state is not None:
        seed, epoch = (int(v) for v in rng_state.cpu().tolist())
    seed = int(seed) % 2**64
    key = (seed & _M32, seed >> 32)
    epoch = int(epoch) & _M32
    specials = sorted({int(s) for s in special_ids})

    eligible, rel = _eligibility(ids, to2d(attention_mask), to2d(special_tokens_mask), specials)

    sid = sample_ids.cpu().long() if sample_ids is not None else torch.arange(B)
    sid_lo = (sid & _M32).unsqueeze(1)
    sid_hi = ((sid >> 32) & _M32).unsqueeze(1)

    def philox(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return philox4x32_10((index, epoch, sid_lo, sid_hi), key)

    u = _lane(philox(TAG_SELECT | ((rel >> 2) & INDEX_MASK)), rel & 3)
    words = to2d(word_ids).long() if word_ids is not None else torch.full((B, L), -1)
    w32 = words & _M32
    u_word = _lane(philox(TAG_WORD | ((w32 >> 2) & INDEX_MASK)), w32 & 3)
    u = torch.where(words >= 0, u_word, u)

    if pos_ids is not None:
        table = torch.tensor([threshold_of(p) for p in pos_probs], dtype=torch.long)
        t = table[to2d(pos_ids).long()]
    else:
        t = torch.full((B, L), threshold_of(mlm_probability), dtype=torch.long)

    head = None
    if mode == "exact":
        selected = _exact_selection(eligible, u, t, words)
    elif mode == "bernoulli":
        selected = eligible & (u < t)
    elif mode == "span":
        cdf = span_length_thresholds(span_p, span_max, span_lengths)

        def draws(b: int, a: int, n: int) -> list:
            index = TAG_SELECT | SPAN_ATTEMPT | torch.arange(a, a + n, dtype=torch.int64)
            blocks = philox4x32_10((index, epoch, sid_lo[b, 0], sid_hi[b, 0]), key)
            return torch.stack(blocks, dim=1).tolist()

        t_select = threshold_of(mlm_probability)
        selected, head = _span_selection(eligible, words, t_select, cdf, draws, span_log)
        if span_replace == "token":
            head = None
    else:
        raise ValueError(f"mode must be 'bernoulli', 'exact' or 'span', got {mode!r}")

    skip = specials if exclude_special_from_random else []
    replaced = _replacements(
        ids, lambda: philox(TAG_REPLACE | (rel & INDEX_MASK)), head, mask_token_id, vocab_size,
        skip, mask_replace_prob, random_replace_prob,
    )  # fmt: skip
    out = torch.where(selected, replaced, ids)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    positions = (
        torch.nonzero(labels.reshape(-1) != IGNORE_INDEX).squeeze(1) if return_positions else None
    )
    if squeeze:
        out, labels = out.squeeze(0), labels.squeeze(0)
    out, labels = out.to(device=device, dtype=dtype), labels.to(device=device, dtype=dtype)
    if positions is not None:
        positions = positions.to(device)
    return MaskOutput(out, labels, positions)


# ---- span corruption -------------------------------------------------------------------------
# Mirrors csrc/span_corrupt.h: the counts, the draws (here the plain definition floor(u * r / 2^64)
# with Python integers, which the C++ computes in 64-bit pieces), Floyd's sampling of the cuts
# (here with a Python set) and the layout of inputs and labels.

TAG_SPAN = 3 << 30


def span_counts(n: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a row of n >= 2 tokens."""
    noise = min(max(round(n * noise_density), 1), n - 1)  # round: half to even, as rint
    spans = min(max(round(noise / mean_noise_span_length), 1), noise, n - noise)
    return noise, spans


def _span_draws(key: tuple[int, int], epoch: int, sample_id: int, count: int) -> list[int]:
    """The first `count` 64-bit draws of a row: block d >> 1, high word x (even d) or z (odd)."""
    blocks = (count + 1) // 2
    if blocks == 0:
        return []
    sid = sample_id % 2**64
    x, y, z, w = philox4x32_10(
        (TAG_SPAN | torch.arange(blocks, dtype=torch.int64), epoch, sid & _M32, sid >> 32), key
    )
    words = torch.stack([x, y, z, w], dim=1).tolist()
    draws = []
    for a, b, c, e in words:
        draws += [(a << 32) | b, (c << 32) | e]
    return draws[:count]


def _floyd_cuts(draws: list[int], m: int, k: int) -> set[int]:
    """k - 1 cuts among the m - 1 gaps of m items (gap g: a segment starts at item g + 1)."""
    gaps, cuts = m - 1, set()
    for d, j in enumerate(range(gaps - (k - 1), gaps)):
        t = (draws[d] * (j + 1)) >> 64  # uniform in [0, j]
        cuts.add(j if t in cuts else t)
    return cuts


def _segments(m: int, cuts: set[int]) -> list[int]:
    starts = [0] + sorted(g + 1 for g in cuts) + [m]
    return [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]


def span_corrupt(
    input_ids: torch.Tensor,
    *,
    sentinel_start: int,
    eos_token_id: int,
    pad_token_id: int,
    inputs_length: int,
    targets_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    sentinel_step: int = -1,
    lengths: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    seed: int = 0,
    epoch: int = 0,
):
    """The op (mlmfast.span_corrupt) row by row: (input_ids, attention_mask, labels), int64.
    Rows must fit; arguments are not validated (the op does that)."""
    from mlmfast.ops import SpanCorruptOutput

    B, L = input_ids.shape
    seed = int(seed) % 2**64
    key = (seed & _M32, seed >> 32)
    rows = input_ids.tolist()
    ns = lengths.tolist() if lengths is not None else [L] * B
    sids = sample_ids.tolist() if sample_ids is not None else list(range(B))
    out = torch.full((B, inputs_length), pad_token_id, dtype=torch.int64)
    att = torch.zeros((B, inputs_length), dtype=torch.int64)
    labels = torch.full((B, targets_length), IGNORE_INDEX, dtype=torch.int64)
    for b in range(B):
        n, row = int(ns[b]), rows[b]
        noise, spans = span_counts(n, noise_density, mean_noise_span_length)
        keep = n - noise
        draws = _span_draws(key, int(epoch), int(sids[b]), 2 * (spans - 1))
        noise_len = _segments(noise, _floyd_cuts(draws[: spans - 1], noise, spans))
        keep_len = _segments(keep, _floyd_cuts(draws[spans - 1 :], keep, spans))
        inp, lab, pos = [], [], 0
        for s in range(spans):
            sentinel = sentinel_start + s * sentinel_step
            inp += row[pos : pos + keep_len[s]] + [sentinel]
            pos += keep_len[s]
            lab += [sentinel] + row[pos : pos + noise_len[s]]
            pos += noise_len[s]
        inp.append(eos_token_id)
        lab.append(eos_token_id)
        out[b, : len(inp)] = torch.tensor(inp)
        att[b, : len(inp)] = 1
        labels[b, : len(lab)] = torch.tensor(lab)
    return SpanCorruptOutput(out, att, labels)
