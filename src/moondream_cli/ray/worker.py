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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import guard
from ..errors import MdreamError

if TYPE_CHECKING:
    from ..inputs import Source
    from ..job import Job
    from ..loader import OpenModel


@dataclass(frozen=True)
class Ready:
    """What a worker says once started: its node, and why it has no model (``problem``) or
    its engine's batch, and why its GPU build runs on the CPU, if it does."""

    node: str
    problem: str | None
    batch: int = 1
    gpu_missing: str | None = None
    model: str = ""  # the model's name, for what the driver writes (XMP sidecars)


class Worker:
    """Made by ``ray.remote(Worker)`` in the driver; every method runs on the worker."""

    def __init__(self, job: Job) -> None:
        import ray

        from ..images import own_the_size_check
        from ..loader import open_model

        self.job = job
        self.node = socket.gethostname()  # a name for messages; no lookup, no socket
        self.node_id = ray.get_runtime_context().get_node_id()
        self.model: OpenModel | None = None
        self.problem: str | None = None
        guard.forbid_network()
        own_the_size_check()  # a worker's process is mdream's: its size check, not Pillow's
        sampling = job.settings.sampler(job.max_tokens)
        try:
            self.model = open_model(
                job.settings,
                max_tokens=job.max_tokens,
                seq_tokens=job.seq_tokens(sampling.max_tokens),
                scoring=job.scoring,
            )
        except MdreamError as exc:
            self.problem = f"on Ray node {self.node}: {exc}"

    def ready(self) -> Ready:
        """Where it runs, and its engine's batch and model once loaded, else why not."""
        if self.model is None:
            return Ready(self.node_id, self.problem or "the model is not loaded")
        engine = self.model.engine
        return Ready(self.node_id, None, engine.batch, engine.gpu_missing, self.model.files.name)

    def answer(self, chunk: list[tuple[int, Source]]) -> list[tuple[Any, ...]]:
        """``(index, [record fields])`` per input, or one ``("fatal", code, why)``: the
        driver matches them to its own inputs by index."""
        from ..runner import answer_inputs

        if self.model is None:
            return [("fatal", 3, self.problem or "the model is not loaded")]
        job, model = self.job, self.model
        sources = [source for _, source in chunk]
        try:
            results = list(
                answer_inputs(
                    sources,
                    job.questions,
                    model.engine,
                    model.sampling,
                    constraint=job.constraint,
                    preparation=model.preparation,
                )
            )
        except MdreamError as exc:  # the network guard (exit 4), a broken model (3)
            return [("fatal", exc.exit_code, f"on Ray node {self.node}: {exc}")]
        return [
            (index, [dataclasses.asdict(r) for r in result.records])
            for (index, _), result in zip(chunk, results, strict=True)
        ]
