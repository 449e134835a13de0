"""The root `mdream` command and the process's single exit point."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from .. import __version__, interrupt
from ..errors import EXIT_USAGE, MdreamError
from . import bundles, doctor, infer

app = typer.Typer(
    name="mdream",
    help="Run Moondream2 on your own machine: the image never leaves the process.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"mdream {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Run Moondream2 on your own machine: the image never leaves the process.

    Exit codes: 0 ok, 1 an input failed, 2 usage, 3 model missing or invalid,
    4 network access attempted during inference, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM).
    """


infer.register(app)
bundles.register(app)
doctor.register(app)


def _error(message: str) -> None:
    sys.stderr.write(f"mdream: error: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, map every failure to one line and one exit code."""
    debug = os.environ.get("MDREAM_DEBUG") == "1"
    interrupt.install()
    try:
        code = app(args=argv, prog_name="mdream", standalone_mode=False)
    except MdreamError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        # Inside a command Typer already turns Ctrl-C into exit 130 (and the batch runner says
        # so); this catches it outside one, e.g. while the command line is parsed.
        sys.stderr.write(f"mdream: {interrupt.reason()}\n")
        code = interrupt.exit_code()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, keep Python from complaining at exit.
        _silence_stdout()
        code = 0
    except typer.exceptions.TyperException as exc:  # usage errors from the parser
        if debug:
            traceback.print_exc()
        message = exc.format_message()
        if message:
            _error(message)
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            sys.stderr.write(f"Try '{ctx.command_path} --help' for help.\n")
        code = getattr(exc, "exit_code", EXIT_USAGE) or EXIT_USAGE
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(code if isinstance(code, int) else 0)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
