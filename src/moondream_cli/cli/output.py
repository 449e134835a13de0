"""Everything the CLI writes besides results: stdout claimed for results alone, and one
:class:`Output` that writes every stderr line and draws every progress bar.

stdout carries results only (:func:`claim_stdout`). stderr gets ``mdream: error: …``,
``mdream: warning: …``, notes (``mdream: …``, not with ``--quiet``), llama.cpp's own lines
under ``--verbose``, and progress. A rich bar is drawn only when stderr is a terminal and the
command is not quiet; lines then print above it instead of tearing it. ``NO_COLOR`` is
honoured here, once.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Any, TextIO

from ..errors import Interrupted, MdreamError, OutputError
from ..progress import Progress
from ..records import escape_line


def claim_stdout(*, needed: bool = True) -> TextIO:
    """Keep fd 1 for results alone.

    The real stdout is moved to a private descriptor that only mdream writes to, and fd 1
    is pointed at stderr, so any stray C-level print from a native library can never mix
    into the results; ``sys.stdout`` becomes stderr too, for stray Python prints (Ray's
    driver prints its workers' failures to ``sys.stdout``). Returns the stream results are
    written to (:func:`results` from then on). A closed stdout (``>&-``) is an OutputError
    when results are ``needed``, else results go nowhere. File names that are not UTF-8 are
    written as their own bytes.
    """
    closed = isinstance(sys.stdout, ClosedStdout)
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stdout.flush()
    try:
        if closed:
            raise OSError(9, "stdout is closed")
        private = os.dup(1)
    except OSError:
        if needed:
            raise OutputError(
                "stdout is closed: the results have nowhere to go (redirect it, e.g. > out.txt)"
            ) from None
        private = os.open(os.devnull, os.O_WRONLY)
    os.dup2(2, 1)
    tty = os.isatty(private)
    binary = os.fdopen(private, "wb", buffering=0 if tty else -1)
    stream = io.TextIOWrapper(
        binary,
        encoding="utf-8",
        errors="surrogateescape",
        newline="\n",
        line_buffering=tty,
        write_through=tty,
    )
    _claimed.append(stream)
    sys.stdout = sys.stderr
    return stream


_claimed: list[TextIO] = []  # the results stream, once claim_stdout made it


def results() -> TextIO:
    """Where results go: the stream :func:`claim_stdout` made, else ``sys.stdout`` itself
    (commands whose output is not results of a model, such as ``bundle list``)."""
    return _claimed[-1] if _claimed else sys.stdout


class ClosedStdout(io.TextIOBase):
    """Where sys.stdout points when the shell closed it: writing a result is an OutputError
    (exit 5), not an AttributeError on None. It holds fd 1 open on /dev/null meanwhile: a
    file opened later (a model) must never get fd 1 and receive results."""

    def __init__(self) -> None:
        super().__init__()
        with contextlib.suppress(OSError):
            fd = os.open(os.devnull, os.O_WRONLY)
            if fd != 1:
                os.dup2(fd, 1)
                os.close(fd)

    def write(self, text: str) -> int:
        raise OutputError("stdout is closed: the results have nowhere to go (redirect it)")

    def fileno(self) -> int:
        raise OSError(9, "stdout is closed")


def silence_stdout() -> None:
    """The reader of stdout is gone (``| head``): send what is still buffered to /dev/null,
    so that Python's own flush at exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, results().fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class Output(Progress):
    """The one writer of stderr, and the progress of every long job (one step at a time)."""

    def __init__(self, *, quiet: bool = False, live: bool | None = None) -> None:
        self.quiet = quiet
        self.live = (not quiet and _isatty(sys.stderr)) if live is None else live
        self._bar: Any = None  # rich.progress.Progress of the running step
        self._task: Any = None
        self._unit = "B"
        self._failed = 0
        self._partial = ""  # a native log line not yet ended

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    # -- lines -----------------------------------------------------------------------------
    def error(self, message: str) -> None:
        self._line(f"mdream: error: {message}")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self._line(f"mdream: warning: {message}")

    def info(self, message: str) -> None:
        if not self.quiet:
            self._line(f"mdream: {message}")

    def report(self, exc: MdreamError) -> None:
        """How a command that failed tells the user why (``main`` calls it)."""
        if exc.reported:
            return
        if isinstance(exc, Interrupted):
            self._line(f"mdream: {exc.message}")
        else:
            self.error(str(exc))

    def hint(self, text: str) -> None:
        """A line of help after an error (``Try 'mdream describe --help'``)."""
        self._line(text)

    def native_log(self, text: str) -> None:
        """A piece of llama.cpp's or libmtmd's log (``--verbose``), whole lines at a time."""
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)

    def _line(self, text: str) -> None:
        # File names, model output and manifests reach this line: a newline in a name must
        # not forge a second line, nor an escape sequence drive the terminal.
        text = escape_line(text)
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # stderr closed: nothing left to tell

    # -- progress --------------------------------------------------------------------------
    @property
    def wants_total(self) -> bool:
        return self.live

    def start(self, label: str, total: int | None = None, *, unit: str = "B") -> None:
        self.finish()
        self._unit, self._failed = unit, 0
        if not self.live:
            # A line per step helps a log of a download; a folder run's lines are its errors.
            if unit != "images":
                self.info(label)
            return
        self._bar = _bar(unit)
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, failed=0)

    def advance(self, amount: int = 1, *, failed: int = 0) -> None:
        self._failed += failed
        if self._bar is not None:
            self._bar.update(self._task, advance=amount, failed=self._failed)

    def update(self, done: int | None = None, total: int | None = None) -> None:
        bar, task = self._bar, self._task
        if bar is not None:
            bar.update(task, total=total, **({} if done is None else {"completed": done}))

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


# What a folder run's line needs besides its bar: "images 1234/5678 12.34 img/s 0:01:02
# ETA 0:12:34 0 failed", with the spaces between columns.
ROOM_FOR_TEXT = 70


def _bar(unit: str) -> Any:
    """A rich bar on stderr. A folder run's: done/total, images per second, elapsed, ETA and
    failures, left on screen at the end. Any other step's: its amount (sizes and speed for
    bytes) and the time left, gone when the step ends."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bars

    console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
    if unit == "images":
        return Bars(*_folder_columns(console), console=console, transient=False)
    amount = DownloadColumn() if unit == "B" else MofNCompleteColumn()
    columns = [TextColumn("{task.description}"), BarColumn(), amount, TimeRemainingColumn()]
    return Bars(*columns, console=console, transient=True)


def _folder_columns(console: Any) -> list[Any]:
    """A folder run's columns, every rate from one overall rate, fitted to ``console``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    def rate(task: Task) -> float | None:
        """Images done ÷ time elapsed: rich's windowed speed jumps wildly when skipped
        images finish in bursts, and drove its ETA ('3/63 0.14 img/s … ETA 0:00:01')."""
        elapsed = task.finished_time if task.finished else task.elapsed
        return task.completed / elapsed if elapsed and task.completed else None

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            per_s = rate(task)
            return Text("– img/s" if per_s is None else f"{per_s:.2f} img/s")

    class Eta(ProgressColumn):
        def render(self, task: Task) -> Text:
            per_s = rate(task)
            if per_s is None or task.total is None:
                return Text("ETA –:––:––")
            left = int(max(0.0, task.total - task.completed) / per_s)
            return Text(f"ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}")

    class FitBar(BarColumn):
        """As wide as the terminal leaves room for, read at each refresh (a resize too); no
        bar at all on a narrow one, so the line never wraps and leaves half-lines behind."""

        def render(self, task: Task) -> Any:
            self.bar_width = max(0, console.width - ROOM_FOR_TEXT)
            return super().render(task) if self.bar_width >= 6 else Text("")

    class Elapsed(TimeElapsedColumn):
        def render(self, task: Task) -> Text:
            return super().render(task) if console.width >= ROOM_FOR_TEXT else Text("")

    return [
        TextColumn("[progress.description]{task.description}"),
        FitBar(),
        MofNCompleteColumn(),
        Rate(),
        Elapsed(),
        Eta(),
        TextColumn("{task.fields[failed]} failed"),
    ]


__all__ = ["ClosedStdout", "Output", "claim_stdout", "results", "silence_stdout"]
