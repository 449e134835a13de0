"""The process's side of llama.cpp: where its log lines go, what it was built with, and its
quantizer (the GPUs it found: :mod:`.devices`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import interrupt
from .text import init_log_bytes, kv_overrides, llama
from .vision import mtmd

# -- the process: logging, GPU, quantizing ---------------------------------------------------
LogSink = Callable[[bytes], None]

_logs: dict[str, Any] = {"sink": None, "callback": None, "write": None, "replayed": False}


@interrupt.callback
def _on_log(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
    sink = _logs["sink"]
    if sink is None or not text:
        return
    with contextlib.suppress(Exception):  # never unwind into C
        sink(text)


def route_logs(sink: LogSink | None) -> None:
    """Send every llama.cpp and libmtmd log line to ``sink`` (None: drop them). Without this
    both libraries print from C, and libmtmd's debug lines ignore any verbosity setting."""
    ll, mt = llama(), mtmd()
    _logs["sink"] = sink
    if _logs["callback"] is None:
        # The ctypes callback object must live as long as the process.
        _logs["callback"] = ll.llama_log_callback(_on_log)
    callback = _logs["callback"]
    ll.llama_log_set(callback, ctypes.c_void_p(0))
    mt.mtmd_log_set(callback, ctypes.c_void_p(0))
    mt.mtmd_helper_log_set(callback, ctypes.c_void_p(0))


def set_log_writer(write: Callable[[str], None] | None) -> None:
    """Where :func:`stderr_sink` writes (None: ``sys.stderr``): the CLI prints the lines
    through its one stderr writer, above any progress bar."""
    _logs["write"] = write


def stderr_sink(text: bytes) -> None:
    """A log line to stderr, or to the writer :func:`set_log_writer` installed."""
    decoded = text.decode("utf-8", errors="replace")
    write = _logs["write"]
    if write is not None:
        write(decoded)
        return
    sys.stderr.write(decoded)
    sys.stderr.flush()


def route_logs_to_stderr(verbose: bool) -> None:
    """mdream's usual routing: log lines to stderr with ``verbose``, else nowhere. The first
    time with ``verbose``, what the backends said as they registered comes first."""
    route_logs(stderr_sink if verbose else None)
    if verbose and not _logs["replayed"]:
        _logs["replayed"] = True
        for line in init_log_bytes():
            stderr_sink(line)


def version() -> str:
    """llama-cpp-python's version."""
    return str(getattr(llama(), "__version__", "unknown"))


def system_info() -> str:
    """What llama.cpp was built with and found (``llama_print_system_info``)."""
    return str(llama().llama_print_system_info().decode("utf-8", "replace"))


def sysctl_int(name: str) -> int | None:
    """An integer ``sysctlbyname`` value (macOS, the BSDs); None where there is none."""
    try:
        libc = ctypes.CDLL(None)
        value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
        if libc.sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0):
            return None
    except (OSError, AttributeError, TypeError):  # no sysctlbyname; Windows: no CDLL(None)
        return None
    return int(value.value) if size.value in (4, 8) else None


def gpu_offload() -> bool:
    """Whether this llama.cpp build can offload to a GPU."""
    return bool(llama().llama_supports_gpu_offload())


def quantize_gguf(
    source: Path,
    target: Path,
    ftype: str,
    threads: int,
    on_log: LogSink,
    metadata: dict[str, str] | None = None,
) -> int:
    """``llama_model_quantize`` with llama.cpp's ``ftype`` constant named ``ftype``, writing
    the string keys ``metadata`` into the new file; its log lines go to ``on_log`` meanwhile.
    Returns llama.cpp's code (0: done)."""
    ll = llama()
    route_logs(on_log)
    try:
        params = ll.llama_model_quantize_default_params()
        params.ftype = getattr(ll, ftype)
        params.nthread = threads
        overrides = kv_overrides(metadata or {})
        if overrides is not None:
            params.kv_overrides = overrides
        return int(
            ll.llama_model_quantize(os.fsencode(source), os.fsencode(target), ctypes.byref(params))
        )
    finally:
        route_logs(None)
