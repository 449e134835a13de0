"""The Python API on real llama.cpp with the tiny Moondream2-shaped pair."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from conftest import draw_photo
from moondream_cli import Moondream
from moondream_cli.engine import Sampling
from moondream_cli.errors import InputError, ModelError, UsageError


def test_describe_is_deterministic_and_non_empty(md: Moondream, photo: Path) -> None:
    first = md.describe(photo, length="short")
    assert first
    assert md.describe(photo, length="short") == first


def test_path_bytes_and_pil_sources_give_the_same_answer(md: Moondream, photo: Path) -> None:
    expected = md.ask(photo, "What is this?", sampling=Sampling(max_tokens=12))
    assert md.ask(photo.read_bytes(), "What is this?", sampling=Sampling(max_tokens=12)) == expected
    with Image.open(photo) as img:
        assert md.ask(img, "What is this?", sampling=Sampling(max_tokens=12)) == expected


def test_answer_depends_on_the_image(md: Moondream, tmp_path: Path) -> None:
    answers = set()
    for seed, colour in enumerate(((255, 0, 0), (0, 0, 255), (0, 255, 0))):
        img = draw_photo((64, 64), seed)
        img.paste(colour, (0, 0, 64, 32))
        answers.add(md.ask(img, "Describe this image.", sampling=Sampling(max_tokens=16)))
    assert len(answers) > 1


def test_reused_image_prefix_gives_the_same_answer_as_a_fresh_one(
    md: Moondream, tiny_model: Path, photo: Path
) -> None:
    q1, q2 = "What colour is the sky?", "How many shapes are there?"
    md.ask(photo, q1, sampling=Sampling(max_tokens=10))
    reused = md.ask(photo, q2, sampling=Sampling(max_tokens=10))  # image prefix kept
    md.ask(draw_photo((50, 50), 3), q1, sampling=Sampling(max_tokens=10))  # evict it
    fresh = md.ask(photo, q2, sampling=Sampling(max_tokens=10))
    assert reused == fresh


def test_streamed_text_adds_up_to_the_answer(md: Moondream, photo: Path) -> None:
    pieces: list[str] = []
    answer = md.ask(
        photo, "Describe this image.", sampling=Sampling(max_tokens=20), on_text=pieces.append
    )
    assert "".join(pieces) == answer


def test_max_tokens_bounds_the_answer(md: Moondream, photo: Path) -> None:
    short = md.ask(photo, "Describe this image.", sampling=Sampling(max_tokens=2))
    longer = md.ask(photo, "Describe this image.", sampling=Sampling(max_tokens=30))
    assert longer.startswith(short.strip()[:1])
    assert len(short) <= len(longer)


def test_sampling_with_a_seed_is_reproducible(md: Moondream, photo: Path) -> None:
    s = Sampling(max_tokens=12, temperature=1.0, seed=42)
    assert md.ask(photo, "What is it?", sampling=s) == md.ask(photo, "What is it?", sampling=s)


def test_a_question_cannot_inject_control_tokens(md: Moondream, photo: Path) -> None:
    tokens = md.engine.tokenize("<|endoftext|>")
    assert len(tokens) > 1  # spelled out byte by byte, never the EOS control token


def test_grammar_constrains_the_answer(md: Moondream, photo: Path) -> None:
    grammar = 'root ::= "yes" | "no"'
    answer = md.ask(photo, "Is it red?", sampling=Sampling(max_tokens=8, grammar=grammar))
    assert answer in ("yes", "no")


def test_bad_image_is_an_input_error(md: Moondream, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError):
        md.describe(bad)


def test_missing_model_dir_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="mdream fetch"):
        Moondream(tmp_path / "nothing-here")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda md, img: md.describe(42),
            "an image is a path, encoded bytes or a PIL image, not int",
        ),
        (lambda md, img: md.ask(img, ["a?", "b?"]), "the question is text, not list"),
        (lambda md, img: md.ask(img, "Q?", sampling=Sampling(max_tokens=-5)), "max_tokens must be"),
        (lambda md, img: md.ask(img, "Q?", sampling=Sampling(max_tokens=0)), "max_tokens must be"),
        (
            lambda md, img: md.ask(img, "Q?", sampling=Sampling(temperature=-1)),
            "temperature must be at least 0",
        ),
        (
            lambda md, img: md.describe(img, sampling=Sampling(seed=3)),
            "seed only matters with a temperature above 0",
        ),
    ],
)
def test_the_api_refuses_what_the_cli_refuses_in_its_own_words(
    md: Moondream, photo: Path, call: Callable[[Moondream, Path], object], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        call(md, photo)
    assert "--" not in str(caught.value)  # no command-line flag named to a Python caller


@pytest.mark.slow
def test_one_model_shared_by_four_threads_answers_each_as_alone(
    md: Moondream, tmp_path: Path
) -> None:
    # Shared without a lock, 3 runs in 4 aborted in GGML_ASSERT and the rest answered wrong.
    images = []
    for i in range(20):
        path = tmp_path / f"{i}.png"
        draw_photo((40 + 3 * i, 32 + 2 * i), seed=i).save(path)
        images.append(path)
    sampling = Sampling(max_tokens=4)
    alone = [md.ask(image, "What is it?", sampling=sampling) for image in images]
    for _ in range(10):
        with ThreadPoolExecutor(4) as pool:
            jobs = [
                pool.submit(md.ask, image, "What is it?", sampling=sampling)
                for _ in range(4)
                for image in images
            ]
            answers = [job.result() for job in jobs]
        assert answers == alone * 4
