"""The CPU kernel picks AVX-512, AVX2 or portable code at run time; every path must give the
reference's masks. MLMFAST_CPU_ISA caps the choice, so each path runs in its own process."""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import torch, mlmfast
from mlmfast import reference as R
torch.set_num_threads(1)
g = torch.Generator().manual_seed(7)
for trial in range(12):
    B, L = 5, int(torch.randint(1, 700, (1,), generator=g))
    ids = torch.randint(0, 60, (B, L), generator=g)
    att = (torch.rand(B, L, generator=g) > 0.2).long()
    att[:, L // 2 + trial:] = 0
    stm = (torch.rand(B, L, generator=g) > 0.9).long()
    # flag inputs as int64, bool and int32 / uint8; all, none or some special ids; p = 1 too
    kw = dict(mask_token_id=3, vocab_size=60, special_ids=[[0, 1, 2, 3], [], [2]][trial % 3],
              attention_mask=[att, att.bool(), att.int()][trial % 3],
              special_tokens_mask=[stm, stm.to(torch.uint8)][trial % 4 // 2] if trial % 2 else None,
              seed=trial, epoch=trial % 3, mlm_probability=1.0 if trial % 4 == 3 else 0.3)
    for x in (ids, ids.int()):
        a, b = mlmfast.mask_tokens(x, **kw), R.mask_tokens(x, **kw)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels), trial
        o, l = torch.empty_like(ids), torch.empty_like(ids)  # int64: int32 ids are widened
        mlmfast.mask_tokens_into(x, o, l, **kw)
        assert torch.equal(o, b.input_ids.long()) and torch.equal(l, b.labels.long()), trial
    bad = ids.clone()
    bad[3, L - 1] = 60
    kw["attention_mask"] = None
    for x in (bad, bad.int()):
        try:
            mlmfast.mask_tokens(x, **kw)
            raise AssertionError("an id outside the vocabulary passed")
        except RuntimeError as e:
            assert f"input_ids[3, {L - 1}] = 60 is outside" in str(e), str(e)
    # many short rows (groups of rows fill up by segments, not by draws), left padding, sample
    # ids, HF-style random replacement (specials allowed) and a 0/1 split
    B, L = 300, 1 + trial % 9
    ids = torch.randint(0, 60, (B, L), generator=g)
    lens = torch.randint(0, L + 1, (B,), generator=g)
    att = (torch.arange(L) >= L - lens[:, None]).long()
    kw = dict(mask_token_id=3, vocab_size=60, special_ids=[0, 1, 2, 3], attention_mask=att,
              seed=trial, mlm_probability=0.5, sample_ids=torch.randint(0, 2**40, (B,), generator=g),
              exclude_special_from_random=trial % 2 == 0,
              mask_replace_prob=[0.8, 0.0][trial % 2], random_replace_prob=[0.1, 1.0][trial % 2])
    for x in (ids, ids.int()):
        a, b = mlmfast.mask_tokens(x, **kw), R.mask_tokens(x, **kw)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels), trial
    # word ids (kernel's word_units): runs of 1-4 tokens in increasing id order, tokens outside
    # words, word ids that restart (a pair) or come back; whole words, exact and span masking
    B, L = 6, int(torch.randint(1, 700, (1,), generator=g))
    ids = torch.randint(0, 60, (B, L), generator=g)
    starts = torch.rand(B, L, generator=g) < 0.6
    words = torch.cumsum(starts.long(), dim=1) + int(torch.randint(0, 9, (1,), generator=g))
    words[torch.rand(B, L, generator=g) < 0.05] = -1
    words[1, L // 2:] -= words[1, L // 2] - 1  # restart (a pair's second text)
    words[2, L // 3] = words[2, 0]  # a word that comes back
    att = torch.ones(B, L, dtype=torch.long)
    att[3, L * 2 // 3:] = 0
    att[4, : L // 4] = 0
    kw = dict(mask_token_id=3, vocab_size=60, special_ids=[0, 1, 2], attention_mask=att,
              seed=trial, epoch=1, mlm_probability=[0.15, 0.4][trial % 2])
    for mode in ("bernoulli", "exact", "span"):
        for w in (words, words.int()):
            a = mlmfast.mask_tokens(ids, word_ids=w, mode=mode, **kw)
            b = R.mask_tokens(ids, word_ids=w, mode=mode, **kw)
            assert torch.equal(a.input_ids, b.input_ids), (trial, mode)
            assert torch.equal(a.labels, b.labels), (trial, mode)
    c = torch.randint(0, 2**32, (67, 4), generator=g)
    for n in (1, 7, 8, 16, 17, 67):
        ref = torch.stack(R.philox4x32_10(tuple(c[:n].T), (trial, trial + 1)), dim=1)
        assert torch.equal(mlmfast.ops.philox4x32_10(c[:n], trial | (trial + 1) << 32), ref)
print("ok")
"""


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_every_cpu_path_matches_reference(isa):
    env = dict(os.environ, MLMFAST_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")
