"""Philox4x32-10: Random123 known answers, C++ op vs the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch

import mlmfast
from mlmfast import reference

M32 = 0xFFFFFFFF

# Random123 kat_vectors, philox4x32_10: (counter, key, expected output).
KNOWN_ANSWERS = [
    pytest.param(
        (0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x00000000, 0x00000000),
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
        id="zeros",
    ),
    pytest.param(
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
        id="ones",
    ),
    pytest.param(
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        id="pi",
    ),
]


def seed_of(key: tuple[int, int]) -> int:
    """The op's 64-bit seed is the Philox key, low word first."""
    return key[0] | (key[1] << 32)


class TestKnownAnswers:
    @pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
    def test_cpp_op(self, counter, key, expected):
        out = mlmfast.ops.philox4x32_10(torch.tensor([counter], dtype=torch.int64), seed_of(key))
        assert out.dtype == torch.int64
        assert out.tolist() == [list(expected)]

    @pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
    def test_reference(self, counter, key, expected):
        out = reference.philox4x32_10(counter, key)
        assert tuple(int(w) for w in out) == expected

    @pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
    def test_signed_seed_is_the_same_key(self, counter, key, expected):
        # Seeds >= 2^63 travel through the int64 schema as negative numbers: same 64 key bits.
        seed = seed_of(key)
        signed = seed - 2**64 if seed >= 2**63 else seed
        counters = torch.tensor([counter], dtype=torch.int64)
        assert torch.equal(
            mlmfast.ops.philox4x32_10(counters, seed), mlmfast.ops.philox4x32_10(counters, signed)
        )


class TestOpVsReference:
    def test_random_counters_and_keys(self):
        g = torch.Generator().manual_seed(1234)
        n_keys, n_per_key = 16, 256  # 4096 blocks in all
        for _ in range(n_keys):
            k0, k1 = (int(v) for v in torch.randint(0, 2**32, (2,), generator=g))
            counters = torch.randint(0, 2**32, (n_per_key, 4), generator=g, dtype=torch.int64)
            # Edge words in the first rows: all zeros, all ones.
            counters[0] = 0
            counters[1] = M32
            got = mlmfast.ops.philox4x32_10(counters, seed_of((k0, k1)))
            want = torch.stack(reference.philox4x32_10(counters.unbind(1), (k0, k1)), dim=1)
            assert torch.equal(got, want)
            assert int(got.min()) >= 0 and int(got.max()) <= M32

    def test_empty(self):
        out = mlmfast.ops.philox4x32_10(torch.empty(0, 4, dtype=torch.int64), 7)
        assert out.shape == (0, 4)

    def test_bad_counters(self):
        with pytest.raises(RuntimeError, match="counters"):
            mlmfast.ops.philox4x32_10(torch.zeros(3, 3, dtype=torch.int64), 0)
        with pytest.raises(RuntimeError, match="counters"):
            mlmfast.ops.philox4x32_10(torch.zeros(3, 4, dtype=torch.int32), 0)
