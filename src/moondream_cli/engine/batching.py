"""Continuous batching: many images in flight, one sequence each, decoded together.

The shape of llama.cpp's ``examples/parallel/parallel.cpp``: every sequence's state lives in
its :class:`~.slot.Slot`, and :meth:`ContinuousBatch.run` is one loop. Each round, free slots
take the next images, evaluated together; the questions staged in any slot are evaluated
together; every running answer gets its next token from one ``llama_decode``; and the
answers that ended are handed out, their slot going on to its next question or taking the
next image. Questions on one image reuse its KV prefix. Greedy answers are token-identical to
the single path (``Engine.set_image`` + ``Engine.ask``): ``tests/test_engine_batch.py``
holds them to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..errors import InputError
from .options import Sampling
from .runtime import Runtime
from .slot import Answer, Request, Slot

_END = object()  # what ``next`` gives once the requests have run out


class ContinuousBatch:
    """One :meth:`run` over a stream of requests, ``runtime.plan.batch`` sequences at a time."""

    def __init__(self, runtime: Runtime, sampling: Sampling) -> None:
        self._rt = runtime
        self._sampling = sampling
        self.peak_live = 0  # most answers decoded together

    def run(
        self, requests: Iterable[Request | None], ready: Callable[[], bool] | None
    ) -> Iterator[Answer]:
        """Answers in the order they finish (see :meth:`Engine.ask_many`)."""
        rt, slots = self._rt, self._rt.slots
        source = iter(requests)
        more = True  # until the requests run out
        rt.clear()
        try:
            while True:
                # Free slots take the next images, evaluated together, and stage a question.
                if more:
                    more, failed = self._fill(source, ready)
                    yield from failed
                # The staged prompts, together where that computes each as alone; each
                # answer's first token, before the next llama_decode replaces the logits.
                for group in self._prompt_groups([slot for slot in slots if slot.prompt]):
                    rt.decode_prompts(group)
                    for slot in group:
                        slot.sample(rt.context)
                # One token for every running answer, in one llama_decode.
                running = [slot for slot in slots if slot.running]
                if running:
                    self.peak_live = max(self.peak_live, len(running))
                    rt.decode_step(running)
                    for slot in running:
                        slot.sample(rt.context)
                # Answers that ended are handed out; their slot stages its next question,
                # or is free once the image's questions are done.
                for slot in slots:
                    if slot.text is not None:
                        yield slot.answer()
                        yield from self._next_question(slot)
                if not more and all(slot.free for slot in slots):
                    return
        finally:
            for slot in slots:
                slot.drop()
            if not rt.closed:  # a generator finalized after Engine.close(): nothing left
                rt.clear()

    def _fill(
        self, source: Iterator[Request | None], ready: Callable[[], bool] | None
    ) -> tuple[bool, list[Answer]]:
        """Give free slots the next requests, evaluate their images together and stage each
        one's first question; False once ``source`` has run out, and the answers that failed
        at once. Waits for the source only when no slot is busy (``ready``)."""
        slots = self._rt.slots
        more = True
        taken: list[tuple[Slot, Request]] = []
        for slot in slots:
            if not slot.free:
                continue
            request = self._next(source, ready, busy=not all(s.free for s in slots))
            if request is _END:
                more = False
                break
            if request is None:
                break  # the busy slots go on; the free ones are filled later
            assert isinstance(request, Request)
            slot.take(request)
            taken.append((slot, request))
        failed = self._rt.eval_images([(slot, request.pixels) for slot, request in taken])
        answers: list[Answer] = []
        for slot, request in taken:
            error = failed.get(slot.seq)
            if error is None:
                answers += self._next_question(slot)
                continue
            answers += [
                Answer(request.tag, i, question, None, error)
                for i, question in enumerate(request.questions)
            ]
            slot.release()
        return more, answers

    @staticmethod
    def _next(
        source: Iterator[Request | None], ready: Callable[[], bool] | None, *, busy: bool
    ) -> object:
        """The next request, ``_END`` once there are none, or None when waiting for one
        would hold up work in hand (``busy``)."""
        while True:
            if busy and ready is not None and not ready():
                return None
            request = next(source, _END)
            if request is not None or busy:
                return request

    def _next_question(self, slot: Slot) -> list[Answer]:
        """Stage the slot's next question, or free the slot once its questions are done; a
        question too long to ask is answered at once with its error."""
        request = slot.request
        assert request is not None
        failed: list[Answer] = []
        while slot.index + 1 < len(request.questions):
            slot.index += 1
            question = request.questions[slot.index]
            try:
                self._rt.stage_question(slot, question, self._sampling, request.max_tokens)
            except InputError as exc:
                if exc.path is None:
                    exc.path = request.label
                failed.append(Answer(request.tag, slot.index, question, None, exc))
                continue
            return failed
        slot.release()
        return failed

    def _prompt_groups(self, staged: list[Slot]) -> Iterator[list[Slot]]:
        """Staged prompts to evaluate in one ``llama_decode``: only prompts of the same
        length, in order of sequence, that fit one micro-batch together.

        One ``llama_decode`` of the questions that start together costs little more than
        one of them alone (the weights are read once; bench/README.md, "Batched folder
        runs"). llama.cpp splits a batch of several sequences into micro-batches holding as
        many tokens of each (consecutive sequences only), and computes the matrix products of
        a micro-batch under 8 tokens with another kernel than a larger one. A prompt of 8
        tokens or more, in one micro-batch with others of its length or on its own, is
        therefore computed bit for bit as it is alone; anything else goes alone.
        """
        n_ubatch = self._rt.context.n_ubatch
        by_length: dict[int, list[Slot]] = {}
        for slot in sorted(staged, key=lambda slot: slot.seq):
            by_length.setdefault(len(slot.prompt), []).append(slot)
        for length, same in by_length.items():
            per = max(1, n_ubatch // length if length >= 8 else 1)
            for start in range(0, len(same), per):
                yield same[start : start + per]
