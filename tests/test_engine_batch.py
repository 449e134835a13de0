"""Batched (continuous batching) and KV-reused answers equal the plain single-image path.

Real llama.cpp on the tiny random-weight pair: the answers are gibberish, but greedy decoding
is deterministic, so any mix-up of sequences, positions or logits shows as a different answer.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import moondream_gguf
from conftest import draw_photo, run_mdream
from moondream_cli import locate
from moondream_cli.engine import (
    Answer,
    Engine,
    EngineOptions,
    Request,
    Sampling,
    cpu_kv_cells,
    native,
)
from moondream_cli.images import Pixels, load_image
from moondream_cli.prompts import question_prompt

QUESTIONS = ("Describe this image.", "Why?", "a", "xyz")
SAMPLING = Sampling(max_tokens=12)


def _jpeg(img: Image.Image) -> Pixels:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return load_image(buf.getvalue())


@pytest.fixture(scope="module")
def images() -> list[Pixels]:
    rng = np.random.default_rng(7)
    photos = [_jpeg(draw_photo((96 + 10 * i, 64 + 7 * i), seed=i)) for i in range(4)]
    noise = [
        _jpeg(Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))) for _ in range(2)
    ]
    return photos + noise


@pytest.fixture(scope="module")
def engine_factory(tiny_model: Path) -> Iterator[dict[int, Engine]]:
    files = locate.resolve(tiny_model)
    engines = {b: Engine(files, EngineOptions(threads=2, batch=b)) for b in (1, 2, 3)}
    yield engines
    for engine in engines.values():
        engine.close()


@pytest.fixture(scope="module")
def prefill_engines(tiny_model: Path) -> Iterator[dict[int, Engine]]:
    """Engines that evaluate the images starting together in one llama_decode."""
    files = locate.resolve(tiny_model)
    options = EngineOptions(threads=2, batched_prefill=True)
    engines = {b: Engine(files, replace(options, batch=b)) for b in (2, 3)}
    yield engines
    for engine in engines.values():
        engine.close()


def _single(
    engine: Engine, images: list[Pixels], limits: dict[int, int]
) -> dict[tuple[int, int], str]:
    """The reference: one fresh image at a time, each question on its reused image prefix."""
    answers = {}
    for i, pixels in enumerate(images):
        engine.set_image(pixels, key=("ref", i))
        sampling = Sampling(max_tokens=limits.get(i, SAMPLING.max_tokens))
        for j, question in enumerate(QUESTIONS):
            answers[i, j] = engine.ask(question, sampling)
    return answers


Reference = Callable[[list[Pixels], dict[int, int]], dict[tuple[int, int], str]]


@pytest.fixture(scope="module")
def reference(engine_factory: dict[int, Engine]) -> Reference:
    """``_single`` on the batch-1 engine, worked out once per list of images and limits: the
    answers every batched run is held to."""
    known: dict[object, dict[tuple[int, int], str]] = {}

    def answers(images: list[Pixels], limits: dict[int, int]) -> dict[tuple[int, int], str]:
        key = (tuple(map(id, images)), tuple(sorted(limits.items())))
        if key not in known:
            known[key] = _single(engine_factory[1], images, limits)
        return known[key]

    return answers


def _many(engine: Engine, images: list[Pixels], limits: dict[int, int]) -> list[Answer]:
    requests = [
        Request(pixels, QUESTIONS, tag=i, max_tokens=limits.get(i))
        for i, pixels in enumerate(images)
    ]
    return list(engine.ask_many(requests, SAMPLING))


def test_reference_answers_tell_images_and_questions_apart(
    reference: Reference, images: list[Pixels]
) -> None:
    # Without distinct answers, a swapped sequence would go unnoticed by the tests below.
    answers = reference(images, {})
    assert len(set(answers.values())) >= 4
    assert len({answers[i, 1] for i in range(len(images))}) >= 2


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_batched_answers_are_token_identical_to_single(
    engine_factory: dict[int, Engine], reference: Reference, images: list[Pixels], batch: int
) -> None:
    # Image 1 stops after 2 tokens and image 4 after 5: their slots are refilled while the
    # other sequences are still decoding.
    limits = {1: 2, 4: 5}
    answers = _many(engine_factory[batch], images, limits)
    got = {(a.tag, a.index): a.text for a in answers}
    assert len(answers) == len(got) == len(images) * len(QUESTIONS)
    assert all(a.error is None and a.question == QUESTIONS[a.index] for a in answers)
    assert got == reference(images, limits)
    if batch > 1:
        # Answers arrive as they finish: the short ones overtake images admitted before them.
        order = [a.tag for a in answers]
        assert order.index(1) < max(i for i, t in enumerate(order) if t == 0)


@pytest.mark.parametrize("batch", [2, 3])
def test_images_prefilled_together_answer_as_each_does_alone(
    reference: Reference,
    prefill_engines: dict[int, Engine],
    images: list[Pixels],
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = native.Context.decode
    together: list[list[int]] = []  # the sequences of each llama_decode of embeddings

    def spy(context: native.Context, llama_batch: native.Batch) -> None:
        if llama_batch.n_embd:
            together.append(list(dict.fromkeys(llama_batch.seqs())))
        real(context, llama_batch)

    monkeypatch.setattr(native.Context, "decode", spy)
    limits = {1: 2, 4: 5}  # short answers: their slots are refilled one by one
    answers = _many(prefill_engines[batch], images, limits)
    assert list(range(batch)) in together  # the first images, in one llama_decode
    assert {(a.tag, a.index): a.text for a in answers} == reference(images, limits)


def test_questions_that_start_together_are_evaluated_together(
    engine_factory: dict[int, Engine],
    reference: Reference,
    images: list[Pixels],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three images start at once, so do their questions: prompts of one length go to
    # llama.cpp in one batch, the others alone, and every answer is the one it gets alone.
    engine = engine_factory[3]
    real = native.Context.decode
    batches: list[list[int]] = []

    def spy(context: native.Context, batch: native.Batch) -> None:
        seqs = batch.seqs()
        if len(seqs) > len(set(seqs)):  # several tokens of a sequence: prompts, not a step
            batches.append(list(dict.fromkeys(seqs)))
        real(context, batch)

    monkeypatch.setattr(native.Context, "decode", spy)
    # Two photos and a noise image: their answers start with different tokens, so logits
    # read from another sequence's row would show.
    picked = [images[0], images[3], images[4]]
    answers = _many(engine, picked, {})
    assert [0, 1, 2] in batches  # the first question of each image, together
    lengths = {len(engine.tokenize(question_prompt(q))) for q in QUESTIONS}
    assert len(lengths) > 1  # the questions' prompts differ in length: some go alone
    assert {(a.tag, a.index): a.text for a in answers} == reference(picked, {})


def test_single_path_still_answers_after_a_batch_on_the_same_engine(
    engine_factory: dict[int, Engine], reference: Reference, images: list[Pixels]
) -> None:
    engine = engine_factory[2]
    before = _single(engine, images[:2], {})
    list(engine.ask_many([Request(images[3], QUESTIONS[:1])], SAMPLING))
    assert _single(engine, images[:2], {}) == before
    assert before == reference(images[:2], {})


def test_kv_reuse_equals_a_fresh_prefix(
    engine_factory: dict[int, Engine], images: list[Pixels]
) -> None:
    engine = engine_factory[1]
    engine.set_image(images[0], key="a")
    reused = [engine.ask(q, SAMPLING) for q in QUESTIONS]
    fresh = []
    for n, q in enumerate(QUESTIONS):
        engine.set_image(images[0], key=("fresh", n))  # a new key re-encodes the image
        fresh.append(engine.ask(q, SAMPLING))
    assert reused == fresh


def test_fixed_length_generates_exactly_max_tokens(
    engine_factory: dict[int, Engine], images: list[Pixels]
) -> None:
    engine = engine_factory[1]
    engine.set_image(images[0], key="fixed")
    pieces: list[str] = []
    fixed = Sampling(max_tokens=20, fixed_length=True)
    answer = engine.ask(QUESTIONS[0], fixed, on_text=pieces.append)
    assert answer == "".join(pieces).strip()
    assert engine.last_tokens == 20
    batched = _many_one(engine_factory[3], images[0], fixed)
    assert batched == answer


def _many_one(engine: Engine, pixels: Pixels, sampling: Sampling) -> str | None:
    (answer,) = engine.ask_many([Request(pixels, QUESTIONS[:1])], sampling)
    return answer.text


def test_a_bad_image_is_a_record_not_a_crash(
    engine_factory: dict[int, Engine], reference: Reference, images: list[Pixels]
) -> None:
    broken = Pixels(4, 4, b"\x00" * 3)  # fewer bytes than 4×4 RGB: libmtmd must not read them
    answers = list(
        engine_factory[2].ask_many(
            [
                Request(broken, QUESTIONS[:2], tag="bad", label="bad.jpg"),
                Request(images[0], QUESTIONS[:1]),
            ],
            SAMPLING,
        )
    )
    bad = [a for a in answers if a.tag == "bad"]
    assert [a.index for a in bad] == [0, 1]
    assert all(a.text is None and a.error is not None and a.error.path == "bad.jpg" for a in bad)
    good = [a for a in answers if a.tag is None]
    assert good[0].text == reference(images[:1], {})[0, 0]


@pytest.mark.slow
def test_a_quantized_text_model_answers_on_this_cpu(
    tiny_model: Path, photo: Path, tmp_path: Path
) -> None:
    # On AMX CPUs ggml's AMX kernels segfault on quantized weights (llama.cpp #20824); the
    # engine loads without them there. A child process, so a crash is an exit code here.
    import llama_cpp

    folder = tmp_path / "q4"
    folder.mkdir()
    native.route_logs_to_stderr(False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    text = tiny_model / moondream_gguf.TEXT_NAME
    rc = llama_cpp.llama_model_quantize(
        os.fsencode(text), os.fsencode(folder / "text-q4_k_m.gguf"), params
    )
    assert rc == 0
    os.symlink(tiny_model / moondream_gguf.MMPROJ_NAME, folder / moondream_gguf.MMPROJ_NAME)
    done = run_mdream("describe", photo, "--model-dir", folder, "-n", "8", "--cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


# -- the CPU's automatic batch -------------------------------------------------------------
def _kv(engine: Engine) -> tuple[int, int]:
    """(KV positions in all, KV positions per sequence) of the engine's context."""
    return engine.context.n_ctx, engine.context.n_ctx_seq


@pytest.mark.parametrize(
    ("seq_tokens", "want_batch"),
    [(None, 1), (200, 7), (300, 3), (1000, 2), (1600, 1)],
)
def test_the_cpu_batch_fits_its_sequences_in_about_one_sequences_memory(
    tiny_model: Path, seq_tokens: int | None, want_batch: int
) -> None:
    # The tiny image takes 17 positions (BOS + 16 patches); each sequence gets what it needs,
    # rounded up to an odd multiple of 256, and all of them together at most 1.25 × n_ctx.
    options = EngineOptions(threads=2, gpu=False, seq_tokens=seq_tokens)
    with Engine(locate.resolve(tiny_model), options) as engine:
        total, per_seq = _kv(engine)
        assert engine.batch == want_batch
        assert total <= 1.25 * 2048
        assert per_seq >= 17 + (seq_tokens or 0)
        assert (per_seq // 256) % 2 == 1 and per_seq % 256 == 0
        if want_batch == 1:
            # A lone sequence keeps the model's whole context, in 2304 cells.
            assert (engine.n_ctx, per_seq) == (2048, 2304)


@pytest.mark.parametrize(
    ("positions", "cells"),
    [(1, 256), (256, 256), (257, 768), (730, 768), (769, 1280), (2048, 2304)],
)
def test_cpu_kv_cells_are_an_odd_multiple_of_256(positions: int, cells: int) -> None:
    assert cpu_kv_cells(positions) == cells


@pytest.mark.slow  # 4,500 tokens decoded: seconds on 2 cores
def test_a_planned_cpu_batch_never_cuts_an_answer_short(
    tiny_model: Path, images: list[Pixels]
) -> None:
    # Each answer is forced to its full max_tokens, and the question and answer need 760
    # positions besides the image's 17: a plan that forgot the image (768 per sequence
    # instead of 1280) would cut every answer short. The answers must also be the ones each
    # image gets on its own.
    question = "xyz"
    prompt = len(f"\n\nQuestion: {question}\n\nAnswer:".encode())
    sampling = Sampling(max_tokens=760 - prompt, fixed_length=True)
    files = locate.resolve(tiny_model)
    options = EngineOptions(threads=2, gpu=False, seq_tokens=prompt + sampling.max_tokens)
    with Engine(files, options) as planned, Engine(files, EngineOptions(threads=2)) as alone:
        assert (planned.batch, _kv(planned)[1]) == (2, 1280)
        three = images[:3]  # one more than the batch: a slot is refilled
        requests = [Request(p, (question,), tag=i) for i, p in enumerate(three)]
        answers = {a.tag: a for a in planned.ask_many(requests, sampling)}
        assert planned.peak_live == planned.batch
        for i, pixels in enumerate(three):
            alone.set_image(pixels)
            assert answers[i].error is None
            assert answers[i].tokens == sampling.max_tokens
            assert answers[i].text == alone.ask(question, sampling)


@pytest.mark.slow
def test_a_folder_on_the_cpu_is_batched_and_one_image_is_not(
    tiny_model: Path, tmp_path: Path
) -> None:
    import re

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        draw_photo(seed=i).save(folder / f"{i}.png")
    args = ("--model-dir", tiny_model, "--cpu", "--verbose", "-n", "8")
    many = run_mdream("describe", folder, *args)
    one = run_mdream("describe", folder / "0.png", *args)
    assert many.returncode == one.returncode == 0, many.stderr + one.stderr
    seqs = [int(re.findall(rb"n_seq_max\s*=\s*(\d+)", r.stderr)[0]) for r in (many, one)]
    assert seqs[0] > 1 and seqs[1] == 1
    # The batched folder's records are the ones each image gets alone.
    alone = run_mdream("describe", folder / "0.png", "--model-dir", tiny_model, "--cpu", "-n", "8")
    assert alone.stdout.strip() in many.stdout


def test_an_image_longer_than_planned_stops_the_run_instead_of_cutting_answers(
    tiny_model: Path, images: list[Pixels], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Should an mmproj give more positions per image than its header implies, the planned
    # sequences would be too short: the run stops with a model error rather than truncate.
    from moondream_cli.engine import runtime
    from moondream_cli.errors import ModelError

    monkeypatch.setattr(runtime, "image_positions", lambda _mmproj: 5)  # really 17
    options = EngineOptions(threads=2, gpu=False, seq_tokens=300)
    with Engine(locate.resolve(tiny_model), options) as engine:
        assert engine.batch > 1
        with pytest.raises(ModelError, match="took 17 positions, not the 5"):
            list(engine.ask_many([Request(images[0], ("a",))], SAMPLING))


def test_an_engine_that_keeps_its_bos_answers_as_a_fresh_one(
    tiny_model: Path, images: list[Pixels]
) -> None:
    # A sequence keeps the BOS at position 0 from one image to the next and evaluates only
    # the new image after it. Every answer must still be the one a fresh engine gives,
    # whose sequence evaluates "BOS, image" from nothing.
    files = locate.resolve(tiny_model)
    sampling = Sampling(max_tokens=16, fixed_length=True)
    fresh = []
    for pixels in images[:3]:
        with Engine(files, EngineOptions(threads=2)) as engine:
            engine.set_image(pixels)
            fresh.append(engine.ask("xyz", sampling))
    with Engine(files, EngineOptions(threads=2, batch=1)) as engine:
        kept = []
        for pixels in images[:3]:
            engine.set_image(pixels)
            kept.append(engine.ask("xyz", sampling))
        assert engine.kept_bos == {0}
        requests = [Request(p, ("xyz",), tag=i) for i, p in enumerate(images[:3])]
        batched = {a.tag: a.text for a in engine.ask_many(requests, sampling)}
    assert kept == fresh
    assert [batched[i] for i in range(3)] == fresh


def test_the_cpu_computes_256_tokens_at_a_time_unless_told(tiny_model: Path) -> None:
    files = locate.resolve(tiny_model)
    with Engine(files, EngineOptions(threads=2, gpu=False)) as default:
        assert default.context.n_ubatch == 256
    with Engine(files, EngineOptions(threads=2, gpu=False, n_ubatch=512)) as told:
        assert told.context.n_ubatch == 512


def test_an_engine_used_after_close_raises(tiny_model: Path, images: list[Pixels]) -> None:
    engine = Engine(locate.resolve(tiny_model), EngineOptions(threads=2))
    engine.set_image(images[0], key="x")
    engine.close()
    engine.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        engine.set_image(images[0], key="x")  # even when the image would have been reused
    with pytest.raises(RuntimeError, match="closed"):
        engine.ask("a")
    with pytest.raises(RuntimeError, match="closed"):
        list(engine.ask_many([Request(images[0], ("a",))]))


def test_timings_count_each_phase_inside_llama_cpp(
    engine_factory: dict[int, Engine], images: list[Pixels]
) -> None:
    engine = engine_factory[1]
    engine.set_image(images[1], key=object())  # the sequence now holds a BOS
    engine.timings.reset()
    engine.set_image(images[0], key=object())
    engine.ask("xyz", Sampling(max_tokens=5, fixed_length=True))
    t = engine.timings
    assert (t.images, t.image_positions, t.decode_steps) == (1, 17, 4)  # 5 tokens, 4 fed back
    assert t.prompt_tokens == len(engine.tokenize(question_prompt("xyz")))  # BOS kept
    assert min(t.encode_s, t.image_prefill_s, t.prompt_s, t.decode_s) > 0
    engine.timings.reset()
    assert engine.timings.images == 0 and engine.timings.decode_s == 0.0


def test_a_batch_left_unfinished_when_the_engine_closes_ends_quietly(
    tiny_model: Path, images: list[Pixels]
) -> None:
    # `mdream describe DIR | head -1`: the engine is closed while the runner's generator is
    # still suspended inside ask_many; finalizing it later must not touch the freed context.
    engine = Engine(locate.resolve(tiny_model), EngineOptions(threads=2, batch=2))
    answers = engine.ask_many([Request(p, ("a",)) for p in images[:3]], SAMPLING)
    next(answers)
    engine.close()
    answers.close()
