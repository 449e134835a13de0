"""One describe/ask run from start to end: expand its inputs, have a backend answer them,
and send every record where it goes (stdout in the chosen format, sidecars), with progress
and notes.

:func:`run_job` takes a checked :class:`~moondream_cli.job.Job`, answers it with the backend
its settings choose (:mod:`.backends`: this process, or a Ray cluster) and returns an
:class:`Outcome`; the front-end decides the exit code. Per-input failures are records,
reported through ``progress.error`` one line each, and the run goes on.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

from .job import Job
from .progress import Progress
from .records import Format, renderer
from .sink import Outcome, Sink

if TYPE_CHECKING:
    from .resume import Resumed
    from .xmp.sidecars import XmpSidecars


def run_job(job: Job, out: TextIO, progress: Progress) -> Outcome:
    """Run ``job``: records to ``out`` (one write each, flushed), sidecars beside their
    images, progress and notes to ``progress``. When ``out`` is a terminal and the job is one
    image and one question in text, the answer is streamed as it is generated. The backend
    (:func:`.backends.backend_for`) answers the images; everything else here is the same
    wherever they are answered."""
    # Heavy imports only now: `mdream --help` must not load llama_cpp.
    from .backends import Hooks, backend_for

    s = job.settings
    fmt = job.fmt
    render = renderer(fmt, single=job.single, with_question=len(job.questions) > 1) if fmt else None
    stream = job.single and fmt is Format.TEXT and out.isatty() and s.cluster.ray is None
    resumed = _resumed(job, out)
    xmp = _xmp_sidecars(job)
    sink = Sink(s.outputs, out, render, stream, progress, resumed, xmp)
    with job.sources(tally=sink.tally) as sources:
        if not job.one_image:  # one image: its answer is its progress
            progress.start("images", None, unit="images")
        hooks = Hooks(
            skip=sink.skip,
            started=lambda model: _started(job, sink, progress, model),
            note=progress.info,
            warn=progress.warn,
            on_text=sink.stream_text if stream else None,
        )
        try:
            results = backend_for(s).results(job, sources, hooks)
            try:
                sink.consume(results)
            except BaseException:
                sink.end_line()  # Ctrl-C mid-answer: the message starts a line of its own
                raise
            finally:
                results.close()
        finally:
            progress.finish()
    sink.notes()
    out.flush()
    return sink.outcome


def _resumed(job: Job, out: TextIO) -> Resumed | None:
    """What ``--resume FILE`` says is done already; read before the model loads, so that a
    file that is not an earlier run's output costs nothing."""
    from .resume import read_resumed

    if job.settings.outputs.resume is None:
        return None
    try:
        fd: int | None = out.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None
    return read_resumed(job.settings.outputs.resume, job.questions, fd)


def _xmp_sidecars(job: Job) -> XmpSidecars | None:
    """With --xmp, what writes the XMP sidecars: made before the model loads, so that a
    missing XMP library is said at once."""
    from .prompts import Style
    from .xmp.rules import Stamp, tag_path
    from .xmp.sidecars import XmpSidecars, now

    o = job.settings.outputs
    if not o.xmp:
        return None
    return XmpSidecars(
        naming=o.sidecar_name,
        tags=job.style is Style.TAGS,
        root=tag_path(o.xmp_tag_root),
        overwrite=o.overwrite,
        stamp=Stamp("", now()),
    )


def _started(job: Job, sink: Sink, progress: Progress, model: str) -> None:
    """The model (named ``model``) is ready: count the inputs for the bar, write the header."""
    if sink.xmp is not None:
        sink.xmp.stamp = replace(sink.xmp.stamp, model=model)
    _count_in_background(job, progress)
    sink.header()


def _count_in_background(job: Job, progress: Progress) -> None:
    """Give the progress bar its total without holding up the first answer."""
    import stat
    import threading

    from . import bounded
    from .errors import MdreamError
    from .inputs import expand

    s = job.settings.inputs
    if not progress.wants_total:
        return
    if s.files_from is not None:
        try:
            if not stat.S_ISREG(os.stat(s.files_from).st_mode):
                return  # stdin, a pipe, <(find …): it can be read only once, by the run itself
        except OSError:
            return

    def count() -> None:
        try:
            listing = bounded.open_file(s.files_from, bounded.LIST) if s.files_from else None
        except MdreamError:
            return
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
