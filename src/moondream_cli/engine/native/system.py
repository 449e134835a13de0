"""The process's side of llama.cpp: where its log lines go, what it was built with, and its
quantizer (the GPUs it found: :mod:`.devices`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ... import interrupt
from .library import init_log_bytes, llama
from .text import kv_overrides
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


# GetLogicalProcessorInformationEx's RelationProcessorCore: one record per physical core.
_RELATION_PROCESSOR_CORE = 0


def windows_cores() -> int | None:
    """Physical cores on Windows (``GetLogicalProcessorInformationEx``, as llama.cpp counts
    them); None elsewhere or when the call fails."""
    if sys.platform != "win32":
        return None
    try:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        size = ctypes.c_uint32(0)
        kernel32.GetLogicalProcessorInformationEx(
            _RELATION_PROCESSOR_CORE, None, ctypes.byref(size)
        )
        buffer = ctypes.create_string_buffer(size.value)
        if not kernel32.GetLogicalProcessorInformationEx(
            _RELATION_PROCESSOR_CORE, buffer, ctypes.byref(size)
        ):
            return None
    except (OSError, AttributeError):
        return None
    return count_cores(buffer.raw[: size.value]) or None


def count_cores(records: bytes) -> int:
    """The processor-core records in a ``SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX`` buffer:
    each starts with its relationship and its size in bytes (two little-endian DWORDs)."""
    count = offset = 0
    while offset + 8 <= len(records):
        relationship, size = struct.unpack_from("<II", records, offset)
        if size < 8:
            break
        count += relationship == _RELATION_PROCESSOR_CORE
        offset += size
    return count


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
