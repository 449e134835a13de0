"""One Ray worker: an engine loaded once, answering chunks of ``(index, Source)``.

It runs in a Ray actor process on some node. It reads each image from storage that node
sees, decodes and strips it here, and answers it with mdream's own batch loop; only the
record fields go back. The network guard is on from before the model loads: Ray's own
sockets live in its C++ core, which the guard does not see, and anything else that tries
the network stops the run with exit 4.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING, Any

from .. import guard
from ..errors import MdreamError

if TYPE_CHECKING:
    from ..engine import Engine
    from ..inputs import Source
    from ..jobs import Job


class Worker:
    """Made by ``ray.remote(Worker)`` in the driver; every method runs on the worker."""

    def __init__(self, job: Job) -> None:
        from .. import locate
        from ..engine import Engine
        from ..images import own_the_size_check

        self.job = job
        import ray

        self.node = socket.gethostname()  # a name for messages; no lookup, no socket
        self.node_id = ray.get_runtime_context().get_node_id()
        self.engine: Engine | None = None
        self.problem: str | None = None
        guard.forbid_network()
        own_the_size_check()
        settings = job.settings
        try:
            files = locate.resolve(settings.model_dir)
            sampling = settings.sampling(job.max_tokens)
            options = settings.engine_options(seq_tokens=job.seq_tokens(sampling.max_tokens))
            self.engine = Engine(files, options)
        except MdreamError as exc:
            self.problem = f"on Ray node {self.node}: {exc}"

    def ready(self) -> tuple[str, str | None]:
        """(the Ray node it runs on, None once the model is loaded, else why it is not)."""
        return self.node_id, self.problem

    def answer(self, chunk: list[tuple[int, Source]]) -> list[tuple[Any, ...]]:
        """``(index, source, [record fields])`` per input, or one ``("fatal", code, why)``."""
        from ..images import Prepare
        from ..runner import run

        if self.engine is None:
            return [("fatal", 3, self.problem or "the model is not loaded")]
        job, engine = self.job, self.engine
        settings = job.settings
        sampling = settings.sampling(job.max_tokens)
        how = Prepare(engine.image_size, engine.fit, settings.max_megapixels)
        sources = [source for _, source in chunk]
        try:
            results = list(
                run(
                    sources,
                    job.questions,
                    engine,
                    sampling,
                    constraint=job.constraint,
                    preparation=how,
                )
            )
        except MdreamError as exc:  # the network guard (exit 4), a broken model (3)
            return [("fatal", exc.exit_code, f"on Ray node {self.node}: {exc}")]
        return [
            (index, result.source, [dataclasses.asdict(r) for r in result.records])
            for (index, _), result in zip(chunk, results, strict=True)
        ]
