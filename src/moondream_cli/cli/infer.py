"""`mdream describe` and `mdream ask`: one record per (image, question), over many inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import grammars
from ..errors import UsageError
from ..prompts import ASK_MAX_TOKENS, Length, Style, describe_task
from ..settings import (
    ClusterOptions,
    ConsoleOptions,
    InputOptions,
    ModelOptions,
    OutputOptions,
    SamplingOptions,
    Settings,
)
from .options import with_groups

if TYPE_CHECKING:
    from ..job import Job

# What describe and ask take: every group, the cluster's included.
INFERENCE_GROUPS = (
    InputOptions,
    OutputOptions,
    ModelOptions,
    SamplingOptions,
    ClusterOptions,
    ConsoleOptions,
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


def register_inference_commands(app: typer.Typer) -> None:
    app.command(epilog=DESCRIBE_EPILOG)(with_groups(*INFERENCE_GROUPS)(describe))
    app.command(epilog=ASK_EPILOG)(with_groups(*INFERENCE_GROUPS)(ask))


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
        Length | None,
        typer.Option("--length", "-l", help="Caption length. Default: normal.", show_default=False),
    ] = None,
    style: Annotated[
        Style,
        typer.Option(
            "--style",
            "-s",
            help="caption (sentences; the default) or tags (comma-separated, for text-to-image).",
        ),
    ] = Style.CAPTION,
    settings: Settings,
) -> None:
    """Describe each image in words (or as tags)."""
    from ..job import Job

    if style is Style.TAGS and length is not None:
        raise UsageError("--length applies to captions; --style tags has its own length")
    task = describe_task(style, length or Length.NORMAL)
    _run(Job(tuple(images or ()), (task.question,), settings, task.max_tokens))


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
            metavar="TEXT",
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
    settings: Settings,
) -> None:
    """Answer a question about each image."""
    from ..job import Job

    if choices is not None and json_schema is not None:
        raise UsageError("use --choices or --json-schema, not both")
    constraint = None
    if choices is not None:
        constraint = grammars.choices_constraint(grammars.parse_choices(as_text(choices)))
    elif json_schema is not None:
        constraint = grammars.schema_constraint(json_schema)
    images, questions = _split_ask_args(
        list(args or []), question, constraint, has_list=settings.inputs.files_from is not None
    )
    _run(Job(tuple(images), tuple(questions), settings, ASK_MAX_TOKENS, constraint))


def _split_ask_args(
    args: list[str],
    question: list[str] | None,
    constraint: grammars.Constraint | None,
    *,
    has_list: bool,
) -> tuple[list[str], list[str]]:
    """(images, questions) from ``ask``'s arguments: the last one is the question, unless -q
    gives them or a structured answer needs none."""
    if question:
        return args, [as_text(q) for q in question]
    if constraint is not None and args and (len(args) == 1 or _names_an_input(args[-1])):
        # A structured answer needs no question: ask what the schema or the choices say.
        return args, [constraint.default_question]
    if not args or (len(args) < 2 and not has_list):
        raise UsageError('ask needs an image and a question: mdream ask IMAGE "QUESTION"')
    if _looks_like_a_path(args[-1]):
        raise UsageError(
            f"the last argument is the question, but {as_text(args[-1])!r} looks like a path — "
            'add the question: mdream ask IMAGE... "QUESTION" (or use -q)'
        )
    return args[:-1], [as_text(args[-1])]


def as_text(arg: str) -> str:
    """A command-line argument as the text the user typed. Under a non-UTF-8 locale Python
    keeps the UTF-8 bytes of "très" as surrogates, which no tokenizer takes: they are read as
    UTF-8 again (anything still undecodable becomes U+FFFD)."""
    return os.fsencode(arg).decode("utf-8", errors="replace")


def _run(job: Job) -> None:
    """Run the job with stdout claimed for results and the network forbidden; exit 1 when an
    input failed (each was reported as it failed)."""
    from .. import guard
    from ..backends import backend_for
    from ..driver import run_job
    from ..engine import native
    from ..errors import EXIT_INPUT, Failed
    from .output import Output, claim_stdout

    if "-" in job.inputs and _isatty(sys.stdin):
        raise UsageError(
            "'-' reads an image from stdin, and stdin is this terminal: pipe one in "
            "(cat photo.jpg | mdream describe -)"
        )
    backend_for(job.settings).preflight(job)  # a cluster's address, before the guard
    guard.forbid_network()
    out = claim_stdout(needed=job.fmt is not None)
    with Output(quiet=job.settings.console.quiet) as output:
        native.set_log_writer(output.native_log)
        if job.settings.inputs.files_from == "-" and _isatty(sys.stdin):
            output.info("reading image paths from the terminal, one a line; Ctrl-D ends them")
        outcome = run_job(job, out, output)
    if outcome.failed:
        raise Failed(f"{outcome.failed} of {outcome.seen} inputs failed", EXIT_INPUT)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream is not None and stream.isatty())  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return False


def _names_an_image(text: str) -> bool:
    from ..images import EXTENSIONS

    return os.path.splitext(text)[1].lower() in EXTENSIONS and os.path.isfile(text)


def _names_an_input(text: str) -> bool:
    return text == "-" or _names_an_image(text) or os.path.isdir(text)


def _looks_like_a_path(text: str) -> bool:
    """An existing file or folder, a name ending in a slash, or a single word with an image
    suffix (``missing.jpg``): not a question."""
    from ..images import EXTENSIONS

    if text == "-" or os.path.exists(text) or text.endswith(("/", os.sep)):
        return True
    return len(text.split()) == 1 and os.path.splitext(text)[1].lower() in EXTENSIONS


__all__ = ["register_inference_commands"]
