"""The Python API: ``Moondream(model_dir=None).describe(image)`` / ``.ask(image, question)``.

Loads the model once and is reusable. Images are paths, encoded bytes or PIL images; they
are decoded and stripped in memory by :mod:`moondream_cli.images`. Configured with the same
:class:`~moondream_cli.settings.Settings` as the command line (model, device, threads,
sampling); the engine's own tuning knobs (:class:`~moondream_cli.engine.EngineOptions`) are
for benchmarks and tests, which use :class:`~moondream_cli.engine.Engine` directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import locate
from .engine import Engine, Sampling
from .errors import UsageError
from .images import ImageSource, Pixels, Prepare, own_the_size_check, prepare
from .prompts import ASK_MAX_TOKENS, Length, Style, describe_task
from .settings import Settings


class Moondream:
    """A loaded Moondream2 model.

    >>> md = Moondream()                                  # doctest: +SKIP
    >>> md.describe("photo.jpg", length="short")          # doctest: +SKIP
    >>> Moondream(settings=Settings(cpu=True, threads=4))  # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        if model_dir is not None:
            settings = replace(settings, model_dir=Path(model_dir))
        self.settings = settings
        self.files = locate.resolve(settings.model_dir)
        own_the_size_check()
        self.engine = Engine(self.files, settings.engine_options())

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
        sampling = sampling or self.settings.sampling(task.max_tokens)
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
        if not question.strip():
            raise UsageError("the question is empty")
        pixels = image if isinstance(image, Pixels) else self.load(image)
        # Same pixels as last time: the encoded image prefix is reused.
        self.engine.set_image(pixels, key=pixels)
        return self.engine.ask(
            question, sampling or self.settings.sampling(ASK_MAX_TOKENS), on_text
        )

    def load(self, image: ImageSource) -> Pixels:
        """``image`` decoded, stripped and fitted to the projector as the engine will use it."""
        how = Prepare(self.engine.image_size, self.engine.fit, self.settings.max_megapixels)
        return prepare(image, how)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Moondream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
