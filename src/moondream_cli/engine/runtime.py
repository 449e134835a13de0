"""A loaded text model and mmproj, and the evaluation steps every answer is made of.

:class:`Runtime` loads the pair as :mod:`.plan` lays it out and offers the four steps the
single-image path and continuous batching share: an image into a sequence
(:meth:`~Runtime.eval_image`; several at once, :meth:`~Runtime.eval_images`), question
prompts (:meth:`~Runtime.decode_prompts`), one decode step for every running answer
(:meth:`~Runtime.decode_step`), and :meth:`~Runtime.reply`, which samples an answer. Each
step's time inside llama.cpp is added to :class:`Timings`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, TypeVar

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
from .stream import Reply, TextStream

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


@dataclass
class _Staged:
    """An image encoded for a batched prefill: its embeddings go to ``seq`` from ``pos``."""

    index: int  # in the eval_images call
    seq: int
    pos: int
    embeddings: Any  # a ctypes float array, n_tokens rows of n_embd
    n_tokens: int


class Runtime:
    """The loaded pair, laid out for ``plan.batch`` sequences. Not thread-safe."""

    def __init__(self, files: ModelFiles, options: EngineOptions) -> None:
        native.route_logs_to_stderr(options.verbose)
        self.files = files
        self.threads = options.threads or default_threads()
        self.on_gpu = options.gpu and native.gpu_offload()
        self.gpu_missing = native.missing_gpu() if options.gpu and not self.on_gpu else None
        self.timings = Timings()
        self.load_seconds: dict[str, float] = {}  # where loading went, by part
        self._bos_seqs: set[int] = set()  # sequences whose position 0 holds the BOS
        self._owned: list[native.Owned] = []
        try:
            self._load(options)
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
        try:
            self.context = self._own(native.Context(self.model, params))
        except ModelError as exc:
            exc.path = str(self.files.text)
            raise
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

    def _plan(self, options: EngineOptions) -> Plan:  # GPU: memory free after the text model
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
        while self._owned:
            self._owned.pop().close()

    @property
    def closed(self) -> bool:
        return not self._owned

    @property
    def kept_bos(self) -> frozenset[int]:
        return frozenset(self._bos_seqs)

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
        self._bos_seqs.clear()

    def eval_image(self, pixels: Pixels, seq: int, label: str | None) -> int:
        """Encode the image and evaluate "BOS, image" into ``seq`` from position 0, in place of
        what the sequence held; return the positions it takes.

        The BOS does not depend on the image: a sequence keeps it from its last image, which
        saves a decode step per image (0.1 s on a 2-core CPU) and changes nothing, as the BOS
        was always evaluated on its own.
        """
        chunks, pos = self._image_prompt(pixels, seq, label)
        with chunks:
            for chunk in chunks:
                pos = self._eval_chunk_of(label, chunk, pos, seq)
        return self._image_in(seq, pos)

    def eval_images(self, images: list[tuple[Pixels, int, str | None]]) -> list[int | InputError]:
        """:meth:`eval_image` for several (pixels, sequence, label) at once: each one's
        positions, or the InputError it failed with.

        With the plan's batched prefill the images are encoded back to back and their
        embeddings evaluated together, in consecutive sequences, up to ``n_batch`` tokens per
        ``llama_decode``. llama.cpp then computes every micro-batch with as many tokens of
        each sequence, each in its own KV stream: per token, the same arithmetic as alone
        (``tests/test_engine_batch.py`` holds the answers to it).
        """
        if len(images) < 2 or not self.plan.batched_prefill:
            return [self._attempt(pixels, seq, label) for pixels, seq, label in images]
        results: list[int | InputError] = [0] * len(images)
        staged: list[_Staged] = []
        for index, (pixels, seq, label) in enumerate(images):
            try:
                chunks, pos = self._image_prompt(pixels, seq, label)
                with chunks:
                    *before, last = list(chunks)
                    alone = not last.is_image or any(c.is_image for c in before)
                    if alone or not self.projector.batchable(last):
                        for chunk in [*before, last]:  # not Moondream's layout: as alone
                            pos = self._eval_chunk_of(label, chunk, pos, seq)
                        results[index] = self._image_in(seq, pos)
                        continue
                    for chunk in before:
                        pos = self._eval_chunk_of(label, chunk, pos, seq)
                    with self._timed("encode"):
                        self.projector.encode(last)
                    embeddings = self.projector.embeddings(last, self.model.n_embd)
                staged.append(_Staged(index, seq, pos, embeddings, last.n_tokens))
            except InputError as exc:
                exc.path = exc.path or label
                results[index] = exc
        for group in self._prefill_groups(staged):
            try:
                self._prefill(group)
            except InputError as exc:
                for image in group:
                    results[image.index] = InputError(exc.message, path=images[image.index][2])
                continue
            for image in group:
                results[image.index] = self._image_in(image.seq, image.pos + image.n_tokens)
        return results

    def _attempt(self, pixels: Pixels, seq: int, label: str | None) -> int | InputError:
        try:
            return self.eval_image(pixels, seq, label)
        except InputError as exc:
            return exc

    def _prefill_groups(self, staged: list[_Staged]) -> Iterator[list[_Staged]]:
        """Staged images in groups of at most ``n_batch`` tokens, in order of sequence."""
        group: list[_Staged] = []
        tokens = 0
        for image in sorted(staged, key=lambda image: image.seq):
            if group and tokens + image.n_tokens > self.plan.n_batch:
                yield group
                group, tokens = [], 0
            group.append(image)
            tokens += image.n_tokens
        if group:
            yield group

    def _prefill(self, group: list[_Staged]) -> None:
        total = sum(image.n_tokens for image in group)
        with self._timed("image_prefill"), native.Batch(total, self.model.n_embd) as batch:
            for image in group:
                batch.add_embeddings(image.embeddings, image.pos, image.seq)
            self.context.decode(batch)

    def _image_prompt(
        self, pixels: Pixels, seq: int, label: str | None
    ) -> tuple[native.Chunks, int]:
        """The chunks of "BOS, image" for ``seq`` (the BOS only if ``seq`` lost it), and the
        position they start at; ``seq`` is emptied down to its BOS."""
        keep_bos = seq in self._bos_seqs
        # Only our own fixed text goes through parse_special: the BOS piece and the marker.
        text = (b"" if keep_bos else self.bos_text) + self.projector.marker
        try:
            pixels = fit(pixels, self.image_size, self.fit)  # usually done where decoded
            chunks = self.projector.tokenize(text, pixels.width, pixels.height, pixels.data)
        except InputError as exc:
            exc.path = label
            raise
        self._bos_seqs.discard(seq)  # until the image is in: a failure may leave anything
        self.context.remove(seq, 1 if keep_bos else 0)
        return chunks, 1 if keep_bos else 0

    def _eval_chunk_of(self, label: str | None, chunk: native.Chunk, pos: int, seq: int) -> int:
        try:
            return self._eval_chunk(chunk, pos, seq)
        except InputError as exc:
            exc.path = label
            raise

    def _image_in(self, seq: int, pos: int) -> int:
        """The image is in ``seq`` up to ``pos``: count it, note the BOS, check its size."""
        self.timings.images += 1
        self.timings.image_positions = pos
        if self.bos_text:
            self._bos_seqs.add(seq)
        sized_for = self.plan.image_positions
        if sized_for is not None and pos > sized_for:
            # The sequences were sized for the header's count: going on would cut answers short.
            raise ModelError(
                f"an image took {pos} positions, not the {sized_for} the mmproj's header implies",
                path=str(self.files.mmproj),
            )
        return pos

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

    def question_tokens(
        self,
        seq: int,
        prefix_len: int,
        question: str,
        sampling: Sampling,
        max_tokens: int | None = None,
    ) -> tuple[list[int], int]:
        """Drop what followed the image prefix in ``seq``; return the question prompt's tokens
        (to evaluate right after the prefix) and how many tokens the answer may have."""
        self.context.remove(seq, prefix_len)
        tokens = self.model.tokenize(question_prompt(question))
        room = self.n_ctx - prefix_len - len(tokens)
        if room < 1:
            raise InputError(
                f"question too long ({len(tokens)} tokens; {self.n_ctx - prefix_len - 1} fit)"
            )
        limit = sampling.max_tokens if max_tokens is None else max_tokens
        return tokens, min(limit, room)

    def decode_prompts(self, prompts: list[tuple[list[int], int, int]]) -> list[int]:
        """Evaluate (tokens, first position, sequence) prompts, logits for each one's last
        token, in one ``llama_decode`` (a lone prompt: in ``n_batch`` pieces); return the
        logits row of each."""
        with self._timed("prompt"):
            if len(prompts) == 1:
                tokens, pos, seq = prompts[0]
                for start in range(0, len(tokens), self.plan.n_batch):
                    part = tokens[start : start + self.plan.n_batch]
                    last = start + len(part) == len(tokens)
                    with native.Batch(len(part)) as batch:
                        batch.add_run(part, pos + start, seq, logits=last)
                        self.context.decode(batch)
                rows = [-1]
            else:
                with native.Batch(sum(len(tokens) for tokens, _, _ in prompts)) as batch:
                    rows = [batch.add_run(tokens, pos, seq) for tokens, pos, seq in prompts]
                    self.context.decode(batch)
        self.timings.prompt_tokens += sum(len(tokens) for tokens, _, _ in prompts)
        return rows

    def decode_step(self, replies: list[tuple[Reply, int]]) -> None:
        """Feed each (reply, sequence) its last sampled token, all in one ``llama_decode``;
        reply ``i``'s next logits are row ``i``."""
        batch = self._step_batch
        batch.clear()
        for reply, seq in replies:
            reply.feed(batch, seq)
        with self._timed("decode"):
            self.context.decode(batch)
        self.timings.decode_steps += 1

    def follow(
        self, pos: int, seq: int, steps: int, choose: Callable[[memoryview], int]
    ) -> list[int]:
        """From the logits of the last decode on, ``steps`` times: feed ``seq`` at ``pos`` the
        token ``choose(logits)`` returns; return those tokens."""
        batch, fed, row = self._step_batch, [], -1
        for _ in range(steps):
            token = choose(self.context.logits(row))
            fed.append(token)
            batch.clear()
            batch.add(token, pos, seq, logits=True)
            with self._timed("decode"):
                self.context.decode(batch)
            pos, row = pos + 1, 0
        return fed

    def reply(
        self, pos: int, limit: int, sampling: Sampling, on_text: Callable[[str], None] | None
    ) -> Reply:
        """A new answer whose first token goes at ``pos``, at most ``limit`` tokens long."""
        sampler = native.Sampler(
            self.model,
            temperature=sampling.temperature,
            seed=sampling.seed,
            grammar=sampling.grammar,
            ban_eos=sampling.fixed_length,
        )
        stream = TextStream(sampling, self.model.piece, self.model.is_eog, on_text)
        return Reply(self.context, sampler, stream, pos, limit)
