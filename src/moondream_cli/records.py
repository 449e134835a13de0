"""The one record type, its renderers (text, JSONL, CSV, TSV) and the atomic sidecar writer.

A record is one (image, question) pair: ``path``, ``answer``, ``question``, ``error``,
``elapsed_ms``. Exactly one of ``answer`` and ``error`` is set. Each renderer turns a record
into one complete chunk of text (a line, or for CSV one quoted row), so a consumer never
sees half a record.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import InputError, UsageError


class Format(str, Enum):
    """How records are written to stdout."""

    TEXT = "text"
    JSONL = "jsonl"
    CSV = "csv"
    TSV = "tsv"


FORMATS = tuple(f.value for f in Format)
# The answer comes second so that `awk -F'\t' '$2=="yes"'` filters TSV output.
FIELDS = ("path", "answer", "question", "error", "elapsed_ms")


@dataclass(frozen=True)
class Record:
    path: str
    question: str
    answer: str | None = None
    error: str | None = None
    elapsed_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class Renderer(ABC):
    """Turns records into text for stdout; ``header()`` is written once, first."""

    def header(self) -> str:
        return ""

    @abstractmethod
    def render(self, record: Record) -> str:
        """One record as text, its line ending included."""


class TextRenderer(Renderer):
    """One input and one question: the answer alone. Otherwise ``path<TAB>answer`` lines
    (``path<TAB>question<TAB>answer`` with several questions), tabs and newlines escaped.
    Failed records are left out: their error is on stderr."""

    def __init__(self, *, single: bool, with_question: bool) -> None:
        self.single = single
        self.with_question = with_question

    def render(self, record: Record) -> str:
        if record.answer is None:
            return ""
        if self.single:
            return record.answer + "\n"
        fields = [record.path, *([record.question] if self.with_question else []), record.answer]
        return "\t".join(escape(f) for f in fields) + "\n"


class JsonlRenderer(Renderer):
    def render(self, record: Record) -> str:
        data = {name: getattr(record, name) for name in FIELDS}
        return json.dumps(data, ensure_ascii=False) + "\n"


class CsvRenderer(Renderer):
    """RFC 4180 quoting; rows end in ``\\n`` (Python's csv module reads them back as is)."""

    def _row(self, values: list[object]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def header(self) -> str:
        return self._row(list(FIELDS))

    def render(self, record: Record) -> str:
        return self._row([_cell(getattr(record, name)) for name in FIELDS])


class TsvRenderer(Renderer):
    """Tab-separated, one line per record; backslash, tab, CR and LF are escaped."""

    def header(self) -> str:
        return "\t".join(FIELDS) + "\n"

    def render(self, record: Record) -> str:
        return "\t".join(escape(str(_cell(getattr(record, name)))) for name in FIELDS) + "\n"


def renderer(fmt: Format | str, *, single: bool = False, with_question: bool = False) -> Renderer:
    try:
        chosen = Format(fmt)
    except ValueError:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}") from None
    if chosen is Format.TEXT:
        return TextRenderer(single=single, with_question=with_question)
    if chosen is Format.JSONL:
        return JsonlRenderer()
    return CsvRenderer() if chosen is Format.CSV else TsvRenderer()


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _cell(value: object) -> object:
    return "" if value is None else value


# -- sidecars ------------------------------------------------------------------------------


def normalize_ext(ext: str) -> str:
    """``txt`` or ``.txt`` → ``.txt``; refuse anything that is not a plain suffix."""
    ext = ext if ext.startswith(".") else "." + ext
    if len(ext) < 2 or "/" in ext or os.sep in ext or "\0" in ext or ext in (".", ".."):
        raise UsageError(f"--ext must be a file suffix such as .txt, not {ext!r}")
    return ext


def sidecar_path(image: str | os.PathLike[str], ext: str) -> Path:
    """``photos/cat.jpg`` → ``photos/cat.txt``."""
    return Path(image).with_suffix(ext)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one.

    The text goes to a temporary file in the same folder, which then replaces ``path``
    (``os.replace`` is atomic within a filesystem). Interrupted, the temporary file is removed.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write sidecar: {exc.strerror or exc}", path=str(path)) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(
                f"cannot write sidecar: {exc.strerror or exc}", path=str(path)
            ) from exc
        raise
