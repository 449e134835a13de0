# mdream — `make run` sets up and describes the sample image; `make test` sets up and tests.
# CUDA=1 builds llama-cpp-python with CUDA (e.g. `make install CUDA=1`).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed$(if $(CUDA),-cuda)
CMAKE_ARGS_CUDA := -DGGML_CUDA=on
LLAMA_SPEC := >=0.3.36,<0.4

.PHONY: install system-deps run demo test test-fast lint fix bench bench-ref privacy-check clean

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

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts
	$(PY) -m mypy

fix: install
	$(PY) -m ruff check --fix src tests scripts
	$(PY) -m ruff format src tests scripts

# Prove on this machine, with your installed model, that inference opens no socket and
# writes no file (strace), and prints the same with no network at all (unshare -n).
# Needs strace and util-linux; PRIVACY_ARGS="--model-dir DIR" picks another model.
privacy-check: install system-deps
	$(PY) scripts/privacy_check.py $(PRIVACY_ARGS)

clean:
	rm -rf $(VENV) .cache build dist .pytest_cache .mypy_cache .ruff_cache

# Build the default Q4_K_M bundle (downloads the f16 GGUFs once) and keep its tarball in bundles/.
.PHONY: bundle
bundle: install
	mkdir -p bundles
	$(VENV)/bin/mdream fetch --output bundles/
