#!/usr/bin/env bash
# Builds the wheel matrix into dist/, each wheel in a fresh virtualenv with its torch:
#   bash scripts/build_wheels.sh [VARIANT...]     (default: all)
# Variants (the torch builds the package index serves here):
#   cu130-torch2.14   torch==2.14.1 (CUDA 13.0), CUDA sources for TORCH_CUDA_ARCH_LIST
#                     (default 8.0;9.0;10.0+PTX): mlmfast-<ver>+cu130torch2.14-cp311-abi3-...whl
#   cpu-torch2.13     torch==2.13.0 (the CPU build), no CUDA: mlmfast-<ver>+cputorch2.13-...whl
# The virtualenvs are build/wheel-venvs/<variant> (recreated each run). Check a result with
# scripts/check_wheel.sh. MAX_JOBS, TORCH_CUDA_ARCH_LIST, DEBUG and CUDA_HOME apply to the builds.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A TORCH=([cu130-torch2.14]=torch==2.14.1 [cpu-torch2.13]=torch==2.13.0)
declare -A NO_CUDA=([cu130-torch2.14]=0 [cpu-torch2.13]=1)
variants=("$@")
if ((${#variants[@]} == 0)); then variants=(cu130-torch2.14 cpu-torch2.13); fi
for v in "${variants[@]}"; do
  if [[ -z "${TORCH[$v]:-}" ]]; then
    echo "build_wheels: unknown variant '$v', expected one of: ${!TORCH[*]}" >&2
    exit 2
  fi
done

for v in "${variants[@]}"; do
  venv=build/wheel-venvs/$v
  echo "build_wheels: $v (${TORCH[$v]}) in $venv"
  t0=$SECONDS
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${TORCH[$v]}" numpy \
    "setuptools>=64" wheel ninja
  echo "build_wheels: $v: torch installed ($((SECONDS - t0)) s)"
  if [[ ${NO_CUDA[$v]} == 1 ]]; then
    MLMFAST_NO_CUDA=1 bash scripts/build_wheel.sh "$venv/bin/python"
  else
    MLMFAST_NO_CUDA=0 FORCE_CUDA=1 bash scripts/build_wheel.sh "$venv/bin/python"
  fi
done
ls -l dist/*.whl
