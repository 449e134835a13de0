"""Records, their renderers, sidecar writing, and the grammar constraints (no model needed)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest

from moondream_cli import grammars
from moondream_cli.errors import InputError, UsageError
from moondream_cli.records import (
    FIELDS,
    Record,
    normalize_ext,
    renderer,
    sidecar_path,
)
from moondream_cli.sidecars import write_atomic

TRICKY = 'a, "quoted"\tcell\nnext line \\ back\r\nend – ünïcode'
RECORDS = [
    Record("dir/a b.jpg", "What?", answer=TRICKY, elapsed_ms=12),
    Record("dir/bad.jpg", "What?", error="corrupt or truncated image", elapsed_ms=1),
]


def render_all(fmt: str, **kw: bool) -> str:
    r = renderer(fmt, **kw)
    return r.header() + "".join(r.render(rec) for rec in RECORDS)


def test_jsonl_is_one_json_object_per_line_with_every_field() -> None:
    lines = render_all("jsonl").splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert list(rows[0]) == list(FIELDS)
    assert rows[0]["answer"] == TRICKY and rows[0]["error"] is None
    assert rows[1]["answer"] is None and rows[1]["error"] == "corrupt or truncated image"


def test_csv_parses_back() -> None:
    rows = list(csv.DictReader(io.StringIO(render_all("csv"), newline="")))
    assert [r["path"] for r in rows] == ["dir/a b.jpg", "dir/bad.jpg"]
    assert rows[0]["answer"] == TRICKY
    assert rows[1]["answer"] == "" and rows[1]["error"] == "corrupt or truncated image"
    assert rows[0]["elapsed_ms"] == "12"


def unescape_tsv(cell: str) -> str:
    table = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
    return re.sub(r"\\[\\tnr]", lambda m: table[m.group(0)], cell)


def test_tsv_has_one_line_per_record_and_parses_back() -> None:
    lines = render_all("tsv").split("\n")
    assert lines[-1] == "" and len(lines) == 4
    header, first, second = (line.split("\t") for line in lines[:3])
    assert header == list(FIELDS)
    assert [unescape_tsv(c) for c in first] == ["dir/a b.jpg", TRICKY, "What?", "", "12"]
    assert second[1] == "" and second[3] == "corrupt or truncated image"


def test_text_single_is_the_answer_alone_and_many_is_path_tab_answer() -> None:
    assert renderer("text", single=True).render(RECORDS[0]) == TRICKY + "\n"
    many = render_all("text")
    assert many.count("\n") == 1  # failed records are on stderr, not stdout
    path, answer = many.rstrip("\n").split("\t")
    assert path == "dir/a b.jpg" and unescape_tsv(answer) == TRICKY
    with_q = renderer("text", with_question=True).render(RECORDS[0])
    assert with_q.split("\t")[:2] == ["dir/a b.jpg", "What?"]


def test_unknown_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        renderer("xml")


def test_sidecar_path_and_ext() -> None:
    assert sidecar_path("photos/cat.jpeg", ".txt") == Path("photos/cat.txt")
    assert normalize_ext("caption") == ".caption"
    for bad in (".", "a/b", ""):
        with pytest.raises(UsageError):
            normalize_ext(bad)


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "cat.txt"
    target.write_text("old\n")
    write_atomic(target, "new caption\n")
    assert target.read_text() == "new caption\n"
    assert os.listdir(tmp_path) == ["cat.txt"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_write_atomic_interrupted_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cat.txt"
    target.write_text("old\n")

    def interrupted(src: str, dst: str, **dir_fds: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["cat.txt"]


def test_write_atomic_failure_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot write sidecar"):
        write_atomic(tmp_path / "no-such-dir" / "cat.txt", "x")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- grammars --------------------------------------------------------------------------------


def test_parse_choices_trims_and_dedupes() -> None:
    assert grammars.parse_choices(" yes, no ,yes,, maybe ") == ["yes", "no", "maybe"]
    with pytest.raises(UsageError):
        grammars.parse_choices(" , ")


def test_choices_grammar_escapes_literals_and_checks_membership() -> None:
    c = grammars.choices_constraint(['say "hi"', "back\\slash", "plain"])
    assert c.gbnf.startswith("root ::= ")
    assert '"say \\"hi\\""' in c.gbnf and '"back\\\\slash"' in c.gbnf
    assert c.check("plain", 8) == "plain"
    with pytest.raises(InputError, match="max-tokens"):
        c.check("pla", 8)


def test_schema_constraint_builds_a_grammar_and_rejects_unfinished_json(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    c = grammars.schema_constraint(schema)
    assert "root ::=" in c.gbnf
    assert c.check('{"n": 3}', 8) == '{"n": 3}'
    with pytest.raises(InputError):
        c.check('{"n": 3', 8)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '{"type": "nonsense"}', '{"$ref": "#/definitions/missing"}'],
)
def test_bad_schema_is_a_usage_error(tmp_path: Path, content: str) -> None:
    schema = tmp_path / "bad.json"
    schema.write_text(content)
    with pytest.raises(UsageError) as info:
        grammars.schema_constraint(schema)
    assert info.value.exit_code == 2


def test_missing_schema_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        grammars.schema_constraint(tmp_path / "missing.json")
