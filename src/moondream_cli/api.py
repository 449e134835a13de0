"""The Python API: ``Moondream(model_dir=None).describe(image)`` / ``.ask(image, question)``
for images one at a time, and :func:`answer_paths` for files, folders and lists, as
``mdream describe`` and ``mdream ask`` answer them (here, or on a Ray cluster).

``Moondream`` loads the model once and is reusable. Images are paths, encoded bytes or PIL
images; they are decoded and stripped in memory by :mod:`moondream_cli.images`. Both are
configured with the same :class:`~moondream_cli.settings.Settings` as the command line
(model, device, threads, sampling); the engine's own tuning knobs
(:class:`~moondream_cli.engine.EngineOptions`) are for benchmarks and tests, which use
:class:`~moondream_cli.engine.Engine` directly.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .engine import Sampling
from .errors import UsageError
from .images import ImageSource, Pixels, prepare
from .loader import open_model
from .prompts import ASK_MAX_TOKENS, Length, Style, describe_task
from .records import Record
from .settings import SamplingOptions, Settings

if TYPE_CHECKING:
    from .chat import Conversation


class Moondream:
    """A loaded Moondream2 model. Safe to share between threads: images decode in each
    calling thread at once, and the model answers one call at a time (one engine, one
    context), each answer the same as if it had been asked alone.

    >>> md = Moondream()                                  # doctest: +SKIP
    >>> md.describe("photo.jpg", length="short")          # doctest: +SKIP
    >>> Moondream(settings=Settings(model=ModelOptions(cpu=True, threads=4)))  # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        if model_dir is not None:
            settings = replace(settings, model=replace(settings.model, model_dir=Path(model_dir)))
        self.settings = settings
        self.model = open_model(settings, max_tokens=ASK_MAX_TOKENS)
        self.files = self.model.files
        self.engine = self.model.engine
        self._lock = threading.Lock()
        self._yes_no: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def describe(
        self,
        image: ImageSource | Pixels,
        length: Length | str = Length.NORMAL,
        *,
        style: Style | str = Style.CAPTION,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """A caption of ``image`` (``length``: short, normal, long) or, with ``style="tags"``,
        comma-separated tags; ``on_text`` receives the text as it is generated."""
        task = describe_task(style, length)
        sampling = _checked(sampling) or self.settings.sampler(task.max_tokens)
        return self.ask(image, task.question, sampling=sampling, on_text=on_text)

    def ask(
        self,
        image: ImageSource | Pixels,
        question: str,
        *,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """The answer to ``question`` about ``image`` (a path, encoded bytes, a PIL image or
        :class:`Pixels`); ``on_text`` receives it as it is generated. Asking again about the
        same image reuses its encoding. Raises InputError for an image that cannot be used,
        UsageError for an empty question, RuntimeError after :meth:`close`."""
        if not isinstance(question, str):
            raise UsageError(
                f"the question is text, not {type(question).__name__} (one question a call)"
            )
        if not question.strip():
            raise UsageError("the question is empty")
        sampling = _checked(sampling) or self.settings.sampler(ASK_MAX_TOKENS)
        # Decoded outside the lock: several threads' images decode at once.
        pixels = image if isinstance(image, Pixels) else self.load(image)
        with self._lock:  # one engine: its context and its cached image, one call at a time
            # Same pixels as last time: the encoded image prefix is reused.
            self.engine.set_image(pixels, key=pixels)
            return self.engine.ask(question, sampling, on_text)

    def score(self, image: ImageSource | Pixels, query: str, *, question: bool = False) -> float:
        """The model's probability (0–1) that ``image`` shows ``query`` ("a receipt"), as
        ``mdream grep`` scores it: of a yes against a no to the query's yes/no question
        (``question=True``: ``query`` is that question, asked as written). A probability of
        the model, not a calibrated truth."""
        from .loader import yes_no_tokens
        from .prompts import grep_question

        if not isinstance(query, str) or not query.strip():
            raise UsageError(
                "the query is empty" if isinstance(query, str) else "the query is text"
            )
        if self._yes_no is None:
            self._yes_no = yes_no_tokens(self.engine)
        asked = query if question else grep_question(query)
        return float(self.ask(image, asked, sampling=Sampling(max_tokens=1, yes_no=self._yes_no)))

    def chat(self, image: ImageSource | Pixels) -> Chat:
        """A conversation about ``image``: ``with md.chat("photo.jpg") as c: c.ask("…")``.
        Each question is asked with the earlier turns as its history, as the reference's
        ``chat_history`` did; the image is encoded once (:mod:`moondream_cli.chat`)."""
        from .chat import Conversation

        pixels = image if isinstance(image, Pixels) else self.load(image)
        return Chat(self, Conversation(self.engine, pixels, self.settings.sampler(ASK_MAX_TOKENS)))

    def load(self, image: ImageSource) -> Pixels:
        """``image`` decoded, stripped and fitted to the projector as the engine will use it."""
        if not isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
            raise UsageError(
                f"an image is a path, encoded bytes or a PIL image, not {type(image).__name__}"
            )
        return prepare(image, self.model.preparation)

    def close(self) -> None:
        with self._lock:
            self.engine.close()

    def __enter__(self) -> Moondream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Chat:
    """A conversation with a shared :class:`Moondream`: its turns one at a time."""

    def __init__(self, model: Moondream, conversation: Conversation) -> None:
        self._model, self.conversation = model, conversation

    @property
    def turns(self) -> list[tuple[str, str]]:
        """(question, answer), oldest first; the oldest drop out when the context is full."""
        return list(self.conversation.turns)

    def ask(
        self,
        question: str,
        *,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        if not isinstance(question, str):
            raise UsageError(f"the question is text, not {type(question).__name__}")
        sampling = _checked(sampling)
        with self._model._lock:
            return self.conversation.ask(question, sampling, on_text)

    def clear(self) -> None:
        self.conversation.clear()

    def __enter__(self) -> Chat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def _checked(sampling: Sampling | None) -> Sampling | None:
    """``sampling`` held to the rules the settings keep (max_tokens at least 1, temperature
    not negative, a seed only with a temperature)."""
    if sampling is not None:
        SamplingOptions(sampling.max_tokens, sampling.temperature, sampling.seed)
    return sampling


def answer_paths(
    inputs: Iterable[str],
    questions: Iterable[str] | None = None,
    *,
    settings: Settings | None = None,
    note: Callable[[str], None] | None = None,
) -> Iterator[Record]:
    """Every record for ``inputs`` (files, folders and ``-``, as on the command line; with
    ``settings.inputs.files_from`` a list of paths too), in input order: captions, or with
    ``questions`` one record per image and question. Failed images are records with
    ``error`` set. ``settings.cluster.ray`` answers them on that Ray cluster instead of in
    this process; ``note`` receives what the CLI would say on stderr (default: stderr).

    >>> for record in answer_paths(["photos/"], settings=Settings()):  # doctest: +SKIP
    ...     print(record.path, record.answer or record.error)
    """
    from .backends import Hooks, backend_for
    from .job import Job

    settings = settings or Settings()
    asked = tuple(questions or ())
    if asked:
        job = Job(tuple(inputs), asked, settings, ASK_MAX_TOKENS)
    else:
        task = describe_task()
        job = Job(tuple(inputs), (task.question,), settings, task.max_tokens, style=Style.CAPTION)
    backend = backend_for(settings)
    backend.preflight(job)
    # The caller's own prints on stdout must not be taken for a backend's notices.
    hooks = Hooks(note=note or _to_stderr, warn=note or _to_stderr, notices=False)
    with job.sources() as sources:
        results = backend.results(job, sources, hooks)
        try:
            for result in results:
                yield from result.records
        finally:
            results.close()


def _to_stderr(text: str) -> None:
    sys.stderr.write(f"mdream: {text}\n")
