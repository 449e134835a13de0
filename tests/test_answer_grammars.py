"""Nothing reaches llama.cpp that llama.cpp would crash on, and schemas are honest: a schema
or a choice list is measured and refused (exit 2) before the model loads; a keyword the
grammar cannot enforce is refused by name; --choices become a prefix tree, so thousands of
them cost what a few do; a GGML_ASSERT is one line and exit 3; --threads is bounded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import moondream_gguf
from conftest import run_mdream
from moondream_cli import grammars, schemas
from moondream_cli.engine import Engine, EngineOptions, Sampling
from moondream_cli.errors import UsageError
from moondream_cli.images import load_image
from moondream_cli.locate import find_pair
from moondream_cli.settings import ModelOptions


def _schema(tmp_path: Path, schema: object) -> Path:
    path = tmp_path / "s.schema.json"
    path.write_text(schema if isinstance(schema, str) else json.dumps(schema))
    return path


@pytest.mark.parametrize(
    "text",
    ['{"a":' * 1000 + "1" + "}" * 1000, "[" * 100_000 + "]" * 100_000],
)
def test_a_schema_nested_deeper_than_the_limit_is_a_usage_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(UsageError, match=f"nested deeper than {schemas.MAX_DEPTH}"):
        grammars.schema_constraint(_schema(tmp_path, text))


def test_a_number_of_5000_digits_is_a_usage_error(tmp_path: Path) -> None:
    text = '{"type": "integer", "maximum": ' + "9" * 5000 + "}"
    with pytest.raises(UsageError, match="not valid JSON"):
        grammars.schema_constraint(_schema(tmp_path, text))


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 20000}, "maxItems"),
        ({"type": "string", "minLength": 100_000_000}, "minLength"),
        ({"type": "string", "pattern": "^(a{200}){200}$"}, "pattern"),
        ({"type": "string", "pattern": "^a{100000}$"}, "pattern"),
    ],
)
def test_repetitions_are_bounded_before_the_grammar_is_built(
    tmp_path: Path, schema: object, keyword: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(UsageError, match=keyword):
        grammars.schema_constraint(_schema(tmp_path, schema))
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 0, "maximum": 5}, "minimum"),
        ({"type": "number", "multipleOf": 5}, "multipleOf"),
        ({"type": "integer", "exclusiveMaximum": 5}, "exclusiveMaximum"),
        ({"if": {"type": "string"}, "then": {"maxLength": 3}}, "if"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "email"}, "format 'email'"),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b'"),
        ({"properties": {"a": {"type": "integer", "minimum": 1}}}, "minimum"),  # nested too
        ({"prefixItems": [{"type": "integer"}], "items": {"type": "string"}}, "prefixItems"),
    ],
)
def test_a_keyword_the_grammar_cannot_enforce_is_refused_by_name(
    tmp_path: Path, schema: object, named: str
) -> None:
    with pytest.raises(UsageError, match="cannot enforce") as caught:
        grammars.schema_constraint(_schema(tmp_path, schema))
    assert named in caught.value.message


def test_what_the_grammar_enforces_is_accepted(tmp_path: Path) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Receipt",
        "description": "A shop receipt",
        "type": "object",
        "properties": {
            "shop": {"type": "string", "maxLength": 80},
            "date": {"type": "string", "format": "date"},
            "total": {"type": "number"},
            "currency": {"enum": ["EUR", "USD"]},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 20},
            "paid": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
        },
        "required": ["shop", "total"],
        "additionalProperties": False,
        "$defs": {"item": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "examples": [{"shop": "x", "total": 1, "minimum": "not a keyword here"}],
    }
    constraint = grammars.schema_constraint(_schema(tmp_path, schema))
    assert "root ::=" in constraint.gbnf


def test_a_grammar_llama_cpp_cannot_parse_is_refused_with_its_reason_and_no_dump(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(UsageError, match=r"llama\.cpp cannot parse the answer grammar") as caught:
        grammars.check_gbnf('root ::= ( "a" \n' + "x ::= y\n" * 2000)
    assert "expecting ')'" in caught.value.message or "parse" in caught.value.message
    assert capfd.readouterr().err == ""  # its 16 KB dump went nowhere


def test_a_grammar_nested_too_deep_for_llama_cpp_is_refused_without_calling_it() -> None:
    deep = "root ::= " + '("a" ' * 20000 + ")?" * 20000 + "\n"  # llama.cpp: SIGSEGV
    with pytest.raises(UsageError, match=f"nested {20000:,} deep"):
        grammars.check_gbnf(deep)


def test_choices_are_a_prefix_tree_so_thousands_stay_small(tmp_path: Path) -> None:
    choices = [f"c{i}" for i in range(15000)]
    constraint = grammars.choices_constraint(choices)
    assert len(constraint.gbnf) < 100_000  # a flat list of alternatives would be 150 KB
    assert constraint.gbnf.count('"c"') == 1  # the shared first letter, once
    assert constraint.check("c14999", 8) == "c14999"
    assert grammars.choices_constraint(["yes", "no", "yesterday"]).gbnf == (
        'root ::= " "? ("no" | "yes" ("terday")?)\n'
    )


def test_choices_that_nest_deeper_than_llama_cpp_takes_are_refused() -> None:
    with pytest.raises(UsageError, match="nested"):
        grammars.choices_constraint(["a" * n for n in range(1, 2000)])


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Engine]:
    with Engine(find_pair(tiny_model), EngineOptions(threads=2, gpu=False, batch=1)) as loaded:
        yield loaded


def test_fifteen_thousand_choices_answer_as_fast_as_a_few(engine: Engine, tmp_path: Path) -> None:
    from conftest import draw_photo

    draw_photo().save(tmp_path / "a.png")
    engine.set_image(load_image(tmp_path / "a.png", size=engine.image_size))
    timings = {}
    for n in (10, 15000):
        choices = [f"c{i}" for i in range(n)]
        gbnf = grammars.choices_constraint(choices).gbnf
        started = time.perf_counter()
        answer = engine.ask("Which?", Sampling(max_tokens=8, grammar=gbnf))
        timings[n] = (time.perf_counter() - started) / max(1, engine.last_tokens)
        assert answer.strip() in choices
    # A flat list of 15,000 alternatives took 7 s a token here; the tree, what 10 take.
    assert timings[15000] < 3 * timings[10] + 0.1, timings


def test_a_grammar_is_parsed_once_per_run_not_once_per_answer(
    tiny_model: Path, tmp_path: Path
) -> None:
    from conftest import draw_photo
    from moondream_cli.inputs import expand
    from moondream_cli.runner import answer_inputs

    paths = []
    for i in range(3):
        draw_photo(seed=i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    constraint = grammars.choices_constraint(["cat", "dog", "bird"])  # checked before the model
    with Engine(find_pair(tiny_model), EngineOptions(threads=2, gpu=False, batch=2)) as engine:
        results = list(
            answer_inputs(
                expand(paths), ["Which?", "Which one?"], engine, Sampling(max_tokens=4),
                constraint=constraint,
            )
        )  # fmt: skip
        model = engine._rt.model
        assert sum(len(r.records) for r in results) == 6
        assert model.grammars_parsed == 1  # once for its vocabulary, for all six answers


def test_threads_beyond_ggmls_own_limit_are_a_usage_error() -> None:
    assert ModelOptions(threads=512).threads == 512
    with pytest.raises(UsageError, match="threads must be at most 512, not 65536"):
        ModelOptions(threads=65536)


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["65536", "32768"])
def test_threads_65536_is_one_line_and_exit_2(tiny_model: Path, photo: Path, threads: str) -> None:
    done = run_mdream("describe", photo, "-m", tiny_model, "-t", threads)
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().count("\n") == 1 and b"at most 512" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("max_items", [20000, 5000])
def test_a_schema_llama_cpp_would_crash_on_is_exit_2_before_the_model_loads(
    tmp_path: Path, photo: Path, max_items: int
) -> None:
    items = {"type": "array", "items": {"type": "integer"}, "maxItems": max_items}
    schema = _schema(tmp_path, items)
    # No model at all: a schema refused after loading would be exit 3 here, not 2.
    done = run_mdream("ask", photo, "q?", "--json-schema", schema, "-m", tmp_path / "none")
    assert done.returncode == 2, done.stderr
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "maxItems" in err


@pytest.mark.slow
def test_an_unenforceable_schema_is_exit_2_naming_the_keyword(
    tiny_model: Path, tmp_path: Path, photo: Path
) -> None:
    schema = _schema(tmp_path, {"type": "integer", "minimum": 0, "maximum": 5})
    done = run_mdream("ask", photo, "q?", "--json-schema", schema, "-m", tiny_model)
    assert done.returncode == 2 and done.stdout == b""
    assert "'maximum', 'minimum'" in done.stderr.decode() or "minimum" in done.stderr.decode()


@pytest.mark.slow
def test_a_ggml_assert_is_one_line_and_exit_3_not_an_abort(
    tiny_model: Path, tmp_path: Path, photo: Path
) -> None:
    folder = tmp_path / "rope"
    folder.mkdir()
    shape = dataclasses.replace(moondream_gguf.TINY, n_rot=0xFFFFFFFF)
    moondream_gguf.write_text_model(folder / moondream_gguf.TEXT_NAME, shape)
    shutil.copy(tiny_model / moondream_gguf.MMPROJ_NAME, folder / moondream_gguf.MMPROJ_NAME)
    done = run_mdream("describe", photo, "-m", folder, "-n", "2")
    err = done.stderr.decode()
    assert done.returncode == 3, err
    assert err.count("\n") == 1, err
    assert err.startswith("mdream: error: llama.cpp stopped on a failed check: ops.cpp:")
    assert "GGML_ASSERT(n_dims % 2 == 0) failed" in err
    assert done.stdout == b""
