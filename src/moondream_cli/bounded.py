"""The one way mdream opens a file it reads: without blocking, only what it expects, bounded.

Every file mdream reads — an image, a JSON schema, a ``--files-from`` list, a bundle's
manifest and ``.verified.json``, ``MDREAM_HOME/default``, a GGUF header, a bundle tarball,
an image on stdin — goes through :func:`open_fd` with its :class:`Kind`: opened with
``O_NONBLOCK`` (a FIFO is seen to be one, never waited on), checked with ``fstat`` (a folder,
a device or a socket is refused; a FIFO or a pipe only where the kind is a stream, such as a
list of paths), and refused before a byte is read when it is larger than the kind's limit.
:func:`read_file` then reads at most that many bytes, so a file that grows meanwhile is
refused too. Each refusal is the kind's own error class (a schema's is a usage error, exit 2;
a manifest's a model error, exit 3; an image's that image's record), one line naming the file.

The limits are documented in README.md ("Limits") and docs/pipelines.md.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from .errors import BundleError, InputError, MdreamError, ModelError, UsageError
from .portable import read_flags


def _flags() -> int:
    """Read as :mod:`.portable` says (non-blocking where FIFOs exist, binary on Windows),
    and never take a terminal as this process's own."""
    return read_flags() | getattr(os, "O_NOCTTY", 0)


_TYPES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class Kind:
    """What a file is for: how it is named in messages, the most bytes it may hold (None:
    read as a stream, bounded by its reader), which error refuses it, and whether a FIFO or
    a pipe will do (a list of paths from ``<(find …)``)."""

    what: str
    limit: int | None
    error: type[MdreamError]
    streams: bool = False


MiB = 1 << 20
# An uncompressed 250 MP TIFF is 750 MB; larger image files are refused unread.
IMAGE = Kind("an image", 1 << 30, InputError)
# A schema of a few hundred fields is a few KiB.
SCHEMA = Kind("a JSON schema", 1 * MiB, UsageError)
# Any length, read as a stream: each entry is bounded instead (inputs.MAX_ENTRY).
LIST = Kind("a --files-from list", None, UsageError, streams=True)
# Any length, read line by line: each line is bounded instead (resume.MAX_LINE).
RESUME = Kind("a --resume file", None, UsageError)
MANIFEST = Kind("a bundle manifest", 1 * MiB, ModelError)
VERIFIED = Kind("a bundle's .verified.json", 64 << 10, ModelError)
DEFAULT = Kind("MDREAM_HOME/default", 4 << 10, ModelError)
# Only the header is read, through a read-only map; every length in it is checked
# (gguf_meta), so the file itself may be as large as a model is.
GGUF = Kind("a GGUF model file", None, ModelError)
# Members are checked against the manifest one by one (bundles/install.py).
TARBALL = Kind("a bundle tarball", None, BundleError)
RECIPE = Kind("a recipe", 1 * MiB, BundleError)


def _refuse(kind: Kind, message: str, path: str | None) -> MdreamError:
    return kind.error(message, path=path)


def describe_size(size: int) -> str:
    """``1,024 MiB``, ``3.5 GiB``: a size for a message."""
    if size >= 10 << 30:
        return f"{size / 2**30:,.0f} GiB"
    if size >= 1 << 30:
        return f"{size / 2**30:,.1f} GiB"
    if size >= MiB:
        return f"{size / MiB:,.0f} MiB"
    return f"{size / 1024:,.0f} KiB" if size >= 1024 else f"{size} bytes"


def too_large(kind: Kind, size: int) -> str:
    assert kind.limit is not None
    return (
        f"file too large for {kind.what} ({describe_size(size)}; the limit is "
        f"{describe_size(kind.limit)})"
    )


def check_fd(fd: int, kind: Kind, path: str | None) -> os.stat_result:
    """Refuse what ``fd`` must not be for ``kind``: a folder, a device, a socket, a FIFO
    (unless the kind is a stream), a regular file over the kind's limit."""
    st = os.fstat(fd)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise _refuse(kind, "is a directory", path)
    if stat.S_ISREG(mode):
        if kind.limit is not None and st.st_size > kind.limit:
            raise _refuse(kind, too_large(kind, st.st_size), path)
        return st
    if kind.streams and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return st
    kind_name = _TYPES.get(stat.S_IFMT(mode), "not a file")
    raise _refuse(kind, f"not a regular file ({kind_name})", path)


def open_fd(path: str | os.PathLike[str], kind: Kind, *, dir_fd: int | None = None) -> int:
    """A descriptor for ``path``, checked as ``kind`` says (:func:`check_fd`); never blocks.
    A stream's descriptor is switched back to blocking reads; the caller closes it."""
    name = os.fspath(path)
    label = name if isinstance(name, str) else os.fsdecode(name)
    try:
        fd = os.open(name, _flags(), dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise _refuse(kind, "no such file", label) from exc
    except IsADirectoryError as exc:
        raise _refuse(kind, "is a directory", label) from exc
    except PermissionError as exc:
        raise _refuse(kind, "permission denied", label) from exc
    except OSError as exc:
        raise _refuse(kind, f"cannot read: {exc.strerror or exc}", label) from exc
    try:
        st = check_fd(fd, kind, label)
        if stat.S_ISFIFO(st.st_mode):
            again = _reopen_fifo(name, st, dir_fd)  # a stream's writer may come later
            os.close(fd)
            fd = again
        elif not stat.S_ISREG(st.st_mode):
            os.set_blocking(fd, True)  # a socket is read as it comes
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise _refuse(kind, f"cannot read: {exc.strerror or exc}", label) from exc
        raise
    return fd


def _reopen_fifo(name: str | bytes, st: os.stat_result, dir_fd: int | None) -> int:
    """A FIFO where a stream will do (a list of paths), opened again, blocking, so that
    reading waits for its writer as a FIFO should (the first, non-blocking open only saw
    what it was); refused if it is no longer the same FIFO."""
    again = os.open(name, _flags() & ~getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    now = os.fstat(again)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(again)
        raise OSError(16, "it changed while it was opened")
    return again


def open_file(path: str | os.PathLike[str], kind: Kind) -> BinaryIO:
    """:func:`open_fd` as a binary file object."""
    return os.fdopen(open_fd(path, kind), "rb")


def read_file(path: str | os.PathLike[str], kind: Kind) -> bytes:
    """The bytes of the file at ``path``, checked as ``kind`` says; at most its limit."""
    label = os.fsdecode(os.fspath(path))
    with open_file(path, kind) as f:
        try:
            data = f.read(kind.limit + 1) if kind.limit is not None else f.read()
        except OSError as exc:
            raise _refuse(kind, f"cannot read: {exc.strerror or exc}", label) from exc
    if kind.limit is not None and len(data) > kind.limit:  # it grew while being read
        raise _refuse(kind, too_large(kind, len(data)), label)
    return data


def read_text(path: str | os.PathLike[str], kind: Kind) -> str:
    """:func:`read_file` decoded as UTF-8 (invalid UTF-8 is refused as the kind says)."""
    try:
        return read_file(path, kind).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(kind, f"not UTF-8 text: {exc.reason}", os.fsdecode(path)) from exc


__all__ = [
    "DEFAULT",
    "GGUF",
    "IMAGE",
    "LIST",
    "MANIFEST",
    "RECIPE",
    "RESUME",
    "SCHEMA",
    "TARBALL",
    "VERIFIED",
    "Kind",
    "check_fd",
    "describe_size",
    "open_fd",
    "open_file",
    "read_file",
    "read_text",
    "too_large",
]
