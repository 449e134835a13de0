"""A conversation about one image, as the reference held one: each question is asked with
the earlier turns as its history (``prompts.chat_prompt``), the image encoded once.

The KV cache keeps the image and every earlier turn: a new turn evaluates only the tokens
that differ from what the cache holds (its own question, and a boundary token where the
reference's history string tokenizes an answer's end differently), so it costs about what
a question on a seen image costs, and its tokens are exactly those of the reference's whole
history string. When the history would not fit the context, the oldest turns are dropped
and the cache is rebuilt after the image, and :attr:`Conversation.dropped` says how many.
Nothing is kept anywhere but in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import UsageError
from .prompts import chat_prompt

if TYPE_CHECKING:
    from .engine import Engine, Sampling
    from .images import Pixels


@dataclass
class Conversation:
    """Turns about one image on ``engine``. Not thread-safe; ``Moondream.chat`` serialises."""

    engine: Engine
    pixels: Pixels
    sampling: Sampling  # how answers are sampled, max_tokens included
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)
    dropped: int = 0  # turns dropped so far to fit the context
    _key: object = field(default_factory=object)  # the image in the engine's cache
    _cached: list[int] = field(default_factory=list)  # the tokens after the image there

    def ask(
        self,
        question: str,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """The answer to ``question`` after the turns so far; the turn is kept. Ctrl-C while
        it is written leaves the conversation as it was before the question."""
        if not question.strip():
            raise UsageError("the question is empty")
        sampling = sampling or self.sampling
        engine = self.engine
        if engine.image_key is not self._key:  # first turn, or the engine served another image
            self._cached = []
        engine.set_image(self.pixels, key=self._key)  # encoded once: the same key reuses it
        tokens = self._fitting(question, sampling.max_tokens)
        kept = _common(self._cached, tokens)
        try:
            answer, cached = engine.continue_image(kept, tokens[kept:], sampling, on_text)
        except BaseException:
            self._cached = []  # what the cache holds after a cut-off answer is unknown
            raise
        self._cached = self._cached[:kept] + cached
        self.turns.append((question, answer))
        return answer

    def clear(self) -> None:
        """Forget every turn; the image stays encoded."""
        self.turns.clear()

    def _fitting(self, question: str, max_tokens: int) -> list[int]:
        """The tokens of the reference's prompt for ``question``, the oldest turns dropped
        until it and its answer fit after the image."""
        room = self.engine.n_ctx - self.engine.image_positions
        while True:
            tokens = self.engine.tokenize(chat_prompt(self.turns, question))
            if len(tokens) + max_tokens <= room or not self.turns:
                return tokens
            self.turns.pop(0)
            self.dropped += 1


def _common(cached: list[int], tokens: list[int]) -> int:
    """How many leading tokens the cache already holds."""
    n = 0
    for have, want in zip(cached, tokens, strict=False):
        if have != want:
            break
        n += 1
    return n
