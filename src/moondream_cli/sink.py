"""Where one run's results go: stdout, sidecars beside their images, progress and notes.

Every record lands whole or not at all (one write each, flushed, inside
``interrupt.shielded()``). Sidecars are checked before their image is decoded, so a folder
that cannot take them, a name too long for one, or two images that would share one costs no
inference; a sidecar never replaces an image or anything that is not a regular file, and is
checked and written through a descriptor of its folder opened without following links
(:mod:`.sidecars`: a folder swapped for a link mid-run is refused, a link at its name is
replaced, never written through). When stdout or the disk can take nothing more (full,
read-only), the run stops with an :class:`OutputError` (exit 5) instead of answering images
whose answers would be lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from . import interrupt, sidecars
from .errors import InputError, OutputError
from .images import EXTENSIONS
from .inputs import Source, Tally
from .progress import Progress
from .records import (
    Record,
    Renderer,
    escape_controls,
    escape_line,
    normalize_ext,
    sidecar_path,
)
from .settings import OutputOptions

if TYPE_CHECKING:
    from .resume import Resumed
    from .runner import ImageResult


@dataclass
class Outcome:
    """How a run went, for the exit code."""

    seen: int = 0
    failed: int = 0  # inputs with a failed record
    skipped: int = 0  # inputs skipped: their sidecar existed, or --resume's file answered them
    stopped: bool = False  # --fail-fast ended it early
    sidecars: int = 0  # sidecars written


class Sink:
    """Records to ``out``, sidecars beside their images, one progress step per input, as
    the output ``policy`` (the settings' output group) says."""

    def __init__(
        self,
        policy: OutputOptions,
        out: TextIO,
        render: Renderer | None,
        stream: bool,
        progress: Progress,
        resumed: Resumed | None = None,
    ) -> None:
        self.policy, self.out, self.render, self.stream = policy, out, render, stream
        self.progress = progress
        self.resumed = resumed
        self.outcome = Outcome()
        self.tally = Tally()  # what walking folders left out; filled by inputs.expand
        self.planned: dict[str, str] = {}  # sidecar (real path) → the image it is for
        self.ext = normalize_ext(policy.ext)
        self.folders = sidecars.Folders()  # each resolved once, then opened link-free

    def header(self) -> None:
        if self.render is not None:
            self.text(self.render.header())

    def text(self, text: str) -> None:
        if not text:
            return
        try:
            with interrupt.shielded():  # a record lands whole, or not at all
                self.out.write(text)
                self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away (`| head`): the CLI stops quietly
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            reason = getattr(exc, "strerror", None) or exc
            raise OutputError(f"cannot write the results to stdout: {reason}") from exc

    def stream_text(self, text: str) -> None:
        """A piece of the answer as it is generated: control characters escaped."""
        self.text(escape_controls(text))

    def skip(self, source: Source) -> bool:
        """Before the image is decoded: True to skip it (``--resume``'s file answered it, or
        its sidecar is kept); InputError as :meth:`exists`."""
        if self.resumed is not None and self.resumed.skip(source):
            return True
        return self.exists(source)

    def exists(self, source: Source) -> bool:
        """Before the image is decoded: True to skip it (its sidecar is there and may not be
        replaced); InputError when its sidecar could not be written, so no answer is lost."""
        s = self.policy
        if not s.sidecar or source.error is not None:
            return False
        path = sidecar_path(source.label, self.ext)
        key = os.path.realpath(path)
        if key == os.path.realpath(source.label):
            raise InputError(f"the {self.ext} sidecar would replace the image itself; use --ext")
        if key in self.planned:
            raise InputError(f"{path} is the sidecar of {self.planned[key]} too; use --ext")
        self.planned[key] = source.label
        with self.folders.opened(path.parent) as folder:
            return sidecars.check_before(folder, path.name, s.overwrite, path)

    def consume(self, results: Iterator[ImageResult]) -> None:
        outcome, progress = self.outcome, self.progress
        for result in results:
            outcome.seen += 1
            if result.skipped:
                outcome.skipped += 1
                progress.advance(1)
                continue
            records = result.records
            if self.policy.sidecar:
                records = [self._write_sidecar(r) for r in records]
            if self.render is not None:
                if self.stream and records[0].ok:
                    self.text("\n")  # the answer itself was streamed
                else:
                    self.text("".join(self.render.render(r) for r in records))
            bad = [r for r in records if not r.ok]
            for reason in dict.fromkeys(r.error for r in bad):
                progress.error(f"{records[0].path}: {reason}")
            progress.advance(1, failed=int(bool(bad)))
            if bad:
                outcome.failed += 1
                if self.policy.fail_fast:
                    progress.info("stopping at the first failure (--fail-fast)")
                    outcome.stopped = True
                    return

    def notes(self) -> None:
        outcome, info = self.outcome, self.progress.info
        if not outcome.seen:
            info("no images found")
        if self.tally.not_images:
            n = self.tally.not_images
            info(f"left out {n} file{_s(n)} in the folders that {_are(n)} not images")
        if outcome.sidecars:
            info(f"wrote {outcome.sidecars} {self.ext} sidecar{_s(outcome.sidecars)}")
        resumed = self.resumed
        kept = outcome.skipped - (resumed.skipped if resumed else 0)
        if kept:
            info(f"kept {kept} existing {self.ext} sidecar{_s(kept)} (--overwrite replaces them)")
        if resumed is not None and resumed.cut:
            info(
                f"cut an unfinished record ({resumed.cut} bytes) off the end of "
                f"{escape_line(self.policy.resume or '')}: its image is answered again"
            )
        if resumed is not None and resumed.skipped:
            n = resumed.skipped
            info(f"skipped {n} image{_s(n)} answered already (--resume)")

    def _write_sidecar(self, record: Record) -> Record:
        if not record.ok or record.answer is None:
            return record
        path = sidecar_path(record.path, self.ext)
        try:
            with self.folders.opened(path.parent) as folder:
                if path.suffix.lower() in EXTENSIONS or sidecars.holds_an_image(folder, path.name):
                    raise InputError(f"{path} is an image: a sidecar never replaces one")
                with interrupt.shielded():  # the sidecar lands whole, or not at all
                    sidecars.write(folder, path.name, record.answer + "\n", path)
            self.outcome.sidecars += 1
        except InputError as exc:
            return Record(record.path, record.question, None, exc.message, record.elapsed_ms)
        return record


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _are(n: int) -> str:
    return "is" if n == 1 else "are"
