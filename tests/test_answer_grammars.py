"""Schemas are honest: a keyword the grammar cannot enforce is refused by name (exit 2), and
a schema's depth and repetitions are measured before a grammar is made from it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import run_mdream
from moondream_cli import grammars, schemas
from moondream_cli.errors import UsageError


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


@pytest.mark.slow
def test_an_unenforceable_schema_is_exit_2_naming_the_keyword(
    tiny_model: Path, tmp_path: Path, photo: Path
) -> None:
    schema = _schema(tmp_path, {"type": "integer", "minimum": 0, "maximum": 5})
    done = run_mdream("ask", photo, "q?", "--json-schema", schema, "-m", tiny_model)
    assert done.returncode == 2 and done.stdout == b""
    assert "'maximum', 'minimum'" in done.stderr.decode() or "minimum" in done.stderr.decode()
