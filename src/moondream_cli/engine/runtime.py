"""A loaded text model and mmproj, and the evaluation steps every answer is made of.

:class:`Runtime` loads the pair as :mod:`.plan` lays it out, keeps one :class:`~.slot.Slot`
per sequence, and offers the four steps the single-image path and continuous batching share:
an image into a slot (:meth:`~Runtime.eval_image`; several at once,
:meth:`~Runtime.eval_images`), a question staged (:meth:`~Runtime.stage_question`) and its
prompt evaluated (:meth:`~Runtime.decode_prompts`), and one decode step for every running
answer (:meth:`~Runtime.decode_step`). Each step's time inside llama.cpp is added to
:class:`Timings`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TypeVar

from .. import reference
from ..errors import InputError, ModelError
from ..gguf_meta import read_metadata
from ..images import Pixels, fit
from ..locate import ModelFiles
from ..prompts import question_prompt
from . import native
from .cpus import cpu_has_amx, default_threads
from .options import EngineOptions, Sampling
from .plan import Plan, gpu_free_bytes, image_positions, kv_bytes_per_position, plan
from .slot import Slot

OwnedT = TypeVar("OwnedT", bound=native.Owned)


@dataclass
class Timings:
    """Seconds spent inside llama.cpp, by phase, since the engine loaded or :meth:`reset`."""

    encode_s: float = 0.0  # the vision encoder
    image_prefill_s: float = 0.0  # image embeddings into the KV cache
    prompt_s: float = 0.0  # text prompts: the BOS and the questions
    decode_s: float = 0.0  # decode steps, one token for every running answer
    images: int = 0
    prompt_tokens: int = 0
    decode_steps: int = 0
    image_positions: int = 0  # positions the last image took, its BOS included

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)


class Runtime:
    """The loaded pair, laid out for ``plan.batch`` sequences. Not thread-safe."""

    def __init__(self, files: ModelFiles, options: EngineOptions) -> None:
        native.route_logs_to_stderr(options.verbose)
        native.catch_aborts()  # a GGML_ASSERT: one line and exit 3, not a core dump
        self.files = files
        self.threads = options.threads or default_threads()
        self.on_gpu = options.gpu and native.gpu_offload()
        # A GPU build that found no GPU: why (None with --cpu, on a GPU, or a CPU build).
        self.gpu_missing = native.missing_gpu() if options.gpu and not self.on_gpu else None
        self.timings = Timings()
        self.load_seconds: dict[str, float] = {}  # where loading went, by part
        self.slots: list[Slot] = []  # one per sequence
        self._owned: list[native.Owned] = []
        try:
            self._load(options)
            self.slots = [Slot(seq) for seq in range(self.plan.batch)]
        except BaseException:
            self.close()
            raise

    def _load(self, options: EngineOptions) -> None:
        # ggml's AMX matmul kernels (an "extra buffer type") segfault when GCC 12 built them,
        # and with a fixed build they are no faster for this model (bench/README.md, "AMX");
        # without extra buffer types the ordinary CPU kernels run it, with any build.
        clock = time.perf_counter()

        def lap(part: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            self.load_seconds[part] = now - clock
            clock = now

        extra_bufts = self.on_gpu or not cpu_has_amx()
        text_meta = read_metadata(self.files.text)
        # GPT-2's pre-tokenizer where the file names none, as the reference tokenizes.
        fixes = reference.metadata_fixes(text_meta)
        self.pre_tokenizer = reference.pre_tokenizer(text_meta)
        model = native.Model(
            self.files.text, gpu=self.on_gpu, extra_bufts=extra_bufts, overrides=fixes
        )
        self.model = self._own(model)
        lap("text model")
        self.plan: Plan = self._plan(options)
        params = native.ContextParams(
            n_ctx=self.plan.n_ctx,
            n_batch=self.plan.n_batch,
            n_ubatch=self.plan.n_ubatch,
            n_seq_max=self.plan.batch,
            flash_attn=self.plan.flash_attn,
            threads=self.threads,
        )
        # A context that cannot be made is its size's fault, not the model file's: no path.
        self.context = self._own(native.Context(self.model, params))
        lap("context")
        # Positions one sequence may use (llama.cpp may round its cells).
        self.n_ctx = min(self.plan.seq_positions, self.context.n_ctx_seq)
        self.projector = self._own(
            native.Projector(
                self.files.mmproj,
                self.model,
                gpu=self.on_gpu,
                threads=self.threads,
                flash_attn=options.vision_flash_attn,
            )
        )
        self.fit = options.fit
        size = read_metadata(self.files.mmproj).get("clip.vision.image_size")
        self.image_size = size if isinstance(size, int) and size > 0 else None
        lap("mmproj")
        self._step_batch = self._own(native.Batch(self.plan.batch))
        bos = self.model.bos
        self.bos_text = self.model.piece(bos, special=True) if bos >= 0 else b""

    def _plan(self, options: EngineOptions) -> Plan:
        """The layout; on a GPU, for the memory its backend says is free now that the text
        model is in, less the mmproj still to come."""
        auto_gpu = self.on_gpu and not options.batch
        positions = image_positions(self.files.mmproj)
        return plan(
            options,
            on_gpu=self.on_gpu,
            image_positions=None if self.on_gpu else positions,
            kv_bytes_per_position=kv_bytes_per_position(self.model.n_layer, self.model.n_embd),
            gpu_free_bytes=gpu_free_bytes(native.gpu_devices()) if auto_gpu else None,
            gpu_pending_bytes=self.files.mmproj.stat().st_size if auto_gpu else 0,
            prefill_positions=positions,
        )

    def _own(self, obj: OwnedT) -> OwnedT:
        self._owned.append(obj)
        return obj

    def close(self) -> None:
        """Free every C object, the last loaded first. Safe to call twice."""
        for slot in self.slots:
            slot.drop()  # a sampler before the model it samples
        while self._owned:
            self._owned.pop().close()

    @property
    def closed(self) -> bool:
        return not self._owned

    @property
    def kept_bos(self) -> frozenset[int]:
        return frozenset(slot.seq for slot in self.slots if slot.has_bos)

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            name = f"{phase}_s"
            setattr(self.timings, name, getattr(self.timings, name) + time.perf_counter() - start)

    # -- the four steps --------------------------------------------------------------------
    def clear(self) -> None:
        """Empty every sequence."""
        self.context.clear()
        for slot in self.slots:
            slot.forget()

    def eval_image(self, slot: Slot, pixels: Pixels) -> None:
        """Encode the image and evaluate "BOS, image" into ``slot`` from position 0, in place of
        what its sequence held; ``slot.prefix_len`` is then the positions it takes.

        The BOS does not depend on the image: a sequence keeps it from its last image, which
        saves a decode step per image (0.1 s on a 2-core CPU) and changes nothing, as the BOS
        was always evaluated on its own.
        """
        chunks = self._image_prompt(slot, pixels)
        with chunks:
            for chunk in chunks:
                self._eval_chunk_of(slot, chunk)
        self._image_in(slot)

    def eval_images(self, images: list[tuple[Slot, Pixels]]) -> dict[int, InputError]:
        """:meth:`eval_image` for several (slot, pixels) at once; the InputError of each slot
        that failed, by sequence.

        With the plan's batched prefill the images are encoded back to back, their embeddings
        staged in their slots and evaluated together, in consecutive sequences, up to
        ``n_batch`` tokens per ``llama_decode``. llama.cpp then computes every micro-batch
        with as many tokens of each sequence, each in its own KV stream: per token, the same
        arithmetic as alone (``tests/test_engine_batch.py`` holds the answers to it).
        """
        if len(images) < 2 or not self.plan.batched_prefill:
            attempts = [(slot, self._attempt(slot, pixels)) for slot, pixels in images]
            return {slot.seq: error for slot, error in attempts if error is not None}
        failed: dict[int, InputError] = {}
        staged: list[Slot] = []
        for slot, pixels in images:
            try:
                if self._stage_image(slot, pixels):
                    staged.append(slot)
            except InputError as exc:
                exc.path = exc.path or slot.label
                failed[slot.seq] = exc
        for group in self._prefill_groups(staged):
            try:
                self._prefill(group)
            except InputError as exc:
                for slot in group:
                    failed[slot.seq] = InputError(exc.message, path=slot.label)
                continue
            for slot in group:
                self._image_in(slot)
        return failed

    def _attempt(self, slot: Slot, pixels: Pixels) -> InputError | None:
        try:
            self.eval_image(slot, pixels)
        except InputError as exc:
            return exc
        return None

    def _stage_image(self, slot: Slot, pixels: Pixels) -> bool:
        """Evaluate "BOS, image" into ``slot`` but for the image's embeddings, which wait in
        the slot for a batched prefill (True); not Moondream's layout: all of it, as alone."""
        chunks = self._image_prompt(slot, pixels)
        with chunks:
            *before, last = list(chunks)
            alone = not last.is_image or any(c.is_image for c in before)
            if alone or not self.projector.batchable(last):
                for chunk in [*before, last]:
                    self._eval_chunk_of(slot, chunk)
                self._image_in(slot)
                return False
            for chunk in before:
                self._eval_chunk_of(slot, chunk)
            with self._timed("encode"):
                self.projector.encode(last)
            slot.embeddings = self.projector.embeddings(last, self.model.n_embd)
            slot.embedded = last.n_tokens
        return True

    def _prefill_groups(self, staged: list[Slot]) -> Iterator[list[Slot]]:
        """Staged images in groups of at most ``n_batch`` tokens, in order of sequence."""
        group: list[Slot] = []
        tokens = 0
        for slot in sorted(staged, key=lambda slot: slot.seq):
            if group and tokens + slot.embedded > self.plan.n_batch:
                yield group
                group, tokens = [], 0
            group.append(slot)
            tokens += slot.embedded
        if group:
            yield group

    def _prefill(self, group: list[Slot]) -> None:
        """Evaluate the staged embeddings of ``group`` in one ``llama_decode``."""
        total = sum(slot.embedded for slot in group)
        try:
            with self._timed("image_prefill"), native.Batch(total, self.model.n_embd) as batch:
                for slot in group:
                    batch.add_embeddings(slot.embeddings, slot.pos, slot.seq)
                self.context.decode(batch)
        finally:
            for slot in group:
                slot.embeddings = None
        for slot in group:
            slot.pos += slot.embedded

    def _image_prompt(self, slot: Slot, pixels: Pixels) -> native.Chunks:
        """The chunks of "BOS, image" for ``slot`` (the BOS only if it lost it); the slot is
        emptied down to its BOS, and ``slot.pos`` is where the chunks start."""
        slot.prefix_len = 0  # until the image is in
        keep_bos = slot.has_bos
        # Only our own fixed text goes through parse_special: the BOS piece and the marker.
        text = (b"" if keep_bos else self.bos_text) + self.projector.marker
        try:
            pixels = fit(pixels, self.image_size, self.fit)  # usually done where decoded
            chunks = self.projector.tokenize(text, pixels.width, pixels.height, pixels.data)
        except InputError as exc:
            exc.path = slot.label
            raise
        slot.has_bos = False  # until the image is in: a failure may leave anything
        slot.pos = 1 if keep_bos else 0
        self.context.remove(slot.seq, slot.pos)
        return chunks

    def _eval_chunk_of(self, slot: Slot, chunk: native.Chunk) -> None:
        try:
            slot.pos = self._eval_chunk(chunk, slot.pos, slot.seq)
        except InputError as exc:
            exc.path = slot.label
            raise

    def _image_in(self, slot: Slot) -> None:
        """The image is in ``slot`` up to ``slot.pos``: count it, note the BOS, check its size."""
        pos = slot.pos
        self.timings.images += 1
        self.timings.image_positions = pos
        if self.bos_text:
            slot.has_bos = True
        sized_for = self.plan.image_positions
        if sized_for is not None and pos > sized_for:
            # The sequences were sized for the header's count: going on would cut answers short.
            raise ModelError(
                f"an image took {pos} positions, not the {sized_for} the mmproj's header implies",
                path=str(self.files.mmproj),
            )
        slot.prefix_len = pos

    def _eval_chunk(self, chunk: native.Chunk, pos: int, seq: int) -> int:
        n_batch, projector = self.plan.n_batch, self.projector
        if not chunk.is_image:
            with self._timed("prompt"):
                pos = projector.decode_text(self.context, chunk, pos, seq, n_batch)
            self.timings.prompt_tokens += chunk.n_tokens
            return pos
        with self._timed("encode"):
            projector.encode(chunk)
        with self._timed("image_prefill"):
            return projector.decode_image(self.context, chunk, pos, seq, n_batch)

    def stage_question(
        self,
        slot: Slot,
        question: str,
        sampling: Sampling,
        max_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        """Stage ``question`` in ``slot``: drop what followed its image, and give it the
        question's prompt and a sampler for the answer (``on_text`` receives its text)."""
        prefix_len = slot.prefix_len
        self.context.remove(slot.seq, prefix_len)
        tokens = self.model.tokenize(question_prompt(question))
        room = self.n_ctx - prefix_len - len(tokens)
        if room < 1:
            raise InputError(
                f"question too long ({len(tokens)} tokens; {self.n_ctx - prefix_len - 1} fit)"
            )
        limit = sampling.max_tokens if max_tokens is None else max_tokens
        slot.ask(self.model, tokens, min(limit, room), sampling, on_text)

    def decode_prompts(self, slots: list[Slot]) -> None:
        """Evaluate the staged prompts of ``slots``, logits for each one's last token, in one
        ``llama_decode`` (a lone prompt: in ``n_batch`` pieces); their answers then run."""
        with self._timed("prompt"):
            if len(slots) == 1:
                (slot,) = slots
                tokens = slot.prompt
                for start in range(0, len(tokens), self.plan.n_batch):
                    part = tokens[start : start + self.plan.n_batch]
                    last = start + len(part) == len(tokens)
                    with native.Batch(len(part)) as batch:
                        batch.add_run(part, slot.pos + start, slot.seq, logits=last)
                        self.context.decode(batch)
                slot.row = -1
            else:
                with native.Batch(sum(len(slot.prompt) for slot in slots)) as batch:
                    for slot in slots:
                        slot.row = batch.add_run(slot.prompt, slot.pos, slot.seq)
                    self.context.decode(batch)
        for slot in slots:
            self.timings.prompt_tokens += len(slot.prompt)
            slot.pos += len(slot.prompt)
            slot.prompt = []

    def decode_step(self, slots: list[Slot]) -> None:
        """Feed each running slot its last sampled token, all in one ``llama_decode``."""
        batch = self._step_batch
        batch.clear()
        for slot in slots:
            slot.feed(batch)
        with self._timed("decode"):
            self.context.decode(batch)
        self.timings.decode_steps += 1

    def follow(self, slot: Slot, steps: int, choose: Callable[[memoryview], int]) -> list[int]:
        """From the logits of the last decode on, ``steps`` times: feed ``slot`` the token
        ``choose(logits)`` returns; return those tokens."""
        batch, fed = self._step_batch, []
        for _ in range(steps):
            slot.token = choose(self.context.logits(slot.row))
            fed.append(slot.token)
            batch.clear()
            slot.feed(batch)
            with self._timed("decode"):
                self.context.decode(batch)
        return fed
