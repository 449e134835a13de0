"""Expand what the user named (files, folders, lists of paths, stdin) into image inputs.

Everything here is a generator: a folder of 100,000 images or a ``find -print0`` list is
walked lazily, so memory stays flat apart from the set of paths already seen (duplicates
are dropped by their resolved path). Folders are walked in sorted order so that output is
reproducible; hidden files and folders are skipped, then files whose extension is not an
image's, then files whose first bytes are not an image's (a ``.jpg`` that is really text).
A file the user named explicitly is never skipped: if it is not an image, its record says so.
A folder that cannot be read is an input too, whose record says why; nothing vanishes
silently. Walking never blocks on a FIFO or a device: their records say what they are.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import UsageError
from .images import EXTENSIONS, HEIF_BRANDS
from .portable import read_flags

STDIN = "-"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    """One image to process. ``label`` is the path as the user gave it (``-`` for stdin)."""

    label: str
    from_stdin: bool = False
    error: str | None = None  # known already while walking (an unreadable folder)

    @property
    def path(self) -> str | None:
        return None if self.from_stdin else self.label


@dataclass
class Tally:
    """What walking folders left out, for the run's closing note."""

    not_images: int = 0  # files whose extension or first bytes are not an image's
    broken_links: int = 0  # symbolic links to nothing, skipped
    # With sidecars: the name of an image's sidecar (``a.jpg`` → ``a.txt``); the sidecars
    # beside a folder's images are the run's own, not files left out.
    sidecar_of: Callable[[str], str] | None = None


def expand(
    args: Iterable[str],
    *,
    recursive: bool = False,
    files_from: BinaryIO | None = None,
    null: bool = False,
    tally: Tally | None = None,
) -> Iterator[Source]:
    """Yield each distinct image input once, in the order given.

    ``args`` are paths (files or folders) or ``-`` for one image's bytes on stdin;
    ``files_from`` is an open binary stream of paths separated by newlines, or NULs if
    ``null``. Folders yield their images (recursively if ``recursive``); ``tally`` counts
    the files they held that are not images.
    """
    tally = tally if tally is not None else Tally()
    seen: set[str] = set()
    visited_dirs: set[tuple[int, int]] = set()
    for arg in _chain(args, files_from, null):
        if arg == STDIN:
            if STDIN not in seen:
                seen.add(STDIN)
                yield Source(STDIN, from_stdin=True)
            continue
        if _is_dir(arg):
            for found in _walk(arg, recursive, visited_dirs, tally):
                if found.error is not None or _first_time(found.label, seen):
                    yield found
        elif _first_time(arg, seen):
            # Missing or unreadable files still become inputs: their record carries the error.
            yield Source(arg)


def read_list(stream: BinaryIO, *, null: bool = False) -> Iterator[str]:
    """Paths from a stream, one per line (or NUL-separated), read in chunks, never all at once.

    Each path is handed out as soon as its separator has arrived: on a pipe fed slowly (a
    folder watcher), ``read1`` returns what is there instead of waiting for a full chunk.
    """
    sep = b"\0" if null else b"\n"
    read = getattr(stream, "read1", stream.read)
    pending = b""
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(sep)
        for raw in complete:
            name = _clean_entry(raw, null)
            if name:
                yield name
    name = _clean_entry(pending, null)
    if name:
        yield name


def _clean_entry(raw: bytes, null: bool) -> str:
    if not null and raw.endswith(b"\r"):
        raw = raw[:-1]
    # fsdecode keeps undecodable bytes (surrogateescape), so any file name round-trips.
    return os.fsdecode(raw)


def _chain(args: Iterable[str], files_from: BinaryIO | None, null: bool) -> Iterator[str]:
    yield from args
    if files_from is not None:
        for name in read_list(files_from, null=null):
            if name == STDIN:
                raise UsageError("a --files-from list cannot name '-' (stdin)")
            yield name


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _first_time(path: str, seen: set[str]) -> bool:
    try:
        key = os.path.realpath(path)
    except (OSError, ValueError):
        key = path
    if key in seen:
        return False
    seen.add(key)
    return True


def _walk(
    top: str, recursive: bool, visited: set[tuple[int, int]], tally: Tally
) -> Iterator[Source]:
    """Images under ``top``, sorted by name, hidden entries skipped, symlink loops cut; a
    folder that cannot be listed is a Source carrying the reason."""
    try:
        st = os.stat(top)
    except OSError as exc:
        yield Source(top, error=f"cannot read the folder: {exc.strerror or exc}")
        return
    ident = (st.st_dev, st.st_ino)
    if ident in visited:
        return  # a symlink back to a folder already walked
    visited.add(ident)
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Source(top, error=f"cannot read the folder: {exc.strerror or exc}")
        return
    subdirs: list[str] = []
    images: list[str] = []
    others: list[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        # Joined even to ".": `./-x.jpg` stays a path when a record is fed back to a shell.
        path = os.path.join(top, entry.name)
        try:
            is_dir = entry.is_dir()  # follows symlinks; loops are cut by ``visited``
            if entry.is_symlink() and not os.path.exists(path):
                tally.broken_links += 1  # a link to nothing is not an input that failed
                continue
        except OSError:
            continue
        if is_dir:
            if recursive:
                subdirs.append(path)
            continue
        if os.path.splitext(entry.name)[1].lower() in EXTENSIONS and looks_like_image(path):
            images.append(entry.name)
            yield Source(path)
        else:
            others.append(entry.name)
    ours = {tally.sidecar_of(name) for name in images} if tally.sidecar_of else set()
    tally.not_images += sum(1 for name in others if name not in ours)
    for sub in subdirs:
        yield from _walk(sub, recursive, visited, tally)


# First bytes of every format images.FORMATS decodes.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


def looks_like_image(path: str) -> bool:
    """True unless the file's first bytes rule out every supported format.

    An empty, unreadable or special file (a FIFO, a device) counts as an image here, so that
    its record reports the problem instead of the file vanishing silently; it is opened
    without blocking and not read.
    """
    try:
        fd = os.open(path, read_flags())
    except OSError:
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True
        head = os.read(fd, 16)
    except OSError:
        return True
    finally:
        os.close(fd)
    if not head:
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp":  # ISO-BMFF: AVIF, HEIC (a missing decoder is the record's error)
        return head[8:12] in (b"avif", b"avis", *HEIF_BRANDS)
    return head.startswith(_MAGIC)
