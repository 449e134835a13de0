"""Route llama.cpp's and libmtmd's C-level logging through Python.

Both libraries print from C; without these callbacks their lines go straight to the
terminal (and libmtmd's debug lines ignore ``verbose=False``). Installed before any model
loads; the lines reach stderr only when verbose, and never stdout.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from .interrupt import callback

_state: dict[str, Any] = {"verbose": False, "callback": None}


@callback
def _emit(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
    if not _state["verbose"] or not text:
        return
    try:
        sys.stderr.write(text.decode("utf-8", errors="replace"))
        sys.stderr.flush()
    except Exception:
        pass


def install(verbose: bool) -> None:
    """Point every llama.cpp / libmtmd logger at :func:`_emit` (idempotent)."""
    import llama_cpp
    from llama_cpp import mtmd_cpp

    _state["verbose"] = verbose
    if _state["callback"] is None:
        # The ctypes callback object must live as long as the process.
        _state["callback"] = llama_cpp.llama_log_callback(_emit)
    cb = _state["callback"]
    llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(cb, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(cb, ctypes.c_void_p(0))
