#!/usr/bin/env bash
# GPU check of mlmfast: build with CUDA, run the fast tests, benchmark on the GPU and the CPU.
#
# Run from the repository root on a CUDA machine, with $OUT an (empty) output folder:
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
# Writes 7 files to $OUT: build.log, tests.log, bench_mask_cuda.{json,txt},
# bench_mask_cpu.{json,txt}, summary.txt. A failing build stops the script (exit 1, after
# summary.txt); failing tests or benchmarks are recorded in summary.txt and do not.
# Every step has a time limit; the whole script normally takes 2-4 minutes (most of it the
# build) and at most ~8.
set -euo pipefail

: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if [[ -z "${CUDA_HOME:-}" && -d /usr/local/cuda ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
PY="${PYTHON:-python}"

t0=$SECONDS
rc_build=0 rc_tests=0 rc_cuda=0 rc_cpu=0
t_build=0 t_tests=0 t_cuda=0 t_cpu=0

write_summary() {
  {
    echo "mlmfast gpu_check  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    printf '%-10s exit %-4s %5ss\n' build "$rc_build" "$t_build" tests "$rc_tests" "$t_tests" \
      bench_cuda "$rc_cuda" "$t_cuda" bench_cpu "$rc_cpu" "$t_cpu"
    echo "total $((SECONDS - t0))s"
    echo "(exit 124 = step timed out; tests exit 5 = no tests collected)"
    echo
    echo "== environment"
    echo "CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
    "$PY" - <<'EOF' 2>&1 || true
import platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import mlmfast
    print("mlmfast", mlmfast.__version__, "| built_with_cuda", mlmfast.built_with_cuda,
          "| CUDA kernel registered",
          torch._C._dispatch_has_kernel_for_dispatch_key("mlmfast::mask_tokens", "CUDA"))
except Exception as exc:
    print("mlmfast import failed:", type(exc).__name__, exc)
EOF
    if [[ -f "$OUT/tests.log" ]]; then
      echo
      echo "== tests (last lines)"
      tail -n 15 "$OUT/tests.log"
    fi
    for dev in cuda cpu; do
      if [[ -f "$OUT/bench_mask_$dev.txt" ]]; then
        echo
        echo "== bench $dev targets"
        grep -E 'copy bandwidth|^\[|target |ERROR|WARNING' "$OUT/bench_mask_$dev.txt" || true
        rc_var="rc_$dev"
        if [[ ${!rc_var} -ne 0 ]]; then
          echo "-- last lines (exit ${!rc_var}):"
          tail -n 8 "$OUT/bench_mask_$dev.txt"
        fi
      fi
    done
    echo
    echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi 2>&1 || echo "nvidia-smi failed"
    else
      echo "nvidia-smi not found"
    fi
  } >"$OUT/summary.txt"
}

# 1. build (CUDA sources for sm_90); --no-deps: torch and numpy are preinstalled, no network.
s=$SECONDS
timeout 200 "$PY" -m pip install --no-deps --no-build-isolation -v -e . 2>&1 \
  | tee "$OUT/build.log" || rc_build=$?
t_build=$((SECONDS - s))
if [[ $rc_build -ne 0 ]]; then
  echo "gpu_check: build failed (exit $rc_build)" >&2
  write_summary
  exit 1
fi

# 2. fast tests (failures recorded, not fatal)
s=$SECONDS
timeout 100 "$PY" -m pytest -x -q tests -m "not slow" 2>&1 | tee "$OUT/tests.log" || rc_tests=$?
t_tests=$((SECONDS - s))

# 3. benchmarks
s=$SECONDS
timeout 90 "$PY" benchmarks/bench_mask.py --device cuda --json "$OUT/bench_mask_cuda.json" 2>&1 \
  | tee "$OUT/bench_mask_cuda.txt" || rc_cuda=$?
t_cuda=$((SECONDS - s))

s=$SECONDS
# --min-time 1: half the default sampling time per competitor (about 20 s in all)
timeout 75 "$PY" benchmarks/bench_mask.py --device cpu --min-time 1 \
  --json "$OUT/bench_mask_cpu.json" 2>&1 | tee "$OUT/bench_mask_cpu.txt" || rc_cpu=$?
t_cpu=$((SECONDS - s))

write_summary
cat "$OUT/summary.txt"
