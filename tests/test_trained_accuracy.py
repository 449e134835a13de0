"""The trained tiny Moondream, through mdream, answers fresh images of its world right.

Images drawn now with tests/shapes_world.py (not the held-out set, and not filtered by how
sure the model is), every question kind asked, answered with continuous batching: each kind
is right at least 95 % of the time, and every answer ends at EOS, not at the token limit.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

import shapes_reference as ref
import shapes_world as world
from moondream_cli import Moondream
from moondream_cli.engine import Request, Sampling

IMAGES = 48
# Arrows twice as often, so that the direction question (arrows only) is asked enough.
SHAPE_CYCLE = (*world.SHAPES, "arrow")
MAX_TOKENS = 40

# 48 images × 7 questions: seconds of model work.
pytestmark = pytest.mark.slow


def fresh_scenes(count: int, seed: str) -> list[world.Scene]:
    return [
        world.random_scene(random.Random(f"{seed}:{i}"), shape=SHAPE_CYCLE[i % len(SHAPE_CYCLE)])
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def answered(trained_md: Moondream) -> list[tuple[world.QA, str | None, int]]:
    scenes = fresh_scenes(IMAGES, "accuracy")
    rng = random.Random(7)
    asked = []
    requests = []
    for i, scene in enumerate(scenes):
        qas = world.questions(scene, rng)
        # each of describe's three built-in questions, in turn
        qas = [
            world.QA(qa.kind, world.CAPTION_QUESTIONS[i % 3], qa.answer)
            if qa.kind == "caption"
            else qa
            for qa in qas
        ]
        asked.append(qas)
        pixels = trained_md.load(world.encode(scene))
        requests.append(Request(pixels, tuple(qa.question for qa in qas), tag=i))
    out = []
    for answer in trained_md.engine.ask_many(requests, Sampling(max_tokens=MAX_TOKENS)):
        assert isinstance(answer.tag, int)
        out.append((asked[answer.tag][answer.index], answer.text, answer.tokens))
    assert len(out) == sum(map(len, asked))
    return out


def test_every_question_kind_is_answered_right_at_least_95_percent_of_the_time(
    answered: list[tuple[world.QA, str | None, int]],
) -> None:
    right: dict[str, list[bool]] = defaultdict(list)
    for qa, text, _ in answered:
        right[qa.kind].append(text == qa.answer.strip())
    report = {kind: f"{sum(r)}/{len(r)}" for kind, r in right.items()}
    print("accuracy per kind on fresh images:", report)
    assert set(right) == set(world.KINDS)
    for kind, hits in right.items():
        assert len(hits) >= 16, kind
        assert sum(hits) >= 0.95 * len(hits), report


def test_every_answer_ends_at_eos_not_at_the_token_limit(
    answered: list[tuple[world.QA, str | None, int]],
) -> None:
    tok = ref.tokenizer()
    for qa, text, tokens in answered:
        if text == qa.answer.strip():  # its tokens, then the one that ended it: EOS
            assert tokens == len(tok.encode(qa.answer)) + 1, (qa, text, tokens)
        assert tokens < MAX_TOKENS, (qa, text)
