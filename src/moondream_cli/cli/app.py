"""The root `mdream` command and the process's single exit point.

Every command raises; :func:`main` turns what it raised into one line on stderr (through
``cli/output.py``) and the documented exit code. Ctrl-C, SIGTERM and a closed stdout are
turned into errors too, at each command's edge (:func:`_mapped`), before Typer would turn them
into exit codes of its own.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from .. import __version__, interrupt
from ..errors import EXIT_INTERRUPTED, EXIT_USAGE, MdreamError, OutputClosed, OutputError
from . import bundles, chat, doctor, grep, infer
from .help import Command, Group
from .output import ClosedStdout, Output, results, silence_stdout


def _mapped(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command``, with Ctrl-C/SIGTERM raised as ``Interrupted`` and a reader that went
    away as ``OutputClosed``: Typer would otherwise exit 130 silently and 1 on EPIPE."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise interrupt.stopped() from None
        except BrokenPipeError:
            raise OutputClosed("the reader of stdout went away") from None

    return run


app = typer.Typer(
    name="mdream",
    help="Run Moondream2 on your own machine: the image never leaves the process.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=Group,
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


def _map_every_command(group: typer.Typer) -> None:
    for info in group.registered_commands:
        if info.callback is not None:
            info.callback = _mapped(info.callback)
        if info.cls in (None, TyperCommand):
            info.cls = Command
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            if sub.cls in (None, TyperGroup):
                sub.cls = Group
            _map_every_command(sub.typer_instance)


infer.register_inference_commands(app)
grep.register_grep_command(app)
chat.register_chat_command(app)
bundles.register_bundle_commands(app)
doctor.register_doctor_command(app)
_map_every_command(app)


def _usage_message(exc: Exception) -> str | None:
    """The parser's complaint as one line that ends by naming the help to read; None after
    the help itself was shown (plain `mdream`)."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        return None
    if type(exc).__name__ == "NoSuchOption":
        option = str(getattr(exc, "option_name", ""))
        known = list(getattr(exc, "possibilities", None) or [])
        if ctx is not None:
            known += [o for p in ctx.command.get_params(ctx) for o in p.opts]
        close = difflib.get_close_matches(option, known, n=1, cutoff=0.75)
        message = f"no such option: {option}" + (f" (did you mean {close[0]}?)" if close else "")
    else:
        message = str(getattr(exc, "format_message", lambda: str(exc))())
        message = message.replace("Value error, ", "").rstrip(".")
    if ctx is not None:
        message += f" — see '{ctx.command_path} --help'"
    return message


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, map every failure to one line and one exit code."""
    debug = os.environ.get("MDREAM_DEBUG") == "1"
    interrupt.install_handlers()
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        sys.stdout = ClosedStdout()  # also holds fd 1, so no file opened later lands there
    output = Output(live=False)
    try:
        code = app(args=argv, prog_name="mdream", standalone_mode=False)
        if code == EXIT_INTERRUPTED:
            # Typer answers a KeyboardInterrupt outside a command (while it parses the command
            # line, before `_mapped` runs) with a silent 130, SIGTERM's too. Commands return
            # nothing, so a 130 can only be that.
            raise KeyboardInterrupt
    except MdreamError as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, (OutputClosed, OutputError)):
            silence_stdout()  # what is still buffered can go nowhere: not a second error
        output.report(exc)
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except BrokenPipeError:  # outside a command: `mdream --help | head -1`
        silence_stdout()
        code = 0
    except (KeyboardInterrupt, typer.Abort):
        # Outside a command, e.g. while the command line is parsed.
        output.report(interrupt.stopped())
        code = interrupt.exit_code()
    except typer.exceptions.TyperException as exc:  # usage errors from the parser
        if debug:
            traceback.print_exc()
        message = _usage_message(exc)
        if message:
            output.error(message)
        code = getattr(exc, "exit_code", EXIT_USAGE) or EXIT_USAGE
    try:
        results().flush()
    except BrokenPipeError:
        silence_stdout()
    except (OSError, ValueError) as exc:  # a full disk or /dev/full behind stdout
        silence_stdout()
        output.report(OutputError(f"cannot write the results to stdout: {exc}"))
        code = OutputError.exit_code
    sys.exit(code if isinstance(code, int) else 0)
