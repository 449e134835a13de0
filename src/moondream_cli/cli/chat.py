"""`mdream chat IMAGE`: a conversation about one image, in a terminal or through a pipe."""

from __future__ import annotations

import contextlib
import json
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Literal, TextIO

import typer

from ..errors import EXIT_INPUT, EXIT_INTERRUPTED, Failed, InputError, UsageError
from ..settings import ConsoleOptions, ModelOptions, SamplingOptions, Settings
from .options import with_groups

if TYPE_CHECKING:
    from ..chat import Conversation
    from ..loader import OpenModel
    from .output import Output

EPILOG = """Examples:

  mdream chat photo.jpg

  printf 'What is it?\\nWhat colour is it?\\n' | mdream chat photo.jpg

  mdream chat menu.png --format jsonl < questions.txt > answers.jsonl

In a terminal: each answer streams as it is written; /image PATH opens another image (the
conversation starts over), /clear forgets the turns, /help, /quit. Ctrl-C stops an answer
and keeps the conversation; Ctrl-C at the prompt or Ctrl-D leaves. Nothing is kept: no
history file, no log. From a pipe: one question a line, one answer a line on stdout.
"""

HELP = (
    "questions about the image, one a line; /image PATH opens another image, /clear forgets "
    "the turns, /quit leaves (so do Ctrl-D and Ctrl-C at the prompt); Ctrl-C stops an answer"
)


class ChatFormat(str, Enum):
    TEXT = "text"
    JSONL = "jsonl"


def register_chat_command(app: typer.Typer) -> None:
    groups = with_groups(ModelOptions, SamplingOptions, ConsoleOptions)
    app.command("chat", epilog=EPILOG)(groups(chat_command))


def chat_command(
    image: Annotated[
        str,
        typer.Argument(
            help="The image to talk about: a file (stdin carries the questions).",
            metavar="IMAGE",
        ),
    ],
    *,
    fmt: Annotated[
        ChatFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="With stdin not a terminal: one answer a line "
            "(text, the default) or one JSON record a turn (jsonl).",
            show_default=False,
        ),
    ] = None,
    settings: Settings,
) -> None:
    """Talk about one image: follow-up questions keep the conversation, as the reference did."""
    from .. import guard
    from ..engine import native
    from ..loader import open_model
    from ..prompts import ASK_MAX_TOKENS
    from .output import Output, claim_stdout

    if image == "-":
        raise UsageError("chat reads its questions from stdin: give the image as a file")
    terminal = _isatty(sys.stdin)
    if terminal and fmt is not None:
        raise UsageError("--format applies when the questions come from a pipe, not a terminal")
    guard.forbid_network()
    out = claim_stdout()
    with Output(quiet=settings.console.quiet) as output:
        native.set_log_writer(output.native_log)
        with open_model(settings, max_tokens=ASK_MAX_TOKENS, batch=1) as model:
            if model.gpu_warning:
                output.warn(model.gpu_warning)
            conversation = _open(model, image)
            if terminal:
                _interactive(model, conversation, image, out, output)
            else:
                failed = _piped(model, conversation, out, output, fmt or ChatFormat.TEXT)
                if failed:
                    raise Failed(f"{failed} questions failed", EXIT_INPUT)


def _open(model: OpenModel, image: str) -> Conversation:
    from ..chat import Conversation
    from ..images import prepare

    return Conversation(model.engine, prepare(image, model.preparation), model.sampling)


def _interactive(
    model: OpenModel, conversation: Conversation, image: str, out: TextIO, output: Output
) -> None:
    from .. import interrupt
    from ..records import escape_controls, escape_line

    _line_editing()
    output.info(f"talking about {escape_line(image)}: {HELP}")
    told = 0
    while True:
        try:
            sys.stderr.write(f"{escape_line(image)}> ")  # stdout carries answers only
            sys.stderr.flush()
            line = input().strip()
        except EOFError:
            sys.stderr.write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            swapped = _command(line, model, conversation, output)
            if swapped == "quit":
                return
            if isinstance(swapped, tuple):
                conversation, image = swapped
            continue

        def stream(text: str) -> None:
            out.write(escape_controls(text))
            out.flush()

        try:
            conversation.ask(line, on_text=stream)
        except KeyboardInterrupt:
            if interrupt.exit_code() != EXIT_INTERRUPTED:
                raise  # SIGTERM ends the session
            out.write("\n")
            output.info("stopped (the conversation is as it was; Ctrl-C at the prompt leaves)")
            continue
        except InputError as exc:
            output.error(str(exc))
            continue
        out.write("\n")
        out.flush()
        if conversation.dropped > told:
            told = conversation.dropped
            output.info("the conversation outgrew the context: its oldest turns were dropped")


def _command(
    line: str, model: OpenModel, conversation: Conversation, output: Output
) -> Literal["quit"] | tuple[Conversation, str] | None:
    """A slash command: "quit", a new (conversation, image) for /image, or None."""
    from ..records import escape_line

    word, _, rest = line.partition(" ")
    if word in ("/quit", "/exit", "/q"):
        return "quit"
    if word == "/help":
        output.info(HELP)
    elif word == "/clear":
        conversation.clear()
        output.info("the turns are forgotten; the image stays")
    elif word == "/image" and rest.strip():
        try:
            swapped = (_open(model, rest.strip()), rest.strip())
        except InputError as exc:
            output.error(str(exc))
            return None
        output.info(f"talking about {escape_line(rest.strip())}; the conversation starts over")
        return swapped
    else:
        output.error(f"unknown command {escape_line(word)} — /help lists them")
    return None


def _piped(
    model: OpenModel, conversation: Conversation, out: TextIO, output: Output, fmt: ChatFormat
) -> int:
    from ..records import escape

    failed = 0
    for turn, raw in enumerate(sys.stdin.buffer, start=1):
        question = raw.decode("utf-8", errors="replace").strip()
        if not question:
            continue
        error: str | None = None
        answer: str | None = None
        try:
            answer = conversation.ask(question)
        except InputError as exc:
            error, failed = str(exc), failed + 1
            output.error(f"turn {turn}: {exc}")
        if fmt is ChatFormat.JSONL:
            record = {"turn": turn, "question": question, "answer": answer, "error": error}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif answer is not None:
            out.write(escape(answer) + "\n")
        out.flush()
    return failed


def _line_editing() -> None:
    """Arrows and history within the session (readline), never a history file: nothing
    here reads or writes one, and Python writes one only for its own interactive prompt."""
    with contextlib.suppress(ImportError):  # Windows without it: plain input still works
        import readline  # noqa: F401  (importing it is what turns line editing on)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
