"""The one record type, its renderers (text, JSONL, CSV, TSV) and the atomic sidecar writer.

A record is one (image, question) pair: ``path``, ``answer``, ``question``, ``error``,
``elapsed_ms``. Exactly one of ``answer`` and ``error`` is set. Each renderer turns a record
into one complete chunk of text (a line, or for CSV one quoted row), so a consumer never
sees half a record.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import InputError, OutputError, UsageError
from .portable import set_mode


class SidecarName(str, Enum):
    """How a sidecar is named after its image: ``a.txt`` (stem) or ``a.jpg.txt`` (full, so
    that ``a.jpg`` and ``a.png`` in one folder each get their own)."""

    STEM = "stem"
    FULL = "full"


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
    """One input and one question: the answer alone (control characters other than newline
    and tab escaped). Otherwise ``path<TAB>answer`` lines (``path<TAB>question<TAB>answer``
    with several questions), escaped as in TSV. Failed records are left out: their error is
    on stderr."""

    def __init__(self, *, single: bool, with_question: bool) -> None:
        self.single = single
        self.with_question = with_question

    def render(self, record: Record) -> str:
        if record.answer is None:
            return ""
        if self.single:
            return escape_controls(record.answer) + "\n"
        fields = [record.path, *([record.question] if self.with_question else []), record.answer]
        return "\t".join(escape(f) for f in fields) + "\n"


class JsonlRenderer(Renderer):
    """One JSON object per line, UTF-8. A file name that is not valid UTF-8 keeps its bytes:
    each undecodable byte 0xNN is written as the escape ``\\udcNN`` (Python's
    ``os.fsencode(json.loads(line)["path"])`` gives the exact name back)."""

    def render(self, record: Record) -> str:
        data = {name: getattr(record, name) for name in FIELDS}
        text = json.dumps(data, ensure_ascii=False)
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


class CsvRenderer(Renderer):
    """RFC 4180 quoting; rows end in ``\\n`` (Python's csv module reads them back as is)."""

    def _row(self, values: list[object]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def header(self) -> str:
        return self._row(list(FIELDS))

    def render(self, record: Record) -> str:
        return self._row([_csv_cell(getattr(record, name)) for name in FIELDS])


class TsvRenderer(Renderer):
    r"""Tab-separated, one line per record; backslash, tab, CR and LF are escaped as ``\\``,
    ``\t``, ``\r``, ``\n``, other control characters as ``\xNN``."""

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


# C0 controls, DEL and C1 controls: never shown raw (a terminal acts on them).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_ROWS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # keeps \t \n \r
_LONE_SURROGATE = re.compile("[\udc80-\udcff]")
_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _hex(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape(text: str) -> str:
    """One field on one line: backslash, tab, CR and LF by name, other controls as ``\\xNN``."""
    text = re.sub(r"[\\\t\n\r]", lambda m: _NAMED[m.group()], text)
    return _CONTROLS.sub(_hex, text)


def escape_line(text: str) -> str:
    """``text`` kept on one terminal line: every control character escaped (``\\n`` and
    the like by name, others as ``\\xNN``); backslashes are left alone."""
    return _CONTROLS.sub(lambda m: _NAMED.get(m.group()) or _hex(m), text)


def escape_controls(text: str) -> str:
    """``text`` with every control character but tab and line ends as ``\\xNN``: what a
    terminal would act on (a bell, an escape sequence) is shown, not obeyed."""
    return _CONTROLS_BUT_ROWS.sub(_hex, text)


def _cell(value: object) -> object:
    return "" if value is None else value


def _csv_cell(value: object) -> object:
    """CSV quotes tabs and line breaks itself; any other control character is escaped."""
    return _CONTROLS_BUT_ROWS.sub(_hex, value) if isinstance(value, str) else _cell(value)


# -- sidecars ------------------------------------------------------------------------------


def normalize_ext(ext: str) -> str:
    """``txt`` or ``.txt`` → ``.txt``; refuse anything that is not a plain suffix."""
    ext = ext if ext.startswith(".") else "." + ext
    if len(ext) < 2 or "/" in ext or os.sep in ext or "\0" in ext or ext in (".", ".."):
        raise UsageError(f"--ext must be a file suffix such as .txt, not {ext!r}")
    return ext


def sidecar_path(
    image: str | os.PathLike[str], ext: str, naming: SidecarName = SidecarName.STEM
) -> Path:
    """``photos/cat.jpg`` → ``photos/cat.txt``, or with ``full`` naming
    ``photos/cat.jpg.txt``."""
    path = Path(image)
    if naming is SidecarName.FULL:
        return path.with_name(path.name + ext)
    return path.with_suffix(ext)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


# A disk that is full or read-only fails every further sidecar too: the run stops (exit 5).
_FATAL = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one.

    The text goes to a temporary file in the same folder, which then replaces ``path``
    (``os.replace`` is atomic within a filesystem, and replaces a link rather than writing
    through it). Failed or interrupted, the temporary file is removed. A failure that every
    further write would meet too (a full or read-only disk) is an OutputError.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(exc, path) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n", errors="surrogateescape") as f:
            f.write(text)
            f.flush()
            set_mode(f.fileno(), tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(exc, path) from exc
        raise


def _write_error(exc: OSError, path: Path) -> InputError | OutputError:
    message = f"cannot write sidecar: {exc.strerror or exc}"
    if exc.errno in _FATAL:
        return OutputError(message, path=str(path))
    return InputError(message, path=str(path))
