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

On x86-64 the CPU kernel is built three times over, each instruction set's translation unit with
its own flags (csrc/cpu/kernel_portable.cpp with none, kernel_avx2.cpp, kernel_avx512.cpp); the
one wheel picks the widest the processor has at run time (csrc/cpu/dispatch.cpp).
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BASE_VERSION = "0.1.0"
DEFAULT_ARCHS = "8.0;9.0;10.0+PTX"


# The CPU kernels compiled with instruction-set flags, and their flags; csrc/cpu/dispatch.cpp
# checks the processor for the same features before it runs one.
ISA_KERNELS = {
    "avx2": (os.path.join("csrc", "cpu", "kernel_avx2.cpp"), ["-mavx2", "-mpopcnt"]),
    "avx512": (
        os.path.join("csrc", "cpu", "kernel_avx512.cpp"),
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mpopcnt"],
    ),
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _x86_64_unix() -> bool:
    return os.name == "posix" and platform.machine().lower() in ("x86_64", "amd64")


def _check_isa_symbols(obj: str, isa: str) -> None:
    """Fails the build if the kernel object `obj` defines, for the linker, a function outside its
    instruction set's namespace: the linker could keep that copy, compiled with `isa`'s flags, for
    the code of every instruction set (csrc/cpu/dispatch.cpp)."""
    nm = shutil.which("nm")
    if nm is None:
        print(f"mlmfast: no nm, the symbols of {obj} are not checked")
        return
    listing = subprocess.run(
        [nm, "--defined-only", "--extern-only", "--demangle", obj],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    own = f"mlmfast::cpu::{isa}::"
    stray = []
    for line in listing.splitlines():
        parts = line.split(maxsplit=2)
        # T: code, W: weak code, i: indirect function; data (D, R, B, V, u) holds no instructions
        if len(parts) == 3 and parts[1] in "TWi" and own not in parts[2]:
            stray.append(parts[2])
    if stray:
        sys.exit(
            f"mlmfast: error: {obj} (compiled for {isa}) defines functions outside {own}, which the "
            "linker could pick for code of another instruction set:\n  " + "\n  ".join(stray)
        )


def _build_ext_class(BuildExtension, isa_kernels: dict):
    """torch's BuildExtension (ninja), which first compiles each kernel of `isa_kernels` with its
    own flags and links the objects in as extra objects.

    setuptools compiles an extension's sources with one set of flags, hence the kernels' own
    compile step. Objects rather than static libraries: they link whole and in order, with no
    archive step and no question of which members the linker pulls in."""

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        def build_extension(self, ext):
            objects = []
            for isa, (source, flags) in isa_kernels.items():
                args = ext.extra_compile_args
                if isinstance(args, dict):
                    args = {**args, "cxx": list(args["cxx"]) + flags}
                else:
                    args = list(args) + flags
                (obj,) = self.compiler.compile(
                    [source],
                    output_dir=self.build_temp,
                    macros=ext.define_macros,
                    include_dirs=ext.include_dirs,
                    debug=self.debug,
                    extra_postargs=args,
                    depends=ext.depends,
                )
                _check_isa_symbols(obj, isa)
                objects.append(obj)
            ext.extra_objects = [o for o in ext.extra_objects or [] if o not in objects] + objects
            super().build_extension(ext)

    return BuildExt


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

    isa_kernels = ISA_KERNELS if _x86_64_unix() else {}
    isa_sources = {source for source, _ in ISA_KERNELS.values()}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += [
        s for s in sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) if s not in isa_sources
    ]
    # setuptools relinks only when a listed file is newer than the library: the headers and the
    # kernels compiled on the side count too.
    depends = sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True))
    depends += sorted(glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True))
    depends += [source for source, _ in isa_kernels.values()]
    # torch adds -DPy_LIMITED_API (its minimum Python); csrc/cpu/collate.cpp raises it to 3.11 for
    # the buffer protocol, hence the cp311 abi3 tag below.
    define_macros = [("MLMFAST_X86_KERNELS", "1")] if isa_kernels else []
    if build_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("MLMFAST_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "mlmfast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            depends=depends,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            py_limited_api=True,
        )
    else:
        ext = CppExtension(
            "mlmfast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            depends=depends,
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
    for isa, (source, flags) in isa_kernels.items():
        print(f"  {isa + ' kernel':<20} {source} {' '.join(flags)}")
    if not isa_kernels:
        print("  CPU kernels          portable only (not x86-64)")
    print("=" * 72)

    with open(os.path.join(ROOT, "mlmfast", "_version_build.py"), "w") as f:
        f.write(f'__version__ = "{version}"\nbuilt_with_cuda = {build_cuda}\n')

    setup(
        version=version,
        ext_modules=[ext],
        cmdclass={"build_ext": _build_ext_class(BuildExtension, isa_kernels)},
        options={"bdist_wheel": {"py_limited_api": "cp311"}},
    )


if __name__ == "__main__":
    main()
