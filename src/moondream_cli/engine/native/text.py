"""llama.cpp's text side: the model and its vocabulary, the context (KV cache, logits), a
batch of tokens, a sampler chain. Each class owns its C object (:class:`Owned`)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ...errors import InputError, ModelError, UsageError
from .library import llama

OwnedT = TypeVar("OwnedT", bound="Owned")


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


def kv_overrides(values: dict[str, str]) -> Any:
    """``values`` as a ``llama_model_kv_override`` array (string values), ended by the empty
    key llama.cpp stops at; None when there are none. Keep it alive while llama.cpp reads it."""
    if not values:
        return None
    ll = llama()
    array = (ll.llama_model_kv_override * (len(values) + 1))()
    for item, (key, value) in zip(array, values.items(), strict=False):
        raw_key, raw_value = key.encode(), value.encode()
        if len(raw_key) >= 128 or len(raw_value) >= 128:  # char[128], NUL-terminated
            raise ValueError(f"metadata override {key}={value!r} is too long")
        item.key = raw_key
        item.tag = ll.LLAMA_KV_OVERRIDE_TYPE_STR
        item.value.val_str = raw_value
    return array


# -- the text model and its context ----------------------------------------------------------
class Model(Owned):
    """A loaded text GGUF (``llama_model``) and its vocabulary; ``overrides`` replace string
    metadata keys at load time (the file is not changed)."""

    _what = "text model"

    def __init__(
        self,
        path: Path,
        *,
        gpu: bool,
        extra_bufts: bool = True,
        overrides: dict[str, str] | None = None,
    ) -> None:
        ll = llama()
        params = ll.llama_model_default_params()
        params.n_gpu_layers = 999 if gpu else 0
        params.use_extra_bufts = extra_bufts
        override_array = kv_overrides(overrides or {})
        if override_array is not None:
            params.kv_overrides = override_array
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
        self._grammars: dict[str, Grammar] = {}  # parsed once, copied for every answer
        self.grammars_parsed = 0  # GBNF texts parsed for this vocabulary (each costs ms)

    def parse_grammar(self, gbnf: str) -> Any:
        """``llama_sampler_init_grammar`` for this vocabulary (root rule ``root``), counted."""
        self.grammars_parsed += 1
        return llama().llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")

    def grammar(self, gbnf: str | None) -> Grammar | None:
        """The grammar ``gbnf`` for this model's vocabulary, parsed the first time it is asked
        for (freed with the model)."""
        if gbnf is not None and gbnf not in self._grammars:
            self._grammars[gbnf] = Grammar(self, gbnf)
        return None if gbnf is None else self._grammars[gbnf]

    def close(self) -> None:
        while self._grammars:  # a child before its parent
            self._grammars.popitem()[1].close()
        super().close()

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
            # The model loaded: what failed is this context's size, most often its memory.
            raise ModelError(
                f"llama.cpp could not make a context of {params.n_seq_max} sequence"
                f"{'s' if params.n_seq_max != 1 else ''} × {params.n_ctx // params.n_seq_max} "
                "cells (not enough memory for that many KV caches?) — a smaller --batch "
                "needs less"
            )
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
    """A ``llama_batch`` of up to ``capacity`` tokens, each in one sequence: token ids, or
    with ``n_embd`` embeddings of that width (an image's, :meth:`add_embeddings`)."""

    _what = "llama_batch"

    def __init__(self, capacity: int, n_embd: int = 0) -> None:
        ll = llama()
        super().__init__(ll.llama_batch_init(capacity, n_embd, 1), ll.llama_batch_free)
        self.capacity = capacity
        self.n_embd = n_embd
        self.n = 0

    def add_embeddings(self, embd: Any, pos: int, seq: int) -> None:
        """Append the rows of ``embd`` (a ctypes float array, ``n_embd`` floats a row) at
        consecutive positions of ``seq`` from ``pos``, without logits."""
        n = len(embd) // self.n_embd
        if not self.n_embd or self.n + n > self.capacity:
            raise RuntimeError(f"llama_batch cannot take {n} more embeddings")
        batch, first = self.ptr, self.n
        dst = ctypes.cast(batch.embd, ctypes.c_void_p).value
        assert dst is not None
        ctypes.memmove(dst + first * self.n_embd * 4, embd, n * self.n_embd * 4)
        for j in range(n):
            batch.pos[first + j] = pos + j
            batch.n_seq_id[first + j] = 1
            batch.seq_id[first + j][0] = seq
            batch.logits[first + j] = False
        self.n += n

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


class Grammar(Owned):
    """A GBNF grammar parsed once for ``model``'s vocabulary (root rule ``root``), in its
    starting state: each answer's :class:`Sampler` takes a copy (``llama_sampler_clone``,
    0.3 ms for 15,000 choices, where parsing them again took 7 ms)."""

    _what = "grammar"

    def __init__(self, model: Model, gbnf: str) -> None:
        ptr = model.parse_grammar(gbnf)
        if not ptr:
            raise UsageError("the answer grammar is invalid")
        super().__init__(ptr, llama().llama_sampler_free)


class Sampler(Owned):
    """A sampler chain: optional grammar, optional EOS ban, then greedy or seeded sampling."""

    _what = "sampler"

    def __init__(
        self,
        model: Model,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        grammar: Grammar | str | None = None,
        ban_eos: bool = False,
    ) -> None:
        ll = llama()
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        super().__init__(chain, ll.llama_sampler_free)
        add = ll.llama_sampler_chain_add
        if isinstance(grammar, str):
            rule = model.parse_grammar(grammar)
        elif grammar is not None:
            rule = ll.llama_sampler_clone(grammar.ptr)
        if grammar is not None:
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
