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
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import _native_log
from .errors import InputError, ModelError, UsageError
from .gguf_meta import read_metadata
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
def cpu_has_amx() -> bool:
    """True on CPUs with Intel AMX (Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


@dataclass(frozen=True)
class EngineOptions:
    threads: int | None = None  # None: physical cores
    gpu: bool = True  # offload everything when the build supports it
    n_ctx: int = 2048  # per sequence, unless the CPU's automatic batch sizes them (seq_tokens)
    n_batch: int = 1024
    verbose: bool = False
    # Sequences that `Engine.ask_many` decodes together. None: on a GPU as many as half the
    # free memory holds KV caches for, at most MAX_AUTO_BATCH; on the CPU see `seq_tokens`.
    batch: int | None = None
    # The most text tokens one sequence needs after its image (its longest question prompt
    # plus the answer's max_tokens; an upper bound will do). On the CPU it lets the automatic
    # batch size each sequence's KV cache to what it needs instead of n_ctx, and fit 2 or 3 in
    # about the memory of one (README "Performance"). None (unknown): 1 sequence on the CPU.
    seq_tokens: int | None = None
    # Tokens llama.cpp computes at once. None: 256 on the CPU, where an image's prefill is
    # 0.25 s faster than with 512 (less causal attention work, smaller buffers; bench/ and the
    # README's "Performance"), 512 elsewhere.
    n_ubatch: int | None = None
    # llama.cpp's flash attention in the text model and in the vision encoder. None: off
    # for the text model on the CPU, where it saves image prefill time but halves the answer
    # speed, a net loss from about 16 answer tokens on (bench/, README's "Performance");
    # elsewhere llama.cpp decides (on wherever it is supported).
    flash_attn: bool | None = None
    vision_flash_attn: bool | None = None


MAX_AUTO_BATCH = 32
# The CPU's automatic batch: its KV caches together stay within this many times one
# n_ctx-sized cache (so peak memory barely moves), and it stays below 8 sequences, where
# llama.cpp switches the decode step's matrix kernel: below it, every answer is bit-identical
# to the one the image gets on its own.
CPU_KV_BUDGET = 1.25
CPU_MAX_AUTO_BATCH = 7
CPU_UBATCH = 256  # EngineOptions.n_ubatch's CPU default


def cpu_kv_cells(positions: int) -> int:
    """KV cells to give a CPU sequence that needs ``positions``: an odd multiple of 256.

    Without flash attention llama.cpp stores V transposed, so writing one token's V touches
    one element per row, rows (cells × 2 bytes) apart. With a power-of-two cell count that
    stride is a power of two too (2 KiB for 1024 cells, 4 KiB for 2048): the rows land in the
    same few cache sets, and writing an image's 730 positions took 1.29 s of a 9 s prefill;
    with 2304 cells instead of 2048 it took 0.38 s (`bench/profile_ops.py --n-ctx`). Only
    spare cells are added: llama.cpp attends over the used cells (rounded up to 256) either
    way, so answers are identical.
    """
    blocks = -(-max(1, positions) // 256)
    return 256 * (blocks | 1)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, same input gives the same output
    seed: int | None = None
    grammar: str | None = None  # GBNF, root rule "root"
    # Exactly max_tokens tokens: EOS is masked and a blank line does not stop the answer.
    # For benchmarks, where both sides must generate the same number of tokens.
    fixed_length: bool = False


@dataclass(frozen=True)
class Request:
    """One image and the questions to ask about it, for :meth:`Engine.ask_many`."""

    pixels: Pixels
    questions: tuple[str, ...]
    tag: object = None  # handed back unchanged with each of its answers
    label: str | None = None  # names the image in errors
    max_tokens: int | None = None  # this image's answers only; None: the sampling's


@dataclass(frozen=True)
class Answer:
    """The answer to ``request.questions[index]``; ``error`` set instead of ``text`` on failure."""

    tag: object
    index: int
    question: str
    text: str | None
    error: InputError | None = None
    tokens: int = 0  # tokens sampled for this answer


_backend_ready = False
_END = object()  # what ``next`` gives once the requests have run out


def _llama() -> Any:
    global _backend_ready
    import llama_cpp

    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def image_positions(mmproj: os.PathLike[str] | str) -> int | None:
    """KV positions "BOS, image" takes, from the mmproj's header: one per patch for the
    plain MLP projector Moondream2 uses. None for anything else (it may tile images)."""
    try:
        meta = read_metadata(Path(mmproj))
    except ModelError:
        return None
    size, patch = meta.get("clip.vision.image_size"), meta.get("clip.vision.patch_size")
    if meta.get("clip.projector_type") != "mlp" or not isinstance(size, int):
        return None
    if not isinstance(patch, int) or patch < 1:
        return None
    return (size // patch) ** 2 + 1


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
        self._planned_image: int | None = None  # positions per image the CPU batch plan assumed
        self._bos_seqs: set[int] = set()  # sequences whose position 0 holds the BOS
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._prefix_len = 0
        self._prefix_key: object = None
        self.last_tokens = 0  # tokens sampled by the last `ask` (EOS or stop included)
        self.peak_live = 0  # most sequences `ask_many` decoded together in its last call

    # -- loading -----------------------------------------------------------------------
    def _load(self) -> None:
        ll, mtmd = self._ll, self._mtmd
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 999 if self.on_gpu else 0
        if not self.on_gpu and cpu_has_amx():
            # ggml's AMX matmul kernels (an "extra buffer type") segfault when GCC 12 built
            # them (its _tile_loadconfig lets the tile configuration's stores be deleted;
            # llama.cpp issue #20824), and with a fixed build they are no faster for this
            # model (README "Performance"). Without extra buffer types the ordinary CPU
            # kernels run it, with any build.
            mparams.use_extra_bufts = False
        self._model = ll.llama_model_load_from_file(os.fsencode(self.files.text), mparams)
        if not self._model:
            raise ModelError(
                "cannot load the text model (run with --verbose for llama.cpp's reason)",
                path=str(self.files.text),
            )
        self.batch, seq_ctx = self._plan_batch()
        cparams = ll.llama_context_default_params()
        # Each sequence gets its own KV stream (kv_unified off), so a batched sequence
        # computes exactly what the same sequence computes alone. It may use seq_ctx
        # positions; on the CPU its stream has a few cells more (`cpu_kv_cells`).
        cells = seq_ctx if self.on_gpu else cpu_kv_cells(seq_ctx)
        cparams.n_ctx = cells * self.batch
        cparams.n_batch = self.options.n_batch
        n_ubatch = self.options.n_ubatch or (512 if self.on_gpu else CPU_UBATCH)
        cparams.n_ubatch = min(n_ubatch, self.options.n_batch)
        cparams.n_seq_max = self.batch
        cparams.kv_unified = False
        text_fa = self.options.flash_attn
        if text_fa is None and not self.on_gpu:
            text_fa = False
        cparams.flash_attn_type = self._flash_attn_type(text_fa)
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelError("cannot create a llama.cpp context", path=str(self.files.text))
        self._vocab = ll.llama_model_get_vocab(self._model)
        self._n_ctx = min(seq_ctx, int(ll.llama_n_ctx_seq(self._ctx)))  # usable per sequence

        pparams = mtmd.mtmd_context_params_default()
        pparams.use_gpu = self.on_gpu
        pparams.n_threads = self.threads
        pparams.print_timings = False
        pparams.warmup = self.on_gpu
        pparams.flash_attn_type = self._flash_attn_type(self.options.vision_flash_attn)
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

    def _flash_attn_type(self, fa: bool | None) -> int:
        ll = self._ll
        if fa is None:
            return int(ll.LLAMA_FLASH_ATTN_TYPE_AUTO)
        return int(ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if fa else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)

    def _plan_batch(self) -> tuple[int, int]:
        """How many sequences, and the KV positions each gets."""
        n_ctx = self.options.n_ctx
        if self.options.batch:
            return max(1, self.options.batch), n_ctx
        if self.on_gpu:
            return self._auto_batch(), n_ctx
        image = image_positions(self.files.mmproj)
        if self.options.seq_tokens is None or image is None:
            return 1, n_ctx
        seq_ctx = cpu_kv_cells(image + self.options.seq_tokens)
        batch = min(CPU_MAX_AUTO_BATCH, int(CPU_KV_BUDGET * n_ctx) // seq_ctx)
        if batch < 2:
            return 1, n_ctx
        self._planned_image = image
        return batch, seq_ctx

    def _auto_batch(self) -> int:
        free = _gpu_free_bytes()
        if free is None:
            return 8
        ll = self._ll
        # f16 K and V for every layer and position of one sequence, plus as much again for
        # the compute buffers that grow with the batch.
        kv = 2 * 2 * ll.llama_model_n_layer(self._model) * ll.llama_model_n_embd(self._model)
        per_seq = int(2 * kv * self.options.n_ctx)
        return max(1, min(MAX_AUTO_BATCH, int(free * 0.5) // max(1, per_seq)))

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
        self._prefix_key, self._prefix_len = None, 0
        self._prefix_len = self._eval_image(pixels, 0, label)
        self._prefix_key = key

    def _clear_memory(self) -> None:
        ll = self._ll
        ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
        self._bos_seqs.clear()

    def _eval_image(self, pixels: Pixels, seq: int, label: str | None) -> int:
        """Encode the image and evaluate "BOS, image" into ``seq`` from position 0, in place of
        what the sequence held.

        The BOS does not depend on the image: a sequence keeps it from its last image, which
        saves a decode step per image (0.1 s on a 2-core CPU) and changes nothing, as the BOS
        was always evaluated on its own.
        """
        ll, mtmd = self._ll, self._mtmd
        if (
            pixels.width < 1
            or pixels.height < 1
            or len(pixels.data) != pixels.width * pixels.height * 3
        ):
            # libmtmd reads width × height × 3 bytes, whatever the buffer holds.
            raise InputError("pixel data does not match the image size", path=label)
        keep_bos = seq in self._bos_seqs
        self._bos_seqs.discard(seq)  # until the image is in: a failure may leave anything
        ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), seq, 1 if keep_bos else 0, -1)
        buf = (ctypes.c_uint8 * len(pixels.data)).from_buffer_copy(pixels.data)
        bitmap = mtmd.mtmd_bitmap_init(pixels.width, pixels.height, buf)
        if not bitmap:
            raise InputError("cannot hand the pixels to libmtmd", path=label)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            # Only our own fixed text goes through parse_special: the BOS piece and the marker.
            text = (b"" if keep_bos else self._bos_text) + mtmd.mtmd_default_marker()
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
                1 if keep_bos else 0,
                seq,
                self.options.n_batch,
                False,
                ctypes.byref(new_n_past),
            )
            if rc != 0:
                raise InputError(f"libmtmd could not evaluate the image (code {rc})", path=label)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
        if self._bos_text:
            self._bos_seqs.add(seq)
        n_past = int(new_n_past.value)
        if self._planned_image is not None and n_past > self._planned_image:
            # The sequences were sized for the header's count: going on would cut answers short.
            raise ModelError(
                f"an image took {n_past} positions, not the {self._planned_image} "
                "the mmproj's header implies",
                path=str(self.files.mmproj),
            )
        return n_past

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
        pos, limit = self._prefill_question(question, sampling)
        sampler = self._sampler(sampling)
        try:
            stream = _TextStream(self, sampling, on_text)
            for n in range(1, limit + 1):
                token = int(self._ll.llama_sampler_sample(sampler, self._ctx, -1))
                self.last_tokens = n
                if stream.push(token) or n == limit:
                    break
                self._decode([token], pos)
                pos += 1
            return stream.finish()
        finally:
            self._ll.llama_sampler_free(sampler)

    def _prefill_question(self, question: str, sampling: Sampling) -> tuple[int, int]:
        """Evaluate the question after the current image (sequence 0); return the next
        position and how many tokens the answer may have."""
        tokens, limit = self._question_tokens(0, self._prefix_len, question, sampling)
        self._decode(tokens, self._prefix_len)
        return self._prefix_len + len(tokens), limit

    def _question_tokens(
        self,
        seq: int,
        prefix_len: int,
        question: str,
        sampling: Sampling,
        max_tokens: int | None = None,
    ) -> tuple[list[int], int]:
        """Drop what followed the image prefix in ``seq``; return the question prompt's tokens
        (to evaluate right after the prefix) and how many tokens the answer may have."""
        ll = self._ll
        ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), seq, prefix_len, -1)
        tokens = self._tokenize(question_prompt(question))
        room = self._n_ctx - prefix_len - len(tokens)
        if room < 1:
            raise InputError(
                f"question too long ({len(tokens)} tokens; {self._n_ctx - prefix_len - 1} fit)"
            )
        limit = sampling.max_tokens if max_tokens is None else max_tokens
        return tokens, min(limit, room)

    def ask_many(
        self,
        requests: Iterable[Request | None],
        sampling: Sampling | None = None,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> Iterator[Answer]:
        """Answer every request's questions, ``self.batch`` images at a time (continuous batching).

        Each image is encoded and evaluated into its own sequence; the live sequences then
        decode together, one token each per ``llama_decode``; a sequence that ends frees its
        slot for the next image at once. Questions on one image reuse its KV prefix, and
        questions that start together are evaluated together. Answers come in the order
        they finish; ``Answer.tag`` and ``index`` say whose they are. Greedy answers are
        token-identical to :meth:`set_image` + :meth:`ask`. Requests are read lazily, so the
        caller can decode the next images while this one runs. ``ready()``, if given, says
        whether the next request can be had at once: while it says no and some sequence is
        running, that one goes on instead of waiting for the input (a slow pipe). ``requests``
        may also yield None for "nothing ready after all": the running sequences go on, or,
        with none running, the next request is asked for at once.
        """
        sampling = sampling or Sampling()
        ll = self._ll
        self._clear_memory()
        self._prefix_key, self._prefix_len = None, 0
        self.peak_live = 0  # most sequences decoded together in this call
        source = iter(requests)
        slots: list[_Slot | None] = [None] * self.batch
        batch = ll.llama_batch_init(self.batch, 0, 1)
        try:
            more = True
            while True:
                if more:
                    more = yield from self._fill(slots, source, sampling, ready)
                live = [slot for slot in slots if slot is not None]
                if not live:
                    return
                self.peak_live = max(self.peak_live, len(live))
                for i, slot in enumerate(live):
                    batch.token[i] = slot.token
                    batch.pos[i] = slot.pos
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = slot.seq
                    batch.logits[i] = True
                batch.n_tokens = len(live)
                rc = ll.llama_decode(self._ctx, batch)
                if rc != 0:
                    raise InputError(f"llama.cpp could not decode (code {rc})")
                # Sample every live sequence before anything else is decoded: the next
                # llama_decode (a new question's prefill) replaces these logits.
                ended: list[tuple[_Slot, Answer]] = []
                for i, slot in enumerate(live):
                    slot.pos += 1
                    answer = self._step(slot, i)
                    if answer is not None:
                        ended.append((slot, answer))
                for _, answer in ended:
                    yield answer
                # The questions that follow start together.
                yield from self._start_questions([slot for slot, _ in ended], sampling)
                for slot, _ in ended:
                    if slot.sampler is None:
                        slots[slot.seq] = None
        finally:
            ll.llama_batch_free(batch)
            for leftover in slots:
                if leftover is not None:
                    leftover.drop_sampler(ll)
            self._clear_memory()

    def _fill(
        self,
        slots: list[_Slot | None],
        source: Iterator[Request | None],
        sampling: Sampling,
        ready: Callable[[], bool] | None,
    ) -> Generator[Answer, None, bool]:
        """Give every free slot an image and start the first questions, together; False once
        ``source`` has run out. Waits for the source only when no sequence is running."""
        exhausted = False
        while True:
            starting: list[_Slot] = []
            for seq in range(len(slots)):
                while slots[seq] is None and not exhausted:
                    busy = any(slot is not None for slot in slots)
                    if busy and ready is not None and not ready():
                        break  # the running sequences go on; this slot is filled later
                    request = next(source, _END)
                    if request is _END:
                        exhausted = True
                        break
                    if request is None:  # nothing ready after all
                        if busy:
                            break
                        continue
                    assert isinstance(request, Request)
                    slot = _Slot(seq, request)
                    try:
                        slot.prefix_len = self._eval_image(request.pixels, seq, request.label)
                    except InputError as exc:
                        for i, question in enumerate(request.questions):
                            yield Answer(request.tag, i, question, None, exc)
                        continue
                    slots[seq] = slot
                    starting.append(slot)
            yield from self._start_questions(starting, sampling)
            for slot in starting:
                if slot.sampler is None:
                    slots[slot.seq] = None  # every question ended at once: refill the slot
            if exhausted:
                return False
            if not starting or all(slot is not None for slot in slots):
                return True

    def _start_questions(self, slots: list[_Slot], sampling: Sampling) -> Iterator[Answer]:
        """Start each slot's next question; answers that end at once are yielded, and that
        slot goes on to its next question. Leaves ``slot.sampler`` set on each slot whose
        question is running (None: its questions are done)."""
        ll = self._ll
        todo = slots
        while todo:
            prompts: list[tuple[_Slot, list[int]]] = []
            for slot in todo:
                slot.drop_sampler(ll)
                req = slot.request
                while slot.index + 1 < len(req.questions):
                    slot.index += 1
                    question = req.questions[slot.index]
                    try:
                        tokens, slot.limit = self._question_tokens(
                            slot.seq, slot.prefix_len, question, sampling, req.max_tokens
                        )
                    except InputError as exc:
                        if exc.path is None:
                            exc.path = req.label
                        yield Answer(req.tag, slot.index, question, None, exc)
                        continue
                    prompts.append((slot, tokens))
                    break
            todo = []
            for group in self._prompt_groups(prompts):
                at = self._decode_prompts(
                    [(tokens, slot.prefix_len, slot.seq) for slot, tokens in group]
                )
                ended: list[Answer] = []
                for (slot, tokens), index in zip(group, at, strict=True):
                    slot.pos = slot.prefix_len + len(tokens)
                    slot.sampler = self._sampler(sampling)
                    slot.stream = _TextStream(self, sampling, None)
                    slot.n = 0
                    answer = self._step(slot, index)
                    if answer is not None:
                        ended.append(answer)
                        todo.append(slot)
                yield from ended

    def _prompt_groups(
        self, prompts: list[tuple[_Slot, list[int]]]
    ) -> Iterator[list[tuple[_Slot, list[int]]]]:
        """Question prompts to evaluate in one ``llama_decode``: only prompts of the same
        length, in order of sequence, that fit one micro-batch together.

        One ``llama_decode`` of the questions that start together costs little more than
        one of them alone (on a 2-core CPU, 0.85 s for two 38-token prompts against 0.6 s
        for one: the weights are read once). llama.cpp splits a batch of several sequences
        into micro-batches holding as many tokens of each (consecutive sequences only), and
        computes the matrix products of a micro-batch under 8 tokens with another kernel
        than a larger one. A prompt of 8 tokens or more, in one micro-batch with others of
        its length or on its own, is therefore computed bit for bit as it is alone; anything
        else goes alone.
        """
        n_ubatch = int(self._ll.llama_n_ubatch(self._ctx))
        by_length: dict[int, list[tuple[_Slot, list[int]]]] = {}
        for slot, tokens in prompts:
            by_length.setdefault(len(tokens), []).append((slot, tokens))
        for length, same in by_length.items():
            same.sort(key=lambda entry: entry[0].seq)
            per = n_ubatch // length if length >= 8 else 1
            for start in range(0, len(same), max(1, per)):
                yield same[start : start + max(1, per)]

    def _decode_prompts(self, prompts: list[tuple[list[int], int, int]]) -> list[int]:
        """Evaluate (tokens, first position, sequence) prompts, logits for each one's last
        token; return where each one's logits are (``llama_get_logits_ith``)."""
        if len(prompts) == 1:
            tokens, pos, seq = prompts[0]
            self._decode(tokens, pos, seq)
            return [-1]
        ll = self._ll
        total = sum(len(tokens) for tokens, _, _ in prompts)
        batch = ll.llama_batch_init(total, 0, 1)
        at: list[int] = []
        try:
            i = 0
            for tokens, pos, seq in prompts:
                for j, tok in enumerate(tokens):
                    batch.token[i] = tok
                    batch.pos[i] = pos + j
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = j == len(tokens) - 1
                    i += 1
                at.append(i - 1)
            batch.n_tokens = total
            rc = ll.llama_decode(self._ctx, batch)
        finally:
            ll.llama_batch_free(batch)
        if rc != 0:
            raise InputError(f"llama.cpp could not decode (code {rc})")
        return at

    def _step(self, slot: _Slot, logits_index: int) -> Answer | None:
        """Sample the slot's next token; return its answer when the sequence has ended."""
        token = int(self._ll.llama_sampler_sample(slot.sampler, self._ctx, logits_index))
        slot.n += 1
        assert slot.stream is not None
        if slot.stream.push(token) or slot.n >= slot.limit:
            req = slot.request
            question, text = req.questions[slot.index], slot.stream.finish()
            return Answer(req.tag, slot.index, question, text, tokens=slot.n)
        slot.token = token
        return None

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
        if sampling.fixed_length:
            bias = (ll.llama_logit_bias * 1)()
            bias[0].token = ll.llama_vocab_eos(self._vocab)
            bias[0].bias = float("-inf")
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_logit_bias(ll.llama_vocab_n_tokens(self._vocab), 1, bias),
            )
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

    def _decode(self, tokens: list[int], pos: int, seq: int = 0) -> None:
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
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = start + i == len(tokens) - 1
                batch.n_tokens = len(part)
                rc = ll.llama_decode(self._ctx, batch)
            finally:
                ll.llama_batch_free(batch)
            if rc != 0:
                raise InputError(f"llama.cpp could not decode (code {rc})")


class _TextStream:
    """Turns sampled tokens into the answer text: UTF-8 across token boundaries, the stop at
    EOS or a blank line, and streaming that holds back what may start the stop."""

    def __init__(
        self, engine: Engine, sampling: Sampling, on_text: Callable[[str], None] | None
    ) -> None:
        self._engine = engine
        self._stop_on_blank = sampling.grammar is None and not sampling.fixed_length
        self._stop_on_eog = not sampling.fixed_length
        self._on_text = on_text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._emitted = 0

    def push(self, token: int) -> bool:
        """Take one sampled token; True when the answer has ended (the token is not part of it)."""
        engine = self._engine
        if self._stop_on_eog and engine._ll.llama_vocab_is_eog(engine._vocab, token):
            return True
        self._text += self._decoder.decode(engine._piece(token))
        if self._stop_on_blank and STOP in self._text:
            self._text = self._text[: self._text.index(STOP)]
            return True
        if self._on_text is not None:
            # Hold back trailing whitespace: it may be the start of the stop sequence.
            ready = len(self._text.rstrip())
            if ready > self._emitted:
                text = self._text
                self._on_text(
                    text[self._emitted : ready] if self._emitted else text[:ready].lstrip()
                )
                self._emitted = ready
        return False

    def finish(self) -> str:
        self._text += self._decoder.decode(b"", final=True)
        answer = self._text.strip()
        if self._on_text is not None:
            shown = len(self._text[: self._emitted].strip())
            if len(answer) > shown:
                self._on_text(answer[shown:] if shown else answer)
        return answer


class _Slot:
    """One sequence of :meth:`Engine.ask_many`: its image, question and sampling state."""

    def __init__(self, seq: int, request: Request) -> None:
        self.seq = seq
        self.request = request
        self.prefix_len = 0
        self.index = -1
        self.limit = 0
        self.n = 0
        self.pos = 0
        self.token = 0
        self.sampler: Any = None
        self.stream: _TextStream | None = None

    def drop_sampler(self, ll: Any) -> None:
        if self.sampler is not None:
            ll.llama_sampler_free(self.sampler)
            self.sampler = None


def _gpu_free_bytes() -> int | None:
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
