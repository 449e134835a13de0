"""The one module that touches ctypes: llama.cpp's and libmtmd's C objects, each owned by one
small Python object that frees it.

Every class here holds one C object, frees it in ``close()`` (and on leaving a ``with``
block), and raises :class:`RuntimeError` when it is used after that, instead of handing C a
dangling pointer. Failures of the library calls are ``MdreamError``\\ s. ``llama_cpp`` is
imported on first use, so importing this module (``mdream --help``) loads no native code.

    with Batch(n) as batch:
        batch.add(token, pos, seq, logits=True)
        context.decode(batch)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import interrupt
from ..errors import InputError, ModelError, UsageError

_loaded: dict[str, Any] = {}
OwnedT = TypeVar("OwnedT", bound="Owned")


def llama() -> Any:
    """``llama_cpp``, its backend initialised once per process."""
    if "llama" not in _loaded:
        import llama_cpp

        llama_cpp.llama_backend_init()
        _loaded["llama"] = llama_cpp
    return _loaded["llama"]


def mtmd() -> Any:
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


class Owned:
    """One C object and the function that frees it."""

    _what = "native object"

    def __init__(self, ptr: Any, free: Callable[[Any], None]) -> None:
        self._ptr = ptr
        self._free: Callable[[Any], None] | None = free

    @property
    def ptr(self) -> Any:
        if self._ptr is None:
            raise RuntimeError(f"{self._what} used after close()")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        if self._ptr is not None and self._free is not None:
            self._free(self._ptr)
        self._ptr = None

    def __enter__(self: OwnedT) -> OwnedT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the text model and its context ----------------------------------------------------------
class Model(Owned):
    """A loaded text GGUF (``llama_model``) and its vocabulary."""

    _what = "text model"

    def __init__(self, path: Path, *, gpu: bool, extra_bufts: bool = True) -> None:
        ll = llama()
        params = ll.llama_model_default_params()
        params.n_gpu_layers = 999 if gpu else 0
        params.use_extra_bufts = extra_bufts
        ptr = ll.llama_model_load_from_file(os.fsencode(path), params)
        if not ptr:
            raise ModelError(
                "cannot load the text model (run with --verbose for llama.cpp's reason)",
                path=str(path),
            )
        super().__init__(ptr, ll.llama_model_free)
        self._vocab = ll.llama_model_get_vocab(ptr)
        self.n_layer = int(ll.llama_model_n_layer(ptr))
        self.n_embd = int(ll.llama_model_n_embd(ptr))
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self.bos = int(ll.llama_vocab_bos(self._vocab))
        self.eos = int(ll.llama_vocab_eos(self._vocab))

    @property
    def vocab(self) -> Any:
        self.ptr  # noqa: B018 -- raises once the model is freed, with its vocabulary
        return self._vocab

    def tokenize(self, text: str) -> list[int]:
        """``text``'s tokens; never control tokens (``parse_special`` off), so a question
        can never smuggle one in."""
        ll = llama()
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (ll.llama_token * capacity)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, False)
        if n < 0:
            raise InputError("question could not be tokenized")
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        ll = llama()
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def is_eog(self, token: int) -> bool:
        return bool(llama().llama_vocab_is_eog(self.vocab, token))


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int  # KV cells in all, over every sequence
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    flash_attn: bool | None  # None: llama.cpp decides
    threads: int


class Context(Owned):
    """A ``llama_context``: the KV cache, one stream per sequence, and the logits."""

    _what = "llama.cpp context"

    def __init__(self, model: Model, params: ContextParams) -> None:
        ll = llama()
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = params.n_ctx
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = params.n_ubatch
        cparams.n_seq_max = params.n_seq_max
        # Each sequence gets its own KV stream, so a batched sequence computes exactly what
        # the same sequence computes alone.
        cparams.kv_unified = False
        cparams.flash_attn_type = flash_attn_type(params.flash_attn)
        cparams.n_threads = params.threads
        cparams.n_threads_batch = params.threads
        cparams.no_perf = True
        ptr = ll.llama_init_from_model(model.ptr, cparams)
        if not ptr:
            raise ModelError("cannot create a llama.cpp context")
        super().__init__(ptr, ll.llama_free)
        self.n_vocab = model.n_vocab

    @property
    def n_ctx(self) -> int:
        return int(llama().llama_n_ctx(self.ptr))

    @property
    def n_ctx_seq(self) -> int:
        return int(llama().llama_n_ctx_seq(self.ptr))

    @property
    def n_ubatch(self) -> int:
        return int(llama().llama_n_ubatch(self.ptr))

    def decode(self, batch: Batch) -> None:
        rc = llama().llama_decode(self.ptr, batch.filled())
        if rc != 0:
            raise InputError(f"llama.cpp could not decode (code {rc})")

    def clear(self) -> None:
        """Empty the KV cache of every sequence."""
        ll = llama()
        ll.llama_memory_clear(ll.llama_get_memory(self.ptr), True)

    def remove(self, seq: int, start: int, end: int = -1) -> None:
        """Drop positions [start, end) of ``seq`` (end -1: to its end)."""
        ll = llama()
        ll.llama_memory_seq_rm(ll.llama_get_memory(self.ptr), seq, start, end)

    def logits(self, index: int) -> memoryview:
        """The next-token logits of output row ``index`` (-1: the last), valid until the next
        decode."""
        ptr = llama().llama_get_logits_ith(self.ptr, index)
        row = (ctypes.c_float * self.n_vocab).from_address(ctypes.addressof(ptr.contents))
        return memoryview(row)


def flash_attn_type(on: bool | None) -> int:
    ll = llama()
    if on is None:
        return int(ll.LLAMA_FLASH_ATTN_TYPE_AUTO)
    return int(ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if on else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)


class Batch(Owned):
    """A ``llama_batch`` of up to ``capacity`` tokens, each in one sequence."""

    _what = "llama_batch"

    def __init__(self, capacity: int) -> None:
        ll = llama()
        super().__init__(ll.llama_batch_init(capacity, 0, 1), ll.llama_batch_free)
        self.capacity = capacity
        self.n = 0

    def add(self, token: int, pos: int, seq: int, *, logits: bool = False) -> int:
        """Append ``token`` at ``pos`` of ``seq``; return its row (``logits`` asks for that
        row's logits after the decode)."""
        if self.n >= self.capacity:
            raise RuntimeError(f"llama_batch full ({self.capacity} tokens)")
        batch, i = self.ptr, self.n
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        self.n += 1
        return i

    def add_run(self, tokens: list[int], pos: int, seq: int, *, logits: bool = True) -> int:
        """Append ``tokens`` at consecutive positions from ``pos`` (``logits``: for the last
        one); return the last one's row."""
        row = -1
        for j, token in enumerate(tokens):
            row = self.add(token, pos + j, seq, logits=logits and j == len(tokens) - 1)
        return row

    def seqs(self) -> list[int]:
        """The sequence of each token, in order."""
        batch = self.ptr
        return [int(batch.seq_id[i][0]) for i in range(self.n)]

    def clear(self) -> None:
        self.n = 0

    def filled(self) -> Any:
        batch = self.ptr
        batch.n_tokens = self.n
        return batch

    def __len__(self) -> int:
        return self.n


class Sampler(Owned):
    """A sampler chain: optional grammar, optional EOS ban, then greedy or seeded sampling."""

    _what = "sampler"

    def __init__(
        self,
        model: Model,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        grammar: str | None = None,
        ban_eos: bool = False,
    ) -> None:
        ll = llama()
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        super().__init__(chain, ll.llama_sampler_free)
        add = ll.llama_sampler_chain_add
        if grammar is not None:
            rule = ll.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
            if not rule:
                self.close()
                raise UsageError("the answer grammar is invalid")
            add(chain, rule)
        if ban_eos:
            bias = (ll.llama_logit_bias * 1)()
            bias[0].token = model.eos
            bias[0].bias = float("-inf")
            add(chain, ll.llama_sampler_init_logit_bias(model.n_vocab, 1, bias))
        if temperature > 0:
            add(chain, ll.llama_sampler_init_top_k(40))
            add(chain, ll.llama_sampler_init_top_p(0.95, 1))
            add(chain, ll.llama_sampler_init_temp(temperature))
            add(chain, ll.llama_sampler_init_dist(0xFFFFFFFF if seed is None else seed))
        else:
            add(chain, ll.llama_sampler_init_greedy())

    def sample(self, context: Context, index: int) -> int:
        return int(llama().llama_sampler_sample(self.ptr, context.ptr, index))


# -- the mmproj ------------------------------------------------------------------------------
class Projector(Owned):
    """A loaded mmproj (``mtmd_context``): the vision encoder and its projector."""

    _what = "mmproj"

    def __init__(
        self, path: Path, model: Model, *, gpu: bool, threads: int, flash_attn: bool | None
    ) -> None:
        mt = mtmd()
        params = mt.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = gpu
        params.flash_attn_type = flash_attn_type(flash_attn)
        ptr = mt.mtmd_init_from_file(os.fsencode(path), model.ptr, params)
        if not ptr:
            raise ModelError(
                "cannot load the mmproj, or it does not match the text model "
                "(run with --verbose for llama.cpp's reason)",
                path=str(path),
            )
        super().__init__(ptr, mt.mtmd_free)
        if not mt.mtmd_support_vision(ptr):
            self.close()
            raise ModelError("the mmproj has no vision encoder", path=str(path))
        self.marker: bytes = mt.mtmd_default_marker()

    def tokenize(self, text: bytes, width: int, height: int, rgb: bytes) -> Chunks:
        """Split ``text`` (one :attr:`marker` where the image goes; special tokens parsed) and
        the packed RGB image into chunks. Only mdream's own fixed text comes here."""
        mt = mtmd()
        if width < 1 or height < 1 or len(rgb) != width * height * 3:
            # libmtmd reads width × height × 3 bytes, whatever the buffer holds.
            raise InputError("pixel data does not match the image size")
        buf = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
        bitmap = mt.mtmd_bitmap_init(width, height, buf)
        if not bitmap:
            raise InputError("cannot hand the pixels to libmtmd")
        chunks = Chunks()
        try:
            inp = mt.mtmd_input_text()
            inp.text = text
            inp.text_len = len(text)
            inp.add_special = False
            inp.parse_special = True
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            # libmtmd converts the bitmap while tokenizing: it is not needed afterwards.
            rc = mt.mtmd_tokenize(self.ptr, chunks.ptr, ctypes.byref(inp), bitmaps, 1)
        except BaseException:
            chunks.close()
            raise
        finally:
            mt.mtmd_bitmap_free(bitmap)
        if rc != 0:
            chunks.close()
            raise InputError(f"libmtmd could not tokenize the image (code {rc})")
        return chunks

    def encode(self, chunk: Chunk) -> None:
        """Run the vision encoder on an image chunk (its output: until the next encode)."""
        rc = mtmd().mtmd_encode_chunk(self.ptr, chunk.ptr)
        if rc != 0:
            raise InputError(f"libmtmd could not encode the image (code {rc})")

    def decode_image(self, context: Context, chunk: Chunk, pos: int, seq: int, n_batch: int) -> int:
        """Evaluate the last encoded image into ``seq`` from ``pos``; return the next position."""
        mt, ll = mtmd(), llama()
        new_pos = ll.llama_pos(0)
        rc = mt.mtmd_helper_decode_image_chunk(
            self.ptr,
            context.ptr,
            chunk.ptr,
            mt.mtmd_get_output_embd(self.ptr),
            pos,
            seq,
            n_batch,
            ctypes.byref(new_pos),
            mt.mtmd_helper_post_decode_callback(0),
            None,
        )
        if rc != 0:
            raise InputError(f"libmtmd could not evaluate the image (code {rc})")
        return int(new_pos.value)

    def decode_text(self, context: Context, chunk: Chunk, pos: int, seq: int, n_batch: int) -> int:
        """Evaluate a text chunk into ``seq`` from ``pos``; return the next position."""
        mt, ll = mtmd(), llama()
        new_pos = ll.llama_pos(pos)
        rc = mt.mtmd_helper_eval_chunk_single(
            self.ptr, context.ptr, chunk.ptr, pos, seq, n_batch, False, ctypes.byref(new_pos)
        )
        if rc != 0:
            raise InputError(f"libmtmd could not evaluate the image prompt (code {rc})")
        return int(new_pos.value)


@dataclass(frozen=True)
class Chunk:
    ptr: Any
    is_image: bool
    n_tokens: int


class Chunks(Owned):
    """``mtmd_input_chunks``: the text and image pieces of one tokenized prompt."""

    _what = "mtmd chunks"

    def __init__(self) -> None:
        mt = mtmd()
        super().__init__(mt.mtmd_input_chunks_init(), mt.mtmd_input_chunks_free)

    def __iter__(self) -> Iterator[Chunk]:
        mt = mtmd()
        for i in range(mt.mtmd_input_chunks_size(self.ptr)):
            ptr = mt.mtmd_input_chunks_get(self.ptr, i)
            kind = mt.mtmd_input_chunk_get_type(ptr)
            yield Chunk(
                ptr, kind == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE, mt.mtmd_input_chunk_get_n_tokens(ptr)
            )


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


def quantize(source: Path, target: Path, ftype: str, threads: int, on_log: LogSink) -> int:
    """``llama_model_quantize`` with llama.cpp's ``ftype`` constant named ``ftype``; its log
    lines go to ``on_log`` meanwhile. Returns llama.cpp's code (0: done)."""
    ll = llama()
    route_logs(on_log)
    try:
        params = ll.llama_model_quantize_default_params()
        params.ftype = getattr(ll, ftype)
        params.nthread = threads
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
