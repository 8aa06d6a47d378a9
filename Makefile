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

.PHONY: test lint demo report report-check fuzz build release bench bench-compare cuda-check aarch64-check fmt fmt-check clippy doc

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p voc-cli

# Every test of every crate (cargo builds the `voc` binary that crates/voc-cli/tests run). Tests that need
# a file of ../shared print `SKIPPED <test>: <missing file>` without it; VOC_REQUIRE_SHARED=1 (.ci/run sets
# it) makes them fail instead.
test:
	$(CARGO) test --workspace --no-fail-fast

# The gates CI runs before the tests: formatting, clippy with warnings denied, docs without warnings.
lint: fmt-check clippy doc

demo: release
	@bash assets/demo.sh

# The HTML report of the demo's runs (after `make demo`).
report: release
	@bash assets/report.sh

# Every fuzz target of the readers for FUZZ_SECONDS (default 600) each, seeded from tests/fuzz/seeds,
# assets/ and ../shared; prints the table of docs/reliability.md. Needs nightly and cargo-fuzz.
# `make fuzz FUZZ_SECONDS=60 FUZZ_TARGETS="npy image"`
fuzz:
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),600) bash tests/fuzz/run.sh $(FUZZ_TARGETS)

# The report test, with the page rendered by headless Chromium (Debian's `chromium` package) and the
# screenshot checked; prints SKIPPED where no Chromium is installed.
report-check:
	set -o pipefail; $(CARGO) test -p voc-cli --test report --test report_speed -- --nocapture 2>&1 | grep -E "SKIPPED|test result|panicked|FAILED|5 runs"

bench:
	$(CARGO) bench --workspace --features voc-data/mimalloc

# voc bench (release) and the same workloads in PyTorch and (inference rows) ONNX Runtime, interleaved, 2
# threads: a table of voc/PyTorch and voc/ORT ratios. TORCH_PYTHON needs torch, torchvision, onnx and
# onnxruntime (`--no-ort` in BENCH_COMPARE_FLAGS skips ONNX Runtime).
# `make bench-compare TORCH_PYTHON=path/to/python ROUNDS=5 BENCH_ONLY="b16 b1"`
ROUNDS ?= 3
BENCH_ITERS ?= 10
bench-compare:
	$(CARGO) build --release -p voc-cli
	$(TORCH_PYTHON) benches/torch_compare.py compare --voc target/release/voc --torch-python $(TORCH_PYTHON) \
	  --rounds $(ROUNDS) --iters $(BENCH_ITERS) $(if $(BENCH_ONLY),--only $(BENCH_ONLY)) $(if $(BENCH_OUT),--out $(BENCH_OUT)) $(BENCH_COMPARE_FLAGS)

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# Compile-checks the CUDA code without CUDA installed (fake nvcc writes empty kernels).
# Compile-checks every crate for aarch64 (the portable kernels): needs `rustup target add
# aarch64-unknown-linux-gnu` and a C cross compiler for ring (Debian: gcc-aarch64-linux-gnu).
aarch64-check:
	CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CARGO_TARGET_DIR=target/aarch64-check \
	  $(CARGO) check --target aarch64-unknown-linux-gnu --workspace --all-targets

cuda-check:
	NVCC=$(abspath ../shared/tools/cuda/fake-nvcc) CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=90 \
	  CARGO_TARGET_DIR=target/cuda-check $(CARGO) check --workspace --features cuda
