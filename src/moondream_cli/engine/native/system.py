"""The process's side of llama.cpp: where its log lines go, what GPU it can use, and its
quantizer."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import interrupt
from .text import kv_overrides, llama
from .vision import mtmd

# -- the process: logging, GPU, quantizing ---------------------------------------------------
LogSink = Callable[[bytes], None]

_logs: dict[str, Any] = {"sink": None, "callback": None, "write": None}


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
    """mdream's usual routing: log lines to stderr with ``verbose``, else nowhere."""
    route_logs(stderr_sink if verbose else None)


@contextlib.contextmanager
def _stderr_captured(limit: int = 4096) -> Iterator[list[bytes]]:
    """fd 2 into a pipe for the block, drained by a thread that keeps the first ``limit``
    bytes: what C prints there (llama.cpp's grammar parser prints the whole grammar) is read,
    not shown. Only while nothing else writes to stderr (before the model loads)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    read, write = os.pipe()
    kept: list[bytes] = []

    def drain() -> None:
        size = 0
        while chunk := os.read(read, 1 << 16):
            if size < limit:
                kept.append(chunk[: limit - size])
                size += len(kept[-1])

    reader = threading.Thread(target=drain, name="mdream-stderr", daemon=True)
    reader.start()
    saved = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield kept
    finally:
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees its end
        os.close(saved)
        reader.join(timeout=5)
        os.close(read)


def grammar_error(gbnf: str) -> str | None:
    """Why llama.cpp would refuse the GBNF grammar ``gbnf`` (its first complaint), or None
    when it parses. Parsed without a model (no vocabulary: mdream's grammars hold no token
    references); llama.cpp's messages, and its dump of the grammar, never reach stderr."""
    ll = llama()
    previous = _logs["sink"]
    logged: list[bytes] = []
    route_logs(logged.append)
    try:
        with _stderr_captured() as printed:
            ptr = ll.llama_sampler_init_grammar(None, gbnf.encode("utf-8"), b"root")
    finally:
        route_logs(previous)
    if ptr:
        ll.llama_sampler_free(ptr)
        return None
    said = b"".join(printed).decode("utf-8", "replace").strip().splitlines()
    said += b"".join(logged).decode("utf-8", "replace").strip().splitlines()
    first = next((line for line in said if line.strip()), "no reason given")
    return first.split("error parsing grammar: ", 1)[-1].strip()


# -- ggml's aborts -----------------------------------------------------------------------------
_aborts: dict[str, Any] = {"callback": None, "handler": None, "first": threading.Lock()}


def _print_and_exit(message: str) -> None:
    """The default for a failed ggml check: one line on stderr, exit 3 (a model error)."""
    line = f"mdream: error: llama.cpp stopped on a failed check: {message}\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", "replace"))


@interrupt.callback
def _on_abort(text: bytes | None) -> None:
    # ggml calls abort() when this returns: never return. Several of its threads can fail the
    # same check at once: the first one speaks and ends the process, the others wait for it.
    if not _aborts["first"].acquire(blocking=False):
        threading.Event().wait()
    # The message starts with the source file's path on the build machine: its name will do.
    raw = (text or b"").decode("utf-8", "replace")
    where, _, what = raw.partition(": ")
    message = f"{os.path.basename(where)}: {what}" if what else raw
    message = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in message.strip())
    try:
        handler = _aborts["handler"] or _print_and_exit
        handler(message)
    finally:
        os._exit(3)  # errors.EXIT_MODEL: the model (or llama.cpp) cannot go on


def catch_aborts(handler: Callable[[str], None] | None = None) -> None:
    """Make every ``GGML_ASSERT``/``GGML_ABORT`` call ``handler(message)`` and end the
    process with exit 3, instead of a core dump (SIGABRT, 134) with ggml's own lines; the
    default handler prints one ``mdream: error:`` line. What was written before is whole:
    records and sidecars are written whole or not at all, and not while C runs."""
    _aborts["handler"] = handler
    if _aborts["callback"] is not None:
        return
    kind = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    callback = kind(_on_abort)
    for path in _ggml_bases():
        base = ctypes.CDLL(path)
        base.ggml_set_abort_callback.argtypes = [kind]
        base.ggml_set_abort_callback.restype = kind
        base.ggml_set_abort_callback(callback)
    _aborts["callback"] = callback  # must live as long as the process


def _ggml_bases() -> list[str]:
    """Every copy of ggml's base library in the process: the wheel ships it as three files
    (no links), and llama_cpp loads one by name while libllama loads another by its soname;
    each keeps its own abort callback."""
    lib_dir = Path(llama().__file__).parent / "lib"
    found = {str(p) for p in lib_dir.glob("*ggml-base*") if p.suffix in (".so", ".dylib", ".dll")}
    with contextlib.suppress(OSError), open("/proc/self/maps", encoding="utf-8") as maps:
        found |= {line.split()[-1] for line in maps if "ggml-base" in line.rsplit("/", 1)[-1]}
    return sorted(found)


def version() -> str:
    """llama-cpp-python's version."""
    return str(getattr(llama(), "__version__", "unknown"))


def system_info() -> str:
    """What llama.cpp was built with and found (``llama_print_system_info``)."""
    return str(llama().llama_print_system_info().decode("utf-8", "replace"))


def gpu_offload() -> bool:
    """Whether this llama.cpp build can offload to a GPU."""
    return bool(llama().llama_supports_gpu_offload())


def gpu_free_bytes() -> int | None:
    """Free memory on the current CUDA device, through the CUDA runtime llama.cpp loaded."""
    for name in ("libcudart.so", "libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0"):
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        if cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value)
        return None
    return None


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
    catch_aborts()
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


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    free_bytes: int | None
    total_bytes: int | None


_NOT_GPU = ("CPU", "BLAS", "AMX", "RPC")


def gpu_devices(lib_dir: Path | None = None) -> tuple[Device, ...]:
    """The GPUs ggml registered, with free/total memory; empty when the device API is missing.

    llama-cpp-python does not bind ggml's device API, so it is called on the libraries the
    package ships in ``lib_dir`` (default: its own, already loaded by llama_cpp).
    """
    if lib_dir is None:
        lib_dir = Path(llama().__file__).parent / "lib"
    try:
        reg = _load_first(lib_dir, ("libggml.so", "libggml.dylib", "ggml.dll"))
        base = _load_first(lib_dir, ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"))
        reg.ggml_backend_dev_count.restype = ctypes.c_size_t
        reg.ggml_backend_dev_get.restype = ctypes.c_void_p
        reg.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(base, name).restype = ctypes.c_char_p
            getattr(base, name).argtypes = [ctypes.c_void_p]
        base.ggml_backend_dev_type.restype = ctypes.c_int
        base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        size_p = ctypes.POINTER(ctypes.c_size_t)
        base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    except (OSError, AttributeError):
        return ()
    found: list[Device] = []
    for i in range(int(reg.ggml_backend_dev_count())):
        dev = reg.ggml_backend_dev_get(i)
        name = (base.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace")
        # Device types: 0 CPU, 1 GPU, 2 integrated GPU (older ggml: accelerator), 3 accelerator.
        if base.ggml_backend_dev_type(dev) not in (1, 2) or name.upper().startswith(_NOT_GPU):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        description = (base.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
        found.append(Device(name, description, int(free.value) or None, int(total.value) or None))
    return tuple(found)


def _load_first(lib_dir: Path, names: tuple[str, ...]) -> ctypes.CDLL:
    for name in names:
        if (lib_dir / name).exists():
            return ctypes.CDLL(str(lib_dir / name))
    raise OSError(f"none of {', '.join(names)} in {lib_dir}")
