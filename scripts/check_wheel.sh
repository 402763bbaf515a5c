#!/usr/bin/env bash
# Checks a built mlmfast wheel the way a cluster node gets it: installed into a fresh virtualenv,
# used from outside the source tree.
#   bash scripts/check_wheel.sh WHEEL              install it with the torch it requires, run
#                                                  `mlmfast info` and the op's fast tests on it
#   bash scripts/check_wheel.sh --mismatch WHEEL   install it next to another torch (--no-deps;
#                                                  MISMATCH_TORCH, default torch==2.13.0, or
#                                                  torch==2.14.1 for a wheel built for 2.13) and
#                                                  check that `import mlmfast` fails with the
#                                                  one-line message naming both versions
# Environment:
#   EXPECT_ARCHS   e.g. "sm_80 sm_90 sm_100 compute_100": the GPU code the library must carry
#                  (read from the binary by `mlmfast info`); unset: not compared
#   KEEP_VENV=1    keep build/wheel-venvs/check (removed at the end otherwise: torch is large)
# Uses the pip configuration of this machine (its package index or mirror) for torch and the
# test packages; the virtualenv is build/wheel-venvs/check (so one check at a time), the tests
# run from a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
mode=check
if [[ "${1:-}" == --mismatch ]]; then
  mode=mismatch
  shift
fi
if [[ $# -ne 1 || ! -f "$1" || "$1" != *.whl ]]; then
  sed -n '2,17p' "$0" >&2
  echo "check_wheel: expected one argument, the path of a .whl file; got: $*" >&2
  exit 2
fi
WHEEL=$(realpath "$1")
VENV=$ROOT/build/wheel-venvs/check
WORK=$(mktemp -d)
cleanup() {
  rm -rf "$WORK"
  if [[ "${KEEP_VENV:-0}" != 1 ]]; then rm -rf "$VENV"; fi
}
trap cleanup EXIT

# The torch the wheel requires, from its metadata (Requires-Dist: torch==X.Y.*)
requires=$(python3 - "$WHEEL" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
for line in z.read(meta).decode().splitlines():
    if line.startswith("Requires-Dist: torch"):
        print(line.split(":", 1)[1].strip().replace(" ", ""))
EOF
)
if [[ "$requires" != torch==*.\* ]]; then
  echo "check_wheel: $WHEEL requires '${requires:-no torch}', expected torch==X.Y.*" >&2
  exit 1
fi
echo "check_wheel: $(basename "$WHEEL") requires $requires"

rm -rf "$VENV"
python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
t0=$SECONDS

if [[ $mode == mismatch ]]; then
  other=${MISMATCH_TORCH:-}
  if [[ -z "$other" ]]; then
    if [[ "$requires" == torch==2.13.\* ]]; then other=torch==2.14.1; else other=torch==2.13.0; fi
  fi
  "${PIP[@]}" "$other" numpy tqdm "transformers>=4.46"
  "${PIP[@]}" --no-deps "$WHEEL"
  echo "check_wheel: installed next to $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)') ($((SECONDS - t0)) s)"
  cd "$WORK"
  rc=0
  "$VENV/bin/python" -c "import mlmfast" 2>"$WORK/stderr" || rc=$?
  last=$(tail -n 1 "$WORK/stderr")
  echo "check_wheel: import mlmfast -> exit $rc: $last"
  if ((rc == 0)); then
    echo "check_wheel: FAILED: import mlmfast succeeded next to the wrong torch" >&2
    exit 1
  fi
  if [[ "$last" != *TorchMismatchError:*"was built for torch"*"is installed: pip install"* ]] \
    || grep -q "undefined symbol" "$WORK/stderr" || [[ $(wc -l <"$WORK/stderr") != 1 ]]; then
    echo "check_wheel: FAILED: not the torch check's one line:" >&2
    cat "$WORK/stderr" >&2
    exit 1
  fi
  echo "check_wheel: OK, the mismatch is refused before mlmfast._C is loaded"
  exit 0
fi

"${PIP[@]}" "$WHEEL" pytest hypothesis scipy
echo "check_wheel: installed ($((SECONDS - t0)) s)"

# Outside the checkout: only the installed package can be imported.
cp tests/conftest.py tests/test_mask_tokens.py tests/test_build_check.py "$WORK/"
cat >"$WORK/pytest.ini" <<'EOF'
[pytest]
markers =
    cuda: needs a CUDA device (skipped without one)
    slow: long-running (deselect with -m 'not slow')
EOF
cd "$WORK"
"$VENV/bin/mlmfast" info | tee "$WORK/info.json"
location=$("$VENV/bin/python" -c "import mlmfast; print(mlmfast.__file__)")
echo "check_wheel: mlmfast.__file__ = $location"
if [[ "$location" != "$VENV"/* ]]; then
  echo "check_wheel: FAILED: mlmfast was imported from $location, not from $VENV" >&2
  exit 1
fi
"$VENV/bin/python" - "$WORK/info.json" "$(basename "$WHEEL")" "${EXPECT_ARCHS:-}" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
wheel, expect = sys.argv[2], sys.argv[3].split()
problems = []
if not wheel.startswith(f"mlmfast-{info['mlmfast']}-"):
    problems.append(f"version {info['mlmfast']} is not the wheel's ({wheel})")
if not info["kernels"]["CPU"]:
    problems.append("no CPU kernel registered")
if "+cu" in wheel and not (info["built_with_cuda"] and info["kernels"]["CUDA"] and info["cuda_archs"]):
    problems.append("a +cu wheel without CUDA kernels or GPU code")
if "+cpu" in wheel and (info["built_with_cuda"] or info["cuda_archs"]):
    problems.append("a +cpu wheel with CUDA code")
if expect and info["cuda_archs"] != expect:
    problems.append(f"GPU code {info['cuda_archs']}, expected {expect}")
for p in problems:
    print(f"check_wheel: FAILED: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
echo "check_wheel: GPU code in the library: $("$VENV/bin/python" -c "import json; print(' '.join(json.load(open('$WORK/info.json'))['cuda_archs']) or 'none')")"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" test_mask_tokens.py test_build_check.py
echo "check_wheel: OK ($((SECONDS - t0)) s)"
