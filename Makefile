# mdream — `make run` sets up and describes the sample image; `make test` sets up and tests.
# CUDA=1 builds llama-cpp-python with CUDA (e.g. `make install CUDA=1`).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed$(if $(CUDA),-cuda)
# CUDA 13 dropped GPUs older than Turing (sm_75), and ggml's default, "native", needs a GPU in
# the build machine: build for Turing to Blackwell instead; CUDA_ARCHS=90 builds for an H100 or
# H200 only (README, "GPU").
CUDA_ARCHS ?= 75;80;86;89;90;100;120
CMAKE_ARGS_CUDA := -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCHS)
LLAMA_SPEC := >=0.3.36,<0.4

.PHONY: install system-deps run demo test test-fast lint fix bench bench-cluster bench-ref device-kit \
  privacy-check clean train-tiny

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifdef CUDA
	CMAKE_ARGS="$(CMAKE_ARGS_CUDA) $(CMAKE_ARGS)" FORCE_CMAKE=1 $(PY) -m pip install --quiet \
	  --no-cache-dir --force-reinstall --no-deps "llama-cpp-python$(LLAMA_SPEC)"
endif
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run demo: install
	VENV=$(VENV) ./scripts/demo.sh

test: install system-deps
	$(PY) -m pytest -q

# The privacy tests trace real runs with strace and cut the network with unshare -n; they
# fail (not skip) without them, so install them from Debian when missing.
system-deps:
	@command -v strace >/dev/null && command -v unshare >/dev/null || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq strace util-linux; }

# Everything but the tests marked slow (child processes, strace, signals): seconds, not minutes.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# mypy checks what [tool.mypy] files names in pyproject.toml: src and tests, strict.
lint: install
	$(PY) -m ruff check src tests scripts bench
	$(PY) -m ruff format --check src tests scripts bench
	$(PY) -m mypy

fix: install
	$(PY) -m ruff check --fix src tests scripts bench
	$(PY) -m ruff format src tests scripts bench

# Prove on this machine, with your installed model, that inference opens no socket and
# writes no file (strace), and prints the same with no network at all (unshare -n).
# Needs strace and util-linux; PRIVACY_ARGS="--model-dir DIR" picks another model.
privacy-check: install system-deps
	$(PY) scripts/privacy_check.py $(PRIVACY_ARGS)

# Retrain the tiny Moondream the tests judge answers with (tests/data/shapes-moondream): about
# 10 minutes on 2 cores; rewrites its weights, held-out images and golden answers. Needs torch
# (the `train` extra); when it is missing, the CPU build is installed from PyTorch's own index
# (PyPI's Linux wheel is the CUDA one, gigabytes). TRAIN_ARGS="--seed N" etc. go to the script.
TRAIN_ARGS ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
train-tiny: install
	$(PY) -c 'import torch' 2>/dev/null || \
	  $(PY) -m pip install --quiet --index-url $(TORCH_CPU_INDEX) 'torch>=2.4'
	$(PY) scripts/train_shapes.py $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) .cache build dist .pytest_cache .mypy_cache .ruff_cache

# Build the default Q4_K_M bundle (downloads the f16 GGUFs once) and keep its tarball in bundles/.
.PHONY: bundle
bundle: install
	mkdir -p bundles
	$(VENV)/bin/mdream fetch --output bundles/

# -- benchmark (bench/bench.py): `make bench BENCH_ARGS=--quick`; `make bench-ref` builds the
# llama-mtmd-cli reference from the vendored llama.cpp of the same llama-cpp-python sdist.
BENCH_ARGS ?=
BENCH_REF := .cache/bench-ref
LLAMA_REF_VERSION := 0.3.36

bench: install
	$(PY) bench/bench.py $(BENCH_ARGS)

# One process against a two-node Ray cluster on loopback (the 'ray' extra, unshare): ~1 min.
bench-cluster: install system-deps
	$(PY) bench/cluster.py $(BENCH_ARGS)

bench-ref: install
	mkdir -p $(BENCH_REF)
	ls $(BENCH_REF)/llama_cpp_python-$(LLAMA_REF_VERSION).tar.gz >/dev/null 2>&1 || \
	  $(PY) -m pip download --quiet --no-binary :all: --no-deps --dest $(BENCH_REF) \
	  "llama-cpp-python==$(LLAMA_REF_VERSION)"
	rm -rf $(BENCH_REF)/src && mkdir -p $(BENCH_REF)/src
	tar -xzf $(BENCH_REF)/llama_cpp_python-$(LLAMA_REF_VERSION).tar.gz -C $(BENCH_REF)/src \
	  --strip-components=1
	cmake -S $(BENCH_REF)/src/vendor/llama.cpp -B $(BENCH_REF)/build -DCMAKE_BUILD_TYPE=Release \
	  -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
	  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF $(if $(CUDA),$(CMAKE_ARGS_CUDA))
	cmake --build $(BENCH_REF)/build --target llama-mtmd-cli -j $$(nproc)
	mkdir -p $(BENCH_REF)/bin && cp $(BENCH_REF)/build/bin/llama-mtmd-cli $(BENCH_REF)/bin/

# The GPU half of the benchmark on a machine without package registries (bench/device.sh):
# packs the trimmed sdist and the wheels it needs into .device/.
device-kit: install
	PY=$(PY) LLAMA_REF_VERSION=$(LLAMA_REF_VERSION) bench/device_kit.sh
