"""Continuous batching: many images in flight, one sequence each, decoded together.

Each image is encoded and evaluated into its own sequence; the running answers then decode
together, one token each per ``llama_decode``; a sequence whose questions are done takes the
next image at once. Questions on one image reuse its KV prefix, and questions that start
together are evaluated together. Greedy answers are token-identical to the single path
(``Engine.set_image`` + ``Engine.ask``): ``tests/test_engine_batch.py`` holds them to it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

from ..errors import InputError
from ..images import Pixels
from .options import Sampling
from .runtime import Runtime
from .stream import Reply


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


_END = object()  # what ``next`` gives once the requests have run out


class _Slot:
    """One sequence: its image, the question it is on, and that question's reply."""

    def __init__(self, seq: int, request: Request, prefix_len: int) -> None:
        self.seq = seq
        self.request = request
        self.prefix_len = prefix_len
        self.index = -1  # the question being answered
        self.reply: Reply | None = None

    def answer(self, text: str) -> Answer:
        assert self.reply is not None
        req, tokens = self.request, self.reply.tokens
        self.reply = None
        return Answer(req.tag, self.index, req.questions[self.index], text, tokens=tokens)

    def drop(self) -> None:
        if self.reply is not None:
            self.reply.close()
            self.reply = None


class ContinuousBatch:
    """One :meth:`run` over a stream of requests, ``runtime.plan.batch`` sequences at a time."""

    def __init__(self, runtime: Runtime, sampling: Sampling) -> None:
        self._rt = runtime
        self._sampling = sampling
        self._slots: list[_Slot | None] = [None] * runtime.plan.batch
        self.peak_live = 0  # most sequences decoded together

    def run(
        self, requests: Iterable[Request | None], ready: Callable[[], bool] | None
    ) -> Iterator[Answer]:
        """Answers in the order they finish (see :meth:`Engine.ask_many`)."""
        source = iter(requests)
        self._rt.clear()
        try:
            more = True
            while True:
                if more:
                    more = yield from self._fill(source, ready)
                live = [slot for slot in self._slots if slot is not None]
                if not live:
                    return
                self.peak_live = max(self.peak_live, len(live))
                yield from self._step(live)
        finally:
            for slot in self._slots:
                if slot is not None:
                    slot.drop()
            if not self._rt.closed:  # a generator finalized after Engine.close(): nothing left
                self._rt.clear()

    def _step(self, live: list[_Slot]) -> Iterator[Answer]:
        """One decode step for every running answer, then the questions that follow."""
        replies = [(slot.reply, slot.seq) for slot in live if slot.reply is not None]
        assert len(replies) == len(live)
        self._rt.decode_step(replies)
        # Sample every live sequence before anything else is decoded: the next llama_decode
        # (a new question's prefill) replaces these logits.
        ended: list[tuple[_Slot, Answer]] = []
        for row, slot in enumerate(live):
            assert slot.reply is not None
            text = slot.reply.step(row)
            if text is not None:
                ended.append((slot, slot.answer(text)))
        for _, answer in ended:
            yield answer
        # The questions that follow start together.
        yield from self._start_questions([slot for slot, _ in ended])
        for slot, _ in ended:
            if slot.reply is None:
                self._slots[slot.seq] = None

    def _fill(
        self, source: Iterator[Request | None], ready: Callable[[], bool] | None
    ) -> Generator[Answer, None, bool]:
        """Give every free slot an image and start the first questions, together; False once
        ``source`` has run out. Waits for the source only when no sequence is running. The
        images taken in one round are evaluated together (``Runtime.eval_images``)."""
        slots = self._slots
        exhausted = False
        while True:
            taken: list[tuple[int, Request]] = []
            for seq in range(len(slots)):
                if slots[seq] is not None:
                    continue
                request = self._next(source, ready, busy=bool(taken) or self._running())
                if request is _END:
                    exhausted = True
                    break
                if request is None:
                    break  # the running sequences go on; the free slots are filled later
                assert isinstance(request, Request)
                taken.append((seq, request))
            evaluated = self._rt.eval_images([(r.pixels, seq, r.label) for seq, r in taken])
            starting: list[_Slot] = []
            for (seq, request), prefix_len in zip(taken, evaluated, strict=True):
                if isinstance(prefix_len, InputError):
                    for i, question in enumerate(request.questions):
                        yield Answer(request.tag, i, question, None, prefix_len)
                    continue
                slots[seq] = slot = _Slot(seq, request, prefix_len)
                starting.append(slot)
            yield from self._start_questions(starting)
            for slot in starting:
                if slot.reply is None:
                    slots[slot.seq] = None  # every question ended at once: refill the slot
            if exhausted:
                return False
            if not taken or all(slot is not None for slot in slots):
                return True

    def _running(self) -> bool:
        return any(slot is not None for slot in self._slots)

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

    def _start_questions(self, slots: list[_Slot]) -> Iterator[Answer]:
        """Start each slot's next question; answers that end at once are yielded, and that
        slot goes on to its next question. Leaves ``slot.reply`` set on each slot whose
        question is running (None: its questions are done)."""
        rt, sampling = self._rt, self._sampling
        todo = slots
        while todo:
            prompts: list[tuple[_Slot, list[int], int]] = []
            for slot in todo:
                slot.drop()
                req = slot.request
                while slot.index + 1 < len(req.questions):
                    slot.index += 1
                    question = req.questions[slot.index]
                    try:
                        tokens, limit = rt.question_tokens(
                            slot.seq, slot.prefix_len, question, sampling, req.max_tokens
                        )
                    except InputError as exc:
                        if exc.path is None:
                            exc.path = req.label
                        yield Answer(req.tag, slot.index, question, None, exc)
                        continue
                    prompts.append((slot, tokens, limit))
                    break
            todo = []
            for group in self._prompt_groups(prompts):
                rows = rt.decode_prompts(
                    [(tokens, slot.prefix_len, slot.seq) for slot, tokens, _ in group]
                )
                ended: list[Answer] = []
                for (slot, tokens, limit), row in zip(group, rows, strict=True):
                    slot.reply = rt.reply(slot.prefix_len + len(tokens), limit, sampling, None)
                    text = slot.reply.step(row)
                    if text is not None:
                        ended.append(slot.answer(text))
                        todo.append(slot)
                yield from ended

    def _prompt_groups(
        self, prompts: list[tuple[_Slot, list[int], int]]
    ) -> Iterator[list[tuple[_Slot, list[int], int]]]:
        """Question prompts to evaluate in one ``llama_decode``: only prompts of the same
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
        by_length: dict[int, list[tuple[_Slot, list[int], int]]] = {}
        for entry in prompts:
            by_length.setdefault(len(entry[1]), []).append(entry)
        for length, same in by_length.items():
            same.sort(key=lambda entry: entry[0].seq)
            per = max(1, n_ubatch // length if length >= 8 else 1)
            for start in range(0, len(same), per):
                yield same[start : start + per]
