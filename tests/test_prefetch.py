"""decoding.Decoder: parallel, in input order, bounded, stoppable."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from moondream_cli.prefetch import Decoder


def test_results_come_in_input_order_though_later_ones_finish_first() -> None:
    def decode(index: int, source: int) -> int:
        time.sleep(0.02 * (5 - index % 5))  # the first of every five takes longest
        return source * 10

    with Decoder(range(12), decode, workers=4, lookahead=3) as decoder:
        assert list(decoder) == [i * 10 for i in range(12)]


def test_two_workers_decode_at_the_same_time() -> None:
    both = threading.Barrier(2, timeout=5)  # broken (an error) unless two decodes meet

    def decode(index: int, source: str) -> str:
        both.wait()
        return source

    with Decoder(["a", "b", "c", "d"], decode, workers=2, lookahead=2) as decoder:
        assert list(decoder) == ["a", "b", "c", "d"]


def test_memory_stays_bounded_while_the_consumer_is_slow() -> None:
    started: list[int] = []
    lookahead, workers = 3, 2

    def decode(index: int, source: int) -> int:
        started.append(index)
        return index

    with Decoder(itertools.count(), decode, workers=workers, lookahead=lookahead) as decoder:
        for taken, index in enumerate(decoder, start=1):
            time.sleep(0.01)
            # Waiting in the queue, being decoded, and the one the walker holds: no more.
            assert len(started) - taken <= lookahead + workers + 1
            if index == 30:
                break


def test_an_immediate_result_skips_decoding() -> None:
    decoded: list[int] = []

    def decode(index: int, source: int) -> str:
        decoded.append(source)
        return f"decoded {source}"

    def now(index: int, source: int) -> str | None:
        return "skipped" if source % 2 else None

    with Decoder(range(4), decode, now=now) as decoder:
        assert list(decoder) == ["decoded 0", "skipped", "decoded 2", "skipped"]
    assert decoded == [0, 2]


def test_an_error_from_the_inputs_ends_the_iteration_where_it_happens() -> None:
    def sources() -> Iterator[int]:
        yield 1
        raise PermissionError("locked folder")

    with Decoder(sources(), lambda i, s: s) as decoder:
        got = []
        with pytest.raises(PermissionError, match="locked folder"):
            for item in decoder:
                got.append(item)
    assert got == [1]


def test_ready_says_whether_the_next_result_is_there() -> None:
    release = threading.Event()

    def decode(index: int, source: int) -> int:
        release.wait(5)
        return source

    with Decoder([7], decode) as decoder:
        time.sleep(0.05)
        assert not decoder.ready()
        release.set()
        for _ in range(100):
            if decoder.ready():
                break
            time.sleep(0.01)
        assert decoder.ready()
        assert list(decoder) == [7]


def test_close_stops_an_endless_input() -> None:
    decoder = Decoder(itertools.count(), lambda i, s: s, lookahead=2)
    assert next(iter(decoder)) == 0
    decoder.close()
    assert not decoder.walking
