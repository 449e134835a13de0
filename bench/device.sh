#!/usr/bin/env bash
# The GPU checks of issue 6 (bench/README.md, "GPU"), prepared for a session that is lent a
# CUDA machine through the device tool: that machine reaches no package registry and holds a
# lease of minutes, so everything it needs comes from a kit packed here first:
#   make device-kit                           # .device/: trimmed llama-cpp-python sdist, wheels
# then, with the tool's `run`, carry [".device"]:
#   bash bench/device.sh build test           # ~5 min: build once, the engine's tests on the GPU
#   bash bench/device.sh bench                # at once, same warm machine: make bench there
# (`all` does the three in one call when a 10-minute command fits the time left.)
#   build  the kit's vendored llama.cpp with CUDA, once: the shared libraries llama-cpp-python
#          loads, placed as its wheel places them, and llama-mtmd-cli for the reference column.
#   test   the test files that run the engine; not the privacy ones, which need strace and
#          unshare (not on that machine), nor the pipelines' (jsonschema).
#   bench  bench/bench.py $BENCH_ARGS, then bench/prefill.py --gpu --batch 8; the tables, the
#          JSON result and the logs go to $OUT.
# DEVICE_CMAKE_ARGS replaces the CUDA flags; set it empty to try the script on a CPU here.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIT=$ROOT/.device
WORK=${DEVICE_WORK:-/tmp/mdream-device}
OUT=${OUT:-$WORK/out}
SITE=$WORK/site
BUILD=$WORK/build
CMAKE_FLAGS=${DEVICE_CMAKE_ARGS--DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$SITE:$ROOT/src" PYTHONUNBUFFERED=1

say() { printf '[device %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$OUT/device.log" >&2; }

build() {
    if [ -f "$SITE/llama_cpp/lib/.built" ]; then
        say "build: already there ($SITE)"
        return 0
    fi
    [ -f "$KIT/llama-cpp-python-src.tar.gz" ] || { say "build: no kit; run make device-kit here"; return 1; }
    rm -rf "$WORK/src" "$SITE" && mkdir -p "$SITE"
    tar -xzf "$KIT/llama-cpp-python-src.tar.gz" -C "$WORK" || return 1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$KIT"/whl/*.whl \
        >>"$OUT/build.log" 2>&1 || { say "build: wheels failed (build.log)"; return 1; }
    cp -r "$WORK/src/llama_cpp" "$SITE/llama_cpp"
    say "build: configuring llama.cpp ($CMAKE_FLAGS)"
    # shellcheck disable=SC2086  # the flags are words
    cmake -S "$WORK/src/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF $CMAKE_FLAGS \
        >>"$OUT/build.log" 2>&1 || { say "build: cmake failed (build.log)"; return 1; }
    say "build: compiling on $(nproc) cores"
    cmake --build "$BUILD" --target llama mtmd llama-mtmd-cli -j "$(nproc)" \
        >>"$OUT/build.log" 2>&1 || { say "build: compile failed (build.log)"; return 1; }
    mkdir -p "$SITE/llama_cpp/lib" "$ROOT/.cache/bench-ref/bin"
    find "$BUILD" -name 'lib*.so*' -exec cp -P {} "$SITE/llama_cpp/lib/" \;
    cp "$BUILD/bin/llama-mtmd-cli" "$ROOT/.cache/bench-ref/bin/"  # where bench.py looks
    "$PY" -c "import llama_cpp as l; print(l.llama_print_system_info().decode())" \
        >>"$OUT/device.log" 2>&1 || { say "build: llama_cpp does not import"; return 1; }
    touch "$SITE/llama_cpp/lib/.built"
    say "build: done"
}

run_tests() {
    say "test: engine tests"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_batch.py tests/test_api.py \
        tests/test_smoke.py tests/test_cli.py tests/test_chat_template.py tests/test_doctor.py \
        >"$OUT/tests.log" 2>&1
    local rc=$?
    say "test: exit $rc ($(tail -n 1 "$OUT/tests.log"))"
    return $rc
}

run_bench() {
    say "bench: bench/bench.py ${BENCH_ARGS:-}"
    # shellcheck disable=SC2086
    "$PY" bench/bench.py ${BENCH_ARGS:-} >"$OUT/table.md" 2>"$OUT/bench.log"
    local rc=$?
    local result
    result=$(sed -n 's/^bench: result: //p' "$OUT/bench.log" | tail -n 1)
    [ -n "$result" ] && cp "$result" "$OUT/"
    say "bench: exit $rc"
    cat "$OUT/table.md"
    # Batched image prefill on the GPU (bench/README.md, "Batched image prefill").
    "$PY" bench/prefill.py --gpu --batch 8 >"$OUT/prefill.md" 2>>"$OUT/bench.log" || rc=1
    say "prefill: $(tail -n 1 "$OUT/prefill.md")"
    cat "$OUT/prefill.md"
    return $rc
}

status=0
[ $# -gt 0 ] || set -- all
for phase in "$@"; do
    case $phase in
    build) build || exit 1 ;;
    test) build && run_tests || status=1 ;;
    bench) build && run_bench || status=1 ;;
    all) { build && run_tests; } || status=1; build && run_bench || status=1 ;;
    *) say "unknown phase: $phase (build, test, bench, all)"; exit 2 ;;
    esac
done
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >>"$OUT/device.log" 2>&1
fi
exit $status
