"""`mdream describe` and `mdream ask`: one record per (image, question), over many inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .. import grammars
from ..errors import UsageError
from ..prompts import DESCRIBE_MAX_TOKENS, LENGTHS, TAGS_QUESTION, describe_question
from .batch import Job, run_job
from .common import (
    BatchOpt,
    CpuOpt,
    MaxTokensOpt,
    ModelDirOpt,
    QuietOpt,
    SeedOpt,
    TemperatureOpt,
    ThreadsOpt,
    VerboseOpt,
)

DESCRIBE_EPILOG = """Examples:

  mdream describe photo.jpg

  mdream describe --length short photo.jpg

  mdream describe photos/ -r --format jsonl > captions.jsonl

  mdream describe *.jpg --format csv

  find . -name '*.png' -print0 | mdream describe --files-from - -0

  mdream describe dataset/ -r --sidecar      # img.txt beside img.jpg; existing ones are kept

  mdream describe --style tags img.png

  cat photo.jpg | mdream describe -
"""

ASK_EPILOG = """Examples:

  mdream ask menu.png "What dishes are listed?"

  mdream ask photo.jpg -q "Who is in it?" -q "Where was it taken?" --format jsonl

  mdream ask shop/ -r "Is there a price tag?" --choices yes,no --format tsv |
  awk -F'\\t' '$2=="yes"'

  mdream ask receipt.jpg --json-schema receipt.schema.json
"""

STYLES = ("caption", "tags")
TAGS_MAX_TOKENS = 128

# -- options shared by describe and ask ------------------------------------------------------
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-r", help="Descend into subfolders of folder arguments.")
]
FilesFromOpt = Annotated[
    str | None,
    typer.Option(
        "--files-from",
        help="Read image paths from FILE ('-': stdin), one per line (NUL-separated with -0).",
        metavar="FILE",
        show_default=False,
    ),
]
NullOpt = Annotated[
    bool, typer.Option("--null", "-0", help="--files-from entries end in NUL (find -print0).")
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="Output: text (default), jsonl, csv or tsv. With --sidecar and no --format: none.",
        show_default=False,
    ),
]
SidecarOpt = Annotated[
    bool,
    typer.Option("--sidecar", help="Write each answer beside its image (img.jpg → img.txt)."),
]
ExtOpt = Annotated[str, typer.Option("--ext", help="Sidecar file suffix.", metavar="EXT")]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace existing sidecars (default: keep them, skip the image)."
    ),
]
FailFastOpt = Annotated[
    bool, typer.Option("--fail-fast", help="Stop at the first input that fails.")
]


def register(app: typer.Typer) -> None:
    app.command(epilog=DESCRIBE_EPILOG)(describe)
    app.command(epilog=ASK_EPILOG)(ask)


def describe(
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="Image files or folders; '-' reads one image's bytes from stdin.",
            show_default=False,
            metavar="IMAGE...",
        ),
    ] = None,
    *,
    length: Annotated[
        str, typer.Option("--length", "-l", help=f"Caption length: {', '.join(LENGTHS)}.")
    ] = "normal",
    style: Annotated[
        str,
        typer.Option(
            "--style",
            "-s",
            help="caption (sentences) or tags (comma-separated, for text-to-image).",
        ),
    ] = "caption",
    recursive: RecursiveOpt = False,
    files_from: FilesFromOpt = None,
    null: NullOpt = False,
    fmt: FormatOpt = None,
    sidecar: SidecarOpt = False,
    ext: ExtOpt = ".txt",
    overwrite: OverwriteOpt = False,
    fail_fast: FailFastOpt = False,
    model_dir: ModelDirOpt = None,
    cpu: CpuOpt = False,
    threads: ThreadsOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = None,
    batch: BatchOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Describe each image in words (or as tags)."""
    if style == "caption":
        question, default_tokens = describe_question(length), DESCRIBE_MAX_TOKENS[length]
    elif style == "tags":
        question, default_tokens = TAGS_QUESTION, TAGS_MAX_TOKENS
    else:
        raise UsageError(f"--style must be one of {', '.join(STYLES)}, not {style!r}")
    run_job(
        Job(
            args=list(images or []),
            questions=[question],
            recursive=recursive,
            files_from=files_from,
            null=null,
            fmt=fmt,
            sidecar=sidecar,
            ext=ext,
            overwrite=overwrite,
            fail_fast=fail_fast,
            quiet=quiet,
        ),
        model_dir=model_dir,
        cpu=cpu,
        threads=threads,
        max_tokens=max_tokens or default_tokens,
        temperature=temperature,
        seed=seed,
        batch=batch,
        verbose=verbose,
    )


def ask(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="IMAGE... QUESTION: the last argument is the question, unless -q is given. "
            "Images may be folders; '-' reads one image's bytes from stdin.",
            show_default=False,
            metavar="IMAGE... [QUESTION]",
        ),
    ] = None,
    *,
    question: Annotated[
        list[str] | None,
        typer.Option(
            "--question",
            "-q",
            help="A question; repeat for several. Then every argument is an image.",
        ),
    ] = None,
    choices: Annotated[
        str | None,
        typer.Option(
            "--choices",
            help="Comma-separated answers; the answer is exactly one of them (grammar-enforced).",
            metavar="A,B,...",
            show_default=False,
        ),
    ] = None,
    json_schema: Annotated[
        Path | None,
        typer.Option(
            "--json-schema",
            help="JSON Schema file; the answer is JSON valid against it (grammar-enforced).",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    recursive: RecursiveOpt = False,
    files_from: FilesFromOpt = None,
    null: NullOpt = False,
    fmt: FormatOpt = None,
    sidecar: SidecarOpt = False,
    ext: ExtOpt = ".txt",
    overwrite: OverwriteOpt = False,
    fail_fast: FailFastOpt = False,
    model_dir: ModelDirOpt = None,
    cpu: CpuOpt = False,
    threads: ThreadsOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = None,
    batch: BatchOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about each image."""
    args = list(args or [])
    if choices is not None and json_schema is not None:
        raise UsageError("use --choices or --json-schema, not both")
    constraint = None
    if choices is not None:
        constraint = grammars.choices_constraint(grammars.parse_choices(choices))
    elif json_schema is not None:
        constraint = grammars.schema_constraint(json_schema)
    if question:
        images, questions = args, list(question)
    elif constraint is not None and args and (len(args) == 1 or _names_an_input(args[-1])):
        # A structured answer needs no question: ask what the schema or the choices say.
        images, questions = args, [constraint.default_question]
    elif not args or (len(args) < 2 and files_from is None):
        raise UsageError('ask needs an image and a question: mdream ask IMAGE "QUESTION"')
    else:
        images, questions = args[:-1], [args[-1]]
        if _names_an_image(args[-1]):
            raise UsageError(
                f"the last argument is the question, but {args[-1]!r} is an image file — "
                'add the question: mdream ask IMAGE... "QUESTION" (or use -q)'
            )
    if any(not q.strip() for q in questions):
        raise UsageError("the question is empty")
    run_job(
        Job(
            args=images,
            questions=questions,
            recursive=recursive,
            files_from=files_from,
            null=null,
            fmt=fmt,
            sidecar=sidecar,
            ext=ext,
            overwrite=overwrite,
            fail_fast=fail_fast,
            quiet=quiet,
            constraint=constraint,
        ),
        model_dir=model_dir,
        cpu=cpu,
        threads=threads,
        max_tokens=max_tokens or 256,
        temperature=temperature,
        seed=seed,
        batch=batch,
        verbose=verbose,
    )


def _names_an_image(text: str) -> bool:
    from ..images import EXTENSIONS

    return os.path.splitext(text)[1].lower() in EXTENSIONS and os.path.isfile(text)


def _names_an_input(text: str) -> bool:
    return text == "-" or _names_an_image(text) or os.path.isdir(text)


__all__ = ["register"]
