"""Every record answers its own image: batches, orders, several questions, the Python API.

A batching slip that lets one image's KV cache answer another's question (llama.cpp PR
#7163 fixed exactly this class) passes every equality test when both runs share it. Here
the trained tiny Moondream looks at seven different images of its world, so a record that
answers someone else's image is simply wrong.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import shapes_world as world
from conftest import run_mdream
from moondream_cli import Moondream
from moondream_cli.engine import Engine, EngineOptions, Request, Sampling

# Seven images, no two of one colour, each differing from the next in shape and position too.
SCENES = [
    world.make("circle", "red", "left", "white", 120, 90),
    world.make("square", "blue", "right", "grey", 80, 140),
    world.make("triangle", "yellow", "top", "black", 200, 100),
    world.make("star", "green", "bottom", "beige", 64, 64),
    world.make("arrow", "purple", "centre", "white", 150, 150, direction="left"),
    world.make("circle", "pink", "right", "black", 90, 180),
    world.make("square", "orange", "left", "white", 160, 96),
]
QUESTIONS = [world.COLOUR_QUESTION, world.SHAPE_QUESTION, world.WHERE_QUESTION]


def truth(scene: world.Scene) -> dict[str, str]:
    return {
        world.COLOUR_QUESTION: scene.colour,
        world.SHAPE_QUESTION: scene.shape,
        world.WHERE_QUESTION: scene.position,
    }


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, world.Scene]:
    folder = tmp_path_factory.mktemp("album")
    out = {}
    for i, s in enumerate(SCENES):
        path = folder / f"{i}-{s.colour}-{s.shape}.png"
        path.write_bytes(world.encode(s))
        out[path] = s
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "order"), [(1, "shuffled"), (2, "folder"), (7, "reversed")])
def test_each_record_answers_its_own_image_at_any_batch_size_and_order(
    trained_model: Path, album: dict[Path, world.Scene], tmp_path: Path, batch: int, order: str
) -> None:
    paths = sorted(album)
    if order == "reversed":
        paths.reverse()
    elif order == "shuffled":
        random.Random(batch).shuffle(paths)
    if order == "folder":
        inputs: list[str | Path] = [paths[0].parent]
    else:
        listing = tmp_path / "list.txt"
        listing.write_text("".join(f"{p}\n" for p in paths))
        inputs = ["--files-from", listing]
    args = [f"-q{q}" for q in QUESTIONS]
    done = run_mdream(
        "ask", *inputs, *args, "-m", trained_model, "-b", str(batch), "--format", "jsonl"
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(r["path"]) for r in records[:: len(QUESTIONS)]] == paths
    for record in records:
        scene = album[Path(record["path"])]
        assert record["answer"] == truth(scene)[record["question"]], record


def test_the_python_api_answers_each_image_its_own_answers(
    trained_md: Moondream, album: dict[Path, world.Scene]
) -> None:
    paths = sorted(album)
    random.Random(3).shuffle(paths)
    for path in paths + paths[::2]:  # and again, some of them, after others
        for question in QUESTIONS:
            assert trained_md.ask(path, question) == truth(album[path])[question]
        assert trained_md.describe(path) == world.caption(album[path]).strip()


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_the_engines_continuous_batching_answers_each_image_its_own_answers(
    trained_model: Path, album: dict[Path, world.Scene], batch: int
) -> None:
    paths = sorted(album) * 2
    random.Random(batch).shuffle(paths)
    with Moondream(trained_model) as md, Engine(md.files, EngineOptions(batch=batch)) as engine:
        requests = [Request(md.load(p), tuple(QUESTIONS), tag=p) for p in paths]
        answers = list(engine.ask_many(requests, Sampling(max_tokens=16)))
    assert len(answers) == len(paths) * len(QUESTIONS)
    for answer in answers:
        assert isinstance(answer.tag, Path)
        assert answer.text == truth(album[answer.tag])[answer.question], answer
