"""Folder runs on a Ray cluster: paths in, records out, pixels never cross the network.

The driver (this process) expands the inputs with mdream's own input code and hands out
``(index, Source)`` chunks through Ray's :class:`~ray.util.ActorPool`; each worker
(:mod:`.worker`) reads its images from storage it can see, decodes and strips them in its
own process, and runs mdream's own batch loop (``runner.answer_inputs``) on its own engine, with the
network guard on. Only paths go in and only records come back: no image bytes and no pixels
enter Ray's object store. Per-image failures are records, as locally; a worker that dies is
restarted by Ray and its chunk retried, and the driver keeps one record set per index.
Results come out in input order (a bounded lookahead of chunks) or, with ``unordered``, as
they finish. This is the ``ray`` backend of :mod:`moondream_cli.backends`; Ray is imported
only here, only when a run's settings name a cluster.

Privacy on a cluster (docs/cluster.md): what still holds is that pixels stay in the
worker that read them, metadata is stripped there, inference is offline and the guard is on
in every worker; what does not is that workers hold Ray's own sockets, answers travel to the
driver, and images travel from shared storage to the worker that reads them.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import socket
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelError, NetworkAttempted, UsageError
from ..inputs import Source
from ..records import Record
from .auth import first_sentences, refuse_a_cluster_that_takes_no_token
from .sizing import chunk_size, workers_for

if TYPE_CHECKING:
    from ..backends import Hooks
    from ..job import Job
    from ..runner import ImageResult

INSTALL = "pip install 'mdream[ray]'"
PROBE_SECONDS = 5  # how long the address may take to accept a connection
AHEAD = 3  # chunks in flight per worker: bounds the driver's reorder buffer
Item = tuple[int, Source]
Skip = Callable[[Source], bool]
Results = Iterator["ImageResult"]


class RayBackend:
    """The ``ray`` backend (:mod:`moondream_cli.backends`): every input's
    :class:`ImageResult`, answered on the cluster at ``job.settings.cluster.ray``; the hooks'
    ``started(model)`` once the workers are ready, ``note`` for what the user should know, and
    with ``notices`` what Ray prints on ``sys.stdout`` meanwhile too (:class:`Notices`)."""

    def preflight(self, job: Job) -> None:
        """The cluster answers at its address: one TCP connection, nothing sent, before the
        guard is on. Ray itself would retry for minutes, printing only its own lines."""
        import importlib.util

        if importlib.util.find_spec("ray") is None:  # what is missing here comes first
            raise UsageError(f"--ray needs the Ray extra: {INSTALL}")
        address = job.settings.cluster.ray or ""
        _import_ray(address)  # without the extra, that is what to say, not the address
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--ray takes HOST:PORT (the head node's GCS port), not {address!r}")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
                pass
        except OSError as exc:
            why = exc.strerror or type(exc).__name__.replace("Error", "").lower() or str(exc)
            raise ModelError(
                f"cannot reach the Ray cluster at {address}: {why} — is `ray start --head "
                f"--port={port}` running there?"
            ) from None

    def results(
        self, job: Job, sources: Iterable[Source], hooks: Hooks
    ) -> Generator[ImageResult, None, None]:
        address = job.settings.cluster.ray
        ray = _import_ray(address)
        _refuse_an_open_cluster()
        refuse_a_cluster_that_takes_no_token(address)  # before anything of the job is sent
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", **_local(address))
        except Exception as exc:  # ConnectionError, and Ray's own kinds
            raise ModelError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
        link = Link(hooks.note, Notices())
        stdout = sys.stdout
        if hooks.notices:
            sys.stdout = link.caught
        try:
            pool, workers, chunk, model = _start_workers(ray, job, link)
            hooks.started(model)
            items = enumerate(sources)
            for result in _answers(pool, (workers, chunk), items, hooks.skip, job, link):
                link.tell()
                yield result
            hooks.note(
                f"Ray carried {link.sent:,} bytes to the workers (the job and the paths) "
                f"and {link.received:,} bytes of records back"
            )
        finally:
            ray.shutdown()
            sys.stdout = stdout
            link.tell()


class Notices(io.TextIOBase):
    """Where ``sys.stdout`` points during a cluster run. Ray's driver prints what its
    raylets report (a worker that died, a task it retries) to ``sys.stdout``, in colour and
    at length; here each such line waits, as its first two sentences, for the main thread
    to pass it on as one ``mdream: Ray: …`` note. Ray prints from its own thread: a deque
    is safe to append to from there."""

    def __init__(self) -> None:
        super().__init__()
        self.partial = ""
        self.lines: deque[str] = deque()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *done, self.partial = (self.partial + text).split("\n")
        for line in done:
            line = _COLOUR.sub("", line).removeprefix("(raylet) ").strip()
            if line and not _LOG_LINE.match(line):  # a dead raylet's log tail: noise here
                self.lines.append(first_sentences(line, 2) + ".")
        return len(text)

    def pass_on(self, note: Callable[[str], None]) -> None:
        while self.lines:
            note(f"Ray: {self.lines.popleft()}")


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d |The last \d+ lines of ")


@dataclass
class Link:
    """The driver's end of a run: where what the user should know goes (``note``, with Ray's
    ``caught`` notices), and the bytes it handed Ray and got back, pickled: the proof that
    no image crossed."""

    note: Callable[[str], None]
    caught: Notices
    sent: int = 0
    received: int = 0

    def tell(self) -> None:
        """Pass Ray's notices on, as ``mdream: Ray: …`` notes."""
        self.caught.pass_on(self.note)


def _loopback(address: str | None) -> bool:
    host = (address or "").rpartition(":")[0] or (address or "")
    return host in ("127.0.0.1", "localhost")


def _local(address: str | None) -> dict[str, str]:
    """For a cluster on this machine's loopback, the driver's address is loopback too."""
    return {"_node_ip_address": "127.0.0.1"} if _loopback(address) else {}


def _import_ray(address: str | None = None) -> Any:
    # Set before Ray reads them: nothing of this run is reported to Ray's usage statistics.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if _loopback(address):
        # To a cluster on loopback, Ray would still find "this machine's address" by routing a
        # socket towards 8.8.8.8 (and warn on stderr where that fails): this setting (named
        # for the platforms it was meant for) keeps it on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
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


def _start_workers(ray: Any, job: Job, link: Link) -> tuple[Any, int, int, str]:
    """Ray's own actor pool of engines, models loaded (:func:`workers_for`), the number of
    workers, the images to hand one at a time (:func:`chunk_size`), and the model's name."""
    from ray.util import ActorPool

    from .worker import Worker

    resources = ray.cluster_resources()
    count, asks = workers_for(
        job.settings.cluster.workers,
        nodes=len([n for n in ray.nodes() if n.get("Alive")]),
        cpus=int(resources.get("CPU", 0)),
        gpus=0 if job.settings.model.cpu else int(resources.get("GPU", 0)),
    )
    remote = ray.remote(Worker).options(
        **asks,
        max_restarts=2,  # a worker that dies is started again ...
        max_task_retries=2,  # ... and its chunk handed to it again
        scheduling_strategy="SPREAD",
    )
    actors = [remote.remote(job) for _ in range(count)]
    link.sent += count * len(pickle.dumps(job))
    # Load the models now: a node without the bundle fails here, naming the node.
    try:
        answers = ray.get([actor.ready.remote() for actor in actors])
    except Exception as exc:  # ActorDiedError: it died loading the model (a GGML_ASSERT, OOM)
        why = first_sentences(str(exc), 1)[:300]
        raise ModelError(f"a Ray worker died while it loaded the model ({why})") from exc
    for ready in answers:
        if ready.problem is not None:
            raise ModelError(ready.problem)
    for node, missing in sorted({(r.node, r.gpu_missing) for r in answers if r.gpu_missing}):
        link.note(f"on Ray node {node}: {missing}")
    on = len({ready.node for ready in answers})
    gpus = ", one GPU each" if "num_gpus" in asks else ""
    link.note(f"{count} worker{'s' * (count > 1)} on {on} Ray node{'s' * (on > 1)}{gpus}")
    chunk = chunk_size([ready.batch for ready in answers])
    return ActorPool(actors), count, chunk, answers[0].model


def _answers(
    pool: Any, shape: tuple[int, int], items: Iterator[Item], skip: Skip, job: Job, link: Link
) -> Results:
    """Results in input order (or as they finish), ``AHEAD`` chunks per worker in flight;
    ``shape``: (workers, images per chunk)."""
    workers, size = shape
    unordered = job.settings.cluster.unordered
    order: deque[int] = deque()  # indices not yet handed out, in input order
    done: dict[int, ImageResult] = {}
    sent: dict[int, Source] = {}  # what the driver asked about, by index: records' own paths
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
            sent[index] = source
        if len(chunk) >= size:
            _submit(pool, chunk, link)
            chunk, in_flight = [], in_flight + 1
        while in_flight >= workers * AHEAD:
            _collect(pool, Expected(sent, job.questions), done, link)
            in_flight -= 1
        yield from _release(order, done, unordered)
    if chunk:
        _submit(pool, chunk, link)
        in_flight += 1
    for _ in range(in_flight):
        _collect(pool, Expected(sent, job.questions), done, link)
        yield from _release(order, done, unordered)
    if sent:  # every chunk came back, and some of what it held did not
        raise ModelError(f"the Ray workers left {len(sent)} inputs unanswered")


def _submit(pool: Any, chunk: list[Item], link: Link) -> None:
    pool.submit(_answer, chunk)
    link.sent += len(pickle.dumps(chunk))


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


@dataclass(frozen=True)
class Expected:
    """What the driver sent and asked, to match a worker's answers against: by index, the
    input (its path is the records' path, and the sidecar's) and the questions, in order."""

    sent: dict[int, Source]
    questions: tuple[str, ...]

    def records(self, index: object, fields: object) -> tuple[Source, list[Record]] | None:
        """The worker's record fields for ``index`` as records of the driver's own input;
        None when the index was never sent or was answered already (a retried chunk)."""
        source = self.sent.pop(index, None) if isinstance(index, int) else None
        if source is None:
            return None
        if not isinstance(fields, list) or len(fields) != len(self.questions):
            raise ModelError("a Ray worker answered with records that do not fit the job")
        records = []
        for question, field in zip(self.questions, fields, strict=True):
            if not isinstance(field, dict):
                raise ModelError("a Ray worker answered with records that do not fit the job")
            answer, error = field.get("answer"), field.get("error")
            ms = field.get("elapsed_ms")
            if field.get("question") != question or not _text_or_none(answer, error):
                raise ModelError("a Ray worker answered with records that do not fit the job")
            ms = ms if isinstance(ms, int) and not isinstance(ms, bool) else 0
            records.append(Record(source.label, question, answer, error, ms))
        return source, records


def _text_or_none(*values: object) -> bool:
    return all(v is None or isinstance(v, str) for v in values)


def _collect(pool: Any, expected: Expected, done: dict[int, ImageResult], link: Link) -> None:
    """One chunk's answers, from whichever worker finishes first, each matched by its index
    to the input the driver sent (never to the path a worker names); the first set per index
    is kept (a retried chunk answers again)."""
    from ..runner import ImageResult

    try:
        answered = pool.get_next_unordered()
    except Exception as exc:  # a worker that died past its restarts, a node that died
        why = first_sentences(str(exc), 1)[:300]
        raise ModelError(
            f"a Ray worker failed and Ray's retries ran out ({why}); the records written so "
            "far are whole: --resume or --sidecar continues the run"
        ) from exc
    link.received += len(pickle.dumps(answered))
    for entry in answered:
        if entry[0] == "fatal":
            _, code, message = entry
            raise (
                NetworkAttempted(message)
                if code == NetworkAttempted.exit_code
                else ModelError(message)
            )
        index, fields = entry
        matched = expected.records(index, fields)
        if matched is not None:
            done[index] = ImageResult(*matched)


def _release(order: deque[int], done: dict[int, ImageResult], unordered: bool) -> Results:
    if unordered:
        while done:
            yield done.pop(next(iter(done)))
        return
    while order and order[0] in done:
        yield done.pop(order.popleft())


__all__ = ["INSTALL", "RayBackend"]
