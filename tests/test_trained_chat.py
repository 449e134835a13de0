"""`mdream chat` on the trained tiny Moondream: the answers after the first turn are right.

The model learned single questions and conversations in the reference's history format (a
question after one to three earlier turns: scripts/train_shapes.py, MAX_HISTORY). A later
turn comes out right only when its history reaches the model as the reference wrote it, the
KV cache still holds this image and the turns' boundary tokens are right; each turn must
also be the numpy reference's answer to the same history (tests/shapes_reference.py).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

import shapes_reference as ref
import shapes_world as world
from conftest import run_mdream
from moondream_cli import Moondream
from terminal import Terminal

CONVERSATIONS = 16
TURNS = 4


def _conversation(i: int) -> tuple[world.Scene, list[world.QA]]:
    """A scene and four different questions about it, every kind in turn."""
    scene = world.random_scene(random.Random(f"chat:{i}"), shape=world.SHAPES[i % 5])
    rng = random.Random(f"chat-questions:{i}")
    asked = world.questions(scene, rng)
    rng.shuffle(asked)
    return scene, asked[:TURNS]


@pytest.fixture(scope="module")
def talked(trained_md: Moondream) -> list[tuple[world.Scene, list[world.QA], list[str]]]:
    out = []
    for i in range(CONVERSATIONS):
        scene, asked = _conversation(i)
        with trained_md.chat(world.encode(scene)) as chat:
            out.append((scene, asked, [chat.ask(qa.question) for qa in asked]))
    return out


def test_every_turn_of_a_conversation_is_answered_right(
    talked: list[tuple[world.Scene, list[world.QA], list[str]]],
) -> None:
    right: dict[int, list[bool]] = defaultdict(list)
    for _, asked, answers in talked:
        for turn, (qa, answer) in enumerate(zip(asked, answers, strict=True), start=1):
            right[turn].append(answer == qa.answer.strip())
    report = {turn: f"{sum(r)}/{len(r)}" for turn, r in sorted(right.items())}
    print("right answers by turn:", report)
    later = [hit for turn, hits in right.items() if turn > 1 for hit in hits]
    assert sum(later) >= 0.95 * len(later), report
    assert all(sum(hits) >= 0.9 * len(hits) for hits in right.values()), report


def test_each_turn_is_the_references_answer_to_the_same_history(
    talked: list[tuple[world.Scene, list[world.QA], list[str]]],
) -> None:
    model, tok = ref.Model(), ref.tokenizer()
    for scene, asked, answers in talked[:6]:
        image = model.encode_image(world.model_pixels(world.decode(world.encode(scene))))
        history: tuple[tuple[str, str], ...] = ()
        for qa, answer in zip(asked, answers, strict=True):
            tokens, _ = model.answer_encoded(image, qa.question, history=history)
            assert tok.decode(tokens).strip() == answer, (scene, history, qa.question)
            history += ((qa.question, answer),)


@pytest.mark.slow
def test_a_piped_conversation_answers_each_line_right(trained_model: Path, tmp_path: Path) -> None:
    scene, asked = _conversation(100)
    image = tmp_path / "shape.png"
    image.write_bytes(world.encode(scene))
    questions = "".join(f"{qa.question}\n" for qa in asked).encode()
    run = run_mdream("chat", image, "-m", trained_model, input=questions)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().splitlines() == [qa.answer.strip() for qa in asked]


@pytest.mark.slow
def test_a_person_talks_about_one_image_then_another(trained_model: Path, tmp_path: Path) -> None:
    # After /image the answers are about the new image: nothing of the first one's cache or
    # history answers for it.
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(world.encode(world.make("circle", "red", "left", "white")))
    second.write_bytes(world.encode(world.make("square", "blue", "right", "beige")))
    term = Terminal("chat", first, "-m", trained_model)
    term.read_until("first.png> ")
    for line, prompt, answer in [
        ("What colour is the shape?", "first.png> ", "red"),
        ("Where is the shape?", "first.png> ", "left"),
        (f"/image {second}", "second.png> ", None),
        ("What colour is the shape?", "second.png> ", "blue"),
        ("What shape is it?", "second.png> ", "square"),
    ]:
        term.screen = ""
        term.type(f"{line}\r")
        screen = term.read_until(prompt)  # the line typed, the answer, the prompt again
        if answer is not None:
            assert screen.split(line, 1)[1].split()[0] == answer, screen
    term.type("/quit\r")
    assert term.exit_code() == 0
