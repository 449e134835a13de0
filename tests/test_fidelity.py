"""What reaches the model is what the reference fed it (README, "Fidelity"): the stripped image
stretched to the projector's square with Pillow's bicubic filter, and the greedy answer equal
to llama.cpp's own ``llama-mtmd-cli`` given those pixels (built by ``make bench-ref``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, draw_photo
from moondream_cli import Moondream
from moondream_cli.engine import Engine, EngineOptions, Sampling, native
from moondream_cli.images import Prepare, load_image
from moondream_cli.inputs import expand
from moondream_cli.locate import find_pair
from moondream_cli.reference import Fit
from moondream_cli.runner import answer_inputs
from moondream_cli.settings import ModelOptions, Settings

# Random weights leave the top two logits within 0.01 of each other at some steps (0.004 to
# 0.009 at steps 1 and 11 of this answer), and the pip-built library and the CMake-built CLI
# round differently enough to flip the later one: 8 tokens, every one a real choice.
TOKENS = 8
QUESTION = "What's in this picture?"  # an apostrophe: the tokenizer fix is part of the answer
MTMD_CLI = Path(
    os.environ.get("MDREAM_MTMD_CLI", ROOT / ".cache" / "bench-ref" / "bin" / "llama-mtmd-cli")
)


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bytes]]:
    """Every (width, height, RGB bytes) handed to libmtmd's tokenizer, which then calls on."""
    seen: list[tuple[int, int, bytes]] = []
    real = native.Projector.tokenize

    def recording(
        self: native.Projector, text: bytes, width: int, height: int, rgb: bytes
    ) -> native.Chunks:
        seen.append((width, height, bytes(rgb)))
        return real(self, text, width, height, rgb)

    monkeypatch.setattr(native.Projector, "tokenize", recording)
    return seen


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    path = tmp_path / "wide.png"
    draw_photo((160, 90)).save(path)
    return path


def _stretched(path: Path, size: int) -> bytes:
    return load_image(path).to_image().resize((size, size), Image.Resampling.BICUBIC).tobytes()


def test_the_api_hands_libmtmd_the_bicubic_stretch(
    tiny_model: Path, wide: Path, handed: list[tuple[int, int, bytes]]
) -> None:
    with Moondream(tiny_model, settings=Settings(model=ModelOptions(threads=1, cpu=True))) as md:
        size = md.engine.image_size
        assert size == 56  # the tiny mmproj's clip.vision.image_size, read from its header
        md.ask(wide, QUESTION, sampling=Sampling(max_tokens=2))
    assert handed == [(56, 56, _stretched(wide, 56))]


def test_a_folder_run_hands_libmtmd_the_bicubic_stretch_unless_told_to_letterbox(
    tiny_model: Path, wide: Path, handed: list[tuple[int, int, bytes]]
) -> None:
    sampling = Sampling(max_tokens=2)
    for fit in (Fit.STRETCH, Fit.LETTERBOX):
        options = EngineOptions(threads=1, gpu=False, fit=fit)
        with Engine(find_pair(tiny_model), options) as engine:
            sources = expand([str(wide)])
            how = Prepare(56, engine.fit)
            results = answer_inputs(sources, [QUESTION], engine, sampling, preparation=how)
            assert all(r.records[0].ok for r in results)
    stretched, letterboxed = handed
    assert stretched == (56, 56, _stretched(wide, 56))
    assert letterboxed == (160, 90, load_image(wide).data)  # libmtmd pads it itself


def test_pixels_given_at_any_size_are_stretched_by_the_engine_itself(
    tiny_model: Path, wide: Path, handed: list[tuple[int, int, bytes]]
) -> None:
    with Engine(find_pair(tiny_model), EngineOptions(threads=1, gpu=False)) as engine:
        engine.set_image(load_image(wide))
    assert handed == [(56, 56, _stretched(wide, 56))]


# Random weights leave the top logits nearly tied, so both sides must compute alike: flash
# attention off in both models, the same micro-batch and threads (bench/README.md, knobs).
SAME_MATH = EngineOptions(
    threads=2, gpu=False, flash_attn=False, vision_flash_attn=False, n_ubatch=256, batch=1
)


@pytest.fixture(scope="module")
def mdream_answer(tiny_model: Path) -> Iterator[tuple[Path, str]]:
    """(the tiny model, mdream's greedy answer about a 16:9 picture, through the engine)."""
    with Engine(find_pair(tiny_model), SAME_MATH) as engine:
        pixels = load_image(draw_photo((160, 90)), size=engine.image_size)
        engine.set_image(pixels)
        yield tiny_model, engine.ask(QUESTION, Sampling(max_tokens=TOKENS))


@pytest.mark.slow
def test_the_greedy_answer_is_llama_mtmd_clis_on_the_pre_stretched_image(
    mdream_answer: tuple[Path, str], tmp_path: Path
) -> None:
    if not MTMD_CLI.is_file():
        pytest.skip(f"{MTMD_CLI} is not built: run `make bench-ref` (CI does)")
    model, answer = mdream_answer
    files = find_pair(model)
    square = tmp_path / "square.png"  # the reference's pixels, which libmtmd copies unchanged
    load_image(draw_photo((160, 90)), size=56).to_image().save(square)
    # The prompt mdream sends (prompts.question_prompt), as a template that renders it raw.
    template = "{{ messages[0]['content'] }}"
    prompt = f"<__media__>\n\nQuestion: {QUESTION}\n\nAnswer:"
    args = ["-m", files.text, "--mmproj", files.mmproj, "--image", square, "-p", prompt]
    args += ["--jinja", "--chat-template", template, "--temp", "0", "--top-k", "1"]
    args += ["-n", str(TOKENS), "-t", "2", "-c", "2304", "-fa", "off", "-ub", "256", "-b", "1024"]
    args += ["--no-warmup"]
    args += ["--override-kv", "tokenizer.ggml.pre=str:gpt-2"]  # mdream's load-time fix
    done = subprocess.run(
        [str(MTMD_CLI), *map(str, args)], capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    theirs = done.stdout.decode("utf-8", errors="replace").strip()
    assert answer and theirs == answer
