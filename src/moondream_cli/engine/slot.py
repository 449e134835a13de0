"""One sequence and all of its state (:class:`Slot`), and what continuous batching is asked
(:class:`Request`) and answers (:class:`Answer`).

A slot is to mdream what a ``client`` is to llama.cpp's ``examples/parallel/parallel.cpp``:
everything about one sequence in one place, from the image it holds to the token it feeds
next. The single path uses slot 0; continuous batching runs every slot at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..images import Pixels
from . import native
from .options import Sampling
from .stream import TextStream


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


class Slot:
    """One KV sequence, ``seq``, and everything about the work in it.

    A slot holds an image as the prefix "BOS, image" (``prefix_len`` positions) and answers
    one question at a time after it. Each question goes through three states:

    - *staged*: its prompt (``prompt``) waits to be evaluated;
    - *running*: its answer is being sampled, one token per decode step (``token``, fed at
      ``pos``, its logits read from row ``row`` of the last ``llama_decode``);
    - *ended*: its text (``text``) waits to be handed out.

    Continuous batching gives a free slot a :class:`Request` and takes it back once every
    question is answered; the single path keeps an image in slot 0 under a ``key``.
    """

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.has_bos = False  # position 0 holds the BOS, kept for the next image
        # The image.
        self.request: Request | None = None  # continuous batching's; None: the slot is free
        self.label: str | None = None  # names the image in errors
        self.key: object = None  # identifies the image, for the single path to reuse it
        self.prefix_len = 0  # positions "BOS, image" takes; 0: no image
        self.embeddings: Any = None  # the image's, staged for a batched prefill at ``pos``
        self.embedded = 0  # positions ``embeddings`` will take
        # The question and its answer.
        self.index = -1  # which of the request's questions
        self.prompt: list[int] = []  # the question's prompt while it is staged
        self.limit = 0  # most tokens the answer may have
        self.sampler: native.Sampler | None = None  # set while the question is staged or running
        self.stream: TextStream | None = None
        self.pos = 0  # positions the sequence holds: where its next token goes
        self.row = -1  # the row of its logits in the last llama_decode
        self.token = 0  # the last token sampled, to feed at ``pos``
        self.tokens = 0  # tokens sampled for the answer, the one that ended it included
        self.fed: list[int] = []  # the answer's tokens fed back into the KV cache, in order
        self.text: str | None = None  # the answer, once it has ended
        self.yes_no: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # scoring

    @property
    def free(self) -> bool:
        """Continuous batching may give this slot the next request."""
        return self.request is None

    @property
    def running(self) -> bool:
        """An answer is being sampled: it takes part in the next decode step."""
        return self.sampler is not None and not self.prompt

    def take(self, request: Request) -> None:
        """Hold ``request``'s image and answer its questions (continuous batching)."""
        self.request, self.label, self.index = request, request.label, -1

    def ask(
        self,
        model: native.Model,
        prompt: list[int],
        limit: int,
        sampling: Sampling,
        on_text: Callable[[str], None] | None,
    ) -> None:
        """Stage a question: ``prompt`` goes after the image, and the answer, sampled as
        ``sampling`` says, may have ``limit`` tokens (``on_text`` receives its text)."""
        self.drop()
        self.sampler = native.Sampler(
            model,
            temperature=sampling.temperature,
            seed=sampling.seed,
            grammar=sampling.grammar,
            ban_eos=sampling.fixed_length,
        )
        self.stream = TextStream(sampling, model.piece, model.is_eog, on_text)
        self.yes_no = sampling.yes_no
        self.prompt, self.limit = prompt, limit
        self.pos, self.tokens, self.text = self.prefix_len, 0, None
        self.fed = []

    def feed(self, batch: native.Batch) -> None:
        """Add the last sampled token to ``batch`` for the next decode step."""
        self.row = batch.add(self.token, self.pos, self.seq, logits=True)
        self.pos += 1
        self.fed.append(self.token)

    def sample(self, context: native.Context) -> bool:
        """Sample the next token from row ``row`` of the last decode; True once the answer
        has ended (its text is then in ``text``). A scoring question ends at once, its text
        the probability of yes (``Sampling.yes_no``)."""
        assert self.sampler is not None and self.stream is not None
        if self.yes_no is not None:
            self.drop()
            self.text = f"{yes_probability(context.logits(self.row), *self.yes_no):.6f}"
            return True
        token = self.sampler.sample(context, self.row)
        self.tokens += 1
        if self.stream.push(token) or self.tokens >= self.limit:
            self.drop()
            self.text = self.stream.finish()
            return True
        self.token = token
        return False

    def answer(self) -> Answer:
        """The ended answer to the request's current question, handed out once."""
        assert self.request is not None and self.text is not None
        request, text, self.text = self.request, self.text, None
        question = request.questions[self.index]
        return Answer(request.tag, self.index, question, text, tokens=self.tokens)

    def release(self) -> None:
        """The request's questions are done: the slot is free for the next."""
        self.drop()
        self.request, self.label, self.text = None, None, None

    def forget(self) -> None:
        """The sequence was emptied: no BOS, no image, no question."""
        self.release()
        self.has_bos, self.key, self.prefix_len, self.embeddings = False, None, 0, None

    def drop(self) -> None:
        """Free the sampler of a question staged or running, if any."""
        self.prompt = []
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


def yes_probability(logits: memoryview, yes: tuple[int, ...], no: tuple[int, ...]) -> float:
    """P(yes) / (P(yes) + P(no)) from next-token ``logits``: the softmax's normaliser
    cancels, so only the yes and no tokens' logits are read."""
    row = logits.cast("B").cast("f")  # ctypes' '<f' rows index as plain floats
    values = {i: float(row[i]) for i in (*yes, *no)}
    top = max(values.values())
    weight = {i: math.exp(v - top) for i, v in values.items()}
    p_yes = sum(weight[i] for i in yes)
    return p_yes / (p_yes + sum(weight[i] for i in no))
