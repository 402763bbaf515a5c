#!/usr/bin/env bash
# Builds one mlmfast wheel of this checkout into dist/, against the torch of PYTHON.
#   bash scripts/build_wheel.sh [PYTHON]        (default .venv/bin/python; `make wheel` runs this)
# The wheel is tagged +cuXXXtorchX.Y (or +cputorchX.Y), requires torch==X.Y.* and records the
# CUDA architectures (docs/wheels.md). Environment (setup.py reads it):
#   TORCH_CUDA_ARCH_LIST  default "8.0;9.0;10.0+PTX"
#   MLMFAST_NO_CUDA=1     the +cpu wheel. Otherwise FORCE_CUDA=1 whenever torch has CUDA: a
#                         missing toolkit is an error, not a wheel without GPU kernels.
#   MAX_JOBS, DEBUG=1, CUDA_HOME   as for any build (setup.py resolves CUDA_HOME when unset)
# The whole build log goes to build/wheel-build.log; the configuration and the result are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "build_wheel: $PY cannot import torch (install torch first, or run scripts/bootstrap.sh)" >&2
  exit 2
fi
if [[ "${MLMFAST_NO_CUDA:-0}" != 1 && -z "${FORCE_CUDA:-}" ]]; then
  FORCE_CUDA=$("$PY" -c "import torch; print(int(torch.version.cuda is not None))")
  export FORCE_CUDA
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

mkdir -p build dist
LOG=build/wheel-build.log
stamp=$(mktemp build/wheel-stamp.XXXXXX)
trap 'rm -f "$stamp"' EXIT
t0=$SECONDS
rc=0
"$PY" -m pip wheel . --no-build-isolation --no-deps --no-cache-dir -v -w dist/ >"$LOG" 2>&1 || rc=$?
# setup.py prints its configuration once per step (metadata, then the build): show the last
awk '/mlmfast build configuration/ {block = ""; on = 1}
     on {block = block substr($0, 3) "\n"}
     on && /=====/ {on = 0}
     END {printf "%s", block}' "$LOG"
if ((rc != 0)); then
  echo "build_wheel: the build failed (exit $rc); the end of $LOG:" >&2
  tail -n 40 "$LOG" >&2
  exit "$rc"
fi
wheel=$(find dist -maxdepth 1 -name 'mlmfast-*.whl' -newer "$stamp" | head -n 1)
if [[ -z "$wheel" ]]; then
  echo "build_wheel: pip succeeded but wrote no new wheel to dist/ (see $LOG)" >&2
  exit 1
fi
so_bytes=$("$PY" -c "import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(sum(i.file_size for i in z.infolist() if i.filename.endswith('.so')))" "$wheel")
echo "build_wheel: $wheel ($(du -h "$wheel" | cut -f1), _C $((so_bytes / 1024)) KiB) in $((SECONDS - t0)) s"
