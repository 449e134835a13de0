"""`--resume FILE`: a JSONL run continued from its own output, after it was killed midway."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from moondream_cli.errors import UsageError
from moondream_cli.inputs import Source
from moondream_cli.resume import read_resumed
from pipelines_helpers import CORRUPT, make_folder


def _record(path: str, question: str = "q", answer: str | None = "a") -> str:
    error = None if answer is not None else "corrupt"
    fields = {"path": path, "answer": answer, "question": question, "error": error}
    return json.dumps({**fields, "elapsed_ms": 5}) + "\n"


def test_an_image_is_skipped_only_when_every_question_was_answered(tmp_path: Path) -> None:
    done = tmp_path / "out.jsonl"
    done.write_text(
        _record("a.jpg", "q1")
        + _record("a.jpg", "q2")
        + _record("b.jpg", "q1")
        # c.jpg failed: it is tried again
        + _record("c.jpg", "q1", None)
        + _record("c.jpg", "q2")
    )
    resumed = read_resumed(str(done), ["q1", "q2"])
    skipped = [p for p in ("a.jpg", "b.jpg", "c.jpg", "d.jpg") if resumed.skip(Source(p))]
    assert skipped == ["a.jpg"]
    assert resumed.skipped == 1
    assert not resumed.skip(Source("-", from_stdin=True))


def test_read_on_its_own_the_file_is_never_changed(tmp_path: Path) -> None:
    done = tmp_path / "out.jsonl"
    text = _record("a.jpg") + _record("b.jpg")[:20]  # a killed run's partial last line
    done.write_text(text)
    resumed = read_resumed(str(done), ["q"])
    assert resumed.skip(Source("a.jpg")) and not resumed.skip(Source("b.jpg"))
    assert (done.read_text(), resumed.cut) == (text, 0)


def test_a_file_that_is_not_an_earlier_output_is_refused_naming_the_line(tmp_path: Path) -> None:
    other = tmp_path / "captions.txt"
    other.write_text(_record("a.jpg") + "a.jpg\ta cat\n")
    with pytest.raises(UsageError, match="line 2 is not an mdream JSONL record") as err:
        read_resumed(str(other), ["q"])
    assert err.value.path == str(other)


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="takes a file"):
        read_resumed(str(fifo), ["q"])


def test_a_line_too_long_for_a_record_is_refused_and_nothing_is_cut(tmp_path: Path) -> None:
    done = tmp_path / "out.jsonl"
    text = _record("a.jpg") + "x" * (1 << 24) + "\n" + _record("b.jpg")
    done.write_text(text)
    with done.open("ab") as appending, pytest.raises(UsageError, match="line 2 is too long"):
        read_resumed(str(done), ["q"], appending.fileno())
    assert done.read_text() == text


# -- end to end: a run killed midway, then resumed -----------------------------------------


def _mdream(command: str, cwd: Path, model: Path) -> subprocess.CompletedProcess[bytes]:
    """``mdream COMMAND`` through a shell (its redirections are the point), in ``cwd``."""
    mdream = f"{shlex.quote(sys.executable)} -m moondream_cli"
    options = f"-m {shlex.quote(str(model))} -n 4 -t 1"
    line = command.replace("mdream describe", f"{mdream} describe {options}", 1)
    return subprocess.run(
        ["bash", "-c", line],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        timeout=120,
        check=False,
    )


def _lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _answers(rows: list[dict[str, object]]) -> dict[object, object]:
    return {row["path"]: row["answer"] for row in rows if row["error"] is None}


@pytest.mark.slow
def test_a_killed_run_resumed_ends_with_every_image_answered_once(
    tiny_model: Path, tmp_path: Path
) -> None:
    make_folder(tmp_path)
    whole = _mdream("mdream describe album -r --format jsonl > whole.jsonl", tmp_path, tiny_model)
    assert whole.returncode == 1, whole.stderr  # the corrupt file
    expected = _answers(_lines(tmp_path / "whole.jsonl"))
    assert len(expected) == 4

    # What a run killed while writing its third record leaves behind.
    out = tmp_path / "out.jsonl"
    kept = (tmp_path / "whole.jsonl").read_text().splitlines(keepends=True)
    out.write_text("".join(kept[:2]) + kept[2][: len(kept[2]) // 2])
    again = _mdream(
        "mdream describe album -r --format jsonl --resume out.jsonl >> out.jsonl",
        tmp_path,
        tiny_model,
    )
    assert again.returncode == 1, again.stderr  # the corrupt file is tried again, and fails
    rows = _lines(out)  # every line a whole record: the partial one was cut off first
    assert _answers(rows) == expected
    good = [str(row["path"]) for row in rows if row["error"] is None]
    assert sorted(good) == sorted(set(good))  # no image answered twice
    assert [row["path"] for row in rows if row["error"]] == [f"album/{CORRUPT}"]
    err = again.stderr.decode()
    assert "skipped 2 images answered already (--resume)" in err
    assert "cut an unfinished record" in err and "off the end of out.jsonl" in err

    # Nothing left to answer but the corrupt file.
    last = _mdream(
        "mdream describe album -r --format jsonl --resume out.jsonl >> out.jsonl",
        tmp_path,
        tiny_model,
    )
    assert last.returncode == 1
    assert [row["path"] for row in _lines(out)[len(rows) :]] == [f"album/{CORRUPT}"]
    assert "skipped 4 images answered already" in last.stderr.decode()


@pytest.mark.slow
def test_resuming_into_a_file_that_stdout_replaces_is_refused(
    tiny_model: Path, tmp_path: Path
) -> None:
    make_folder(tmp_path)
    (tmp_path / "out.jsonl").write_text(_record("album/a.jpg"))
    done = _mdream(
        "mdream describe album --format jsonl --resume out.jsonl 1<> out.jsonl",
        tmp_path,
        tiny_model,
    )
    assert done.returncode == 2
    assert b"out.jsonl: stdout writes over the file being resumed" in done.stderr
    assert b"'>>'" in done.stderr
    assert (tmp_path / "out.jsonl").read_text() == _record("album/a.jpg")


@pytest.mark.slow
def test_resume_needs_jsonl_output(tiny_model: Path, tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "out.jsonl").write_text("")
    done = _mdream("mdream describe album --resume out.jsonl", tmp_path, tiny_model)
    assert done.returncode == 2 and b"add --format jsonl" in done.stderr


@pytest.mark.slow
def test_a_resume_that_matches_nothing_says_so(tiny_model: Path, tmp_path: Path) -> None:
    # photos/ then ./photos: the same images, other paths; every image is answered again,
    # and the user is told why instead of finding duplicates later.
    make_folder(tmp_path)
    first = _mdream("mdream describe album -r --format jsonl > out.jsonl", tmp_path, tiny_model)
    assert first.returncode == 1  # the corrupt file
    again = _mdream(
        "mdream describe ./album -r --format jsonl --resume out.jsonl >> out.jsonl",
        tmp_path,
        tiny_model,
    )
    err = again.stderr.decode()
    assert "--resume matched none of the 4 answered records in out.jsonl" in err
    assert "same arguments from the same folder" in err
    assert "skipped" not in err


# -- what FILE holds: whole records, a partial one, or something else ----------------------


def test_a_whole_last_record_without_its_newline_is_kept_and_ended(tmp_path: Path) -> None:
    done = tmp_path / "out.jsonl"
    text = _record("a.jpg") + _record("b.jpg").rstrip("\n")  # a valid record, not ended
    done.write_text(text)
    assert read_resumed(str(done), ["q"]).skip(Source("b.jpg"))
    assert done.read_text() == text  # read on its own: unchanged
    with done.open("ab") as appending:
        resumed = read_resumed(str(done), ["q"], appending.fileno())
    assert resumed.skip(Source("b.jpg")) and resumed.cut == 0
    assert done.read_text() == text + "\n"  # the next record starts on a line of its own


def test_a_last_line_that_is_not_a_record_is_refused_not_cut(tmp_path: Path) -> None:
    done = tmp_path / "out.jsonl"
    text = _record("a.jpg") + "my notes about this run"  # a user's line, not ended
    done.write_text(text)
    with done.open("ab") as appending, pytest.raises(UsageError, match="line 2 is not an mdream"):
        read_resumed(str(done), ["q"], appending.fileno())
    assert done.read_text() == text


def test_a_partial_record_is_still_cut_when_appending(tmp_path: Path) -> None:
    done = tmp_path / "out.jsonl"
    done.write_text(_record("a.jpg") + _record("b.jpg")[:30])
    with done.open("ab") as appending:
        resumed = read_resumed(str(done), ["q"], appending.fileno())
    assert resumed.cut == 30 and done.read_text() == _record("a.jpg")


@pytest.mark.parametrize(
    "line",
    [
        "[" * 5000 + "]" * 5000,  # a RecursionError once
        json.dumps({"path": "a.jpg", "answer": {"nested": 1}, "question": "q", "error": None}),
        json.dumps({"path": 7, "answer": "a", "question": "q", "error": None, "elapsed_ms": 1}),
        json.dumps({"path": "a", "answer": "a", "question": "q", "error": None, "more": 1}),
    ],
)
def test_a_line_that_is_not_exactly_an_mdream_record_is_refused(tmp_path: Path, line: str) -> None:
    done = tmp_path / "out.jsonl"
    done.write_text(_record("a.jpg") + line + "\n")
    with pytest.raises(UsageError, match="line 2 is not an mdream JSONL record"):
        read_resumed(str(done), ["q"])


@pytest.mark.slow
def test_an_answered_image_costs_under_200_bytes_of_memory(tmp_path: Path) -> None:
    import gc
    import tracemalloc

    done = tmp_path / "out.jsonl"
    n = 50_000
    with done.open("w") as f:
        for i in range(n):
            f.write(_record(f"photos/2024/IMG_{i:06d}.jpg", "Describe this image."))
    gc.collect()
    tracemalloc.start()
    try:
        resumed = read_resumed(str(done), ["Describe this image."])
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(resumed.answered) == n
    assert held / n < 200, held / n  # was 400: a set of questions, and each its own copy
