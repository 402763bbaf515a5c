"""Shared pytest plumbing: RNG hygiene and the CPU/CUDA device parametrisation."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

import mlmfast  # noqa: F401  (registers torch.ops.mlmfast.*)

# Verification stamps of the tests' shards go to a directory of this run, not the user's cache
# (subprocesses inherit it).
os.environ["MLMFAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="mlmfast-test-cache-")


def _cuda_kernel_available() -> bool:
    # A CUDA-enabled torch is not enough: the extension may have been built without its CUDA
    # sources (MLMFAST_NO_CUDA=1, no toolkit), and then the op has only a CPU kernel.
    return torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "mlmfast::mask_tokens", "CUDA"
    )


HAS_CUDA_KERNEL = _cuda_kernel_available()
_NO_CUDA_REASON = (
    "no CUDA device"
    if not torch.cuda.is_available()
    else "mlmfast was built without its CUDA kernel"
)

# The devices every twin test runs on: "cpu" always, "cuda" where a GPU and the kernel exist.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA_KERNEL, reason=_NO_CUDA_REASON)],
    ),
]


@pytest.fixture(scope="module")
def tok():
    """The embedded bert-base-uncased fast tokenizer, one per test module. Shared within a
    module: tests must not mutate it (load a fresh one to add tokens)."""
    from mlmfast.data import load_tokenizer

    return load_tokenizer()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Parametrises a test over :data:`DEVICES`."""
    return request.param


@pytest.fixture
def cuda_device() -> str:
    """For CUDA-only tests (mark them ``pytest.mark.cuda`` too)."""
    if not HAS_CUDA_KERNEL:
        pytest.skip(_NO_CUDA_REASON)
    return "cuda"


@pytest.fixture(autouse=True)
def _keep_torch_rng_state():
    """Tests may reseed torch's generators (seed=None draws from them); none leaks its state."""
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    yield
    torch.set_rng_state(cpu_state)
    if cuda_states is not None:
        torch.cuda.set_rng_state_all(cuda_states)
