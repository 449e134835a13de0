"""The one way a front-end opens the model: :func:`open_model` for a :class:`Settings`.

The CLI's local backend, a Ray worker, the Python API and ``doctor``'s self-check all open
their model here, so each gets the same files (checked against their manifest), the same
engine options, the same sampling and the same image preparation. Pillow's own bomb guard is
left as the process has it: the front-ends that own their process (the CLI, a Ray worker) hand
the size check to mdream (``images.own_the_size_check``); the Python API leaves it to the
application that embeds mdream.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from . import locate

if TYPE_CHECKING:
    from .engine import Engine, Sampling
    from .images import Prepare
    from .settings import Settings


@dataclass
class OpenModel:
    """A loaded engine with what a run feeds it: close it (or use ``with``) to free it."""

    engine: Engine
    sampling: Sampling  # the settings' sampling, the question's own length by default
    preparation: Prepare  # how an image is decoded and fitted for this engine
    files: locate.ModelFiles

    @property
    def gpu_warning(self) -> str | None:
        """What the user is told when this GPU build found no GPU (``Engine.gpu_missing``)."""
        why = self.engine.gpu_missing
        return f"{why}; --cpu runs there without this warning" if why else None

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> OpenModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_model(
    settings: Settings,
    *,
    max_tokens: int,
    batch: int | None = None,
    seq_tokens: int | None = None,
    files: locate.ModelFiles | None = None,
    scoring: bool = False,
) -> OpenModel:
    """The model ``settings.model`` names, loaded, with ``settings``' sampling (answers of
    ``max_tokens`` when the settings set no length). ``batch`` and ``seq_tokens`` size the
    engine where the settings leave it open (``Settings.engine_options``); ``files``, when
    the caller resolved them already (``doctor`` turns the guard on in between). With
    ``scoring``, answers are the probability of yes (``mdream grep``; ``yes_no_tokens``)."""
    from .engine import Engine
    from .images import Prepare

    files = files or locate.resolve(settings.model.model_dir)
    sampling = settings.sampler(max_tokens)
    engine = Engine(files, settings.engine_options(batch=batch, seq_tokens=seq_tokens))
    if scoring:
        sampling = replace(sampling, max_tokens=1, yes_no=yes_no_tokens(engine))
    preparation = Prepare(engine.image_size, engine.fit, settings.model.max_megapixels)
    return OpenModel(engine, sampling, preparation, files)


def yes_no_tokens(engine: Engine) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tokens a yes or a no can start an answer with, in this model's vocabulary: each
    word of ``prompts.YES_WORDS`` / ``NO_WORDS`` with and without its leading space, where
    the tokenizer makes it one token."""
    from .prompts import NO_WORDS, YES_WORDS

    def ids(words: tuple[str, ...]) -> tuple[int, ...]:
        found = [engine.tokenize(form) for word in words for form in (" " + word, word)]
        return tuple(sorted({t[0] for t in found if len(t) == 1}))

    yes, no = ids(YES_WORDS), ids(NO_WORDS)
    if not yes or not no:
        from .errors import ModelError

        raise ModelError("this model's vocabulary has no one-token yes and no: it cannot score")
    return yes, no
