"""Route llama.cpp's and libmtmd's C-level logging through Python.

Both libraries print from C; without these callbacks their lines go straight to the
terminal (and libmtmd's debug lines ignore ``verbose=False``). Installed before any model
loads; the lines reach stderr only when verbose, and never stdout.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from types import CodeType, FrameType
from typing import Any

_state: dict[str, Any] = {"verbose": False, "callback": None}
# Code of the Python functions C calls back (log lines, quantization progress).
_CALLBACKS: set[CodeType] = set()


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


def callback(func: Any) -> Any:
    """Mark ``func`` as called from C, for :func:`keep_ctrl_c` (returns it unchanged)."""
    _CALLBACKS.add(func.__code__)
    return func


callback(_emit)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    here = frame
    while here is not None:
        if here.f_code in _CALLBACKS:
            # A KeyboardInterrupt raised here would unwind into C: ctypes prints it and drops
            # it, and the run goes on. Deliver it again once C has had time to return.
            threading.Timer(0.01, signal.raise_signal, (signum,)).start()
            return
        here = here.f_back
    raise KeyboardInterrupt


def keep_ctrl_c() -> None:
    """Make Ctrl-C stop the program even when it arrives while C is calling back into
    Python (llama.cpp logs often). Leaves an ignored or custom SIGINT alone."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
