"""One describe/ask run from start to end: check it, load the model, and send every record
where it goes (stdout in the chosen format, sidecars), with progress and notes.

:class:`Job` is what to run (inputs, questions, :class:`~moondream_cli.settings.Settings`),
checked when it is made. :func:`run` drives :func:`moondream_cli.runner.run` over it and
returns an :class:`Outcome`; the front-end decides the exit code. Per-input failures are
records, reported through ``progress.error`` one line each, and the run goes on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TextIO

from .errors import UsageError
from .grammars import Constraint
from .images import EXTENSIONS
from .outputs import Outcome, Sink
from .progress import Progress
from .records import Format, normalize_ext, renderer
from .settings import Settings

if TYPE_CHECKING:
    from .inputs import Source
    from .resume import Resumed
    from .runner import ImageResult


@dataclass(frozen=True)
class Job:
    """What to run over, what to ask, and how; usage errors (exit 2) are raised on creation.

    ``max_tokens`` is the answer length when the settings set none (the question's own).
    """

    inputs: tuple[str, ...]
    questions: tuple[str, ...]
    settings: Settings
    max_tokens: int
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        s, inputs = self.settings, self.inputs
        if not inputs and s.files_from is None:
            raise UsageError(
                "no images given: name files or folders, '-' for stdin, or --files-from"
            )
        if s.null and s.files_from is None:
            raise UsageError("-0/--null only applies to --files-from")
        if s.files_from == "-" and "-" in inputs:
            raise UsageError("stdin cannot hold both an image and the --files-from list")
        if not s.sidecar and (s.overwrite or s.ext != ".txt"):
            raise UsageError("--overwrite and --ext only apply with --sidecar")
        if s.sidecar and "-" in inputs:
            raise UsageError("--sidecar needs image files: an image from stdin has nowhere to go")
        if s.sidecar and len(self.questions) > 1:
            raise UsageError("--sidecar holds one answer per image: ask one question at a time")
        if any(not q.strip() for q in self.questions):
            raise UsageError("the question is empty")
        if normalize_ext(s.ext).lower() in EXTENSIONS:
            raise UsageError(f"--ext {s.ext} is an image suffix: a sidecar never replaces an image")
        if s.ray is None and (s.workers is not None or s.unordered):
            raise UsageError("--workers and --unordered only apply with --ray")
        if s.ray is not None and "-" in inputs:
            raise UsageError("--ray needs image files the workers can read, not stdin")
        if s.resume is not None and self.fmt is not Format.JSONL:
            raise UsageError("--resume continues a --format jsonl run: add --format jsonl")
        if s.quiet and s.verbose:
            raise UsageError("--quiet and --verbose contradict each other: choose one")
        if s.seed is not None and not s.temperature:
            raise UsageError("--seed only matters with --temperature above 0 (greedy is exact)")

    @property
    def fmt(self) -> Format | None:
        """What stdout gets: with --sidecar the answers' home is the sidecars, stdout only
        on request."""
        if self.settings.fmt is None and not self.settings.sidecar:
            return Format.TEXT
        return self.settings.fmt

    @property
    def ext(self) -> str:
        return normalize_ext(self.settings.ext)

    def seq_tokens(self, max_tokens: int) -> int:
        """The most text tokens one sequence needs: a token is at least one byte, so the
        longest question's prompt in bytes bounds its tokens, plus the answer's."""
        from .prompts import question_prompt

        return max(len(question_prompt(q).encode("utf-8")) for q in self.questions) + max_tokens

    @property
    def one_image(self) -> bool:
        """One input named on the command line, not a folder: decided from the command line,
        never from what a folder happens to contain, so output stays predictable."""
        s, inputs = self.settings, self.inputs
        return s.files_from is None and len(inputs) == 1 and not os.path.isdir(inputs[0])

    @property
    def single(self) -> bool:
        """One image and one question: the text format prints the answer alone."""
        return self.one_image and len(self.questions) == 1

    def open_list(self) -> BinaryIO | None:
        files_from = self.settings.files_from
        if files_from is None:
            return None
        if files_from == "-":
            return sys.stdin.buffer
        try:
            return open(files_from, "rb")
        except OSError as exc:
            raise UsageError(
                f"cannot read --files-from: {exc.strerror or exc}", path=files_from
            ) from exc


def run(job: Job, out: TextIO, progress: Progress) -> Outcome:
    """Run ``job``: records to ``out`` (one write each, flushed), sidecars beside their
    images, progress and notes to ``progress``. When ``out`` is a terminal and the job is one
    image and one question in text, the answer is streamed as it is generated. With
    ``settings.ray`` the images are answered on a Ray cluster (:mod:`moondream_cli.ray`),
    and everything else here stays the same."""
    # Heavy imports only now: `mdream --help` must not load llama_cpp.
    from .images import own_the_size_check
    from .inputs import expand

    s = job.settings
    own_the_size_check()
    fmt = job.fmt
    render = renderer(fmt, single=job.single, with_question=len(job.questions) > 1) if fmt else None
    stream = job.single and job.fmt is Format.TEXT and out.isatty() and s.ray is None
    resumed = _resumed(job, out)
    listing = job.open_list()
    try:
        sink = Sink(job, out, render, stream, progress, resumed)
        sources = expand(
            job.inputs, recursive=s.recursive, files_from=listing, null=s.null, tally=sink.tally
        )
        if not job.one_image:  # one image: its answer is its progress
            progress.start("images", None, unit="images")
        try:
            if s.ray is not None:
                from .ray import cluster_results

                results = cluster_results(
                    job, sources, sink.skip, lambda: _started(job, sink, progress), progress.info
                )
            else:
                results = _local_results(job, sources, sink, stream, progress)
            try:
                sink.consume(results)
            finally:
                results.close()
        finally:
            progress.finish()
    finally:
        if listing is not None and listing is not sys.stdin.buffer:
            listing.close()
    sink.notes()
    out.flush()
    return sink.outcome


def _resumed(job: Job, out: TextIO) -> Resumed | None:
    """What ``--resume FILE`` says is done already; read before the model loads, so that a
    file that is not an earlier run's output costs nothing."""
    from .resume import load

    if job.settings.resume is None:
        return None
    try:
        fd: int | None = out.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None
    return load(job.settings.resume, job.questions, fd)


def _started(job: Job, sink: Sink, progress: Progress) -> None:
    """The model is ready: count the inputs for the bar, write the header."""
    _count_in_background(job, progress)
    sink.header()


def _local_results(
    job: Job, sources: Iterator[Source], sink: Sink, stream: bool, progress: Progress
) -> Generator[ImageResult, None, None]:
    """The results of this process's own engine; it is freed when the generator closes."""
    from . import locate
    from .engine import Engine
    from .images import Prepare, read_stream
    from .runner import run as run_inputs

    s = job.settings
    files = locate.resolve(s.model_dir)
    sampling = s.sampling(job.max_tokens)
    options = s.engine_options(
        # One image never needs KV caches for sequences that would not be used.
        batch=1 if job.one_image else None,
        seq_tokens=job.seq_tokens(sampling.max_tokens),
    )
    with Engine(files, options) as engine:
        _started(job, sink, progress)
        results = run_inputs(
            sources,
            job.questions,
            engine,
            sampling,
            constraint=job.constraint,
            skip=sink.skip,
            read_stdin=lambda: read_stream(sys.stdin.buffer),
            on_text=sink.stream_text if stream else None,
            preparation=Prepare(engine.image_size, engine.fit, s.max_megapixels),
        )
        try:
            yield from results
        finally:
            results.close()  # before the engine goes: its generators hold the context


def _count_in_background(job: Job, progress: Progress) -> None:
    """Give the progress bar its total without holding up the first answer."""
    import stat
    import threading

    from .errors import MdreamError
    from .inputs import expand

    s = job.settings
    if not progress.wants_total:
        return
    if s.files_from is not None:
        try:
            if not stat.S_ISREG(os.stat(s.files_from).st_mode):
                return  # stdin, a pipe, <(find …): it can be read only once, by the run itself
        except OSError:
            return

    def count() -> None:
        listing = open(s.files_from, "rb") if s.files_from else None  # noqa: SIM115
        try:
            found = expand(job.inputs, recursive=s.recursive, files_from=listing, null=s.null)
            total = sum(1 for _ in found)
        except (OSError, MdreamError):
            return
        finally:
            if listing is not None:
                listing.close()
        progress.update(total=total)

    threading.Thread(target=count, name="mdream-count", daemon=True).start()
