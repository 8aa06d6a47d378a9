# voc — common tasks. `make test` is what CI runs; `make demo` runs the main job on the bundled sample.
SHELL := /bin/bash
CARGO ?= cargo
# Offline hub cache with the pretrained weights, when the shared folder is there (CI, dev machines).
ifneq ($(wildcard ../shared/hf),)
export HF_HOME ?= $(abspath ../shared/hf)
export HF_HUB_OFFLINE ?= 1
endif
TORCH_PYTHON ?= python3
# candle re-reads /proc/cpuinfo on every matmul unless the thread count is set.
export RAYON_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: test demo build release bench bench-compare cuda-check fmt clippy

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p voc-cli

# Builds the `voc` binary first: the end-to-end tests in tests/ run it.
test:
	$(CARGO) build -p voc-cli
	$(CARGO) test --workspace --no-fail-fast

demo: release
	@bash assets/demo.sh

bench:
	$(CARGO) bench --workspace

# voc bench (release) and the same workloads in PyTorch, interleaved, 2 threads: a table of voc/PyTorch ratios.
# `make bench-compare TORCH_PYTHON=/work/torch-venv/bin/python ROUNDS=5 BENCH_ONLY="b16 b1"`
ROUNDS ?= 3
BENCH_ITERS ?= 10
bench-compare:
	$(CARGO) build --release -p voc-cli
	$(TORCH_PYTHON) benches/torch_compare.py compare --voc target/release/voc --torch-python $(TORCH_PYTHON) \
	  --rounds $(ROUNDS) --iters $(BENCH_ITERS) $(if $(BENCH_ONLY),--only $(BENCH_ONLY)) $(if $(BENCH_OUT),--out $(BENCH_OUT)) $(BENCH_COMPARE_FLAGS)

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Compile-checks the CUDA code without CUDA installed (fake nvcc writes empty kernels).
cuda-check:
	NVCC=$(abspath ../shared/tools/cuda/fake-nvcc) CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=90 \
	  CARGO_TARGET_DIR=target/cuda-check $(CARGO) check --workspace --features cuda
