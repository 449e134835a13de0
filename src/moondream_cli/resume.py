"""``--resume FILE``: continue a ``--format jsonl`` run from its own output.

An image is skipped when FILE already holds a successful record for it and every question
of this run, matched by the record's ``path`` and ``question`` exactly as they were written
(so: the same arguments, from the same folder). Failed records do not count: their images
are tried again. The new records are appended to FILE by the shell::

    mdream describe photos/ -r --format jsonl --resume captions.jsonl >> captions.jsonl

A run that was killed may have left a partial last line: the beginning of a record. When
stdout appends to FILE itself, that line is cut off first, so that the file stays one JSON
record per line; a whole record that only lacks its newline is kept, and the newline added.
Anything else in FILE -- a note, a line of another program's output, JSON nested deeper than a
record -- means FILE is not mdream's JSONL: refused, nothing cut. Read on its own, FILE is
never changed. Opened with ``>`` instead of ``>>``, stdout would replace FILE: that is refused
(the shell has emptied FILE by then, which the message says).

Memory: one entry per answered image, its path and a bit per question of this run: about
115 bytes for a path of 26 characters, 400 before (``tests/test_resume.py`` measures it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from . import bounded
from .errors import UsageError
from .inputs import Source
from .portable import appends
from .records import FIELDS
from .schemas import json_depth


@dataclass
class Resumed:
    """What an earlier run answered: ``skip(source)`` is True for an image it finished."""

    questions: tuple[str, ...]
    # path → a bit for each of this run's questions answered (other questions: not kept)
    answered: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # images skipped so far
    cut: int = 0  # bytes of a partial last record cut off FILE
    records: int = 0  # successful records FILE holds

    def skip(self, source: Source) -> bool:
        done = self.answered.get(source.label)
        everything = (1 << len(self.questions)) - 1
        if done is None or source.from_stdin or done & everything != everything:
            return False
        self.skipped += 1
        return True


def read_resumed(path: str, questions: Iterable[str], stdout: int | None = None) -> Resumed:
    """Read FILE, an earlier run's JSONL output. ``stdout``, the file descriptor the new
    records go to: when it appends to FILE, a partial last line is cut off first (and a
    whole last record without its newline gets one)."""
    resumed = Resumed(tuple(questions))
    appending = stdout if stdout is not None and _same_file(path, stdout) else None
    try:
        fd = bounded.open_fd(path, bounded.RESUME)
    except UsageError as exc:
        raise UsageError(
            f"--resume takes a file, an earlier run's output: {exc.message}", path=path
        ) from None
    try:
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if appending is not None:
                _refuse_replacing(path, appending)
            end = _read(path, f, resumed)
            if appending is not None and end is not None:
                _end_at(path, end, st.st_size, resumed)
    except OSError as exc:
        raise UsageError(f"cannot read --resume: {exc.strerror or exc}", path=path) from exc
    return resumed


def _end_at(path: str, end: int, size: int, resumed: Resumed) -> None:
    """FILE's last line is not ended: cut it at ``end`` (a partial record) or, when ``end``
    is its size (a whole record), end it with a newline."""
    if end < size:
        resumed.cut = size - end
        os.truncate(path, end)
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    try:
        os.write(fd, b"\n")
    finally:
        os.close(fd)


# A record of ours is far shorter; a longer line means FILE is not what --resume takes.
MAX_LINE = 1 << 24
# The start of every record mdream writes: a line cut short that begins so is a partial one.
_RECORD_START = b'{"path": '


def _read(path: str, f: BinaryIO, resumed: Resumed) -> int | None:
    """Fill ``resumed`` from ``f``; when the last line has no newline, where FILE should end
    (the offset where a partial record starts, or FILE's size for a whole one)."""
    offset = 0
    bits = {q: 1 << i for i, q in enumerate(resumed.questions)}
    for number, line in enumerate(_lines(f), start=1):
        ended = line.endswith(b"\n")
        if not ended and f.read(1):  # not the end: a line longer than any record
            raise UsageError(f"line {number} is too long for an mdream record", path=path)
        if not line.strip():
            offset += len(line)
            continue
        record = _record(line)
        if record is None:
            if not ended and line.startswith(_RECORD_START):
                return offset  # a record cut short when the earlier run was killed
            raise UsageError(
                f"line {number} is not an mdream JSONL record: --resume continues a "
                "--format jsonl run",
                path=path,
            )
        offset += len(line)
        key, question, ok = record
        if ok and question in bits:
            resumed.answered[key] = resumed.answered.get(key, 0) | bits[question]
            resumed.records += 1
        if not ended:
            return offset  # a whole record: only its newline is missing
    return None


def _record(line: bytes) -> tuple[str, str, bool] | None:
    """(path, question, answered without error) of an mdream JSONL record, or None when
    ``line`` is not one. Records are flat: anything nested is refused before it is parsed,
    so a line ``[[[[…`` thousands deep costs a scan, not a recursion."""
    if line.count(b"{") + line.count(b"[") > 1 and json_depth(line.decode("utf-8", "replace")) > 1:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        return None
    key, question, answer, error = (record[k] for k in ("path", "question", "answer", "error"))
    if not isinstance(key, str) or not isinstance(question, str):
        return None
    if not isinstance(answer, (str, type(None))) or not isinstance(error, (str, type(None))):
        return None
    return key, question, error is None and answer is not None


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """Lines with their ends, at most :data:`MAX_LINE` bytes each."""
    while line := f.readline(MAX_LINE):
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
