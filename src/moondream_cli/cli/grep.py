"""`mdream grep`: the paths of the images that show what you ask for, grep-style."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import EXIT_NETWORK, EXIT_USAGE, Failed, MdreamError, UsageError
from ..search import GrepFormat, GrepOutcome, GrepPolicy
from ..settings import ClusterOptions, ConsoleOptions, InputOptions, ModelOptions, Settings
from .options import flag, number, with_groups

EPILOG = """Examples:

  mdream grep "a receipt" ~/Pictures -r

  mdream grep "a dog on a beach" photos/ -r --sort --scores | head

  mdream grep -e "a cat" -e "a dog" photos/ -r -c

  mdream grep --question "Is the text handwritten?" scans/

  find photos -name '*.jpg' -print0 | mdream grep -Z "a red car" --files-from - -0 | xargs -0 ls -l

  mdream grep "a screenshot of a contract" docs/ -r --format jsonl > scores.jsonl

Exit codes, as grep's: 0 an image matched, 1 none did, 2 an error (a bad image, a usage
error, no model); 4 network access attempted; 130/143 interrupted.
"""

# grep's -v is --invert-match: here --verbose keeps only its long name.
GREP_CONSOLE = {
    "verbose": Annotated[
        bool, flag("--verbose", help="Show llama.cpp and libmtmd log lines on stderr.")
    ]
}


def register_grep_command(app: typer.Typer) -> None:
    groups = with_groups(
        InputOptions, ModelOptions, ClusterOptions, ConsoleOptions, replace=GREP_CONSOLE
    )
    app.command("grep", epilog=EPILOG)(groups(grep_command))


def grep_command(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="QUERY, then image files or folders ('-': one image's bytes on stdin). "
            "With -e every argument is an image.",
            metavar="QUERY [IMAGE...]",
            show_default=False,
        ),
    ] = None,
    *,
    query: Annotated[
        list[str] | None,
        typer.Option(
            "-e", "--query", help="A query; repeat for several (any may match).", metavar="TEXT"
        ),
    ] = None,
    question: Annotated[
        bool,
        flag("--question", help="Queries are yes/no questions, asked as written."),
    ] = False,
    invert: Annotated[
        bool, flag("-v", "--invert-match", help="Print the images that do not match.")
    ] = False,
    count: Annotated[bool, flag("-c", "--count", help="Print how many images match.")] = False,
    print0: Annotated[
        bool, flag("-Z", "--print0", help="End each path with NUL, not a newline (xargs -0).")
    ] = False,
    min_p: Annotated[
        float,
        number(
            "--min-p", metavar="P", help="A score (0–1) at or above this matches. Default: 0.5."
        ),
    ] = 0.5,
    scores: Annotated[bool, flag("--scores", help="Print score<TAB>path.")] = False,
    top: Annotated[
        int | None, number("--top", metavar="K", help="The K best matches, best first.")
    ] = None,
    sort: Annotated[
        bool, flag("--sort", help="Best first (reads every image before printing).")
    ] = False,
    fmt: Annotated[
        GrepFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="One record per image with every query's score.",
            show_default=False,
        ),
    ] = None,
    settings: Settings,
) -> None:
    """Print the images that show what QUERY says, ranked by the model's own probability."""
    from .infer import as_text

    args = list(args or [])
    queries = [as_text(q) for q in query] if query else ([as_text(args.pop(0))] if args else [])
    if not queries or any(not q.strip() for q in queries):
        raise UsageError('grep needs a query: mdream grep "a receipt" IMAGE|FOLDER...')
    if not 0.0 <= min_p <= 1.0:
        raise UsageError(f"--min-p is a probability from 0 to 1, not {min_p:g}")
    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if count and (scores or fmt is not None):
        raise UsageError("-c counts: it takes no --scores or --format")
    policy = GrepPolicy(tuple(queries), min_p, invert, count, print0, scores, top, sort, fmt)
    try:
        outcome = _run(args, policy, question, settings)
    except MdreamError as exc:
        # grep's convention: 2 for any trouble; the network guard and signals keep theirs.
        if exc.exit_code not in (0, EXIT_NETWORK, 130, 143):
            exc.exit_code = EXIT_USAGE
        raise
    if outcome.failed:
        raise Failed(f"{outcome.failed} of {outcome.seen} images failed", EXIT_USAGE)
    if not outcome.matched:
        raise Failed("nothing matched", 1)


def _run(images: list[str], policy: GrepPolicy, question: bool, settings: Settings) -> GrepOutcome:
    from .. import guard
    from ..backends import backend_for
    from ..engine import native
    from ..job import Job
    from ..prompts import grep_question
    from ..search import run_grep
    from .output import Output, claim_stdout

    asked = tuple(q if question else grep_question(q) for q in policy.queries)
    job = Job(tuple(images), asked, settings, 1, scoring=True)
    backend_for(settings).preflight(job)
    guard.forbid_network()
    out = claim_stdout()
    with Output(quiet=settings.console.quiet) as output:
        native.set_log_writer(output.native_log)
        return run_grep(job, policy, out, output)
