"""The batch loop: inputs → decoded pixels (a small thread pool) → model → records, in order.

A few threads decode the next images (:mod:`.prefetch`: bounded, in input order) while the
model works on the current one, so results come out in input order. Each image is encoded
and prefilled once, then every question is asked against that cached prefix. A bad input
becomes error records and the batch goes on; anything else (a broken model, Ctrl-C) stops it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .engine import Answer, Request, Sampling
from .errors import InputError
from .grammars import Constraint
from .images import Pixels, Prepare, prepare
from .inputs import Source
from .prefetch import Decoder
from .records import Record

AS_DECODED = Prepare()  # no projector size known: the engine fits the pixels itself
LOOKAHEAD = 3  # images decoded ahead of the model; bounds memory to a few decoded images


class Answerer(Protocol):
    """What the loop needs from :class:`moondream_cli.engine.Engine`."""

    def set_image(
        self, pixels: Pixels, *, key: object = None, label: str | None = None
    ) -> None: ...

    def ask(
        self,
        question: str,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str: ...


@runtime_checkable
class BatchAnswerer(Answerer, Protocol):
    """An engine that can also keep several images in flight (:meth:`Engine.ask_many`)."""

    batch: int

    def ask_many(
        self,
        requests: Iterable[Request | None],
        sampling: Sampling | None = None,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> Iterator[Answer]: ...


@dataclass
class ImageResult:
    """Everything done for one input: one record per question, or none if it was skipped."""

    source: Source
    records: list[Record] = field(default_factory=list)
    skipped: bool = False

    @property
    def failed(self) -> bool:
        return any(not r.ok for r in self.records)


@dataclass
class _Decoded:
    index: int
    source: Source
    pixels: Pixels | None
    error: InputError | None
    decode_ms: float
    skipped: bool = False


def answer_inputs(
    sources: Iterable[Source],
    questions: Sequence[str],
    model: Answerer,
    sampling: Sampling,
    *,
    constraint: Constraint | None = None,
    skip: Callable[[Source], bool] | None = None,
    read_stdin: Callable[[], bytes] | None = None,
    on_text: Callable[[str], None] | None = None,
    lookahead: int = LOOKAHEAD,
    preparation: Prepare = AS_DECODED,
    workers: int | None = None,
) -> Generator[ImageResult, None, None]:
    """Yield one :class:`ImageResult` per input, in input order.

    ``skip(source)`` is asked before decoding (e.g. "its sidecar exists"; an InputError it
    raises becomes that input's records, undecoded); ``read_stdin``
    supplies the bytes of the ``-`` input; ``on_text`` streams the answer's text (one image,
    one question). Images are decoded and fitted as ``preparation`` says (the projector's
    size, the fit, the size limit), ``workers`` at a time (``decoding.default_workers``
    unless given), off the model's thread.
    """
    if sampling.grammar is None and constraint is not None:
        sampling = Sampling(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            seed=sampling.seed,
            grammar=constraint.gbnf,
        )

    def decode(index: int, source: Source) -> _Decoded:
        return _decode(index, source, read_stdin, preparation)

    def now(index: int, source: Source) -> _Decoded | None:
        """A result without decoding: the input is skipped, or its outputs cannot be had."""
        try:
            if skip is None or not skip(source):
                return None
        except InputError as exc:
            exc.path = source.label
            return _Decoded(index, source, None, exc, 0.0)
        return _Decoded(index, source, None, None, 0.0, skipped=True)

    decoder = Decoder(sources, decode, now=now, workers=workers, lookahead=lookahead)
    # Keys are unique to this run, so an engine reused across runs never mistakes a new
    # image for the one it encoded last.
    run_key = object()
    try:
        items = iter(decoder)
        if isinstance(model, BatchAnswerer) and model.batch > 1 and on_text is None:
            yield from _run_batched(items, questions, model, sampling, constraint, decoder.ready)
            return
        for item in items:
            yield _answer(
                item, (run_key, item.index), questions, model, sampling, constraint, on_text
            )
    finally:
        decoder.close()


def _run_batched(
    items: Iterator[_Decoded],
    questions: Sequence[str],
    model: BatchAnswerer,
    sampling: Sampling,
    constraint: Constraint | None,
    ready: Callable[[], bool] | None = None,
) -> Iterator[ImageResult]:
    """Many images in flight at once (the engine's continuous batching), results in input order.

    Answers arrive in the order they finish; each image's records are held until all of its
    questions are answered and every earlier input has been handed out. While images are
    in flight the engine does not wait for the next input (``ready``): a slow pipe delays no
    result that is already being worked on.
    """
    finished: dict[int, ImageResult] = {}
    open_: dict[int, tuple[ImageResult, list[Record | None], list[float]]] = {}
    next_out = 0

    def requests() -> Iterator[Request | None]:
        for item in items:
            if item.skipped or item.pixels is None:
                # Nothing for the model to do: the record (or the skip) is ready now.
                finished[item.index] = _answer(item, None, questions, model, sampling, None, None)
                if ready is not None and not ready():
                    yield None  # the engine goes on rather than wait here for the next input
                continue
            clock = [time.perf_counter() - item.decode_ms / 1000.0]
            open_[item.index] = (ImageResult(item.source), [None] * len(questions), clock)
            yield Request(item.pixels, tuple(questions), tag=item.index, label=item.source.label)

    for answer in model.ask_many(requests(), sampling, ready=ready):
        index = answer.tag
        assert isinstance(index, int)
        result, records, clock = open_[index]
        now = time.perf_counter()
        ms = round((now - clock[0]) * 1000)
        clock[0] = now
        label = result.source.label
        try:
            if answer.error is not None:
                raise answer.error
            text = answer.text or ""
            if constraint is not None:
                text = constraint.check(text, sampling.max_tokens)
            records[answer.index] = Record(label, answer.question, text, None, ms)
        except InputError as exc:
            records[answer.index] = Record(label, answer.question, None, exc.message, ms)
        if all(r is not None for r in records):
            result.records = [r for r in records if r is not None]
            finished[index] = result
            del open_[index]
        while next_out in finished:
            yield finished.pop(next_out)
            next_out += 1
    while next_out in finished:
        yield finished.pop(next_out)
        next_out += 1


def _answer(
    item: _Decoded,
    key: object,
    questions: Sequence[str],
    model: Answerer,
    sampling: Sampling,
    constraint: Constraint | None,
    on_text: Callable[[str], None] | None,
) -> ImageResult:
    label = item.source.label
    result = ImageResult(item.source, skipped=item.skipped)
    if item.skipped:
        return result
    if item.error is not None:
        ms = round(item.decode_ms)
        result.records = [
            Record(label, q, error=item.error.message, elapsed_ms=ms) for q in questions
        ]
        return result
    assert item.pixels is not None
    start = time.perf_counter() - item.decode_ms / 1000.0  # the first record pays for decoding
    try:
        model.set_image(item.pixels, key=key, label=label)
    except InputError as exc:
        ms = round((time.perf_counter() - start) * 1000)
        result.records = [Record(label, q, error=exc.message, elapsed_ms=ms) for q in questions]
        return result
    for question in questions:
        try:
            answer = model.ask(question, sampling, on_text)
            if constraint is not None:
                answer = constraint.check(answer, sampling.max_tokens)
            record = Record(label, question, answer=answer)
        except InputError as exc:
            record = Record(label, question, error=exc.message)
        now = time.perf_counter()
        record = _with_elapsed(record, round((now - start) * 1000))
        start = now
        result.records.append(record)
    return result


def _with_elapsed(record: Record, ms: int) -> Record:
    return Record(record.path, record.question, record.answer, record.error, ms)


def _decode(
    index: int,
    source: Source,
    read_stdin: Callable[[], bytes] | None,
    preparation: Prepare,
) -> _Decoded:
    start = time.perf_counter()
    try:
        if source.error is not None:
            raise InputError(source.error, path=source.label)
        if source.from_stdin:
            if read_stdin is None:
                raise InputError("reading an image from stdin is not possible here", path="-")
            data: bytes | str = read_stdin()
        else:
            data = source.label
        pixels = prepare(data, preparation, label=source.label)
        return _Decoded(index, source, pixels, None, (time.perf_counter() - start) * 1000)
    except InputError as exc:
        return _Decoded(index, source, None, exc, (time.perf_counter() - start) * 1000)
