# Developer shortcuts. Everything here assumes an activated virtualenv with torch installed.
CUDA_HOME ?= /usr/local/cuda
export CUDA_HOME

.PHONY: build build-cpu test test-all lint format bench wheel clean

build:          ## editable build, CUDA sources when torch has CUDA and a toolkit is found
	MAX_JOBS=$${MAX_JOBS:-2} pip install -e . --no-build-isolation

build-cpu:      ## editable build without the CUDA sources
	MLMFAST_NO_CUDA=1 pip install -e . --no-build-isolation

test:           ## the fast suite (the README's test command)
	python -m pytest -m "not slow" -q

test-all:
	python -m pytest -q

lint:
	ruff check .
	ruff format --check .
	clang-format --dry-run --Werror csrc/*.h csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu

format:
	ruff check --fix .
	ruff format .
	clang-format -i csrc/*.h csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu

bench:
	python benchmarks/bench_mask.py

wheel:          ## a cluster wheel: sm_80/90/100 + PTX, version tagged +cuXXXtorchX.Y
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0+PTX" pip wheel . --no-build-isolation --no-deps -w dist/

clean:
	rm -rf build dist *.egg-info mlmfast/_C*.so mlmfast/_version_build.py
