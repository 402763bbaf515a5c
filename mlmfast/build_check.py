"""Does the running torch fit the one mlmfast._C was compiled against?

A C++ extension uses one torch's C++ ABI: loaded next to another torch it fails with an
undefined symbol, or worse, loads and misbehaves. setup.py records the torch X.Y and its CUDA
version in mlmfast/_version_build.py; ``import mlmfast`` calls :func:`check_torch` before it
loads ``_C`` and stops with one line naming both and the fix.
"""

from __future__ import annotations

import re

__all__ = ["TorchMismatchError", "check_torch", "torch_mismatch"]


class TorchMismatchError(ImportError):
    """The installed torch is not the one mlmfast._C was built for."""


def _major_minor(version: str) -> str | None:
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def torch_mismatch(
    mlmfast_version: str,
    built_torch: str,
    built_cuda: str | None,
    torch_version: str,
    torch_cuda: str | None,
) -> str | None:
    """The one-line error for running a build of mlmfast (``built_torch`` X.Y, ``built_cuda``
    the CUDA version of that torch or None for a CPU-only build) with torch ``torch_version``
    (``torch_cuda`` its ``torch.version.cuda``), or None when they fit.

    They fit when X.Y is the same (patch releases keep the C++ ABI) and, for a CUDA build, the
    running torch has CUDA of the same major version (the extension links that libcudart). A
    CPU-only build fits a CUDA torch of the same X.Y: it uses only torch's CPU libraries."""
    if _major_minor(built_torch) is None:
        raise ValueError(f"built_torch: expected a torch version X.Y, got {built_torch!r}")
    running = _major_minor(torch_version)
    if running is None:
        raise ValueError(f"torch_version: expected a torch version, got {torch_version!r}")
    built_desc = f"CUDA {built_cuda}" if built_cuda else "CPU"
    running_desc = f"CUDA {torch_cuda}" if torch_cuda else "CPU-only"
    head = (
        f"mlmfast {mlmfast_version} was built for torch {built_torch} ({built_desc}) "
        f"but torch {torch_version} ({running_desc}) is installed: "
    )
    if running != _major_minor(built_torch):
        variant = f"CUDA {torch_cuda}" if torch_cuda else "CPU"
        return (
            head + f"pip install 'torch=={built_torch}.*' or a mlmfast wheel built for torch "
            f"{running} ({variant}), or rebuild mlmfast from source against it"
        )
    if built_cuda and (torch_cuda is None or torch_cuda.split(".")[0] != built_cuda.split(".")[0]):
        return (
            head + f"install a CUDA {built_cuda.split('.')[0]}.x build of torch {built_torch}, "
            f"or a mlmfast wheel built for this torch (+cpu for a CPU-only torch), or rebuild "
            "mlmfast from source against it"
        )
    return None


def check_torch() -> None:
    """Raises :class:`TorchMismatchError` when the running torch does not fit this build. A
    source tree without a build (no _version_build.py) is not checked: _C is missing anyway."""
    try:
        from mlmfast import _version_build as build
    except ImportError:
        return
    # records written before the torch version was recorded: nothing to compare with
    built_torch = getattr(build, "torch_version", None)
    if built_torch is None:
        return
    import torch

    problem = torch_mismatch(
        build.__version__,
        built_torch,
        getattr(build, "cuda_version", None),
        torch.__version__,
        torch.version.cuda,
    )
    if problem is not None:
        _one_line_if_uncaught()
        raise TorchMismatchError(problem)


def _one_line_if_uncaught() -> None:
    """Left uncaught (``mlmfast info``, a script's ``import mlmfast``), the error prints as its
    one line on stderr, not as a traceback through the import machinery; other exceptions, and
    ones a caller catches, are untouched."""
    import sys

    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, TorchMismatchError):
            print(f"{kind.__name__}: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
