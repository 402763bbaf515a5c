"""Build mlmfast._C, the C++ (and, when possible, CUDA) core of mlmfast.

Switches (environment variables), in the spirit of flash-attention / xformers:

  MLMFAST_NO_CUDA=1      never build the CUDA sources (CPU-only extension)
  FORCE_CUDA=1           build the CUDA sources even if torch sees no GPU (cluster wheels);
                         fails if no CUDA toolkit is found
  TORCH_CUDA_ARCH_LIST   e.g. "9.0" or "8.0;9.0;10.0+PTX" (default: 8.0;9.0;10.0+PTX)
  MAX_JOBS               parallel compile jobs for ninja
  DEBUG=1                -O0 -g, device debug info, no -DNDEBUG, the .so not stripped
                         (a release build compiles with -g0 and links with -s)
  PROFILE=1              a release build with symbols (-O3 -g, not stripped), for perf
  CUDA_HOME              CUDA toolkit root; see resolve_cuda_home() for the rule when unset
  MLMFAST_LOCAL_VERSION=0  do not append +cuXXXtorchX.Y to the version

Build with `pip install -e . --no-build-isolation` (torch must already be installed;
it is never a build requirement), a wheel with `make wheel` or
`pip wheel . --no-build-isolation --no-deps -w dist/`, an sdist with `python -m build --sdist`
(torch not needed for that one).

The extension is compiled against one torch's C++ ABI, so a build records what it was built for
in mlmfast/_version_build.py (torch X.Y, its CUDA version, the architectures), requires
`torch==X.Y.*`, and `import mlmfast` refuses another torch before loading _C
(mlmfast/build_check.py).

Wheel tag: cp311-abi3. The extension uses only the Python limited API (csrc/ops.cpp creates the
module with PyModule_Create, no pybind11, no libtorch_python), so one binary serves every
CPython >= 3.11. abi3 says nothing about torch's C++ ABI, which no wheel tag can express: that
is what the `+cuXXXtorchX.Y` local version, the `torch==X.Y.*` requirement and the import-time
check are for.

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
DESCRIPTION = "Fused C++/CUDA masking for BERT-style masked-language-model training"
DEPENDENCIES = ["numpy", "tqdm", "transformers>=4.46"]  # and the torch of the build
TORCH_ANY = "torch>=2.4"  # an sdist's requirement: any torch the sources build against


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


def _build_ext_class(BuildExtension, isa_kernels: dict, record: str):
    """torch's BuildExtension (ninja), which first compiles each kernel of `isa_kernels` with its
    own flags and links the objects in as extra objects, then writes `record` (the text of
    mlmfast/_version_build.py) beside the built extension.

    setuptools compiles an extension's sources with one set of flags, hence the kernels' own
    compile step. Objects rather than static libraries: they link whole and in order, with no
    archive step and no question of which members the linker pulls in."""

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        def run(self):
            # setuptools skips linking when the library in build/ is newer than the sources, even
            # if it was built with other switches (a CUDA wheel, then a +cpu one): always relink.
            # ninja still recompiles only the objects whose command line or inputs changed.
            self.force = True
            super().run()
            # The record goes where this build's _C goes: the source tree for an editable or
            # in-place build, build/lib (so the wheel) otherwise. A wheel build must not rewrite
            # the record of the checkout's own in-place build.
            base = ROOT if self.inplace else self.build_lib
            with open(os.path.join(base, "mlmfast", "_version_build.py"), "w") as f:
                f.write(record)

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


def _has_nvcc(root: str | None) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc"))


def resolve_cuda_home(
    environ: dict | None = None, default: str = "/usr/local/cuda"
) -> tuple[str | None, str]:
    """The CUDA toolkit to build with, and where that choice came from; the one rule for every
    build (make install, make wheel, scripts/bootstrap.sh, CI, pip by hand).

    1. $CUDA_HOME when it has bin/nvcc (an explicit one without nvcc is an error, in main());
    2. `default`, /usr/local/cuda, when it has bin/nvcc;
    3. torch's own detection ($CUDA_PATH, then the nvcc on PATH).
    Step 2 comes before torch's guess because that guess takes the parent of the nvcc on PATH,
    which for a wrapper such as /usr/local/bin/nvcc is /usr/local: no lib64/libcudart there, and
    the link fails with `cannot find -lcudart`."""
    env = (os.environ if environ is None else environ).get("CUDA_HOME")
    if env:
        return env, "$CUDA_HOME"
    if _has_nvcc(default):
        return default, f"{default} has bin/nvcc"
    return None, "torch's detection"


def _sdist_setup() -> None:
    """An sdist, or metadata without a build: the base version, no extension, torch unpinned (a
    build from the sdist pins the torch it is built against)."""
    setup(
        version=BASE_VERSION, description=DESCRIPTION, install_requires=[TORCH_ANY, *DEPENDENCIES]
    )


def main() -> None:
    # An sdist is the sources, for any torch: no torch, no compiler, no local version.
    commands = [a for a in sys.argv[1:] if not a.startswith("-")]
    if "sdist" in commands:
        _sdist_setup()
        return
    try:
        import torch
    except ImportError:
        if commands == ["egg_info"]:  # an isolated build's first step (get_requires_for_build)
            _sdist_setup()
            return
        sys.exit(
            "mlmfast: torch must be installed before building (pip install torch), "
            "then `pip install -e . --no-build-isolation`."
        )

    debug = _flag("DEBUG")
    profile = _flag("PROFILE") and not debug
    no_cuda = _flag("MLMFAST_NO_CUDA")
    force_cuda = _flag("FORCE_CUDA")
    torch_has_cuda = torch.version.cuda is not None
    wants_cuda = not no_cuda and (force_cuda or torch_has_cuda)

    cuda_home, cuda_home_from = resolve_cuda_home()
    if cuda_home_from == "$CUDA_HOME" and not _has_nvcc(cuda_home) and wants_cuda:
        sys.exit(
            f"mlmfast: CUDA_HOME={cuda_home!r} has no bin/nvcc: point it at a CUDA toolkit "
            "(e.g. /usr/local/cuda), unset it, or set MLMFAST_NO_CUDA=1 for a CPU-only build."
        )
    if cuda_home is not None:
        # before torch.utils.cpp_extension is imported: it reads CUDA_HOME once, at import
        os.environ["CUDA_HOME"] = cuda_home
    import torch.utils.cpp_extension as cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    if cuda_home is None:
        cuda_home = cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = cuda_home
    toolkit = _has_nvcc(cuda_home)

    if no_cuda:
        build_cuda, why = False, "MLMFAST_NO_CUDA=1"
    elif force_cuda:
        if not toolkit:
            sys.exit(
                f"mlmfast: FORCE_CUDA=1 but no nvcc under CUDA_HOME={cuda_home!r}; set CUDA_HOME."
            )
        if not torch_has_cuda:
            sys.exit(
                f"mlmfast: FORCE_CUDA=1 but the installed torch {torch.__version__} is a CPU-only "
                "build: install a CUDA build of torch, or set MLMFAST_NO_CUDA=1 for a +cpu build."
            )
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

    if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    arch_list = os.environ["TORCH_CUDA_ARCH_LIST"] if build_cuda else ""

    # Python's sysconfig CFLAGS carry -g, which setuptools passes first: -g0 after it wins, and
    # -s links without the symbol table (the dynamic symbols stay). A release .so is about a
    # third of the size (docs/wheels.md).
    cxx = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG", "-g" if profile else "-g0"]
    cxx += ["-fvisibility=hidden"]  # the C++ standard is the one torch asks for
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-DNDEBUG", "-lineinfo"]
    # --fmad=false: no float contraction, so any float arithmetic is reproducible across backends
    # (the masking decisions themselves are integer-only).
    nvcc += ["--fmad=false", "--expt-relaxed-constexpr"]
    link = [] if debug or profile else ["-s"]

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
            extra_link_args=link,
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
            extra_link_args=link,
            py_limited_api=True,
        )

    tv = re.match(r"(\d+)\.(\d+)", torch.__version__)
    torch_xy = f"{tv.group(1)}.{tv.group(2)}"
    cuda_version = torch.version.cuda if build_cuda else None
    version = BASE_VERSION
    if os.environ.get("MLMFAST_LOCAL_VERSION", "1") != "0":
        cu = f"cu{cuda_version.replace('.', '')}" if build_cuda else "cpu"
        version = f"{BASE_VERSION}+{cu}torch{torch_xy}"
    built_for = f"torch {torch_xy}, " + (
        f"CUDA {cuda_version}, TORCH_CUDA_ARCH_LIST {arch_list}" if build_cuda else "CPU only"
    )

    print("=" * 72)
    print("mlmfast build configuration")
    print(f"  version              {version}")
    print(f"  torch                {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  requires             torch=={torch_xy}.*")
    print(f"  CUDA_HOME            {cuda_home} ({cuda_home_from})")
    print(f"  CUDA sources         {'built' if build_cuda else 'skipped'} ({why})")
    if build_cuda:
        print(f"  TORCH_CUDA_ARCH_LIST {arch_list}")
    print(f"  MAX_JOBS             {os.environ.get('MAX_JOBS', '(ninja default)')}")
    symbols = "-g, not stripped" if debug or profile else "-g0, stripped"
    print(f"  DEBUG / PROFILE      {debug} / {profile} ({symbols})")
    print(f"  sources              {', '.join(sources)}")
    for isa, (source, flags) in isa_kernels.items():
        print(f"  {isa + ' kernel':<20} {source} {' '.join(flags)}")
    if not isa_kernels:
        print("  CPU kernels          portable only (not x86-64)")
    print("=" * 72)

    record = (
        "# Written by setup.py: what this build of mlmfast._C was compiled against.\n"
        f'__version__ = "{version}"\n'
        f"built_with_cuda = {build_cuda}\n"
        f'torch_version = "{torch_xy}"  # X.Y of the torch whose C++ ABI _C uses\n'
        f"cuda_version = {cuda_version!r}  # that torch's CUDA; None: CPU-only build\n"
        f'cuda_arch_list = "{arch_list}"  # TORCH_CUDA_ARCH_LIST\n'
    )

    setup(
        version=version,
        description=f"{DESCRIPTION} (built for {built_for})",
        install_requires=[f"torch=={torch_xy}.*", *DEPENDENCIES],
        ext_modules=[ext],
        cmdclass={"build_ext": _build_ext_class(BuildExtension, isa_kernels, record)},
        options={"bdist_wheel": {"py_limited_api": "cp311"}},
    )


if __name__ == "__main__":
    main()
