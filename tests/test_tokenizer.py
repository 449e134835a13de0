"""Questions tokenize as GPT-2 tokenizes them, as the reference did, on the real GPT-2 vocabulary.

The tiny model carries GPT-2's real vocabulary and, like the public Moondream2 files, no
``tokenizer.ggml.pre``. llama.cpp's own tokenizer vectors for GPT-2 (tests/data/gpt2, from the
pinned sdist) go through mdream's tokenization path and must all match; llama.cpp's fallback
pre-tokenizer, which llama.cpp would use without mdream's fix, must get some of them wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import moondream_gguf
from conftest import run_mdream
from moondream_cli import locate, reference
from moondream_cli.bundles.fetch import fetch
from moondream_cli.engine import Engine, EngineOptions, native
from moondream_cli.gguf_meta import read_metadata
from moondream_cli.locate import find_pair

VECTORS = moondream_gguf.GPT2_VOCAB


def _vectors() -> list[tuple[str, list[int]]]:
    inputs = VECTORS.with_name(VECTORS.name + ".inp").read_text(encoding="utf-8")
    outputs = VECTORS.with_name(VECTORS.name + ".out").read_text(encoding="utf-8")
    texts = inputs.split("\n__ggml_vocab_test__\n")
    expected = [[int(t) for t in line.split()] for line in outputs.split("\n")[: len(texts)]]
    texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__\n").removesuffix("\n")
    return list(zip(texts, expected, strict=True))


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Engine]:
    with Engine(find_pair(tiny_model), EngineOptions(threads=1, gpu=False)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def unfixed(tiny_model: Path) -> Iterator[native.Model]:
    """The text model as llama.cpp loads it without mdream's metadata fix."""
    with native.Model(find_pair(tiny_model).text, gpu=False) as model:
        yield model


def test_the_fixture_has_gpt2s_vocabulary_padded_like_moondream2(tiny_model: Path) -> None:
    meta = read_metadata(find_pair(tiny_model).text)
    assert reference.PRE_TOKENIZER_KEY not in meta  # as in the public Moondream2 GGUFs
    with native.Model(find_pair(tiny_model).text, gpu=False) as model:
        assert model.n_vocab == 51200 and model.eos == model.bos == 50256
        assert model.piece(50256, special=True) == b"<|endoftext|>"


def test_every_llama_cpp_gpt2_vector_tokenizes_as_gpt2_does(engine: Engine) -> None:
    vectors = _vectors()
    assert len(vectors) > 40
    wrong = [text for text, ids in vectors if engine.tokenize(text) != ids]
    assert wrong == []


def test_without_the_fix_llama_cpp_gets_some_vectors_wrong(unfixed: native.Model) -> None:
    wrong = [text for text, ids in _vectors() if unfixed.tokenize(text) != ids]
    assert len(wrong) >= 5  # so the test above proves the fix, not a lucky vocabulary


def test_a_question_with_an_apostrophe_tokenizes_as_gpt2(
    engine: Engine, unfixed: native.Model
) -> None:
    assert engine.tokenize("What's") == [2061, 338]
    assert engine.tokenize(" (") == [357]
    assert unfixed.tokenize("What's") != [2061, 338]


def test_the_engine_says_which_pre_tokenizer_is_in_effect(engine: Engine) -> None:
    assert engine.pre_tokenizer == reference.GPT2_PRE_TOKENIZER


def test_a_file_that_names_its_pre_tokenizer_keeps_it() -> None:
    named = {"tokenizer.ggml.model": "gpt2", reference.PRE_TOKENIZER_KEY: "qwen2"}
    assert reference.metadata_fixes(named) == {}
    assert reference.pre_tokenizer(named) == "qwen2"
    assert reference.pre_tokenizer({"tokenizer.ggml.model": "llama"}) == "default"


def test_a_bundle_made_by_fetch_carries_gpt2s_pre_tokenizer(
    tiny_model: Path, isolated_home: Path
) -> None:
    installed = fetch(from_dir=tiny_model, install=True).installed
    assert installed is not None
    meta = read_metadata(locate.from_dir(installed).text)
    assert meta[reference.PRE_TOKENIZER_KEY] == reference.GPT2_PRE_TOKENIZER


@pytest.mark.slow
def test_describe_verbose_shows_no_degraded_generation_warning(
    tiny_model: Path, photo: Path
) -> None:
    done = run_mdream("describe", photo, "-m", tiny_model, "--verbose", "-n", "2")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    log = done.stderr.decode(errors="replace")
    assert "pre-tokenizer" in log or "load_model" in log or "llama_model_loader" in log  # verbose
    assert "GENERATION QUALITY WILL BE DEGRADED" not in log
