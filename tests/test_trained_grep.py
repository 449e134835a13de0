"""`mdream grep` on the trained tiny Moondream: what its scores mean.

An album of the model's world (tests/shapes_world.py) where a query's true matches are
known: red circles among red shapes that are not circles and circles that are not red (the
hard negatives: one word of the query is right) and other scenes. The command, as a user
types it, must print the right paths, rank them, invert, count; the precision, recall and
area under the ROC curve of its scores are printed (pytest -s) and held to a floor.
(tests/test_grep.py holds the command's behaviour on the random-weight pair.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import shapes_world as world
from conftest import run_mdream
from moondream_cli import Moondream

QUERY = ("red", "circle")  # "a red circle"
OTHER = ("blue", "square")  # "a blue square", for several queries at once
SHAPES_NOT_CIRCLE = [s for s in world.SHAPES if s != "circle"]
COLOURS_NOT_RED = [c for c in world.COLOURS if c != "red"]


def _album_scenes() -> list[world.Scene]:
    rng = random.Random("grep-album")

    def scene(i: int, **fixed: object) -> world.Scene:
        return world.random_scene(random.Random(f"grep:{i}"), **fixed)

    scenes = [scene(i, shape="circle", colour="red") for i in range(10)]
    scenes += [scene(10 + i, shape=SHAPES_NOT_CIRCLE[i % 4], colour="red") for i in range(8)]
    scenes += [scene(20 + i, shape="circle", colour=COLOURS_NOT_RED[i % 7]) for i in range(8)]
    scenes += [scene(30 + i, shape="square", colour="blue") for i in range(4)]
    scenes += [s for i in range(40, 60) if _not_red_circle(s := scene(i))][:10]
    rng.shuffle(scenes)  # the file names say nothing
    return scenes


def _not_red_circle(scene: world.Scene) -> bool:
    return (scene.colour, scene.shape) != QUERY


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, world.Scene]]:
    folder = tmp_path_factory.mktemp("grep-album")
    scenes = {}
    for i, scene in enumerate(_album_scenes()):
        path = folder / f"{i:02d}.{'jpg' if scene.jpeg_quality else 'png'}"
        path.write_bytes(world.encode(scene))
        scenes[str(path)] = scene
    return folder, scenes


def _grep(model: Path, *args: str | Path) -> list[str]:
    run = run_mdream("grep", *args, "-m", model, "-t", "2")
    assert run.returncode in (0, 1), run.stderr.decode()
    return run.stdout.decode().splitlines()


def _truth(scenes: dict[str, world.Scene], want: tuple[str, str]) -> set[str]:
    return {path for path, s in scenes.items() if (s.colour, s.shape) == want}


def _auc(scores: dict[str, float], truth: set[str]) -> float:
    """The chance that a true match scores above a non-match (ties count half)."""
    hits = [v for p, v in scores.items() if p in truth]
    misses = [v for p, v in scores.items() if p not in truth]
    wins = sum((h > m) + 0.5 * (h == m) for h in hits for m in misses)
    return wins / (len(hits) * len(misses))


@pytest.mark.slow
def test_grep_prints_the_images_that_show_a_red_circle(
    trained_model: Path, album: tuple[Path, dict[str, world.Scene]]
) -> None:
    folder, scenes = album
    truth = _truth(scenes, QUERY)
    printed = _grep(trained_model, "a red circle", folder)
    found = set(printed)
    precision = len(found & truth) / max(1, len(found))
    recall = len(found & truth) / len(truth)
    print(f"grep 'a red circle', {len(scenes)} images: precision {precision:.2f}, "
          f"recall {recall:.2f}")  # fmt: skip
    assert len(printed) == len(found)  # each once
    assert precision >= 0.9 and recall >= 0.9, sorted(found ^ truth)
    # -v prints the rest, -c counts what the plain run printed
    assert set(_grep(trained_model, "a red circle", folder, "-v")) == set(scenes) - found
    assert _grep(trained_model, "a red circle", folder, "-c") == [str(len(found))]


@pytest.mark.slow
def test_the_scores_rank_the_true_matches_first_for_each_query(
    trained_model: Path, album: tuple[Path, dict[str, world.Scene]]
) -> None:
    folder, scenes = album
    lines = _grep(trained_model, "-e", "a red circle", "-e", "a blue square", folder, "-f", "jsonl")
    records = [json.loads(line) for line in lines]
    assert {r["path"] for r in records} == set(scenes)
    for want in (QUERY, OTHER):
        query = f"a {want[0]} {want[1]}"
        scores = {r["path"]: r["scores"][query] for r in records}
        auc = _auc(scores, _truth(scenes, want))
        print(f"{query!r}: ROC AUC {auc:.3f}")
        assert auc >= 0.98, (query, auc)
    # an image matches when either query does
    either = _truth(scenes, QUERY) | _truth(scenes, OTHER)
    matched = {r["path"] for r in records if r["match"]}
    assert len(matched ^ either) <= 1, sorted(matched ^ either)


@pytest.mark.slow
def test_top_k_gives_the_most_likely_true_matches_best_first(
    trained_model: Path, album: tuple[Path, dict[str, world.Scene]]
) -> None:
    folder, scenes = album
    rows = [
        line.split("\t")
        for line in _grep(trained_model, "a red circle", folder, "--top", "3", "--scores")
    ]
    assert len(rows) == 3
    scores = [float(score) for score, _ in rows]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0.5
    assert {path for _, path in rows} <= _truth(scenes, QUERY)
    # the same question asked as written scores the same images the same
    asked = _grep(
        trained_model, "--question", "Is there a red circle?", folder, "--top", "3", "--scores"
    )
    assert [line.split("\t") for line in asked] == rows


def test_the_python_score_tells_a_red_circle_from_its_hard_negatives(
    trained_md: Moondream,
) -> None:
    def score(shape: str, colour: str) -> float:
        image = world.encode(world.make(shape, colour, "centre", "white", 120, 90))
        return trained_md.score(image, "a red circle")

    assert score("circle", "red") > 0.9
    assert score("circle", "blue") < 0.1  # the shape right, the colour wrong
    assert score("square", "red") < 0.1  # the colour right, the shape wrong
