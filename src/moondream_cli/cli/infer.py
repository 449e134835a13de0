"""`mdream describe` and `mdream ask`: one record per (image, question), over many inputs."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TextIO

import typer

from .. import grammars
from ..errors import EXIT_INPUT, EXIT_INTERRUPTED, InputError, MdreamError, UsageError
from ..grammars import Constraint
from ..prompts import DESCRIBE_MAX_TOKENS, LENGTHS, TAGS_QUESTION, describe_question
from ..records import Record, normalize_ext, renderer, sidecar_path, write_atomic
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
from .progress import BarReporter, Reporter, reporter

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
FORMAT_NAMES = ("text", "jsonl", "csv", "tsv")
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
    _run(
        _Job(
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
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about each image."""
    args = list(args or [])
    if question:
        images, questions = args, list(question)
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
    if choices is not None and json_schema is not None:
        raise UsageError("use --choices or --json-schema, not both")
    constraint = None
    if choices is not None:
        constraint = grammars.choices_constraint(grammars.parse_choices(choices))
    elif json_schema is not None:
        constraint = grammars.schema_constraint(json_schema)
    _run(
        _Job(
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
        verbose=verbose,
    )


@dataclass
class _Job:
    """What to run over, and where results go; checked on creation (usage errors, exit 2)."""

    args: list[str]
    questions: list[str]
    recursive: bool = False
    files_from: str | None = None
    null: bool = False
    fmt: str | None = None
    sidecar: bool = False
    ext: str = ".txt"
    overwrite: bool = False
    fail_fast: bool = False
    quiet: bool = False
    constraint: Constraint | None = None
    single: bool = field(init=False)

    def __post_init__(self) -> None:
        args, files_from = self.args, self.files_from
        if not args and files_from is None:
            raise UsageError(
                "no images given: name files or folders, '-' for stdin, or --files-from"
            )
        if self.fmt is not None and self.fmt not in FORMAT_NAMES:
            raise UsageError(f"--format must be one of {', '.join(FORMAT_NAMES)}, not {self.fmt!r}")
        if self.null and files_from is None:
            raise UsageError("-0/--null only applies to --files-from")
        if files_from == "-" and "-" in args:
            raise UsageError("stdin cannot hold both an image and the --files-from list")
        if not self.sidecar and (self.overwrite or self.ext != ".txt"):
            raise UsageError("--overwrite and --ext only apply with --sidecar")
        if self.sidecar and "-" in args:
            raise UsageError("--sidecar needs image files: an image from stdin has nowhere to go")
        if self.sidecar and len(self.questions) > 1:
            raise UsageError("--sidecar holds one answer per image: ask one question at a time")
        self.ext = normalize_ext(self.ext)
        # With --sidecar the answers' home is the sidecars; stdout only on request.
        if self.fmt is None and not self.sidecar:
            self.fmt = "text"
        # "One input": the answer alone. Decided from the command line, never from what a
        # folder happens to contain, so output stays predictable.
        self.single = (
            len(self.questions) == 1
            and files_from is None
            and len(args) == 1
            and not os.path.isdir(args[0])
        )

    def open_list(self) -> BinaryIO | None:
        if self.files_from is None:
            return None
        if self.files_from == "-":
            return sys.stdin.buffer
        try:
            return open(self.files_from, "rb")
        except OSError as exc:
            raise UsageError(
                f"cannot read --files-from: {exc.strerror or exc}", path=self.files_from
            ) from exc


def _run(job: _Job, **engine_args: Any) -> None:
    from .. import guard

    guard.forbid_network()
    out = claim_stdout()
    # Typer turns Ctrl-C into a silent exit 130 and EPIPE into exit 1 before the entry point
    # sees either, so both are settled here: say "interrupted"; end `| head` quietly with 0.
    try:
        _batch(job, out, **engine_args)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError):
            out.flush()  # every finished record is whole: each was written in one piece
        sys.stderr.write("mdream: interrupted\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        _silence(out)
        raise typer.Exit(0) from None


def _batch(
    job: _Job,
    out: TextIO,
    *,
    model_dir: Path | None,
    cpu: bool,
    threads: int | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    verbose: bool,
) -> None:
    # Heavy imports only now: `mdream --help` must not load llama_cpp.
    from .. import locate
    from ..engine import Engine, EngineOptions, Sampling
    from ..inputs import Source, expand
    from ..runner import run

    render = (
        renderer(job.fmt, single=job.single, with_question=len(job.questions) > 1)
        if job.fmt
        else None
    )
    stream = job.single and job.fmt == "text" and out.isatty()
    listing = job.open_list()
    try:
        sources = expand(job.args, recursive=job.recursive, files_from=listing, null=job.null)
        files = locate.resolve(model_dir)
        options = EngineOptions(threads=threads, gpu=not cpu, verbose=verbose)
        sampling = Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed)

        def skip(source: Source) -> bool:
            if not job.sidecar or job.overwrite:
                return False
            path = sidecar_path(source.label, job.ext)
            # An image whose name already ends in the sidecar suffix is not its own sidecar:
            # it goes on, and its record will say why no sidecar can be written.
            return path.exists() and not _same_file(path, source.label)

        failed = skipped = seen = 0
        written: set[str] = set()
        with reporter(quiet=job.quiet, total=None) as progress, Engine(files, options) as engine:
            _count_in_background(job, progress)
            if render is not None:
                _emit(out, render.header())
            results = run(
                sources,
                job.questions,
                engine,
                sampling,
                constraint=job.constraint,
                skip=skip,
                read_stdin=lambda: sys.stdin.buffer.read(),
                on_text=(lambda text: _emit(out, text)) if stream else None,
            )
            for result in results:
                seen += 1
                if result.skipped:
                    skipped += 1
                    progress.advance(failed=False)
                    continue
                records = result.records
                if job.sidecar:
                    records = [_write_sidecar(r, job.ext, written) for r in records]
                if render is not None:
                    if stream and records[0].ok:
                        _emit(out, "\n")  # the answer itself was streamed
                    else:
                        _emit(out, "".join(render.render(r) for r in records))
                bad = [r for r in records if not r.ok]
                for reason in dict.fromkeys(r.error for r in bad):
                    progress.error(f"mdream: error: {records[0].path}: {reason}")
                progress.advance(failed=bool(bad))
                if bad:
                    failed += 1
                    if job.fail_fast:
                        progress.note("mdream: stopping at the first failure (--fail-fast)")
                        break
        if not seen:
            progress.note("mdream: no images found")
        if skipped:
            progress.note(
                f"mdream: kept {skipped} existing {job.ext} sidecar{'s' if skipped != 1 else ''}"
                " (--overwrite replaces them)"
            )
    finally:
        if listing is not None and listing is not sys.stdin.buffer:
            listing.close()
    out.flush()
    if failed:
        raise typer.Exit(EXIT_INPUT)


def _write_sidecar(record: Record, ext: str, written: set[str]) -> Record:
    if not record.ok or record.answer is None:
        return record
    path = sidecar_path(record.path, ext)
    key = os.path.realpath(path)
    try:
        if key == os.path.realpath(record.path):
            raise InputError(f"the {ext} sidecar would replace the image itself; use --ext")
        if key in written:
            raise InputError(f"{path} was already written for another image in this run")
        with _no_interrupt():
            write_atomic(path, record.answer + "\n")
        written.add(key)
    except InputError as exc:
        return Record(record.path, record.question, None, exc.message, record.elapsed_ms)
    return record


def _count_in_background(job: _Job, progress: Reporter) -> None:
    """Give the progress bar its total without holding up the first answer."""
    from ..inputs import expand

    if not isinstance(progress, BarReporter):
        return
    if job.files_from is not None and not _is_regular_file(job.files_from):
        return  # stdin, a pipe, <(find …): it can be read only once, by the batch itself

    def count() -> None:
        listing = open(job.files_from, "rb") if job.files_from else None  # noqa: SIM115
        try:
            total = sum(
                1
                for _ in expand(
                    job.args, recursive=job.recursive, files_from=listing, null=job.null
                )
            )
        except (OSError, MdreamError):
            return
        finally:
            if listing is not None:
                listing.close()
        progress.set_total(total)

    threading.Thread(target=count, name="mdream-count", daemon=True).start()


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _names_an_image(text: str) -> bool:
    from ..images import EXTENSIONS

    return os.path.splitext(text)[1].lower() in EXTENSIONS and os.path.isfile(text)


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold Ctrl-C off while a record or sidecar is written: it lands whole or not at all."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = mask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


def _silence(out: TextIO) -> None:
    """The reader is gone: send whatever is still buffered for stdout to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _emit(out: TextIO, text: str) -> None:
    if not text:
        return
    with _no_interrupt():
        out.write(text)
        out.flush()


__all__ = ["register"]
