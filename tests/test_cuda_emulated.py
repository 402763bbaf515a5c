"""The CUDA kernels, run on the CPU: tests/cuda_emu builds the device code of
csrc/cuda/mask_kernels.cuh (unchanged) against a host emulation of the CUDA built-ins (one thread
per CUDA thread, barriers for __syncthreads, garbage in shared memory before each block) and the
CUDA op's host code. Its masks must equal the reference's bit for bit, in every mode and form.
The same module carries the span-corruption kernel (csrc/cuda/span_kernels.cuh), tested in
tests/test_span_corrupt.py.

This is what checks the kernels' logic in CI, which has no GPU: indexing, the per-row selection of
exact mode, barriers, the grid loop over long rows, the vectorised and scalar paths. What it cannot
check (a GPU's memory model, launch limits, the device-only intrinsics) is left to the CUDA twins
of the other tests, which run wherever a GPU exists (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mask_tokens import BERT, bert_batch, mask_cases, oracle, rich_kwargs

from mlmfast.ops import _args

ROOT = Path(__file__).resolve().parents[1]
# gridDim.y and the shared memory a block may opt into on an H100/H200
DEVICE_LIMITS = (65535, 232448)


@pytest.fixture(scope="module")
def emu():
    """torch.ops.mlmfast_emu, compiled on first use (about a minute on two cores; cached under
    build/cuda_emu)."""
    from torch.utils import cpp_extension

    # ninja from the environment's bin when it is not activated (make test runs .venv's python)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    build = ROOT / "build" / "cuda_emu"
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="mlmfast_cuda_emu",
        sources=[
            str(ROOT / "tests" / "cuda_emu" / "emu.cpp"),
            str(ROOT / "csrc" / "mask_tokens.cpp"),
            str(ROOT / "tests" / "cuda_emu" / "span_emu.cpp"),
            str(ROOT / "csrc" / "span_corrupt.cpp"),
        ],
        extra_include_paths=[str(ROOT / "csrc"), str(ROOT / "tests" / "cuda_emu")],
        extra_cflags=["-O2", "-std=c++20", "-Wno-unknown-pragmas"],
        build_directory=str(build),
        is_python_module=False,
        verbose=os.environ.get("MLMFAST_EMU_VERBOSE") == "1",
    )
    ops = torch.ops.mlmfast_emu
    ops.set_limits(*DEVICE_LIMITS)
    yield ops
    ops.set_limits(*DEVICE_LIMITS)


def run_emulated(ops, ids: torch.Tensor, form: str, kwargs: dict):
    """The emulated CUDA op in one of its forms: "out" (out of place), "inplace", "widen"
    (mask_tokens_into int32 ids -> int64 outputs)."""
    args = _args(ids, kwargs)
    if form == "out":
        return ops.mask_tokens(ids, *args)
    if form == "inplace":
        out, labels = ids.clone(), torch.empty_like(ids)
        ops.mask_tokens_(out, labels, *args)
        return out, labels
    out = torch.empty(ids.shape, dtype=torch.int64)
    labels = torch.empty_like(out)
    ops.mask_tokens_into(ids, out, labels, *args)
    return out, labels


def check(ops, ids: torch.Tensor, kwargs: dict, form: str = "out") -> None:
    want = oracle(ids, **kwargs)
    out, labels = run_emulated(ops, ids, form, kwargs)
    want_ids, want_labels = want.input_ids, want.labels
    if form == "widen":
        want_ids, want_labels = want_ids.long(), want_labels.long()
    assert out.dtype == want_ids.dtype and labels.dtype == want_labels.dtype
    bad = (out != want_ids) | (labels != want_labels)
    assert not bad.any(), f"emulated CUDA != reference at {torch.nonzero(bad)[:5].tolist()}"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    case=mask_cases(max_batch=4, max_length=80), form=st.sampled_from(["out", "inplace", "widen"])
)
def test_emulated_cuda_matches_reference(emu, case, form):
    ids, kwargs = case
    check(emu, ids, kwargs, form if form != "widen" or ids.dtype == torch.int32 else "out")


def rich_case(B: int, L: int, *, left: bool, seed: int):
    """BERT-like rows (left or right padded), and rich_kwargs' word ids and POS classes plus
    sample ids and a special_tokens_mask."""
    ids, att = bert_batch(B, L, seed=seed, min_len=0)
    if left:
        shifts = (L - att.sum(1)).tolist()  # the padding moves to the front
        ids = torch.stack([r.roll(s) for r, s in zip(ids, shifts, strict=True)])
        att = torch.stack([r.roll(s) for r, s in zip(att, shifts, strict=True)])
    rich = rich_kwargs(ids, att, g_seed=seed)
    g = torch.Generator().manual_seed(seed)
    extra = {key: rich[key] for key in ("word_ids", "pos_ids", "pos_probs")}
    extra["sample_ids"] = torch.randint(-(2**62), 2**62, (B,), generator=g)
    extra["special_tokens_mask"] = (torch.rand(B, L, generator=g) < 0.05).long()
    return ids, att, extra


# Lengths around the Bernoulli kernel's block of 512 tokens and its 4-token vectors; in exact
# mode all of them in shared memory.
@pytest.mark.parametrize("L", [1, 3, 4, 511, 512, 513, 1029, 4096])
@pytest.mark.parametrize("mode", ["bernoulli", "exact"])
def test_emulated_cuda_lengths(emu, L, mode):
    for left in (False, True):
        ids, att, extra = rich_case(3, L, left=left, seed=L)
        base = {**BERT, "attention_mask": att, "seed": 99 + L, "epoch": 3, "mode": mode}
        for kwargs in (base, {**base, **extra, "mlm_probability": 0.3}):
            for dtype in (torch.int64, torch.int32):
                forms = ["out", "inplace"] + (["widen"] if dtype == torch.int32 else [])
                for form in forms:
                    check(emu, ids.to(dtype), kwargs, form)


def test_emulated_cuda_scalar_path_and_grid_loop(emu):
    """Storage that is not 16-byte aligned takes the kernel's scalar loads; a grid shorter than
    the row makes each block loop over several 512-token chunks (gridDim.y is capped at 65,535:
    rows over ~33.5M tokens)."""
    ids, att = bert_batch(3, 1100, seed=4)
    shifted = torch.cat([torch.zeros(1, dtype=torch.long), ids.flatten()])[1:].view(3, 1100)
    assert shifted.data_ptr() % 16 != 0
    check(emu, shifted, {**BERT, "seed": 7, "mlm_probability": 0.5})
    for cap in (1, 2):
        emu.set_limits(cap, DEVICE_LIMITS[1])
        try:
            for x in (ids, shifted, ids.int()):
                check(emu, x, {**BERT, "attention_mask": att, "seed": cap, "mlm_probability": 0.3})
        finally:
            emu.set_limits(*DEVICE_LIMITS)


def test_emulated_cuda_device_rng_state_and_empty(emu):
    ids, att = bert_batch(4, 40, seed=9)
    check(emu, ids, {**BERT, "attention_mask": att, "rng_state": torch.tensor([2**62 + 7, 11])})
    check(emu, ids, {**BERT, "rng_state": torch.tensor([-3, 2]), "mode": "exact"})
    for shape in ((0, 5), (3, 0)):
        for mode in ("bernoulli", "exact"):
            check(emu, torch.empty(shape, dtype=torch.int64), {**BERT, "mode": mode})


def test_emulated_cuda_exact_global_scratch(emu):
    """Exact mode's rows that do not fit in shared memory work in a global scratch buffer: forced
    for short rows (no shared memory at all), and by length for rows of 8,200 tokens."""
    emu.set_limits(DEVICE_LIMITS[0], 0)
    try:
        for L in (1, 513, 1029):
            ids, att, extra = rich_case(3, L, left=L == 513, seed=L)
            base = {**BERT, "attention_mask": att, "seed": 5, "mode": "exact"}
            for kwargs in (base, {**base, **extra, "mlm_probability": 0.3}):
                check(emu, ids, kwargs)
                check(emu, ids.int(), kwargs, "widen")
    finally:
        emu.set_limits(*DEVICE_LIMITS)
    ids, att = bert_batch(2, 8200, seed=3)
    check(emu, ids, {**BERT, "attention_mask": att, "seed": 6, "mode": "exact"})


def test_emulation_reports_divergent_barriers(emu):
    """A __syncthreads that only part of a block reaches is an error, not a hang or a pass."""
    with pytest.raises(RuntimeError, match="__syncthreads in divergent code"):
        emu.divergent_barrier_demo()
