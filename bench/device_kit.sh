#!/usr/bin/env bash
# Packs what bench/device.sh needs on a GPU machine that reaches no package registry, into
# .device/ (git-ignored): the llama-cpp-python sdist that pyproject pins, trimmed to what
# building its vendored llama.cpp needs, and the pure-Python wheels that machine
# lacks (see /work/.library/device/KINDS.md). Run here, where PyPI is reachable:
#   make device-kit
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_REF_VERSION:-0.3.36}
PY=${PY:-.venv/bin/python}
KIT=.device
REF=.cache/bench-ref

mkdir -p "$REF" "$KIT/whl"
sdist="$REF/llama_cpp_python-$VERSION.tar.gz"
[ -f "$sdist" ] || "$PY" -m pip download --quiet --no-binary :all: --no-deps --dest "$REF" \
    "llama-cpp-python==$VERSION"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
tar -xzf "$sdist" -C "$work/src" --strip-components=1
# llama.cpp's tests, model vocabularies, docs, media and web UI: not needed to build it with
# the server off. Packed again, since the tree alone would be most of the 64 MiB that travels.
rm -rf "$work/src/.git"
for d in models docs media tests benches tools/ui .git; do
    rm -rf "$work/src/vendor/llama.cpp/$d"
done
tar -czf "$KIT/llama-cpp-python-src.tar.gz" -C "$work" src
# llama-cpp-python needs diskcache, the test fixtures need gguf; the machine has the rest.
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$KIT/whl" \
    "diskcache==5.6.3" "gguf>=0.17,<0.20"
du -sh "$KIT" >&2
