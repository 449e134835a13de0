"""Structured answers from a model that knows the answer: `--choices` and `--json-schema`.

The grammar only narrows what may be sampled; which choice wins is the model's. With the
trained tiny Moondream the winner has to be the right one, image by image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import shapes_world as world
from conftest import run_mdream

SCENES = [
    world.make("circle", "red", "left", "white"),
    world.make("star", "blue", "top", "beige", 90, 150),
    world.make("triangle", "green", "centre", "grey"),
    world.make("square", "yellow", "bottom", "black", 200, 80),
    world.make("arrow", "pink", "right", "white", direction="down"),
]


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> dict[str, world.Scene]:
    folder = tmp_path_factory.mktemp("structured")
    out = {}
    for i, s in enumerate(SCENES):
        path = folder / f"{i}.png"
        path.write_bytes(world.encode(s))
        out[str(path)] = s
    return out


@pytest.mark.slow
def test_choices_pick_the_right_colour(trained_model: Path, album: dict[str, world.Scene]) -> None:
    choices = ",".join(world.COLOURS)
    done = run_mdream(
        "ask", *album, world.COLOUR_QUESTION, "--choices", choices, "-m", trained_model,
        "--format", "jsonl",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["path"]: r["answer"] for r in records} == {p: s.colour for p, s in album.items()}


@pytest.mark.slow
def test_a_json_schema_with_colour_and_shape_fields_is_filled_in_right(
    trained_model: Path, album: dict[str, world.Scene], tmp_path: Path
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": list(world.COLOURS)},
            "shape": {"type": "string", "enum": list(world.SHAPES)},
        },
        "required": ["colour", "shape"],
    }
    path = tmp_path / "shape.schema.json"
    path.write_text(json.dumps(schema))
    # No question: mdream asks for the schema's fields (world.JSON_QUESTION, which it learned).
    done = run_mdream(
        "ask", *album, "--json-schema", path, "-m", trained_model, "--format", "jsonl"
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["question"] for r in records} == {world.JSON_QUESTION}
    answers = {r["path"]: json.loads(r["answer"]) for r in records}
    assert answers == {p: {"colour": s.colour, "shape": s.shape} for p, s in album.items()}
