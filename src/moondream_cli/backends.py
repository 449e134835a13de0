"""Where a job's images are answered: one interface, a backend per place, chosen by name.

A :class:`Backend` turns a :class:`~moondream_cli.job.Job`'s inputs into one
:class:`~moondream_cli.runner.ImageResult` each, in input order (unless the job asks
otherwise). This process's own engine is the ``local`` backend; a Ray cluster is ``ray``
(:mod:`moondream_cli.ray`, the 'ray' extra). Both are registered below exactly as an outside
backend would be, by :func:`register_backend` with a factory or an ``"module:attribute"``
name, so the front-ends and :mod:`.driver` never import one by name, and nothing is
imported for a backend the run does not use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .inputs import Source
    from .job import Job
    from .runner import ImageResult
    from .settings import Settings

Results = Generator["ImageResult", None, None]


@dataclass(frozen=True)
class Hooks:
    """What the front-end gives a backend besides the job: when to skip an input (before it
    is read), where to say the model is ready (and its name), where notes and warnings for
    the user go, and, for one image and one question, where its answer streams."""

    skip: Callable[[Source], bool] = lambda _: False
    started: Callable[[str], None] = lambda _: None
    note: Callable[[str], None] = lambda _: None
    warn: Callable[[str], None] = lambda _: None
    on_text: Callable[[str], None] | None = None
    notices: bool = True  # catch what the backend's libraries print on stdout (Ray does)


class Backend(Protocol):
    """Answers a job's inputs; freeing what it loaded when the generator closes."""

    def preflight(self, job: Job) -> None:
        """What must be checked over the network before the network guard goes on (the
        front-end calls it first); raise an MdreamError to stop the run there."""

    def results(self, job: Job, sources: Iterable[Source], hooks: Hooks) -> Results: ...


_REGISTRY: dict[str, Callable[[], Backend] | str] = {}


def register_backend(name: str, factory: Callable[[], Backend] | str) -> None:
    """Make ``name`` a backend: ``factory()`` makes one, or ``"module:attribute"`` names the
    factory, imported only when a run uses it."""
    _REGISTRY[name] = factory


def backend_named(name: str) -> Backend:
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
        _REGISTRY[name] = factory
    return factory()


def backend_for(settings: Settings) -> Backend:
    """The backend ``settings`` asks for: the cluster when ``--ray`` is given, else local."""
    return backend_named("ray" if settings.cluster.ray is not None else "local")


class LocalBackend:
    """This process's own engine, loaded for the job, freed when the results close."""

    def preflight(self, job: Job) -> None:
        """Nothing: a local run never uses the network."""

    def results(self, job: Job, sources: Iterable[Source], hooks: Hooks) -> Results:
        from .images import read_stream
        from .loader import open_model
        from .runner import answer_inputs

        sampling = job.settings.sampler(job.max_tokens)
        with open_model(
            job.settings,
            max_tokens=job.max_tokens,
            # One image never needs KV caches for sequences that would not be used.
            batch=1 if job.one_image else None,
            seq_tokens=job.seq_tokens(sampling.max_tokens),
            scoring=job.scoring,
        ) as model:
            if model.gpu_warning:
                hooks.warn(model.gpu_warning)
            hooks.started(model.files.name)
            results = answer_inputs(
                sources,
                job.questions,
                model.engine,
                model.sampling,
                constraint=job.constraint,
                skip=hooks.skip,
                read_stdin=lambda: read_stream(sys.stdin.buffer),
                on_text=hooks.on_text,
                preparation=model.preparation,
            )
            try:
                yield from results
            finally:
                results.close()  # before the engine goes: its generators hold the context


register_backend("local", LocalBackend)
register_backend("ray", "moondream_cli.ray:RayBackend")
