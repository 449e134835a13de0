"""Where one run's results go: stdout, sidecars beside their images, progress and notes.

Every record lands whole or not at all (one write each, flushed, inside
``interrupt.shielded()``). Sidecars are checked before their image is decoded, so a folder
that cannot take them or two images that would share one costs no inference; a sidecar
never replaces an image or anything that is not a regular file, and is written atomically
(``records.write_atomic``: a link at its name is replaced, never written through). When
stdout or the disk can take nothing more, the run stops with an :class:`OutputError`
(exit 5) instead of answering images whose answers would be lost.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from . import interrupt
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
    sidecar_path,
    write_atomic,
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
        self.mid_line = False  # a streamed answer is on stdout without its line end
        self.tally = Tally()  # what walking folders left out; filled by inputs.expand
        if policy.sidecar:
            ext, naming = normalize_ext(policy.ext), policy.sidecar_name
            self.tally.sidecar_of = lambda name: sidecar_path(name, ext, naming).name
        self.planned: dict[str, str] = {}  # sidecar (real path) → the image it is for
        self.ext = normalize_ext(policy.ext)

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
        """Before the image is decoded: True to skip it (its sidecar is there and may not be
        replaced); InputError when its sidecar could not be written, so no answer is lost."""
        s = self.policy
        if not s.sidecar or source.error is not None:
            return False
        path = sidecar_path(source.label, self.ext, s.sidecar_name)
        key = os.path.realpath(path)
        if key == os.path.realpath(source.label):
            raise InputError(f"the {self.ext} sidecar would replace the image itself; use --ext")
        if key in self.planned:
            other = escape_controls(self.planned[key])
            if s.sidecar_name is SidecarName.STEM:
                full = sidecar_path(source.label, self.ext, SidecarName.FULL).name
                raise InputError(
                    f"{path} is the sidecar of {other} too: with --sidecar-name full each "
                    f"image gets its own ({escape_controls(full)})"
                )
            raise InputError(f"{path} is the sidecar of {other} too")
        self.planned[key] = source.label
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise InputError(f"cannot check its sidecar {path}: {exc.strerror}") from exc
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise InputError(f"its sidecar {path} exists and is not a regular file")
        if st is not None and not s.overwrite:
            return True
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write its sidecar: {path.parent} is not writable")
        return False

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
        resumed = self.resumed
        kept = outcome.skipped - (resumed.skipped if resumed else 0)
        if kept:
            info(f"kept {kept} existing {self.ext} sidecar{_s(kept)} (--overwrite replaces them)")
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

    def _write_sidecar(self, record: Record) -> Record:
        if not record.ok or record.answer is None:
            return record
        path = sidecar_path(record.path, self.ext, self.policy.sidecar_name)
        try:
            if path.suffix.lower() in EXTENSIONS or _is_image(path):
                raise InputError(f"{path} is an image: a sidecar never replaces one")
            with interrupt.shielded():  # the sidecar lands whole, or not at all
                write_atomic(path, record.answer + "\n")
            self.outcome.sidecars += 1
        except InputError as exc:
            return Record(record.path, record.question, None, exc.message, record.elapsed_ms)
        return record


def _is_image(path: os.PathLike[str]) -> bool:
    from .inputs import looks_like_image

    try:
        return os.path.getsize(path) > 0 and looks_like_image(os.fspath(path))
    except OSError:
        return False


def _s(n: int) -> str:
    return "" if n == 1 else "s"
