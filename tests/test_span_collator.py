"""Tests of ``mlmfast.DataCollatorForSpanCorruption`` and a T5 pre-training smoke test.

The tokenizer is built here, offline: a word-level ``tokenizers`` model over the words of
tests/corpus.py with T5's special tokens (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) and 20 sentinels
``<extra_id_0..19>`` at the end of the vocabulary, ``<extra_id_0>`` last (T5's layout), wrapped
in ``PreTrainedTokenizerFast``: what the collator reads of a T5 tokenizer (the sentinel tokens,
eos and pad) without a download.
"""

from __future__ import annotations

import pytest
import torch
from corpus import WORDS, random_docs

import mlmfast
from mlmfast import reference

N_SENTINELS = 20


def t5_like_tokenizer(descending: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sentinels = [f"<extra_id_{i}>" for i in range(N_SENTINELS)]
    tokens = ["<pad>", "</s>", "<unk>", *WORDS, *(reversed(sentinels) if descending else sentinels)]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=sentinels,
    )


@pytest.fixture(scope="module")
def t5_tok():
    return t5_like_tokenizer()


def examples(tok, n: int, seed: int = 0, with_ids: bool = False) -> list[dict]:
    texts = random_docs(n, seed=seed, min_words=4, max_words=40)
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    out = [{"input_ids": e} for e in enc]
    if with_ids:
        for i, ex in enumerate(out):
            ex["sample_id"] = 1000 + i
    return out


def test_sentinels_read_from_the_tokenizer(t5_tok):
    start = len(t5_tok) - 1
    assert mlmfast.span_collator.sentinel_ids(t5_tok) == (start, -1, N_SENTINELS)
    up = t5_like_tokenizer(descending=False)
    assert mlmfast.span_collator.sentinel_ids(up) == (3 + len(WORDS), 1, N_SENTINELS)
    c = mlmfast.DataCollatorForSpanCorruption(up, seed=1)
    batch = c(examples(up, 4, with_ids=True))
    sent = batch["labels"][:, 0]  # every label row starts with the first sentinel
    assert (sent == 3 + len(WORDS)).all()


def test_batch_equals_the_op_and_the_reference(t5_tok):
    c = mlmfast.DataCollatorForSpanCorruption(t5_tok, seed=42, return_decoder_input_ids=True)
    c.set_epoch(3)
    exs = examples(t5_tok, 6, with_ids=True)
    batch = c(exs)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_input_ids"}
    lengths = torch.tensor([len(e["input_ids"]) for e in exs])
    L = int(lengths.max())
    ids = torch.tensor([e["input_ids"] + [0] * (L - len(e["input_ids"])) for e in exs])
    want = reference.span_corrupt(
        ids,
        sentinel_start=len(t5_tok) - 1,
        eos_token_id=1,
        pad_token_id=0,
        inputs_length=batch["input_ids"].shape[1],
        targets_length=batch["labels"].shape[1],
        lengths=lengths,
        sample_ids=torch.arange(1000, 1006),
        seed=42,
        epoch=3,
    )
    for key, w in zip(("input_ids", "attention_mask", "labels"), want, strict=True):
        assert batch[key].dtype == torch.int64
        assert torch.equal(batch[key], w), key
    # the longest row fits exactly (widths from the batch)
    assert batch["input_ids"].shape[1] == mlmfast.span_corruption_lengths(L)[0]
    # decoder inputs: labels shifted right after the start id (pad), -100 as pad
    dec, lab = batch["decoder_input_ids"], batch["labels"]
    assert (dec[:, 0] == 0).all()
    assert torch.equal(dec[:, 1:], lab[:, :-1].masked_fill(lab[:, :-1] == -100, 0))
    # numpy output, and an example's corruption whatever batch it is in
    np_batch = c(exs[::-1], return_tensors="np")
    assert (np_batch["labels"][::-1][:, : lab.shape[1]] == lab.numpy()).all()


def test_fixed_widths(t5_tok):
    tokens, targets = mlmfast.compute_input_and_target_lengths(32)
    c = mlmfast.DataCollatorForSpanCorruption(t5_tok, input_length=32, seed=0)
    assert c.target_length == targets
    rows = [list(range(3, 3 + len(WORDS))) * 3][0][:tokens]
    batch = c([rows, rows[: tokens // 2]])
    assert batch["input_ids"].shape == (2, 32) and batch["labels"].shape == (2, targets)
    assert batch["attention_mask"][0].all()  # a packed row fills its inputs exactly
    c2 = mlmfast.DataCollatorForSpanCorruption(t5_tok, tokens_length=tokens, seed=0)
    assert (c2.input_length, c2.target_length) == (32, targets)
    with pytest.raises(ValueError, match="row 0 .* needs inputs_length >= 33"):
        c([rows + [3]])
    # padded columns in, with an attention mask
    ids = torch.full((2, tokens), 0)
    ids[0], ids[1, :10] = torch.tensor(rows), torch.tensor(rows[:10])
    att = (ids != 0).long()
    att[0] = 1
    padded = c({"input_ids": ids, "attention_mask": att})
    assert padded["input_ids"].shape == (2, 32)


def test_streams_and_epochs(t5_tok):
    exs = examples(t5_tok, 5, seed=3)
    a = mlmfast.DataCollatorForSpanCorruption(t5_tok, seed=7)
    b = mlmfast.DataCollatorForSpanCorruption(t5_tok, seed=7)
    first, again = a(exs), b(exs)
    assert torch.equal(first["labels"], again["labels"])  # seed alone reproduces a run
    second = a(exs)  # the stream goes on: new corruption for the next batch
    assert not torch.equal(first["labels"], second["labels"])
    c = mlmfast.DataCollatorForSpanCorruption(t5_tok, seed=7, epoch=1)
    assert not torch.equal(first["labels"], c(exs)["labels"])


def test_dataloader_workers_get_their_own_streams(t5_tok):
    """The seed streams shared with the MLM collator: with a seed and no sample ids, two
    DataLoader workers given the same examples corrupt them differently, and a second run with
    the same seed repeats both."""
    rows = [ex["input_ids"] for ex in examples(t5_tok, 4, seed=2)]
    data = [rows, rows]  # one batch per worker, the same examples in both

    def run() -> list[torch.Tensor]:
        collator = mlmfast.DataCollatorForSpanCorruption(t5_tok, seed=11)
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=None,
            num_workers=2,
            collate_fn=collator,
            multiprocessing_context="fork",
        )
        return [b["labels"] for b in loader]

    first, again = run(), run()
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_bad_configuration(t5_tok):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(ValueError, match="noise_density must be in"):
        mlmfast.DataCollatorForSpanCorruption(t5_tok, noise_density=1.5)
    with pytest.raises(ValueError, match="mean_noise_span_length must be >= 1"):
        mlmfast.DataCollatorForSpanCorruption(t5_tok, mean_noise_span_length=0)
    with pytest.raises(ValueError, match="input_length must be None or an int >= 2"):
        mlmfast.DataCollatorForSpanCorruption(t5_tok, input_length=1)
    plain = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")),
        pad_token="<pad>",
        unk_token="<unk>",
    )
    with pytest.raises(ValueError, match="no <extra_id_0> token"):
        mlmfast.DataCollatorForSpanCorruption(plain)
    few = mlmfast.DataCollatorForSpanCorruption(t5_tok, seed=0)
    with pytest.raises(ValueError, match="noise spans but only num_sentinels=20"):
        few([list(range(3, 3 + len(WORDS))) * 40])  # 480 tokens: 24 spans


def test_t5_trains_and_its_loss_falls(t5_tok):
    """A tiny T5ForConditionalGeneration (d_model 32, 2 layers) on batches of the collator: the
    loss of the last steps is well below that of the first (uniform guessing over the vocabulary
    is ln(35) = 3.6; the word frequencies and the sentinels are quickly learnt)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(t5_tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=t5_tok.pad_token_id,
        eos_token_id=t5_tok.eos_token_id,
        decoder_start_token_id=t5_tok.pad_token_id,
        dropout_rate=0.0,
    )
    model = T5ForConditionalGeneration(config)
    tokens, _ = mlmfast.compute_input_and_target_lengths(32)
    # packed rows of `tokens` tokens, as T5 pre-training reads them
    stream = [i for e in examples(t5_tok, 400, seed=1) for i in e["input_ids"] + [1]]
    rows = [stream[i : i + tokens] for i in range(0, len(stream) - tokens, tokens)]
    collator = mlmfast.DataCollatorForSpanCorruption(t5_tok, input_length=32, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        batch = collator(rows[(step * 16) % (len(rows) - 16) :][:16])
        assert batch["input_ids"].shape[1] == 32
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 3.0, losses[:5]
    assert last < first - 1.0, (first, last)
