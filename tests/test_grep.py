"""`mdream grep` on real llama.cpp (the tiny random-weight pair: these tests hold the
command's behaviour; tests/test_trained_grep.py holds what its scores mean)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, draw_photo, run_mdream
from moondream_cli.engine import Engine, EngineOptions
from moondream_cli.engine.slot import yes_probability
from moondream_cli.inputs import expand
from moondream_cli.loader import yes_no_tokens
from moondream_cli.locate import ModelFiles, find_pair
from moondream_cli.prompts import grep_question
from moondream_cli.runner import answer_inputs


def test_the_score_is_yes_against_no_over_every_yes_and_no_token() -> None:
    logits = array("f", [0.0] * 10)
    logits[1], logits[2], logits[3] = 2.0, 1.0, 0.5  # yes, Yes, no
    got = yes_probability(memoryview(logits), (1, 2), (3,))
    want = (math.exp(2) + math.exp(1)) / (math.exp(2) + math.exp(1) + math.exp(0.5))
    assert got == pytest.approx(want, rel=1e-6)
    assert yes_probability(memoryview(logits), (3,), (1, 2)) == pytest.approx(1 - want, rel=1e-6)


def test_a_phrase_becomes_a_yes_no_question_and_a_question_stays_as_written() -> None:
    assert grep_question("a red circle") == "Is there a red circle?"
    assert grep_question(" a receipt. ") == "Is there a receipt?"
    assert grep_question("Is the text handwritten?") == "Is the text handwritten?"


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("album")
    for i in range(4):
        draw_photo((60 + 9 * i, 40 + 5 * i), seed=i).save(folder / f"{i}.jpg")
    return folder


def test_queries_share_one_encode_and_no_token_is_sampled(tiny_model: Path, album: Path) -> None:
    with Engine(tiny_model_files(tiny_model), EngineOptions(threads=2, batch=2)) as engine:
        from moondream_cli.engine import Sampling

        sampling = Sampling(max_tokens=1, yes_no=yes_no_tokens(engine))
        questions = [grep_question(q) for q in ("a cat", "a dog", "a car")]
        engine.timings.reset()
        results = list(answer_inputs(expand([str(album)]), questions, engine, sampling))
        assert engine.timings.images == 4  # one encode per image, whatever the queries
        assert engine.timings.decode_steps == 0  # a forward pass per query, nothing sampled
    scores = [float(r.answer or "nan") for result in results for r in result.records]
    assert len(scores) == 12 and all(0.0 < s < 1.0 for s in scores)


def tiny_model_files(tiny_model: Path) -> ModelFiles:
    return find_pair(tiny_model)


def _grep(*args: str | os.PathLike[str], model: Path) -> subprocess.CompletedProcess[bytes]:
    return run_mdream("grep", *args, "-m", model, "--threads", "2")


def _jsonl(done: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


@pytest.mark.slow
def test_grep_prints_paths_counts_inverts_and_exits_as_grep_does(
    tiny_model: Path, album: Path
) -> None:
    every = _grep("a cat", album, "--min-p", "0", model=tiny_model)
    assert every.returncode == 0, every.stderr
    assert every.stdout.decode().splitlines() == [str(album / f"{i}.jpg") for i in range(4)]
    none = _grep("a cat", album, "--min-p", "1", model=tiny_model)
    assert (none.returncode, none.stdout, none.stderr) == (1, b"", b"")
    inverted = _grep("a cat", album, "--min-p", "1", "-v", model=tiny_model)
    assert inverted.returncode == 0 and inverted.stdout == every.stdout
    counted = _grep("a cat", album, "--min-p", "0", "-c", model=tiny_model)
    assert counted.stdout == b"4\n"
    nul = _grep("a cat", album, "--min-p", "0", "-Z", model=tiny_model)
    assert nul.stdout.split(b"\0") == [*every.stdout.split(b"\n")[:-1], b""]


@pytest.mark.slow
def test_scores_rank_and_every_query_is_one_field_of_the_record(
    tiny_model: Path, album: Path
) -> None:
    records = _jsonl(
        _grep("-e", "a cat", "-e", "a dog", "-e", "a car", album, "-f", "jsonl", model=tiny_model)
    )
    assert [r["path"] for r in records] == [str(album / f"{i}.jpg") for i in range(4)]
    for record in records:
        scores = record["scores"]
        assert isinstance(scores, dict) and list(scores) == ["a cat", "a dog", "a car"]
        assert record["match"] == (max(scores.values()) >= 0.5)
    best = {str(r["path"]): max(r["scores"].values()) for r in records}
    ranked = _grep("-e", "a cat", "-e", "a dog", "-e", "a car", album, "--scores", "--sort",
                   "--min-p", "0", model=tiny_model)  # fmt: skip
    lines = [line.split("\t") for line in ranked.stdout.decode().splitlines()]
    assert [path for _, path in lines] == sorted(best, key=lambda p: -best[p])
    assert all(float(score) == pytest.approx(best[path], abs=1e-4) for score, path in lines)
    top = _grep("-e", "a cat", "-e", "a dog", "-e", "a car", album, "--top", "2", "--min-p", "0",
                model=tiny_model)  # fmt: skip
    assert top.stdout.decode().splitlines() == [path for _, path in lines[:2]]


@pytest.mark.slow
def test_the_api_scores_as_the_folder_run_does(md: object, tiny_model: Path, album: Path) -> None:
    records = _jsonl(_grep("a cat", album, "-f", "jsonl", model=tiny_model))
    for record in records:
        want = record["scores"]["a cat"]
        assert md.score(record["path"], "a cat") == pytest.approx(want, abs=1e-5)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_bad_image_is_an_error_line_and_exit_2_and_the_rest_still_print(
    tiny_model: Path, album: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("0.jpg", "1.jpg"):
        (folder / name).write_bytes((album / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    done = _grep("a cat", folder, "--min-p", "0", model=tiny_model)
    assert done.returncode == 2
    assert done.stdout.decode().splitlines() == [str(folder / "0.jpg"), str(folder / "1.jpg")]
    assert (
        done.stderr.decode().count("mdream: error: ") == 1 and "broken.jpg" in done.stderr.decode()
    )
    assert _grep("", folder, model=tiny_model).returncode == 2
    assert run_mdream("grep", "a cat", folder, "-m", folder / "nope").returncode == 2


@pytest.mark.slow
def test_find_print0_into_grep_z_into_xargs_0(
    tiny_model: Path, album: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "odd names"
    odd.mkdir()
    (odd / "new\nline.jpg").write_bytes((album / "0.jpg").read_bytes())
    (odd / "two words.jpg").write_bytes((album / "1.jpg").read_bytes())
    pipeline = (
        f"find {shlex_quote(odd)} -name '*.jpg' -print0 | "
        f"{sys.executable} -m moondream_cli grep -Z 'a cat' --min-p 0 --files-from - -0 "
        f"-m {shlex_quote(tiny_model)} | xargs -0 ls -1d"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    listed = done.stdout.decode()
    assert "two words.jpg" in listed and "new" in listed


def shlex_quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))
