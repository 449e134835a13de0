"""In-process Moondream2 inference on llama.cpp's multimodal library (libmtmd).

The text model and the mmproj are loaded once. An image is evaluated once as the KV-cache
prefix "BOS, image"; each question then only evaluates its own tokens after that prefix,
so further questions on the same image cost just their own text. Pixels go straight from
memory into ``mtmd_bitmap_init``: no files, no URLs, no re-encoding.
"""

from __future__ import annotations

import codecs
import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import _native_log
from .errors import InputError, ModelError, UsageError
from .images import Pixels
from .locate import ModelFiles
from .prompts import STOP, question_prompt


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores (hyper-threads share one core's arithmetic units)."""
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and (phys or core):
                    cores.add((phys, core))
                    phys = core = ""
        if phys or core:
            cores.add((phys, core))
    except OSError:
        pass
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(cores) or (logical or 1), logical or 1))


@lru_cache(maxsize=1)
def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


@dataclass(frozen=True)
class EngineOptions:
    threads: int | None = None  # None: physical cores
    gpu: bool = True  # offload everything when the build supports it
    n_ctx: int = 2048
    n_batch: int = 1024
    verbose: bool = False


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, same input gives the same output
    seed: int | None = None
    grammar: str | None = None  # GBNF, root rule "root"


_backend_ready = False


def _llama() -> Any:
    global _backend_ready
    import llama_cpp

    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def gpu_available() -> bool:
    _native_log.install(verbose=False)
    return bool(_llama().llama_supports_gpu_offload())


class Engine:
    """One loaded text model + mmproj. Not thread-safe: one generation at a time."""

    def __init__(self, files: ModelFiles, options: EngineOptions | None = None) -> None:
        self.files = files
        self.options = options or EngineOptions()
        _native_log.install(self.options.verbose)
        ll = _llama()
        from llama_cpp import mtmd_cpp

        self._ll, self._mtmd = ll, mtmd_cpp
        self._model: Any = None
        self._ctx: Any = None
        self._mctx: Any = None
        self.threads = self.options.threads or physical_cores()
        self.on_gpu = self.options.gpu and bool(ll.llama_supports_gpu_offload())
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._prefix_len = 0
        self._prefix_key: object = None

    # -- loading -----------------------------------------------------------------------
    def _load(self) -> None:
        ll, mtmd = self._ll, self._mtmd
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 999 if self.on_gpu else 0
        # llama.cpp's AMX weight repacking segfaults on quantized models (ggml-org/llama.cpp
        # #20824; seen here with every Q4_K_M bundle): keep plain CPU buffers on AMX CPUs.
        mparams.use_extra_bufts = not _cpu_has_amx()
        self._model = ll.llama_model_load_from_file(os.fsencode(self.files.text), mparams)
        if not self._model:
            raise ModelError(
                "cannot load the text model (run with --verbose for llama.cpp's reason)",
                path=str(self.files.text),
            )
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = self.options.n_ctx
        cparams.n_batch = self.options.n_batch
        cparams.n_ubatch = min(512, self.options.n_batch)
        cparams.n_seq_max = 1
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelError("cannot create a llama.cpp context", path=str(self.files.text))
        self._vocab = ll.llama_model_get_vocab(self._model)
        self._n_ctx = int(ll.llama_n_ctx(self._ctx))

        pparams = mtmd.mtmd_context_params_default()
        pparams.use_gpu = self.on_gpu
        pparams.n_threads = self.threads
        pparams.print_timings = False
        pparams.warmup = self.on_gpu
        self._mctx = mtmd.mtmd_init_from_file(os.fsencode(self.files.mmproj), self._model, pparams)
        if not self._mctx:
            raise ModelError(
                "cannot load the mmproj, or it does not match the text model "
                "(run with --verbose for llama.cpp's reason)",
                path=str(self.files.mmproj),
            )
        if not mtmd.mtmd_support_vision(self._mctx):
            raise ModelError("the mmproj has no vision encoder", path=str(self.files.mmproj))
        bos = int(ll.llama_vocab_bos(self._vocab))
        self._bos_text = self._piece(bos, special=True) if bos >= 0 else b""

    def close(self) -> None:
        ll, mtmd = getattr(self, "_ll", None), getattr(self, "_mtmd", None)
        if ll is None or mtmd is None:
            return
        if self._mctx:
            mtmd.mtmd_free(self._mctx)
            self._mctx = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the image prefix ----------------------------------------------------------------
    def set_image(self, pixels: Pixels, *, key: object = None, label: str | None = None) -> None:
        """Evaluate "BOS, image" as the cache prefix. ``key`` identifies the image for reuse."""
        if key is not None and key == self._prefix_key:
            return
        ll, mtmd = self._ll, self._mtmd
        mem = ll.llama_get_memory(self._ctx)
        ll.llama_memory_clear(mem, True)
        self._prefix_key, self._prefix_len = None, 0
        buf = (ctypes.c_uint8 * len(pixels.data)).from_buffer_copy(pixels.data)
        bitmap = mtmd.mtmd_bitmap_init(pixels.width, pixels.height, buf)
        if not bitmap:
            raise InputError("cannot hand the pixels to libmtmd", path=label)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            # Only our own fixed text goes through parse_special: the BOS piece and the marker.
            text = self._bos_text + mtmd.mtmd_default_marker()
            inp = mtmd.mtmd_input_text()
            inp.text = text
            inp.text_len = len(text)
            inp.add_special = False
            inp.parse_special = True
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd.mtmd_tokenize(self._mctx, chunks, ctypes.byref(inp), bitmaps, 1)
            if rc != 0:
                raise InputError(f"libmtmd could not tokenize the image (code {rc})", path=label)
            new_n_past = ll.llama_pos(0)
            rc = mtmd.mtmd_helper_eval_chunks(
                self._mctx,
                self._ctx,
                chunks,
                0,
                0,
                self.options.n_batch,
                False,
                ctypes.byref(new_n_past),
            )
            if rc != 0:
                raise InputError(f"libmtmd could not evaluate the image (code {rc})", path=label)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
        self._prefix_len = int(new_n_past.value)
        self._prefix_key = key

    # -- answering -----------------------------------------------------------------------
    def ask(
        self,
        question: str,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """Answer ``question`` about the current image; ``on_text`` receives streamed text."""
        if not self._prefix_len:
            raise UsageError("no image has been set")
        sampling = sampling or Sampling()
        ll = self._ll
        ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), 0, self._prefix_len, -1)
        tokens = self._tokenize(question_prompt(question))
        room = self._n_ctx - self._prefix_len - len(tokens)
        if room < 1:
            fit = self._n_ctx - self._prefix_len - 1
            raise InputError(f"question too long ({len(tokens)} tokens; {fit} fit)")
        self._decode(tokens, self._prefix_len)
        sampler = self._sampler(sampling)
        try:
            return self._generate(
                sampler,
                self._prefix_len + len(tokens),
                min(sampling.max_tokens, room),
                sampling.grammar is None,
                on_text,
            )
        finally:
            ll.llama_sampler_free(sampler)

    def _generate(
        self,
        sampler: Any,
        pos: int,
        limit: int,
        stop_on_blank: bool,
        on_text: Callable[[str], None] | None,
    ) -> str:
        ll = self._ll
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted = "", 0
        for _ in range(limit):
            token = int(ll.llama_sampler_sample(sampler, self._ctx, -1))
            if ll.llama_vocab_is_eog(self._vocab, token):
                break
            text += decoder.decode(self._piece(token))
            if stop_on_blank and STOP in text:
                text = text[: text.index(STOP)]
                break
            if on_text is not None:
                # Hold back trailing whitespace: it may be the start of the stop sequence.
                ready = len(text.rstrip())
                if ready > emitted:
                    on_text(text[emitted:ready] if emitted else text[:ready].lstrip())
                    emitted = ready
            self._decode([token], pos)
            pos += 1
        text += decoder.decode(b"", final=True)
        answer = text.strip()
        if on_text is not None:
            shown = len(text[:emitted].strip())
            if len(answer) > shown:
                on_text(answer[shown:] if shown else answer)
        return answer

    def _sampler(self, sampling: Sampling) -> Any:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if sampling.grammar is not None:
            grammar = ll.llama_sampler_init_grammar(
                self._vocab, sampling.grammar.encode("utf-8"), b"root"
            )
            if not grammar:
                ll.llama_sampler_free(chain)
                raise UsageError("the answer grammar is invalid")
            ll.llama_sampler_chain_add(chain, grammar)
        if sampling.temperature > 0:
            seed = sampling.seed if sampling.seed is not None else 0xFFFFFFFF  # LLAMA_DEFAULT_SEED
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(40))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(0.95, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(sampling.temperature))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        else:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        return chain

    # -- low-level helpers ---------------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        ll = self._ll
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (ll.llama_token * capacity)()
        # parse_special=False: a question can never smuggle in control tokens.
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, False)
        if n < 0:
            raise InputError("question could not be tokenized")
        return list(buf[:n])

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        ll = self._ll
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def _decode(self, tokens: list[int], pos: int) -> None:
        ll = self._ll
        step = self.options.n_batch
        for start in range(0, len(tokens), step):
            part = tokens[start : start + step]
            batch = ll.llama_batch_init(len(part), 0, 1)
            try:
                for i, tok in enumerate(part):
                    batch.token[i] = tok
                    batch.pos[i] = pos + start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = start + i == len(tokens) - 1
                batch.n_tokens = len(part)
                rc = ll.llama_decode(self._ctx, batch)
            finally:
                ll.llama_batch_free(batch)
            if rc != 0:
                raise InputError(f"llama.cpp could not decode (code {rc})")
