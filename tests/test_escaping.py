"""Every string from a file, a manifest or the model is escaped before any output, in every
format: C0 controls, DEL and C1 controls (U+0080–U+009F, and the bytes 0x80–0x9F of a file
name that is not UTF-8, which 8-bit terminals read as CSI and friends)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from conftest import run_mdream
from moondream_cli.records import Record, renderer
from test_doctor import install_bundle

# A name whose bytes are not UTF-8: 0x9B is CSI on an 8-bit terminal.
CSI_NAME = "photos/a\udc9b[2Jb.jpg"
ANSWER = "red\x9b31m \x1b]52;c;aGk=\x07 \x7f end"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\udc80-\udc9f]")


def _record() -> Record:
    return Record(CSI_NAME, "What?\x85", ANSWER, None, 3)


def test_jsonl_escapes_c1_and_del_and_still_round_trips() -> None:
    line = renderer("jsonl").render(_record())
    assert not RAW_CONTROLS.search(line[:-1]), repr(line)
    assert "\\u009b" in line and "\\u007f" in line and "\\u0085" in line
    back = json.loads(line)
    assert back["answer"] == ANSWER and back["question"] == "What?\x85"
    assert back["path"] == CSI_NAME  # the name's own bytes, as before


@pytest.mark.parametrize("fmt", ["text", "tsv", "csv"])
def test_text_tsv_and_csv_never_write_a_raw_c1_byte(fmt: str) -> None:
    render = renderer(fmt, single=False)
    written = render.header() + render.render(_record())
    assert not RAW_CONTROLS.search(written), repr(written)
    assert "\\x9b" in written  # the name's 0x9B byte, shown


def test_csv_still_parses_back_to_one_row() -> None:
    rows = list(csv.reader(io.StringIO(renderer("csv").render(_record()))))
    assert len(rows) == 1 and rows[0][1].startswith("red\\x9b31m")


@pytest.mark.slow
def test_bundle_list_escapes_what_a_manifest_says(tiny_model: Path, isolated_home: Path) -> None:
    folder = install_bundle(isolated_home, tiny_model)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"] = "moondream2\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J"
    manifest["quantization"] = {"text": "Q4_K_M\n* evil\t9.9 MiB\tQ8\t?\thub"}
    manifest["source"] = {"repo": "owner/\x9b31mred"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    done = run_mdream("bundle", "list")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode("utf-8", "surrogateescape")
    assert len(out.splitlines()) == 2  # the header and one bundle: no forged row
    assert not RAW_CONTROLS.search(out.replace("\t", "").replace("\n", ""))
    assert "\\x1b]52;c;" in out and "\\n* evil" in out and "\\x9b31mred" in out
