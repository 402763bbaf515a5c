"""Tests of what a build records and checks: the torch a build of mlmfast._C fits
(mlmfast/build_check.py) and the GPU architectures read from the library (mlmfast/fatbin.py)."""

from __future__ import annotations

import importlib.util
import re
import struct
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import mlmfast
from mlmfast import _C, build_check, fatbin
from mlmfast.build_check import TorchMismatchError, torch_mismatch

CUDA_BUILD = ("0.1.0+cu130torch2.14", "2.14", "13.0")
CPU_BUILD = ("0.1.0+cputorch2.13", "2.13", None)


class TestTorchMismatch:
    @pytest.mark.parametrize(
        ("build", "torch_version", "torch_cuda"),
        [
            (CUDA_BUILD, "2.14.1+cu130", "13.0"),
            (CUDA_BUILD, "2.14.0", "13.0"),  # another patch release: same C++ ABI
            (CUDA_BUILD, "2.14.1+cu132", "13.2"),  # same CUDA major: same libcudart
            (CPU_BUILD, "2.13.0+cpu", None),
            (CPU_BUILD, "2.13.1+cu130", "13.0"),  # a CPU-only build uses torch's CPU libraries
        ],
    )
    def test_fits(self, build, torch_version, torch_cuda):
        assert torch_mismatch(*build, torch_version, torch_cuda) is None

    def test_other_torch_names_both_and_the_fix(self):
        msg = torch_mismatch(*CUDA_BUILD, "2.13.0+cpu", None)
        assert msg == (
            "mlmfast 0.1.0+cu130torch2.14 was built for torch 2.14 (CUDA 13.0) but torch "
            "2.13.0+cpu (CPU-only) is installed: pip install 'torch==2.14.*' or a mlmfast wheel "
            "built for torch 2.13 (CPU), or rebuild mlmfast from source against it"
        )
        assert "\n" not in msg

    def test_newer_torch(self):
        msg = torch_mismatch(*CPU_BUILD, "2.14.1+cu130", "13.0")
        assert "built for torch 2.13 (CPU) but torch 2.14.1+cu130 (CUDA 13.0)" in msg
        assert "pip install 'torch==2.13.*'" in msg

    @pytest.mark.parametrize(
        ("torch_version", "torch_cuda"), [("2.14.1+cpu", None), ("2.14.1+cu126", "12.6")]
    )
    def test_same_torch_other_cuda(self, torch_version, torch_cuda):
        msg = torch_mismatch(*CUDA_BUILD, torch_version, torch_cuda)
        assert f"but torch {torch_version}" in msg
        assert "install a CUDA 13.x build of torch 2.14" in msg

    def test_major_minor_compared_as_numbers(self):
        assert torch_mismatch("v", "2.1", None, "2.10.0", None) is not None
        assert torch_mismatch("v", "2.10", None, "2.10.0a0+git123", None) is None

    def test_bad_versions_name_the_argument(self):
        with pytest.raises(ValueError, match="built_torch: expected a torch version X.Y"):
            torch_mismatch("v", "two", None, "2.14.1", None)
        with pytest.raises(ValueError, match="torch_version: expected a torch version"):
            torch_mismatch("v", "2.14", None, "", None)


def _record(**fields) -> types.ModuleType:
    module = types.ModuleType("mlmfast._version_build")
    module.__dict__.update(fields)
    return module


class TestCheckTorch:
    def test_this_build_fits_the_running_torch(self):
        build_check.check_torch()  # the suite imported mlmfast already; this must not raise

    def test_a_record_for_another_torch_raises(self, monkeypatch):
        other = "1.0"
        record = _record(__version__="0.1.0+cputorch1.0", torch_version=other, cuda_version=None)
        monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
        monkeypatch.setitem(sys.modules, "mlmfast._version_build", record)
        monkeypatch.setattr(mlmfast, "_version_build", record, raising=False)
        with pytest.raises(
            TorchMismatchError,
            match=re.escape(f"built for torch 1.0 (CPU) but torch {torch.__version__} ("),
        ):
            build_check.check_torch()

    def test_a_record_without_torch_version_is_not_checked(self, monkeypatch):
        record = _record(__version__="0.1.0", built_with_cuda=False)
        monkeypatch.setitem(sys.modules, "mlmfast._version_build", record)
        monkeypatch.setattr(mlmfast, "_version_build", record, raising=False)
        build_check.check_torch()

    def test_uncaught_it_prints_one_line(self):
        """``import mlmfast`` next to another torch, left uncaught (a script, ``mlmfast info``):
        one line on stderr, no traceback."""
        code = (
            "import types, mlmfast, mlmfast.build_check as b\n"
            "mlmfast._version_build = types.SimpleNamespace("
            "__version__='0.1.0+cputorch1.0', torch_version='1.0', cuda_version=None)\n"
            "b.check_torch()\n"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("TorchMismatchError: mlmfast 0.1.0+cputorch1.0 was built for")

    def test_is_an_import_error(self):
        assert issubclass(TorchMismatchError, ImportError)


def _fatbin(entries: list[tuple[int, int]], payload: int = 24) -> bytes:
    """A fat binary with an entry of `payload` bytes per (kind, arch)."""
    body = b""
    for kind, arch in entries:
        header = struct.pack("<HHIQ", kind, 0x0101, 64, payload) + bytes(12)
        header += struct.pack("<I", arch) + bytes(64 - 32)
        body += header + b"\xab" * payload
    return struct.pack("<IHHQ", fatbin.FATBIN_MAGIC, 1, 16, len(body)) + body


class TestFatbin:
    def test_entries_sorted_native_code_first(self):
        blob = _fatbin([(1, 100), (2, 100), (2, 80)]) + bytes(8) + _fatbin([(2, 90), (2, 80)])
        assert fatbin.fatbin_archs(blob) == ["sm_80", "sm_90", "sm_100", "compute_100"]

    def test_empty(self):
        assert fatbin.fatbin_archs(b"") == []

    def test_garbage_is_an_error(self):
        with pytest.raises(ValueError, match="no fat binary header at byte 0"):
            fatbin.fatbin_archs(b"\x01" * 32)
        bad_kind = _fatbin([(7, 90)])
        with pytest.raises(ValueError, match="unknown fat binary entry"):
            fatbin.fatbin_archs(bad_kind)

    def test_not_elf(self, tmp_path):
        path = tmp_path / "x.so"
        path.write_bytes(b"not an ELF file")
        with pytest.raises(ValueError, match="path: expected a 64-bit little-endian ELF file"):
            fatbin.cuda_archs(str(path))

    def test_the_library_carries_the_recorded_archs(self):
        """What setup.py recorded (TORCH_CUDA_ARCH_LIST) is what the binary holds."""
        archs = fatbin.cuda_archs(_C.__file__)
        if not mlmfast.built_with_cuda:
            assert archs == []
            return
        from mlmfast import _version_build as build

        expected = set()
        for item in build.cuda_arch_list.replace(" ", ";").split(";"):
            if not item:
                continue
            number = item.removesuffix("+PTX").replace(".", "").rstrip("af")
            expected.add(f"sm_{number}")
            if item.endswith("+PTX"):
                expected.add(f"compute_{number}")
        assert set(archs) == expected


def _setup_module():
    """setup.py as a module (its main() runs only as a script)."""
    path = Path(__file__).resolve().parents[1] / "setup.py"
    if not path.exists():
        pytest.skip("no setup.py beside the tests (an installed copy of the tests)")
    spec = importlib.util.spec_from_file_location("mlmfast_setup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestResolveCudaHome:
    """The one rule for the CUDA toolkit of every build (setup.py)."""

    @pytest.fixture
    def toolkit(self, tmp_path):
        (tmp_path / "cuda" / "bin").mkdir(parents=True)
        (tmp_path / "cuda" / "bin" / "nvcc").write_text("")
        return str(tmp_path / "cuda")

    def test_cuda_home_wins(self, toolkit):
        resolve = _setup_module().resolve_cuda_home
        assert resolve({"CUDA_HOME": "/opt/cuda-x"}, default=toolkit) == (
            "/opt/cuda-x",
            "$CUDA_HOME",
        )

    def test_default_with_nvcc_before_torch_detection(self, toolkit):
        resolve = _setup_module().resolve_cuda_home
        assert resolve({}, default=toolkit) == (toolkit, f"{toolkit} has bin/nvcc")

    def test_default_without_nvcc_leaves_it_to_torch(self, tmp_path):
        resolve = _setup_module().resolve_cuda_home
        assert resolve({"CUDA_HOME": ""}, default=str(tmp_path)) == (None, "torch's detection")
