# mdream — `make run` sets up and describes the sample image; `make test` sets up and tests.
# GPU=cuda|vulkan|hip|metal builds llama-cpp-python for that GPU backend (CUDA=1 is GPU=cuda),
# e.g. `make install GPU=vulkan`, and GPU=cpu goes back; docs/gpu.md says what each needs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Unless asked, the backend installed already (`make test` after a GPU build keeps it).
INSTALLED_GPU := $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*)))
GPU ?= $(if $(CUDA),cuda,$(or $(INSTALLED_GPU),cpu))
ifeq ($(filter $(GPU),cpu cuda vulkan hip metal),)
$(error GPU=$(GPU): pick one of cpu, cuda, vulkan, hip, metal)
endif
# The stamp names the backend: asking for another one rebuilds llama-cpp-python.
STAMP := $(VENV)/.installed-$(GPU)
# The CUDA architectures: the GPU this machine has, else ggml's default list cut to what this
# toolkit's nvcc can build (scripts/cuda_archs.py); CUDA_ARCHS=90 builds for an H100/H200 only.
# Worked out only when a CUDA build asks for it.
CUDA_ARCHS ?= $(shell $(PYTHON) scripts/cuda_archs.py)
# AMD GPU targets (e.g. gfx1100): HIP_ARCHS=..., else ggml's default list.
HIP_ARCHS ?=
GPU_CMAKE_cpu :=
GPU_CMAKE_cuda = -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$(or $(CUDA_ARCHS),$(error no CUDA \
  architecture to build for (the line above says why); CUDA_ARCHS=... picks them))
GPU_CMAKE_vulkan := -DGGML_VULKAN=on
GPU_CMAKE_hip = -DGGML_HIP=on $(if $(HIP_ARCHS),-DGPU_TARGETS=$(HIP_ARCHS))
GPU_CMAKE_metal := -DGGML_METAL=on
LLAMA_SPEC := >=0.3.36,<0.4
# The extras `make install` adds: [dev] (the tests, Ray where it has a wheel), or on musl
# (Alpine), where Ray has none and no marker tells musl from glibc, [test] alone.
EXTRAS ?= $(if $(filter musl,$(shell ldd --version 2>&1 | grep -io musl | head -n 1)),test,dev)

.PHONY: install system-deps run demo test test-fast lint fix bench bench-cluster bench-ref device-kit \
  privacy-check clean train-tiny

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	rm -f $(VENV)/.installed $(VENV)/.installed-*
ifneq ($(GPU),cpu)
	@# Built here, never taken from pip's cache (which holds the CPU wheel) nor put in it.
	CMAKE_ARGS="$(GPU_CMAKE_$(GPU)) $(CMAKE_ARGS)" FORCE_CMAKE=1 $(PY) -m pip install --quiet \
	  --no-cache-dir --force-reinstall --no-deps "llama-cpp-python$(LLAMA_SPEC)"
else
	@# A GPU build installed before: the CPU wheel again (pip's cache holds only CPU builds).
	if ls $(VENV)/lib/python*/site-packages/llama_cpp/lib/*ggml-cuda* \
	  $(VENV)/lib/python*/site-packages/llama_cpp/lib/*ggml-vulkan* \
	  $(VENV)/lib/python*/site-packages/llama_cpp/lib/*ggml-hip* 2>/dev/null | grep -q .; then \
	  $(PY) -m pip install --quiet --force-reinstall --no-deps "llama-cpp-python$(LLAMA_SPEC)"; fi
endif
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

run demo: install
	VENV=$(VENV) ./scripts/demo.sh

test: install system-deps
	$(PY) -m pytest -q

# The privacy tests trace real runs with strace and cut the network with unshare -n; the XMP
# tests read the sidecars back with ExifTool (what Immich and PhotoPrism run) and the exiv2
# tool (the library digiKam and darktable use). They fail (not skip) without them, so install
# them from Debian when missing. strace and unshare are Linux-only: elsewhere (macOS) those
# tests and the Ray cluster's skip, and this says so.
system-deps:
ifeq ($(shell uname -s),Linux)
	@command -v strace >/dev/null && command -v unshare >/dev/null && \
	  command -v exiftool >/dev/null && command -v exiv2 >/dev/null || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo apt-get install -y -qq strace util-linux libimage-exiftool-perl exiv2; }
else
	@echo "mdream: strace and unshare -n are Linux-only: on $$(uname -s) the syscall-trace" \
	  "tests (make privacy-check) and the Ray cluster tests are skipped; the rest runs"
endif

# Everything but the tests marked slow (child processes, strace, signals, a cluster, seconds of
# model work): under 30 s on 2 cores, not minutes. Two workers (pytest-xdist), each pinned to a
# CPU of its own by tests/conftest.py; TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test-fast: install
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS)

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
# 17 minutes on 2 cores; rewrites its weights, held-out images and golden answers. Needs torch
# (the `train` extra); when it is missing, the version the committed model was trained with is
# installed, the CPU build from PyTorch's own index (PyPI's Linux wheel is the CUDA one,
# gigabytes); `TORCH_INDEX=` takes it from pip's own configuration instead (a local wheel,
# offline). TRAIN_ARGS="--seed N" etc. go to the script.
TRAIN_ARGS ?=
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
train-tiny: install
	$(PY) -c 'import torch' 2>/dev/null || \
	  $(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH)'
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
	  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF $(GPU_CMAKE_$(GPU))
	cmake --build $(BENCH_REF)/build --target llama-mtmd-cli -j $$(nproc)
	mkdir -p $(BENCH_REF)/bin && cp $(BENCH_REF)/build/bin/llama-mtmd-cli $(BENCH_REF)/bin/

# The GPU half of the benchmark on a machine without package registries (bench/device.sh):
# packs the trimmed sdist and the wheels it needs into .device/.
device-kit: install
	PY=$(PY) LLAMA_REF_VERSION=$(LLAMA_REF_VERSION) bench/device_kit.sh
