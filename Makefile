# Set-up and entry points. Every target creates .venv when missing and (re)builds csrc when it changed.
# `make demo` installs the runtime only; `make setup` (and test, bench, gpu-check) adds the test
# extras (pytest, transformers, triton: ~1 GB) and the sandbox tool.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch that lies on this machine's disk; never let pip resolve a CUDA build.
TORCH := torch==2.13.0
# The project installed editable with csrc built: with its runtime dependencies, and with the test
# extras too. Each is redone when csrc (or pyproject.toml) changed since.
CPU_EXT_STAMP := $(VENV)/.cpu-ext-built
TEST_STAMP := $(VENV)/.test-extras
CSRC := $(wildcard csrc/*.cpp csrc/*.h) CMakeLists.txt pyproject.toml

.PHONY: setup sandbox-tool demo test bench gpu-check clean

setup: $(TEST_STAMP) sandbox-tool

# `codeinfer eval` runs model-written code only inside bubblewrap: install it when missing and we
# can (root + apt), else say what to install.
sandbox-tool:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }; \
	  else echo "note: install bubblewrap (bwrap) for the HumanEval sandbox and its tests"; fi; }

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH) scikit-build-core pybind11 ninja cmake
	touch $@

$(CPU_EXT_STAMP): $(VENV)/.deps $(CSRC)
	$(BIN)/pip install -q --no-build-isolation -e . $(TORCH)
	touch $@

# Installed with the project in one go, so a fresh clone builds csrc once; it is a runtime
# install too.
$(TEST_STAMP): $(VENV)/.deps $(CSRC)
	$(BIN)/pip install -q --no-build-isolation -e ".[test]" $(TORCH)
	touch $@ $(CPU_EXT_STAMP)

demo: $(CPU_EXT_STAMP)
	$(BIN)/codeinfer generate --max-tokens 64 --repetition-penalty 1.3 "def fibonacci(n):"

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python -m pytest -q benchmarks --benchmark-only

# GPU readiness (benchmarks/gpu_check.py): needs a CUDA build of torch, which .venv does not have;
# name a Python that has one with GPU_PYTHON=... Without CUDA it says so and exits 0.
GPU_PYTHON ?= $(BIN)/python
gpu-check: $(if $(filter $(BIN)/python,$(GPU_PYTHON)),setup)
	$(GPU_PYTHON) -m benchmarks.gpu_check

clean:
	rm -rf build $(VENV) kernels/_cpu*.so
