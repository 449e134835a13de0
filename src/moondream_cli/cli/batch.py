"""Run describe/ask over many inputs: the job's checks, the loop's sinks (stdout, sidecars,
progress) and how it ends (exit 1 on failures, 130 on Ctrl-C, 143 on SIGTERM, quietly when
the reader left)."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import typer

from .. import interrupt
from ..errors import EXIT_INPUT, InputError, MdreamError, UsageError
from ..grammars import Constraint
from ..records import FORMATS, Record, normalize_ext, renderer, sidecar_path, write_atomic
from .common import claim_stdout
from .progress import BarReporter, Reporter, reporter


@dataclass
class Job:
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
        if self.fmt is not None and self.fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {self.fmt!r}")
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


def run_job(job: Job, **engine_args: Any) -> None:
    from .. import guard

    guard.forbid_network()
    out = claim_stdout()
    # Typer turns Ctrl-C (and SIGTERM, which interrupt.py raises as KeyboardInterrupt too) into
    # a silent exit 130 and EPIPE into exit 1 before the entry point sees either, so both are
    # settled here: say "interrupted" or "terminated"; end `| head` quietly with 0.
    try:
        _batch(job, out, **engine_args)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError):
            out.flush()  # every finished record is whole: each was written in one piece
        sys.stderr.write(f"mdream: {interrupt.reason()}\n")
        raise typer.Exit(interrupt.exit_code()) from None
    except BrokenPipeError:
        _silence(out)
        raise typer.Exit(0) from None


def _batch(
    job: Job,
    out: TextIO,
    *,
    model_dir: Path | None,
    cpu: bool,
    threads: int | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    batch: int | None,
    verbose: bool,
) -> None:
    # Heavy imports only now: `mdream --help` must not load llama_cpp.
    from .. import locate
    from ..engine import Engine, EngineOptions, Sampling
    from ..inputs import Source, expand
    from ..prompts import question_prompt
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
        one_image = job.files_from is None and len(job.args) == 1 and not os.path.isdir(job.args[0])
        if batch is None and one_image:
            batch = 1  # no KV caches for sequences that would never be used
        # A token is at least one byte: the longest question's prompt in bytes bounds its tokens.
        prompt = max((len(question_prompt(q).encode("utf-8")) for q in job.questions), default=0)
        options = EngineOptions(
            threads=threads,
            gpu=not cpu,
            verbose=verbose,
            batch=batch,
            seq_tokens=prompt + max_tokens,
        )
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
        with interrupt.shielded():  # the sidecar lands whole, or not at all
            write_atomic(path, record.answer + "\n")
        written.add(key)
    except InputError as exc:
        return Record(record.path, record.question, None, exc.message, record.elapsed_ms)
    return record


def _count_in_background(job: Job, progress: Reporter) -> None:
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


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


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
    with interrupt.shielded():  # a record lands whole, or not at all
        out.write(text)
        out.flush()


__all__ = ["Job", "run_job"]
