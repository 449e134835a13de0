"""`mdream describe` and `mdream ask`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from ..errors import EXIT_INPUT, InputError, MdreamError, UsageError
from ..prompts import DESCRIBE_MAX_TOKENS, LENGTHS, describe_question
from .common import (
    CpuOpt,
    MaxTokensOpt,
    ModelDirOpt,
    QuietOpt,
    SeedOpt,
    TemperatureOpt,
    ThreadsOpt,
    VerboseOpt,
    claim_stdout,
)

DESCRIBE_EPILOG = """Examples:

  mdream describe photo.jpg

  mdream describe --length short photo.jpg

  mdream describe a.jpg b.png --model-dir ~/models/moondream2
"""

ASK_EPILOG = """Examples:

  mdream ask menu.png "What dishes are listed?"

  mdream ask photo.jpg -q "Who is in it?" -q "Where was it taken?"
"""


def register(app: typer.Typer) -> None:
    app.command(epilog=DESCRIBE_EPILOG)(describe)
    app.command(epilog=ASK_EPILOG)(ask)


def describe(
    images: Annotated[
        list[Path], typer.Argument(help="Image files.", show_default=False, metavar="IMAGE...")
    ],
    *,
    length: Annotated[
        str, typer.Option("--length", "-l", help=f"Caption length: {', '.join(LENGTHS)}.")
    ] = "normal",
    model_dir: ModelDirOpt = None,
    cpu: CpuOpt = False,
    threads: ThreadsOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Describe each image in words."""
    question = describe_question(length)
    _run(
        images,
        [question],
        model_dir=model_dir,
        cpu=cpu,
        threads=threads,
        max_tokens=max_tokens or DESCRIBE_MAX_TOKENS[length],
        temperature=temperature,
        seed=seed,
        verbose=verbose,
    )


def ask(
    args: Annotated[
        list[str],
        typer.Argument(
            help="IMAGE... QUESTION: the last argument is the question, unless -q is given.",
            show_default=False,
            metavar="IMAGE... [QUESTION]",
        ),
    ],
    *,
    question: Annotated[
        list[str] | None,
        typer.Option(
            "--question",
            "-q",
            help="A question; repeat for several. Then every argument is an image.",
        ),
    ] = None,
    model_dir: ModelDirOpt = None,
    cpu: CpuOpt = False,
    threads: ThreadsOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about each image."""
    if question:
        images, questions = args, list(question)
    elif len(args) < 2:
        raise UsageError('ask needs an image and a question: mdream ask IMAGE "QUESTION"')
    else:
        images, questions = args[:-1], [args[-1]]
    if any(not q.strip() for q in questions):
        raise UsageError("the question is empty")
    _run(
        [Path(p) for p in images],
        questions,
        model_dir=model_dir,
        cpu=cpu,
        threads=threads,
        max_tokens=max_tokens or 256,
        temperature=temperature,
        seed=seed,
        verbose=verbose,
    )


def _run(
    images: list[Path],
    questions: list[str],
    *,
    model_dir: Path | None,
    cpu: bool,
    threads: int | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    verbose: bool,
) -> None:
    from .. import guard

    guard.forbid_network()
    out = claim_stdout()
    # Heavy imports only now: `mdream --help` must not load llama_cpp.
    from ..api import Moondream
    from ..engine import EngineOptions, Sampling
    from ..images import load_image

    options = EngineOptions(threads=threads, gpu=not cpu, verbose=verbose)
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed)
    single = len(images) == 1 and len(questions) == 1
    stream = single and out.isatty()
    failed = 0
    with Moondream(model_dir, options=options) as md:
        for image in images:
            try:
                pixels = load_image(image)
                for q in questions:
                    if stream:
                        md.ask(pixels, q, sampling=sampling, on_text=lambda t: _write(out, t))
                        _write(out, "\n")
                        continue
                    answer = md.ask(pixels, q, sampling=sampling)
                    _emit(out, image, q, answer, single=single, many_questions=len(questions) > 1)
            except InputError as exc:
                if exc.path is None:
                    exc.path = str(image)
                if single:
                    raise
                failed += 1
                sys.stderr.write(f"mdream: error: {exc}\n")
    out.flush()
    if failed:
        raise typer.Exit(EXIT_INPUT)


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()


def _emit(
    out: TextIO, image: Path, question: str, answer: str, *, single: bool, many_questions: bool
) -> None:
    if single:
        out.write(answer + "\n")
        return
    fields = [str(image)] + ([question] if many_questions else []) + [answer]
    out.write("\t".join(_escape(f) for f in fields) + "\n")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


__all__ = ["MdreamError", "register"]
