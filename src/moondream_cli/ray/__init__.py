"""Folder runs on a Ray cluster: paths in, records out, pixels never cross the network.

The driver (this process) expands the inputs with mdream's own input code and hands out
``(index, Source)`` chunks through Ray's :class:`~ray.util.ActorPool`; each worker
(:mod:`.worker`) reads its images from storage it can see, decodes and strips them in its
own process, and runs mdream's own batch loop (``runner.run``) on its own engine, with the
network guard on. Only paths go in and only records come back: no image bytes and no pixels
enter Ray's object store. Per-image failures are records, as locally; a worker that dies is
restarted by Ray and its chunk retried, and the driver keeps one record set per index.
Results come out in input order (a bounded lookahead of chunks) or, with ``unordered``, as
they finish. Ray is imported only here, only when ``--ray`` is given.

Privacy on a cluster (README, "Many machines"): what still holds is that pixels stay in the
worker that read them, metadata is stripped there, inference is offline and the guard is on
in every worker; what does not is that workers hold Ray's own sockets, answers travel to the
driver, and images travel from shared storage to the worker that reads them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelError, NetworkAttempted, UsageError
from ..inputs import Source
from ..records import Record

if TYPE_CHECKING:
    from ..jobs import Job
    from ..runner import ImageResult

INSTALL = "pip install 'mdream[ray]'"
CHUNK = 4  # images per task: enough to keep a worker's continuous batching fed
AHEAD = 3  # chunks in flight per worker: bounds the driver's reorder buffer
Item = tuple[int, Source]
Skip = Callable[[Source], bool]
Results = Iterator["ImageResult"]


def cluster_results(
    job: Job,
    sources: Iterable[Source],
    skip: Callable[[Source], bool],
    started: Callable[[], None],
    note: Callable[[str], None],
) -> Generator[ImageResult, None, None]:
    """Every input's :class:`ImageResult`, answered on the cluster at ``job.settings.ray``;
    ``started()`` once the workers are ready, ``note`` for what the user should know."""
    ray = _import_ray()
    _refuse_an_open_cluster()
    settings = job.settings
    try:
        ray.init(
            address=settings.ray, log_to_driver=False, logging_level="ERROR", **_local(settings.ray)
        )
    except Exception as exc:  # ConnectionError, and Ray's own kinds
        raise ModelError(f"cannot reach the Ray cluster at {settings.ray}: {exc}") from exc
    try:
        pool, workers = _start_workers(ray, job, note)
        started()
        yield from _answers(pool, workers, enumerate(sources), skip, job)
    finally:
        ray.shutdown()


def _local(address: str | None) -> dict[str, str]:
    """For a cluster on this machine's loopback, say so: Ray would otherwise probe 8.8.8.8
    to find this machine's address, and leave loopback."""
    host = (address or "").rpartition(":")[0] or (address or "")
    return {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}


def _import_ray() -> Any:
    # Set before Ray reads them: nothing of this run is reported to Ray's usage statistics.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs the Ray extra: {INSTALL}") from None
    return ray


def _refuse_an_open_cluster() -> None:
    """Without Ray's token authentication anyone who reaches the cluster runs code on it."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        raise UsageError(
            "mdream uses only Ray clusters with token authentication: set RAY_AUTH_MODE=token "
            "(and RAY_AUTH_TOKEN_PATH) here and on every node"
        )


def _start_workers(ray: Any, job: Job, note: Callable[[str], None]) -> tuple[Any, int]:
    """Ray's own actor pool of ``--workers`` engines (default: one per node), models loaded."""
    from ray.util import ActorPool

    from .worker import Worker

    settings = job.settings
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    count = settings.workers or max(1, len(nodes))
    remote = ray.remote(Worker).options(
        num_cpus=1,
        max_restarts=2,  # a worker that dies is started again ...
        max_task_retries=2,  # ... and its chunk handed to it again
        scheduling_strategy="SPREAD",
    )
    actors = [remote.remote(job) for _ in range(count)]
    # Load the models now: a node without the bundle fails here, naming the node.
    answers = ray.get([actor.ready.remote() for actor in actors])
    for _, problem in answers:
        if problem is not None:
            raise ModelError(problem)
    on = len({node for node, _ in answers})
    note(f"{count} worker{'s' * (count > 1)} on {on} Ray node{'s' * (on > 1)}")
    return ActorPool(actors), count


def _answers(pool: Any, workers: int, items: Iterator[Item], skip: Skip, job: Job) -> Results:
    """Results in input order (or as they finish), ``AHEAD`` chunks per worker in flight."""
    unordered = job.settings.unordered
    order: deque[int] = deque()  # indices not yet handed out, in input order
    done: dict[int, ImageResult] = {}
    chunk: list[Item] = []
    in_flight = 0
    for index, source in items:
        if not unordered:
            order.append(index)
        settled = _settled(source, skip)
        if settled is not None:
            done[index] = settled
        else:
            chunk.append((index, source))
        if len(chunk) >= CHUNK:
            pool.submit(_answer, chunk)
            chunk, in_flight = [], in_flight + 1
        while in_flight >= workers * AHEAD:
            _collect(pool, done)
            in_flight -= 1
        yield from _release(order, done, unordered)
    if chunk:
        pool.submit(_answer, chunk)
        in_flight += 1
    for _ in range(in_flight):
        _collect(pool, done)
        yield from _release(order, done, unordered)


def _answer(actor: Any, chunk: list[Item]) -> Any:
    return actor.answer.remote(chunk)


def _settled(source: Source, skip: Skip) -> ImageResult | None:
    """What the driver settles itself, as a local run does: a sidecar that exists (skipped)
    or cannot be written (an error record)."""
    from ..runner import ImageResult

    try:
        if skip(source):
            return ImageResult(source, skipped=True)
    except InputError as exc:
        return ImageResult(source, [Record(source.label, "", None, exc.message, 0)])
    return None


def _collect(pool: Any, done: dict[int, ImageResult]) -> None:
    """One chunk's answers, from whichever worker finishes first; the first set per index is
    kept (a retried chunk answers again)."""
    from ..runner import ImageResult

    try:
        answered = pool.get_next_unordered()
    except Exception as exc:  # a worker that died past its restarts
        raise ModelError(f"a Ray worker failed: {exc}") from exc
    for entry in answered:
        if entry[0] == "fatal":
            _, code, message = entry
            raise (
                NetworkAttempted(message)
                if code == NetworkAttempted.exit_code
                else ModelError(message)
            )
        index, source, records = entry
        done.setdefault(index, ImageResult(source, [Record(**r) for r in records]))


def _release(order: deque[int], done: dict[int, ImageResult], unordered: bool) -> Results:
    if unordered:
        while done:
            yield done.pop(next(iter(done)))
        return
    while order and order[0] in done:
        yield done.pop(order.popleft())


__all__ = ["INSTALL", "cluster_results"]
