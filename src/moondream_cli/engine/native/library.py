"""Loading llama.cpp once per process: the GPU drivers' caches off first, what the backends
log while they register kept for later (never printed as it happens)."""

from __future__ import annotations

import ctypes
import os
from typing import Any

from ... import interrupt

_loaded: dict[str, Any] = {}


# The GPU drivers' on-disk caches, off before any backend loads: the CUDA driver's PTX JIT
# cache (~/.nv/ComputeCache, used where the build has no code for the GPU's architecture),
# Mesa's shader cache (RADV, ANV, NVK: Vulkan on AMD and Intel), the NVIDIA driver's Vulkan
# pipeline cache (~/.nv/GLCache, ~/.cache/nvidia), and ROCm comgr's code object cache
# (~/.cache/comgr). Each holds compiled kernels, never an image, but mdream writes no file
# while it answers, and neither does what it loads. Metal has no such switch (docs/gpu.md).
CACHES_OFF = {
    "CUDA_CACHE_DISABLE": "1",
    "MESA_SHADER_CACHE_DISABLE": "true",
    "MESA_GLSL_CACHE_DISABLE": "true",  # its name before Mesa 22
    "__GL_SHADER_DISK_CACHE": "0",
    "AMD_COMGR_CACHE": "0",
}
_INIT_LOG_LINES = 200


def llama() -> Any:
    """``llama_cpp``, its backend initialised once per process, the GPU caches off."""
    if "llama" not in _loaded:
        os.environ.update(CACHES_OFF)
        # On a GGML_ASSERT ggml would start gdb from PATH to print a backtrace: never.
        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
        import llama_cpp

        # What the backends say as they register (a GPU build that finds no GPU says why
        # here) is kept, not printed: `devices.missing_gpu` reports it in one line, and
        # `system.route_logs` hands it to the first log sink.
        log: list[tuple[int, bytes]] = []

        @interrupt.callback
        def keep(level: int, text: bytes | None, _: ctypes.c_void_p) -> None:
            if text and len(log) < _INIT_LOG_LINES:
                log.append((level, text))

        _loaded["init_log"], _loaded["init_callback"] = log, llama_cpp.llama_log_callback(keep)
        llama_cpp.llama_log_set(_loaded["init_callback"], ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _loaded["llama"] = llama_cpp
    return _loaded["llama"]


def init_log() -> list[tuple[int, str]]:
    """(level, line) of what ggml logged while its backends registered; a continued line
    (level 5) joined to the one it continues."""
    lines: list[tuple[int, str]] = []
    for level, raw in _loaded.get("init_log", []):
        text = raw.decode("utf-8", "replace")
        if level == 5 and lines:
            lines[-1] = (lines[-1][0], lines[-1][1] + text)
        else:
            lines.append((level, text))
    return [(level, text.strip()) for level, text in lines]


def init_log_bytes() -> list[bytes]:
    """The same lines as logged, for a sink that wants them (``--verbose``)."""
    return [raw for _, raw in _loaded.get("init_log", [])]
