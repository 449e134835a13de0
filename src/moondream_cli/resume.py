"""``--resume FILE``: continue a ``--format jsonl`` run from its own output.

An image is skipped when FILE already holds a successful record for it and every question
of this run, matched by the record's ``path`` and ``question`` exactly as they were written
(so: the same arguments, from the same folder). Failed records do not count: their images
are tried again. The new records are appended to FILE by the shell::

    mdream describe photos/ -r --format jsonl --resume captions.jsonl >> captions.jsonl

A run that was killed may have left a partial last line. When stdout appends to FILE itself,
that line is cut off first, so that the file stays one JSON record per line; read on its
own, FILE is never changed. Opened with ``>`` instead of ``>>``, stdout would replace FILE:
that is refused (the shell has emptied FILE by then, which the message says).

Memory: one entry per answered image (its path and question), about 200 bytes each.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import UsageError
from .inputs import Source
from .portable import appends, read_flags


@dataclass
class Resumed:
    """What an earlier run answered: ``skip(source)`` is True for an image it finished."""

    questions: tuple[str, ...]
    answered: dict[str, set[str]] = field(default_factory=dict)  # path → questions answered
    skipped: int = 0  # images skipped so far
    cut: int = 0  # bytes of a partial last record cut off FILE
    records: int = 0  # successful records FILE holds

    def skip(self, source: Source) -> bool:
        done = self.answered.get(source.label)
        if done is None or source.from_stdin or not done.issuperset(self.questions):
            return False
        self.skipped += 1
        return True


def read_resumed(path: str, questions: Iterable[str], stdout: int | None = None) -> Resumed:
    """Read FILE, an earlier run's JSONL output. ``stdout``, the file descriptor the new
    records go to: when it appends to FILE, a partial last line is cut off first."""
    resumed = Resumed(tuple(questions))
    appending = stdout if stdout is not None and _same_file(path, stdout) else None
    try:
        # Non-blocking: a FIFO at the name is refused, not waited on.
        fd = os.open(path, read_flags())
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError("--resume takes a file, an earlier run's output", path=path)
            if appending is not None:
                _refuse_replacing(path, appending)
            end = _read(path, f, resumed)
            if appending is not None and end is not None:
                resumed.cut = st.st_size - end
                os.truncate(path, end)
    except OSError as exc:
        raise UsageError(f"cannot read --resume: {exc.strerror or exc}", path=path) from exc
    return resumed


def _read(path: str, f: BinaryIO, resumed: Resumed) -> int | None:
    """Fill ``resumed`` from ``f``; the offset where a partial last line starts, if any."""
    offset = 0
    for number, line in enumerate(_lines(f), start=1):
        if not line.endswith(b"\n"):
            if f.read(1):  # not the end: a line longer than any record
                raise UsageError(f"line {number} is too long for an mdream record", path=path)
            return offset  # a record cut short when the earlier run was killed
        offset += len(line)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key, question = record["path"], record["question"]
            ok = record["error"] is None and record["answer"] is not None
        except (ValueError, TypeError, KeyError):
            raise UsageError(
                f"line {number} is not an mdream JSONL record: --resume continues a "
                "--format jsonl run",
                path=path,
            ) from None
        if ok and isinstance(key, str) and isinstance(question, str):
            resumed.answered.setdefault(key, set()).add(question)
            resumed.records += 1
    return None


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """Lines with their ends, at most 16 MiB each (a record of ours is far shorter)."""
    while line := f.readline(1 << 24):
        yield line


def _same_file(path: str, fd: int) -> bool:
    try:
        mine, theirs = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def _refuse_replacing(path: str, fd: int) -> None:
    if not appends(fd):
        raise UsageError(
            "stdout writes over the file being resumed (the shell's '>' has emptied it "
            "already): append to it with '>>'",
            path=path,
        )


__all__ = ["Resumed", "read_resumed"]
