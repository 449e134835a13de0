"""Sampled tokens → the answer's text: UTF-8 across token boundaries, the stop rules, and
streaming that never shows what may turn out to be the start of the stop."""

from __future__ import annotations

import codecs
from collections.abc import Callable

from ..prompts import STOP_MARKERS
from .options import Sampling


class TextStream:
    """One answer's text as its tokens arrive.

    It stops at an end-of-generation token, as the reference does, or where a turn marker
    (``prompts.STOP_MARKERS``) begins; with a grammar only at the end of generation, and
    with ``Sampling.fixed_length`` never. ``on_text`` receives the text as it becomes final:
    trailing whitespace and whatever may be the start of a marker are held back.
    """

    def __init__(
        self,
        sampling: Sampling,
        piece: Callable[[int], bytes],
        is_eog: Callable[[int], bool],
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        self._piece = piece
        self._is_eog = is_eog
        self._markers = (
            STOP_MARKERS if sampling.grammar is None and not sampling.fixed_length else ()
        )
        self._stop_on_eog = not sampling.fixed_length
        self._on_text = on_text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._emitted = 0

    def push(self, token: int) -> bool:
        """Take one sampled token; True when the answer has ended (the token is not part of it)."""
        if self._stop_on_eog and self._is_eog(token):
            return True
        self._text += self._decoder.decode(self._piece(token))
        cut = self._marker_at()
        if cut is not None:
            self._text = self._text[:cut]
            return True
        if self._on_text is not None:
            ready = len(self._text[: self._held_from()].rstrip())
            if ready > self._emitted:
                text = self._text
                self._on_text(
                    text[self._emitted : ready] if self._emitted else text[:ready].lstrip()
                )
                self._emitted = ready
        return False

    def _marker_at(self) -> int | None:
        """Where the first stop marker begins in the text, if one has appeared."""
        found = [at for marker in self._markers if (at := self._text.find(marker)) >= 0]
        return min(found) if found else None

    def _held_from(self) -> int:
        """Where a tail that may still grow into a stop marker begins (the text's end if none)."""
        text = self._text
        for start in range(max(0, len(text) - max(map(len, self._markers), default=0)), len(text)):
            tail = text[start:]
            if any(marker.startswith(tail) for marker in self._markers):
                return start
        return len(text)

    def finish(self) -> str:
        """The whole answer, stripped; what was not streamed yet goes to ``on_text`` now."""
        self._text += self._decoder.decode(b"", final=True)
        answer = self._text.strip()
        if self._on_text is not None:
            shown = len(self._text[: self._emitted].strip())
            if len(answer) > shown:
                self._on_text(answer[shown:] if shown else answer)
        return answer
