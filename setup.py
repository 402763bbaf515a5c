"""Build mlmfast._C, the C++ (and, when possible, CUDA) core of mlmfast.

Switches (environment variables), in the spirit of flash-attention / xformers:

  MLMFAST_NO_CUDA=1      never build the CUDA sources (CPU-only extension)
  FORCE_CUDA=1           build the CUDA sources even if torch sees no GPU (cluster wheels);
                         fails if no CUDA toolkit is found
  TORCH_CUDA_ARCH_LIST   e.g. "9.0" or "8.0;9.0;10.0+PTX" (default: 8.0;9.0;10.0+PTX)
  MAX_JOBS               parallel compile jobs for ninja
  DEBUG=1                -O0 -g, device debug info, no -DNDEBUG
  CUDA_HOME              CUDA toolkit root (auto-detection can pick the wrong one)
  MLMFAST_LOCAL_VERSION=0  do not append +cuXXXtorchX.Y to the version

Build with `pip install -e . --no-build-isolation` (torch must already be installed;
it is never a build requirement).
"""

import glob
import os
import re
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BASE_VERSION = "0.1.0"
DEFAULT_ARCHS = "8.0;9.0;10.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def main() -> None:
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        sys.exit(
            "mlmfast: torch must be installed before building (pip install torch), "
            "then `pip install -e . --no-build-isolation`."
        )

    debug = _flag("DEBUG")
    no_cuda = _flag("MLMFAST_NO_CUDA")
    force_cuda = _flag("FORCE_CUDA")
    cuda_home = os.environ.get("CUDA_HOME") or CUDA_HOME
    torch_has_cuda = torch.version.cuda is not None
    toolkit = cuda_home is not None and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))

    if no_cuda:
        build_cuda, why = False, "MLMFAST_NO_CUDA=1"
    elif force_cuda:
        if not toolkit:
            sys.exit(
                f"mlmfast: FORCE_CUDA=1 but no nvcc under CUDA_HOME={cuda_home!r}; set CUDA_HOME."
            )
        if not torch_has_cuda:
            sys.exit("mlmfast: FORCE_CUDA=1 but the installed torch is a CPU-only build.")
        build_cuda, why = True, "FORCE_CUDA=1"
    elif torch_has_cuda and toolkit:
        build_cuda, why = True, "torch has CUDA and a toolkit was found"
    else:
        build_cuda = False
        why = (
            "torch is a CPU build"
            if not torch_has_cuda
            else f"no CUDA toolkit (CUDA_HOME={cuda_home!r})"
        )

    if build_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS

    cxx = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
    cxx += ["-fvisibility=hidden"]  # the C++ standard is the one torch asks for
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-DNDEBUG", "-lineinfo"]
    # --fmad=false: no float contraction, so any float arithmetic is reproducible across backends
    # (the masking decisions themselves are integer-only).
    nvcc += ["--fmad=false", "--expt-relaxed-constexpr"]

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # torch adds -DPy_LIMITED_API (its minimum Python); csrc/cpu/collate.cpp raises it to 3.11 for
    # the buffer protocol, hence the cp311 abi3 tag below.
    define_macros = []
    if build_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("MLMFAST_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "mlmfast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            py_limited_api=True,
        )
    else:
        ext = CppExtension(
            "mlmfast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            py_limited_api=True,
        )

    version = BASE_VERSION
    if os.environ.get("MLMFAST_LOCAL_VERSION", "1") != "0":
        tv = re.match(r"(\d+)\.(\d+)", torch.__version__)
        tag = f"torch{tv.group(1)}.{tv.group(2)}"
        cu = f"cu{torch.version.cuda.replace('.', '')}" if build_cuda else "cpu"
        version = f"{BASE_VERSION}+{cu}{tag}"

    print("=" * 72)
    print("mlmfast build configuration")
    print(f"  version              {version}")
    print(f"  torch                {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA_HOME            {cuda_home}")
    print(f"  CUDA sources         {'built' if build_cuda else 'skipped'} ({why})")
    if build_cuda:
        print(f"  TORCH_CUDA_ARCH_LIST {os.environ['TORCH_CUDA_ARCH_LIST']}")
    print(f"  MAX_JOBS             {os.environ.get('MAX_JOBS', '(ninja default)')}")
    print(f"  DEBUG                {debug}")
    print(f"  sources              {', '.join(sources)}")
    print("=" * 72)

    with open(os.path.join(ROOT, "mlmfast", "_version_build.py"), "w") as f:
        f.write(f'__version__ = "{version}"\nbuilt_with_cuda = {build_cuda}\n')

    setup(
        version=version,
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp311"}},
    )


if __name__ == "__main__":
    main()
