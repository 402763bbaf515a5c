"""ShardStream: batches, shuffling, elastic determinism, workers, resume, collator."""

from __future__ import annotations

import random

import pytest
import torch

from mlmfast.data import ShardStream, make_loader, prepare

WORDS = [
    "the",
    "film",
    "was",
    "great",
    "awful",
    "plot",
    "actor",
    "scene",
    "music",
    "boring",
    "wonderful",
    "ending",
]


def _docs(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory):
    """Variable-length rows with word ids, 7 shards, rows not a multiple of the batch size."""
    d = tmp_path_factory.mktemp("var")
    (d / "docs.txt").write_text("\n".join(_docs(253)) + "\n")
    m = prepare(
        str(d / "docs.txt"),
        str(d / "s"),
        max_length=32,
        shard_rows=61,
        word_ids=True,
        progress=False,
    )
    assert m["rows"] % 8 != 0 and len(m["shards"]) >= 5
    return str(d / "s")


@pytest.fixture(scope="module")
def fixed_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fixed")
    (d / "docs.txt").write_text("\n".join(_docs(200, seed=1)) + "\n")
    prepare(
        str(d / "docs.txt"),
        str(d / "s"),
        max_length=32,
        cross_document=True,
        shard_rows=50,
        progress=False,
    )
    return str(d / "s")


def shard_rows(directory):
    import pyarrow as pa

    from mlmfast.data import open_shards

    out = {}
    for p in open_shards(directory).paths:
        with pa.memory_map(p) as src:
            t = pa.ipc.open_file(src).read_all()
        for sid, ids in zip(
            t.column("sample_id").to_pylist(), t.column("input_ids").to_pylist(), strict=True
        ):
            out[sid] = ids
    return out


def sids(batches):
    return [b["sample_id"].tolist() for b in batches]


@pytest.mark.parametrize("which", ["var_dir", "fixed_dir"])
def test_batches_reproduce_the_shard_rows(request, tok, which):
    directory = request.getfixturevalue(which)
    rows = shard_rows(directory)
    stream = ShardStream(directory, 8, seed=3)
    seen = []
    for b in stream:
        ids, att = b["input_ids"], b["attention_mask"]
        assert ids.dtype == torch.int64 and att.dtype == torch.int64
        assert ids.shape == att.shape and ids.shape[0] == len(b["sample_id"])
        for r, sid in enumerate(b["sample_id"].tolist()):
            n = int(att[r].sum())
            assert ids[r, :n].tolist() == rows[sid]
            assert (ids[r, n:] == tok.pad_token_id).all() and (att[r, n:] == 0).all()
        if "word_ids" in b:
            assert b["word_ids"].shape == ids.shape
            assert (b["word_ids"][att == 0] == -1).all()
        seen += b["sample_id"].tolist()
    assert sorted(seen) == list(range(len(rows)))  # each sample exactly once
    assert seen != sorted(seen)  # shuffled


def test_fixed_shards_are_full_width(fixed_dir):
    b = next(iter(ShardStream(fixed_dir, 8, shuffle=False)))
    assert b["input_ids"].shape == (8, 32) and bool(b["attention_mask"].all())


def test_pad_to_max_length(var_dir):
    for b in ShardStream(var_dir, 16, pad_to_max_length=True):
        assert b["input_ids"].shape[1] == 32


def test_epochs_and_seeds(var_dir):
    s = ShardStream(var_dir, 8, seed=0)
    e0 = sids(s)
    assert sids(s) == e0  # same epoch, same order
    s.set_epoch(1)
    e1 = sids(s)
    assert e1 != e0 and sorted(sum(e1, [])) == sorted(sum(e0, []))
    assert sids(ShardStream(var_dir, 8, seed=0, epoch=1)) == e1
    assert sids(ShardStream(var_dir, 8, seed=1)) != e0
    flat = sum(sids(ShardStream(var_dir, 8, shuffle=False)), [])
    assert flat == sorted(flat)


def test_drop_last(var_dir):
    s = ShardStream(var_dir, 8, drop_last=True)
    got = sids(s)
    assert all(len(b) == 8 for b in got) and len(got) == s.num_rows // 8 == len(s)
    s = ShardStream(var_dir, 8)
    assert len(sids(s)) == -(-s.num_rows // 8) == len(s)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_elastic_determinism_over_ranks(var_dir, world_size):
    ref = sids(ShardStream(var_dir, 8, seed=5, epoch=2))
    per_rank = [
        sids(ShardStream(var_dir, 8, seed=5, epoch=2, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    # global batch i = step i // world_size on rank i % world_size
    assert sum(len(p) for p in per_rank) == len(ref)
    for i, batch in enumerate(ref):
        assert per_rank[i % world_size][i // world_size] == batch
    assert [
        len(ShardStream(var_dir, 8, rank=r, world_size=world_size)) for r in range(world_size)
    ] == [len(p) for p in per_rank]


@pytest.mark.parametrize("world_size", [1, 2])
def test_workers_deliver_the_same_batches(var_dir, world_size):
    for rank in range(world_size):
        ref = sids(ShardStream(var_dir, 8, seed=2, rank=rank, world_size=world_size))
        loader = make_loader(var_dir, 8, num_workers=2, seed=2, rank=rank, world_size=world_size)
        assert sids(loader) == ref


def test_resume_mid_epoch(var_dir):
    full = sids(ShardStream(var_dir, 8, seed=9, epoch=1))
    s = ShardStream(var_dir, 8, seed=9, epoch=1)
    it = iter(s)
    head = [next(it)["sample_id"].tolist() for _ in range(5)]
    state = s.state_dict()
    assert state["num_batches_consumed"] == 5 and state["epoch"] == 1
    fresh = ShardStream(var_dir, 8)  # seed and epoch come from the state
    fresh.load_state_dict(state)
    fresh.set_epoch(1)  # the usual loop calls it; same epoch keeps the position
    assert head + sids(fresh) == full
    # the position applies once: the next pass is a whole epoch again
    assert sids(fresh) == full
    # a different epoch discards it
    fresh.load_state_dict(state)
    fresh.set_epoch(2)
    assert len(sids(fresh)) == len(full)


def test_resume_at_epoch_end_then_next_epoch(var_dir):
    s = ShardStream(var_dir, 8)
    n = len(sids(s))
    state = s.state_dict()
    assert state["num_batches_consumed"] == n
    t = ShardStream(var_dir, 8)
    t.load_state_dict(state)
    assert sids(t) == []
    t.set_epoch(1)
    assert len(sids(t)) == n


def test_resume_with_workers_and_elastic_world(var_dir):
    full = sids(ShardStream(var_dir, 8, seed=4))
    loader = make_loader(var_dir, 8, num_workers=2, seed=4)
    head = []
    for b in loader:
        head.append(b["sample_id"].tolist())
        if len(head) == 7:
            break
    state = loader.state_dict()
    assert state["num_batches_consumed"] == 7  # delivered, not what workers prefetched
    assert head == full[:7]
    # resume on 2 ranks: global batches 7, 8, 9, ... alternate between them
    ranks = []
    for r in range(2):
        s = ShardStream(var_dir, 8, rank=r, world_size=2)
        s.load_state_dict(state)
        ranks.append(sids(s))
    rest = [ranks[j % 2][j // 2] for j in range(len(full) - 7)]
    assert head + rest == full
    # and a rank's state after k steps is the global count
    s = ShardStream(var_dir, 8, rank=1, world_size=2)
    s.load_state_dict(state)
    it = iter(s)
    next(it), next(it)
    assert s.state_dict()["num_batches_consumed"] == 7 + 2 * 2


def test_load_state_dict_checks_batch_size(var_dir):
    state = ShardStream(var_dir, 8).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        ShardStream(var_dir, 16).load_state_dict(state)


@pytest.mark.parametrize("which", ["var", "fixed"])
def test_collator_batches_equal_collating_the_plain_batches(var_dir, fixed_dir, tok, which):
    # With mlmfast's collator the stream hands it the shards' int32 ids (widened as they are
    # masked); the result is what collating the plain int64 batches gives, bit for bit. Any
    # other collator gets the documented int64 batches.
    import mlmfast

    path = var_dir if which == "var" else fixed_dir
    collator = mlmfast.DataCollatorForLanguageModeling(tok, seed=5)
    masked = list(ShardStream(path, 8, seed=2, collator=collator))
    plain = list(ShardStream(path, 8, seed=2))
    assert len(masked) == len(plain) > 3
    for got, raw in zip(masked, plain, strict=True):
        want = collator(dict(raw))
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
        assert got["input_ids"].dtype == got["labels"].dtype == torch.int64
    seen = []
    other = ShardStream(path, 8, seed=2, collator=lambda b: seen.append(b) or b)
    for b, raw in zip(other, plain, strict=True):
        assert b["input_ids"].dtype == torch.int64 and torch.equal(b["input_ids"], raw["input_ids"])


def test_collator_masks_by_sample_id(var_dir, tok):
    import mlmfast

    collator = mlmfast.DataCollatorForLanguageModeling(tok, seed=11)
    b0 = next(iter(ShardStream(var_dir, 8, seed=1, collator=collator)))
    assert {"input_ids", "attention_mask", "labels"} <= set(b0)
    assert (b0["labels"][b0["attention_mask"] == 0] == -100).all()
    assert (b0["labels"] != -100).any()
    # unmasked batches carry sample_id so the op can mask on the device, reproducibly
    raw = next(iter(ShardStream(var_dir, 8, seed=1)))
    out = mlmfast.mask_tokens(
        raw["input_ids"],
        attention_mask=raw["attention_mask"],
        sample_ids=raw["sample_id"],
        special_ids=sorted(set(tok.all_special_ids)),
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        seed=11,
    )
    assert out.labels.shape == raw["input_ids"].shape
    assert (out.labels[raw["attention_mask"] == 0] == -100).all()


def test_rank_validation(var_dir):
    with pytest.raises(ValueError, match="rank must be in"):
        ShardStream(var_dir, 8, rank=2, world_size=2)


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"num_batches_consumed": -1}, "num_batches_consumed must be an integer >= 0, got -1"),
        ({"num_batches_consumed": 10**6}, "num_batches_consumed is 1000000 but an epoch has"),
        ({"num_batches_consumed": 1.5}, "num_batches_consumed must be an integer"),
        ({"epoch": -2}, "epoch must be an integer >= 0, got -2"),
        ({"epoch": None}, "epoch must be an integer"),
    ],
)
def test_load_state_dict_names_a_bad_position(var_dir, edit, match):
    stream = ShardStream(var_dir, 8, seed=0)
    state = {**stream.state_dict(), **edit}
    with pytest.raises(ValueError, match=match):
        stream.load_state_dict(state)
    with pytest.raises(ValueError, match=r"lacks \['seed'\]"):
        stream.load_state_dict({"epoch": 0, "num_batches_consumed": 0})
