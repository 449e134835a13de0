"""Quantize a text GGUF with llama.cpp's own quantizer (``llama_model_quantize``).

llama.cpp logs one line per tensor while it works; those lines are routed here, turned
into (done, total) progress calls, and kept out of the terminal. The last lines are kept
to explain a failure. The quantized file carries the metadata fixes of
:func:`moondream_cli.reference.metadata_fixes` (GPT-2's pre-tokenizer), so any llama.cpp
tool tokenizes it as the reference did.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .. import interrupt, reference
from ..errors import FetchError
from ..gguf_meta import read_metadata
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
    with interrupt.shielded():
        # A signal that lands in an import can be lost: importlib's weakref callbacks print
        # a KeyboardInterrupt raised in them and drop it. Held off, it is raised once done.
        from ..engine import native

    tail: deque[str] = deque(maxlen=4)

    def on_log(text: bytes) -> None:
        match = _TENSOR.match(text)
        if match and progress is not None:
            progress(int(match.group(1)), int(match.group(2)))
        elif text.strip():
            tail.append(text.decode("utf-8", errors="replace").strip())

    fixes = reference.metadata_fixes(read_metadata(source))
    rc = native.quantize_gguf(
        source, target, ftype_name, threads or (os.cpu_count() or 1), on_log, metadata=fixes
    )
    if rc != 0:
        target.unlink(missing_ok=True)
        reason = "; ".join(line for line in tail if "fail" in line.lower()) or "see --verbose"
        raise FetchError(f"quantizing to {quantization} failed: {reason}", path=str(source))
