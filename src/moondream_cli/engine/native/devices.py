"""The GPUs ggml found, through its own device API: names, memory, and, for a GPU build that
found none, why.

llama-cpp-python does not bind ggml's backend registry and device API, so they are called on
the libraries the package ships (``libggml`` for the registry, ``libggml-base`` for the
devices). Every backend answers them: CUDA, ROCm, Vulkan, Metal, SYCL, on every OS, where
``cudaMemGetInfo`` covered only CUDA on Linux.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .library import init_log, llama

# ggml_backend_dev_type: 0 CPU, 1 GPU (own memory), 2 integrated GPU (host memory),
# 3 accelerator (BLAS, AMX: the CPU's helpers), 4 meta (several devices as one).
_GPU, _IGPU = 1, 2
_NOT_GPU = ("CPU", "BLAS", "AMX", "RPC")
# Backends that drive a GPU: one of these registered with no device means the GPU build
# found no GPU it can use (ROCm is ggml-cuda built with HIP; MTL is Metal's older name).
GPU_BACKENDS = ("CUDA", "ROCm", "HIP", "MUSA", "Vulkan", "Metal", "MTL", "SYCL", "OpenCL", "CANN")


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    free_bytes: int | None
    total_bytes: int | None
    # Memory shared with the CPU (an integrated GPU, Apple's Metal): every such device draws
    # on the same RAM, so their figures are one pool, not a sum.
    unified: bool = False


def gpu_devices(lib_dir: Path | None = None) -> tuple[Device, ...]:
    """The GPUs ggml registered, with free/total memory; empty when the device API is missing.

    ``lib_dir``: where the ggml libraries are (default: llama_cpp's own, already loaded)."""
    libs = _libraries(lib_dir)
    if libs is None:
        return ()
    reg, base = libs
    found: list[Device] = []
    for i in range(int(reg.ggml_backend_dev_count())):
        dev = reg.ggml_backend_dev_get(i)
        name = (base.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace")
        kind = base.ggml_backend_dev_type(dev)
        if kind not in (_GPU, _IGPU) or name.upper().startswith(_NOT_GPU):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        description = (base.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
        unified = kind == _IGPU or name.upper().startswith(("METAL", "MTL"))
        found.append(
            Device(name, description, int(free.value) or None, int(total.value) or None, unified)
        )
    return tuple(found)


def backends(lib_dir: Path | None = None) -> tuple[tuple[str, int], ...]:
    """Every backend this build registered, with how many devices it found."""
    libs = _libraries(lib_dir)
    if libs is None:
        return ()
    reg, base = libs
    found = []
    for i in range(int(reg.ggml_backend_reg_count())):
        r = reg.ggml_backend_reg_get(i)
        name = (base.ggml_backend_reg_name(r) or b"").decode("utf-8", "replace")
        found.append((name, int(base.ggml_backend_reg_dev_count(r))))
    return tuple(found)


def no_gpu_reason(
    registered: tuple[tuple[str, int], ...], log: list[tuple[int, str]]
) -> str | None:
    """Why a GPU build runs on the CPU, in one line; None when it has a GPU or is a CPU build.

    ``registered``: (backend, devices) as :func:`backends` gives them; ``log``: the (level,
    line) pairs ggml logged while the backends registered, where e.g. ggml-cuda says that the
    driver is older than the CUDA runtime the build needs.
    """
    gpu = [(name, n) for name, n in registered if name.startswith(GPU_BACKENDS)]
    if not gpu or any(n for _, n in gpu):
        return None
    names = " and ".join(name for name, _ in gpu)
    said = [line for level, line in log if level in (2, 3) and line]  # warnings, errors
    why = f" ({'; '.join(said)[:300]})" if said else ""
    return (
        f"this llama.cpp build has {names} but found no GPU{why}; running on the CPU "
        "(docs/gpu.md: the driver each build needs)"
    )


@lru_cache(maxsize=1)
def missing_gpu() -> str | None:
    """:func:`no_gpu_reason` for this process's llama.cpp (worked out once)."""
    llama()
    return no_gpu_reason(backends(), init_log())


def _libraries(lib_dir: Path | None) -> tuple[Any, Any] | None:
    """(libggml, libggml-base) with the signatures used here, or None."""
    if lib_dir is None:
        lib_dir = Path(llama().__file__).parent / "lib"
    try:
        reg = _load_first(lib_dir, ("libggml.so", "libggml.dylib", "ggml.dll"))
        base = _load_first(lib_dir, ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"))
        for lib, getter in ((reg, "ggml_backend_dev_get"), (reg, "ggml_backend_reg_get")):
            getattr(lib, getter).restype = ctypes.c_void_p
            getattr(lib, getter).argtypes = [ctypes.c_size_t]
        reg.ggml_backend_dev_count.restype = ctypes.c_size_t
        reg.ggml_backend_reg_count.restype = ctypes.c_size_t
        for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(base, name).restype = ctypes.c_char_p
            getattr(base, name).argtypes = [ctypes.c_void_p]
        base.ggml_backend_reg_name.restype = ctypes.c_char_p
        base.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
        base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_type.restype = ctypes.c_int
        base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        size_p = ctypes.POINTER(ctypes.c_size_t)
        base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    except (OSError, AttributeError):
        return None
    return reg, base


def _load_first(lib_dir: Path, names: tuple[str, ...]) -> ctypes.CDLL:
    for name in names:
        if (lib_dir / name).exists():
            return ctypes.CDLL(str(lib_dir / name))
    raise OSError(f"none of {', '.join(names)} in {lib_dir}")
