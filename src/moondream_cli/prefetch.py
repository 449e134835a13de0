"""The next few images decoded in a small thread pool, handed over in input order.

A GPU answers an image in tens of milliseconds, about what one thread needs to decode and
stretch a 1080p JPEG, so one decoding thread would hold it back. Pillow releases the GIL
while it decodes and resizes, so a few threads in this process decode in parallel; nothing
leaves the process and nothing is written.

One walker thread expands the inputs (which may block: a slow pipe, a network folder) and
submits each to the pool; the futures go into a bounded queue in input order, and the
consumer takes them from its head. Memory stays bounded: at most ``lookahead`` finished
images wait, plus one per worker being decoded.

Rule for the main thread: every wait on a lock here (a queue, a future) happens inside
``interrupt.shielded()`` with a short timeout, so Ctrl-C never lands while a lock is half
taken and still ends a long wait promptly. The decoding threads are daemons (:class:`_Pool`):
Ctrl-C and SIGTERM end the process without waiting for a decode to finish.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

from . import interrupt

T = TypeVar("T")
S = TypeVar("S")

MAX_WORKERS = 4  # 1080p JPEGs: 2 threads ~1.5× one (bench/README.md, "Decoding")
_DONE = object()


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _Pool:
    """``workers`` daemon threads running what is submitted, in order. Not a
    ``ThreadPoolExecutor``: Python joins its threads at exit, so a SIGTERM landing during a
    slow decode waited for the decode to end (32 s, seen) before the process could exit."""

    def __init__(self, workers: int) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"mdream-decode-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Let each thread end after what it is doing; nothing waits for them."""
        for _ in self._threads:
            self._jobs.put(None)


class _Crashed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Decoder(Generic[S, T]):
    """Iterate ``decode(index, source)`` over ``sources`` in order, ``workers`` at a time.

    ``ready()`` says whether the next result can be had without waiting. A source for which
    ``now(index, source)`` returns a result (a skipped input) gets it at once, undecoded.
    Exceptions from ``decode`` or from the sources end the iteration where they occur.
    """

    def __init__(
        self,
        sources: Iterable[S],
        decode: Callable[[int, S], T],
        *,
        now: Callable[[int, S], T | None] | None = None,
        workers: int | None = None,
        lookahead: int = 3,
    ) -> None:
        self._workers = workers or default_workers()
        self._pending: queue.Queue[object] = queue.Queue(maxsize=max(1, lookahead))
        self._stop = threading.Event()
        self._walker = threading.Thread(
            target=self._walk, args=(sources, decode, now), name="mdream-inputs", daemon=True
        )
        with interrupt.shielded():
            self._pool = _Pool(self._workers)
            self._walker.start()

    def _walk(
        self,
        sources: Iterable[S],
        decode: Callable[[int, S], T],
        now: Callable[[int, S], T | None] | None,
    ) -> None:
        try:
            for index, source in enumerate(sources):
                if self._stop.is_set():
                    return
                immediate = now(index, source) if now is not None else None
                if immediate is not None:
                    future: Future[T] = Future()
                    future.set_result(immediate)
                else:
                    future = self._pool.submit(decode, index, source)
                if not self._put(future):
                    future.cancel()
                    return
            self._put(_DONE)
        except BaseException as exc:
            self._put(_Crashed(exc))

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._take()
            if item is _DONE:
                return
            if isinstance(item, _Crashed):
                raise item.exc
            assert isinstance(item, Future)
            yield self._result(item)

    def _take(self) -> object:
        while True:
            with interrupt.shielded():
                try:
                    return self._pending.get(timeout=0.1)
                except queue.Empty:
                    continue

    @staticmethod
    def _result(future: Future[T]) -> T:
        while True:
            with interrupt.shielded():
                try:
                    return future.result(timeout=0.1)
                except FutureTimeout:
                    continue

    def ready(self) -> bool:
        """Whether the next result is decoded and waiting."""
        with interrupt.shielded(), self._pending.mutex:
            if not self._pending.queue:
                return False
            head = self._pending.queue[0]
        return not isinstance(head, Future) or head.done()

    @property
    def walking(self) -> bool:
        """Whether the walker thread is still reading inputs."""
        return self._walker.is_alive()

    def close(self) -> None:
        """Stop the walker, drop what was decoded ahead, and let the pool finish."""
        with interrupt.shielded():
            self._stop.set()
            try:
                while True:
                    item = self._pending.get_nowait()
                    if isinstance(item, Future):
                        item.cancel()
            except queue.Empty:
                pass
            self._walker.join(timeout=1.0)
            self._pool.shutdown()

    def __enter__(self) -> Decoder[S, T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
