"""The one place that touches ctypes: llama.cpp's and libmtmd's C objects, each owned by one
small Python object that frees it.

Every class here holds one C object, frees it in ``close()`` (and on leaving a ``with``
block), and raises :class:`RuntimeError` when it is used after that, instead of handing C a
dangling pointer. Failures of the library calls are ``MdreamError``\\ s. ``llama_cpp`` is
imported on first use, so importing this package (``mdream --help``) loads no native code.

    with Batch(n) as batch:
        batch.add(token, pos, seq, logits=True)
        context.decode(batch)

- :mod:`.text`: the text model, its context (KV cache, logits), batches, samplers;
- :mod:`.vision`: the mmproj and the chunks of a prompt with an image;
- :mod:`.system`: log routing, the build, the quantizer;
- :mod:`.devices`: the GPUs ggml found, their memory, and why a GPU build found none.
"""

from __future__ import annotations

from .devices import Device, backends, gpu_devices, missing_gpu, no_gpu_reason
from .library import llama
from .system import (
    LogSink,
    catch_aborts,
    count_cores,
    gpu_offload,
    grammar_error,
    quantize_gguf,
    route_logs,
    route_logs_to_stderr,
    set_log_writer,
    stderr_sink,
    sysctl_int,
    system_info,
    version,
    windows_cores,
)
from .text import (
    Batch,
    Context,
    ContextParams,
    Grammar,
    Model,
    Owned,
    Sampler,
    flash_attn_type,
    kv_overrides,
)
from .vision import Chunk, Chunks, Projector, mtmd

__all__ = [
    "Batch",
    "Chunk",
    "Chunks",
    "Context",
    "ContextParams",
    "Device",
    "Grammar",
    "LogSink",
    "Model",
    "Owned",
    "Projector",
    "Sampler",
    "backends",
    "catch_aborts",
    "count_cores",
    "flash_attn_type",
    "gpu_devices",
    "gpu_offload",
    "grammar_error",
    "kv_overrides",
    "llama",
    "missing_gpu",
    "mtmd",
    "no_gpu_reason",
    "quantize_gguf",
    "route_logs",
    "route_logs_to_stderr",
    "set_log_writer",
    "stderr_sink",
    "sysctl_int",
    "system_info",
    "version",
    "windows_cores",
]
