"""Quantize a text GGUF with llama.cpp's own quantizer (``llama_model_quantize``).

llama.cpp logs one line per tensor while it works; those lines are routed here, turned
into (done, total) progress calls, and kept out of the terminal. The last lines are kept
to explain a failure.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _native_log, interrupt
from .errors import FetchError
from .recipe import QUANTIZATIONS

_TENSOR = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")


def quantize(
    source: Path,
    target: Path,
    quantization: str,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``target`` as ``source`` quantized to ``quantization`` (e.g. ``Q4_K_M``)."""
    ftype_name = QUANTIZATIONS.get(quantization.upper())
    if ftype_name is None:
        raise FetchError(f"no llama.cpp quantization for {quantization!r}")
    import llama_cpp

    tail: deque[str] = deque(maxlen=4)

    @interrupt.callback
    def on_log(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
        if not text:
            return
        try:
            match = _TENSOR.match(text)
            if match and progress is not None:
                progress(int(match.group(1)), int(match.group(2)))
            elif text.strip():
                tail.append(text.decode("utf-8", errors="replace").strip())
        except Exception:  # never unwind into C
            pass

    callback = llama_cpp.llama_log_callback(on_log)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        llama_cpp.llama_backend_init()
        params: Any = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, ftype_name)
        params.nthread = threads or (os.cpu_count() or 1)
        rc = llama_cpp.llama_model_quantize(
            os.fsencode(source), os.fsencode(target), ctypes.byref(params)
        )
    finally:
        # Back to mdream's usual routing; `callback` must outlive the call above.
        _native_log.install(verbose=False)
    if rc != 0:
        target.unlink(missing_ok=True)
        reason = "; ".join(line for line in tail if "fail" in line.lower()) or "see --verbose"
        raise FetchError(f"quantizing to {quantization} failed: {reason}", path=str(source))
