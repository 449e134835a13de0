"""runner.answer_inputs in-process on the tiny model: order, failures, prefix reuse and grammars."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from moondream_cli import grammars, locate
from moondream_cli.engine import Engine, EngineOptions, Sampling
from moondream_cli.inputs import expand
from moondream_cli.runner import answer_inputs
from pipelines_helpers import CORRUPT, GOOD_TOP, SCHEMA, make_folder


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Engine]:
    # One thread: ggml's worker threads spin-wait, which crawls on a busy 2-core machine.
    with Engine(locate.from_dir(tiny_model), EngineOptions(threads=1)) as loaded:
        yield loaded


@pytest.fixture
def album(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


def answers(results: Any) -> list[tuple[str, str, str | None, str | None]]:
    return [(r.path, r.question, r.answer, r.error) for res in results for r in res.records]


def test_records_come_in_input_order_whatever_the_lookahead(engine: Engine, album: Path) -> None:
    sampling = Sampling(max_tokens=6)
    runs = [
        answers(
            answer_inputs(
                expand([str(album)], recursive=True), ["What?"], engine, sampling, lookahead=n
            )
        )
        for n in (1, 4)
    ]
    assert runs[0] == runs[1]
    paths = [p for p, *_ in runs[0]]
    assert paths == [str(album / n) for n in (*GOOD_TOP, CORRUPT, "sub/d.jpg")]
    failed = [row for row in runs[0] if row[3] is not None]
    assert [row[0] for row in failed] == [str(album / CORRUPT)]


def test_several_questions_share_one_image_and_match_asking_alone(
    engine: Engine, album: Path
) -> None:
    sampling = Sampling(max_tokens=6)
    both = answers(
        answer_inputs(expand([str(album / "a.jpg")]), ["Who?", "Where?"], engine, sampling)
    )
    alone = answers(answer_inputs(expand([str(album / "a.jpg")]), ["Where?"], engine, sampling))
    assert [q for _, q, *_ in both] == ["Who?", "Where?"]
    assert both[1] == alone[0]


def test_skipped_inputs_are_not_decoded_or_answered(engine: Engine, album: Path) -> None:
    results = list(
        answer_inputs(
            expand([str(album)]),
            ["What?"],
            engine,
            Sampling(max_tokens=4),
            skip=lambda s: s.label.endswith(".png"),
        )
    )
    skipped = [r.source.label for r in results if r.skipped]
    assert skipped == [str(album / "b.png")]
    assert all(not r.records for r in results if r.skipped)


def test_choices_constraint_keeps_every_answer_in_the_set(engine: Engine, album: Path) -> None:
    choices = ["yes", "no", "maybe"]
    inputs = [str(album / n) for n in GOOD_TOP] + [str(album / "sub" / "d.jpg")]
    free = answers(
        answer_inputs(iter(expand(inputs)), ["Price tag?"], engine, Sampling(max_tokens=6))
    )
    # Random weights: left alone, the model never says one of the choices...
    assert not any(a in choices for _, _, a, _ in free)
    constraint = grammars.choices_constraint(choices)
    rows = answers(
        answer_inputs(
            expand(inputs), ["Price tag?"], engine, Sampling(max_tokens=8), constraint=constraint
        )
    )
    # ...with the grammar it always does.
    assert len(rows) == 4 and all(a in choices and e is None for _, _, a, e in rows)


def test_json_schema_answers_validate_or_are_errors(
    engine: Engine, album: Path, tmp_path: Path
) -> None:
    schema = tmp_path / "pet.json"
    schema.write_text(json.dumps(SCHEMA))
    constraint = grammars.schema_constraint(schema)
    inputs = [str(album / n) for n in GOOD_TOP] + [str(album / "sub" / "d.jpg")]
    rows = answers(
        answer_inputs(
            expand(inputs), ["What?"], engine, Sampling(max_tokens=64), constraint=constraint
        )
    )
    assert len(rows) == 4
    for _, _, answer, error in rows:
        assert error is None
        jsonschema.validate(json.loads(str(answer)), SCHEMA)


def test_grammar_that_cannot_finish_in_max_tokens_is_an_error_record(
    engine: Engine, album: Path, tmp_path: Path
) -> None:
    schema = tmp_path / "free.json"
    schema.write_text(
        json.dumps(
            {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        )
    )
    constraint = grammars.schema_constraint(schema)
    rows = answers(
        answer_inputs(
            expand([str(album / "a.jpg"), str(album / "b.png")]),
            ["Name?"],
            engine,
            Sampling(max_tokens=4),
            constraint=constraint,
        )
    )
    assert len(rows) == 2
    assert all(a is None and "max-tokens" in str(e) for _, _, a, e in rows)


class KeyLog:
    """The real engine, with a log of the keys each image was set under."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.keys: list[object] = []

    def set_image(self, pixels: Any, *, key: object = None, label: str | None = None) -> None:
        self.keys.append(key)
        self.engine.set_image(pixels, key=key, label=label)

    def ask(self, question: str, sampling: Any = None, on_text: Any = None) -> str:
        return self.engine.ask(question, sampling, on_text)


def test_each_image_is_set_once_per_run_under_a_key_no_other_run_uses(
    engine: Engine, album: Path
) -> None:
    log = KeyLog(engine)
    sampling = Sampling(max_tokens=2)
    for image in ("a.jpg", "b.png"):
        # Two one-image runs on one engine: same position, different images.
        list(answer_inputs(expand([str(album / image)]), ["Q1?", "Q2?"], log, sampling))
    assert len(log.keys) == 2  # once per image, not once per question
    assert log.keys[0] != log.keys[1]


@pytest.fixture(scope="module")
def batched_engine(tiny_model: Path) -> Iterator[Engine]:
    with Engine(locate.from_dir(tiny_model), EngineOptions(threads=1, batch=3)) as loaded:
        yield loaded


def test_batched_folder_run_gives_the_same_records_in_input_order(
    engine: Engine, batched_engine: Engine, album: Path, tmp_path: Path
) -> None:
    """`--batch N`: several images in flight, answers finishing out of order, yet the same
    records in the same order as one image at a time (greedy answers are token-identical)."""
    from conftest import draw_photo

    more = tmp_path / "more"
    more.mkdir()
    for i in range(5):  # varied images, so answers end at different lengths
        draw_photo((40 + 9 * i, 30 + 7 * i), seed=i).save(more / f"m{i}.png")
    inputs = [str(album), str(more)]
    questions = ["What?", "Which colour?"]
    sampling = Sampling(max_tokens=8)
    one = answers(answer_inputs(expand(inputs, recursive=True), questions, engine, sampling))
    assert batched_engine.batch == 3
    many = answers(
        answer_inputs(expand(inputs, recursive=True), questions, batched_engine, sampling)
    )
    assert batched_engine.peak_live == 3  # three images really were decoded together
    assert many == one
    assert [row[3] is not None for row in many].count(True) == 2  # the corrupt file, twice


def test_batched_run_keeps_grammar_constraints(batched_engine: Engine, album: Path) -> None:
    choices = ["yes", "no"]
    constraint = grammars.choices_constraint(choices)
    rows = answers(
        answer_inputs(
            expand([str(album)], recursive=True),
            ["Is it red?"],
            batched_engine,
            Sampling(max_tokens=4),
            constraint=constraint,
        )
    )
    assert all(answer in choices for _, _, answer, error in rows if error is None)
    assert sum(error is None for *_, error in rows) >= 3


@pytest.mark.parametrize("skipped_between", [False, True])
def test_a_batched_run_answers_an_image_without_waiting_for_the_next_input(
    batched_engine: Engine, tmp_path: Path, skipped_between: bool
) -> None:
    """A slow pipe (`watcher | mdream describe --files-from -`): the next path comes only once
    the first image's record is out. With free slots the engine must not wait for that input
    before working on the image it has, even when an input that is skipped (its sidecar
    exists) comes in between."""
    import threading

    from conftest import draw_photo
    from moondream_cli.inputs import Source

    for name in ("first", "skipped", "last"):
        draw_photo((48, 40), seed=len(name)).save(tmp_path / f"{name}.png")
    first_out = threading.Event()
    released: list[bool] = []

    def slow_pipe() -> Iterator[Source]:
        yield Source(str(tmp_path / "first.png"))
        if skipped_between:
            yield Source(str(tmp_path / "skipped.png"))
        released.append(first_out.wait(timeout=15))  # False: nobody got the first record
        yield Source(str(tmp_path / "last.png"))

    results = answer_inputs(
        slow_pipe(),
        ["What?"],
        batched_engine,
        Sampling(max_tokens=4),
        skip=lambda source: source.label.endswith("skipped.png"),
    )
    first = next(results)
    first_out.set()
    rest = list(results)
    assert released == [True]
    names = ["first", "skipped", "last"] if skipped_between else ["first", "last"]
    assert [r.source.label for r in (first, *rest)] == [str(tmp_path / f"{n}.png") for n in names]
    assert [r.skipped for r in (first, *rest)] == [n == "skipped" for n in names]
    assert all(rec.ok for r in (first, *rest) for rec in r.records)
