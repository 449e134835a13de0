"""The Python API: ``Moondream(model_dir=None).describe(image)`` / ``.ask(image, question)``.

Loads the model once and is reusable. Images are paths, encoded bytes or PIL images; they
are decoded and stripped in memory by :mod:`moondream_cli.images`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import locate
from .engine import Engine, EngineOptions, Sampling
from .images import ImageSource, Pixels, load_image
from .prompts import DESCRIBE_MAX_TOKENS, describe_question


class Moondream:
    """A loaded Moondream2 model.

    >>> md = Moondream()                                  # doctest: +SKIP
    >>> md.describe("photo.jpg", length="short")          # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        options: EngineOptions | None = None,
    ) -> None:
        self.files = locate.resolve(model_dir)
        self.engine = Engine(self.files, options)

    def describe(
        self,
        image: ImageSource | Pixels,
        length: str = "normal",
        *,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        question = describe_question(length)
        sampling = sampling or Sampling(max_tokens=DESCRIBE_MAX_TOKENS[length])
        return self.ask(image, question, sampling=sampling, on_text=on_text)

    def ask(
        self,
        image: ImageSource | Pixels,
        question: str,
        *,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        pixels = image if isinstance(image, Pixels) else load_image(image)
        # Same pixels as last time: the encoded image prefix is reused.
        self.engine.set_image(pixels, key=pixels)
        return self.engine.ask(question, sampling, on_text)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Moondream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
