"""Batch progress on stderr: a rich bar when stderr is a terminal, otherwise nothing.

Per-input error lines go through the same object so that they print above the bar
instead of tearing it.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any


class Reporter:
    """Silent progress; error lines straight to stderr, notes too unless quiet."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def set_total(self, total: int) -> None:
        pass

    def advance(self, *, failed: bool) -> None:
        pass

    def error(self, line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def note(self, line: str) -> None:
        if not self.quiet:
            self.error(line)


class BarReporter(Reporter):
    """done/total, images per second, ETA and failures, redrawn in place on stderr."""

    def __init__(self, total: int | None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.2f} img/s" if speed else "– img/s")

        console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")) or None)
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[failed]} failed"),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("images", total=total, failed=0)
        self._failed = 0

    def __enter__(self) -> BarReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, *, failed: bool) -> None:
        self._failed += failed
        self._progress.update(self._task, advance=1, failed=self._failed)

    def error(self, line: str) -> None:
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)


def reporter(*, quiet: bool, total: int | None) -> Reporter:
    if quiet or not sys.stderr.isatty():
        return Reporter(quiet=quiet)
    return BarReporter(total)
