"""TextStream: the reference's stop (EOS), turn markers as a backstop, and streaming that holds
back only what may still become a marker. Pure Python: tokens are given as their pieces."""

from __future__ import annotations

from moondream_cli.engine.options import Sampling
from moondream_cli.engine.stream import TextStream

EOS = 0


def _run(pieces: list[str], sampling: Sampling | None = None) -> tuple[str, list[str], int]:
    """Push ``pieces`` (then EOS) until the stream ends: the answer, what was streamed, and
    how many tokens were taken."""
    vocab = ["<eos>", *pieces]
    shown: list[str] = []
    stream = TextStream(
        sampling or Sampling(),
        lambda token: vocab[token].encode(),
        lambda token: token == EOS,
        shown.append,
    )
    taken = 0
    for token in [*range(1, len(vocab)), EOS]:
        taken += 1
        if stream.push(token):
            break
    return stream.finish(), shown, taken


def test_an_answer_with_inner_blank_lines_survives_whole() -> None:
    answer, shown, _ = _run(["First paragraph.", "\n\n", "Second", " one."])
    assert answer == "First paragraph.\n\nSecond one."
    assert "".join(shown) == answer


def test_the_answer_ends_at_eos_as_the_reference_does() -> None:
    answer, _, taken = _run(["A cat", "."])
    assert answer == "A cat." and taken == 3


def test_a_new_question_turn_ends_the_answer_before_the_marker() -> None:
    answer, shown, taken = _run(["A dog", ".", "\n\n", "Question", ":", " what"])
    assert answer == "A dog." and taken == 5
    assert "Question" not in "".join(shown)


def test_an_answer_marker_ends_it_too() -> None:
    answer, _, _ = _run(["Red", "\n\nAnswer:", " blue"])
    assert answer == "Red"


def test_streaming_holds_back_only_a_possible_marker_start() -> None:
    vocab = ["<eos>", "One", "\n\nQ", "uiet", " room"]
    shown: list[str] = []
    stream = TextStream(Sampling(), lambda t: vocab[t].encode(), lambda t: t == EOS, shown.append)
    stream.push(1)
    stream.push(2)
    assert "".join(shown) == "One"  # "\n\nQ" may be the start of "\n\nQuestion:"
    stream.push(3)
    assert "".join(shown) == "One\n\nQuiet"  # it was not
    stream.push(4)
    assert stream.finish() == "One\n\nQuiet room" == "".join(shown)


def test_a_grammar_answer_keeps_its_own_end() -> None:
    answer, _, _ = _run(['{"a": 1', "\n\nQuestion:", "}"], Sampling(grammar="root ::= .*"))
    assert answer == '{"a": 1\n\nQuestion:}'


def test_fixed_length_ignores_eos_and_markers() -> None:
    vocab = ["<eos>", "x", "\n\nQuestion:"]
    stream = TextStream(
        Sampling(fixed_length=True), lambda t: vocab[t].encode(), lambda t: t == EOS
    )
    assert not any(stream.push(t) for t in (1, EOS, 2, 1))
    assert stream.finish() == "x<eos>\n\nQuestion:x"
