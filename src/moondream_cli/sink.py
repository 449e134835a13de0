"""Where one run's results go: stdout, sidecars beside their images (text, and XMP for photo
managers: :mod:`.xmp`), progress and notes.

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

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from . import interrupt, sidecars
from .errors import InputError, MdreamError, OutputError
from .images import EXTENSIONS
from .inputs import Source, Tally
from .progress import Progress
from .records import (
    Record,
    Renderer,
    SidecarName,
    escape_controls,
    escape_line,
    normalize_ext,
    sidecar_naming,
    sidecar_path,
)
from .settings import OutputOptions

if TYPE_CHECKING:
    from .resume import Resumed
    from .runner import ImageResult
    from .xmp.sidecars import XmpSidecars


@dataclass
class Outcome:
    """How a run went, for the exit code."""

    seen: int = 0
    failed: int = 0  # inputs with a failed record
    skipped: int = 0  # inputs skipped: their sidecars were done, or --resume's file answered them
    stopped: bool = False  # --fail-fast ended it early
    sidecars: int = 0  # text sidecars written


class Sink:
    """Records to ``out``, sidecars beside their images, one progress step per input, as
    the output ``policy`` (the settings' output group) says; XMP sidecars through ``xmp``."""

    def __init__(
        self,
        policy: OutputOptions,
        out: TextIO,
        render: Renderer | None,
        stream: bool,
        progress: Progress,
        resumed: Resumed | None = None,
        xmp: XmpSidecars | None = None,
    ) -> None:
        self.policy, self.out, self.render, self.stream = policy, out, render, stream
        self.progress = progress
        self.resumed = resumed
        self.xmp = xmp
        self.outcome = Outcome()
        self.mid_line = False  # a streamed answer is on stdout without its line end
        self.tally = Tally()  # what walking folders left out; filled by inputs.expand
        self.planned: dict[str, str] = {}  # sidecar (real path) → the image it is for
        self.ext = normalize_ext(policy.ext)
        if policy.sidecar or xmp is not None:
            self.tally.sidecars_of = self._sidecar_names
        self.folders = sidecars.Folders()  # each resolved once, then opened link-free

    def _sidecar_names(self, image: str) -> tuple[str, ...]:
        text = (sidecar_path(image, self.ext, self.policy.sidecar_name).name,)
        return (text if self.policy.sidecar else ()) + (self.xmp.names(image) if self.xmp else ())

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
        if text:
            self.mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        """An answer cut off while it streamed (Ctrl-C, an error) ends its line, so that the
        message after it starts a line of its own."""
        if self.mid_line:
            self.mid_line = False
            with contextlib.suppress(MdreamError, OSError):
                self.text("\n")

    def skip(self, source: Source) -> bool:
        """Before the image is decoded: True to skip it (``--resume``'s file answered it, or
        its sidecar is kept); InputError as :meth:`exists`."""
        if self.resumed is not None and self.resumed.skip(source):
            return True
        return self.exists(source)

    def exists(self, source: Source) -> bool:
        """Before the image is decoded: True to skip it (each of its sidecars is done: the
        text one is there, the XMP one has what this run would write, and may not be
        redone); InputError when a sidecar could not be written, so no answer is lost."""
        if source.error is not None or not (self.policy.sidecar or self.xmp is not None):
            return False
        done = self._text_done(source) if self.policy.sidecar else True
        return self.xmp.done(source.label) and done if self.xmp is not None else done

    def _text_done(self, source: Source) -> bool:
        s = self.policy
        path = sidecar_path(source.label, self.ext, s.sidecar_name)
        key = os.path.realpath(path)
        if key == os.path.realpath(source.label):
            raise InputError(f"the {self.ext} sidecar would replace the image itself; use --ext")
        if key in self.planned:
            other = escape_controls(self.planned[key])
            if sidecar_naming(self.ext, s.sidecar_name) is SidecarName.STEM:
                full = sidecar_path(source.label, self.ext, SidecarName.FULL).name
                raise InputError(
                    f"{path} is the sidecar of {other} too: with --sidecar-name full each "
                    f"image gets its own ({escape_controls(full)})"
                )
            raise InputError(f"{path} is the sidecar of {other} too")
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
            if self.xmp is not None:
                records = [self._write_xmp(self.xmp, r) for r in records]
            if self.render is not None:
                if self.stream and records[0].ok:
                    self.text("\n")  # the answer itself was streamed
                    self.mid_line = False
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
            what = "is not an image" if n == 1 else "are not images"
            info(f"left out {n} file{_s(n)} in the folders that {what}")
        if self.tally.broken_links:
            n = self.tally.broken_links
            info(f"skipped {n} broken symbolic link{_s(n)} in the folders")
        if outcome.sidecars:
            info(f"wrote {outcome.sidecars} {self.ext} sidecar{_s(outcome.sidecars)}")
        if self.xmp is not None:
            self._xmp_notes(self.xmp)
        resumed = self.resumed
        kept = outcome.skipped - (resumed.skipped if resumed else 0)
        if kept:
            info(self._kept_note(kept))
        if resumed is not None and resumed.cut:
            info(
                f"cut an unfinished record ({resumed.cut} bytes) off the end of "
                f"{escape_line(self.policy.resume or '')}: its image is answered again"
            )
        if resumed is not None:
            self._resume_notes(resumed)

    def _resume_notes(self, resumed: Resumed) -> None:
        name = escape_line(self.policy.resume or "")
        n = resumed.skipped
        if n:
            self.progress.info(f"skipped {n} image{_s(n)} answered already (--resume)")
        elif resumed.records and self.outcome.seen:
            # The same photos named another way (photos/ then ./photos) match nothing.
            self.progress.warn(
                f"--resume matched none of the {resumed.records} answered records in {name}: "
                "records are matched by their path as written, so resume with the same "
                "arguments from the same folder (every image was answered again)"
            )

    def _kept_note(self, n: int) -> str:
        if self.xmp is None:
            return f"kept {n} existing {self.ext} sidecar{_s(n)} (--overwrite replaces them)"
        has = "mdream's keywords" if self.xmp.tags else "a caption"
        both = f"a {self.ext} sidecar and " if self.policy.sidecar else ""
        return (
            f"skipped {n} image{_s(n)} with {both}an XMP sidecar that has {has} already "
            "(--overwrite redoes them)"
        )

    def _xmp_notes(self, xmp: XmpSidecars) -> None:
        if xmp.written:
            self.progress.info(f"wrote {xmp.written} XMP sidecar{_s(xmp.written)}")
        if xmp.kept:
            self.progress.info(
                f"left {xmp.kept} caption{_s(xmp.kept)} in XMP sidecars as {_were(xmp.kept)}: "
                "not mdream's own (--overwrite replaces them)"
            )

    def _write_xmp(self, xmp: XmpSidecars, record: Record) -> Record:
        if not record.ok or record.answer is None:
            return record
        try:
            xmp.write(record.path, record.answer)
        except InputError as exc:
            return Record(record.path, record.question, None, exc.message, record.elapsed_ms)
        return record

    def _write_sidecar(self, record: Record) -> Record:
        if not record.ok or record.answer is None:
            return record
        path = sidecar_path(record.path, self.ext, self.policy.sidecar_name)
        try:
            if self.xmp is not None and not self.policy.overwrite and os.path.lexists(path):
                return record  # kept: the image was answered for its XMP sidecar
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


def _were(n: int) -> str:
    return "it was" if n == 1 else "they were"
