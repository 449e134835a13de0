"""Sidecars: checked and written through a descriptor of their folder, never through a link.

A sidecar's folder is resolved once per run, when its first image is checked (links in the
path the user gave are followed then, as they were meant); from then on every check and every
write in that folder goes through a descriptor opened from ``/`` along that resolved path
without following a link at any component (``O_NOFOLLOW`` at each step). A folder swapped for
a link during the run -- ``race/sub`` replaced by a link to another folder once its first
sidecar appeared -- is refused, not written through: that image's record says so.

Each sidecar is written to a temporary file with a short random name in its folder (a name of
255 bytes leaves no room for a longer one), by that descriptor, and renamed over its own name:
readers see the old file or the whole new one, and a link at its name is replaced, never
followed. A full or read-only filesystem stops the run (exit 5): every further sidecar would
fail too.

Where the OS opens no file relative to a folder's descriptor (Windows: ``os.supports_dir_fd``
is empty, and a folder cannot be opened at all), a :class:`Folder` is its resolved path,
checked each time to be a folder and not a link, and each sidecar is written by path, the
same temporary file renamed over its name. A folder higher up that path swapped for a link,
or a swap between the check and the write, is not caught there (creating links takes an
administrator or developer mode on Windows).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, OutputError
from .portable import set_mode

# The longest file name Linux filesystems take, in bytes.
NAME_MAX = 255
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS |= getattr(os, "O_CLOEXEC", 0)
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_NEW_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)  # Windows: no \r added
# A disk that is full or read-only fails every further sidecar too: the run stops (exit 5).
_FATAL = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def has_dir_fd() -> bool:
    """Whether this OS opens, checks, renames and removes files relative to a folder's
    descriptor (POSIX; not Windows)."""
    return {os.open, os.stat, os.access, os.rename, os.unlink} <= os.supports_dir_fd


@dataclass
class Folder:
    """A folder sidecars are written in: a descriptor of it (``fd``), or where the OS has no
    ``dir_fd`` (``fd`` None), its resolved path ``real``. Names are of files in it."""

    real: str
    fd: int | None

    def path(self, name: str) -> str:
        """The whole path of ``name`` in it (as resolved when it was opened)."""
        return os.path.join(self.real, name)

    def open(self, name: str, flags: int, mode: int = 0o777) -> int:
        if self.fd is None:
            return os.open(self.path(name), flags, mode)
        return os.open(name, flags, mode, dir_fd=self.fd)

    def lstat(self, name: str) -> os.stat_result:
        if self.fd is None:
            return os.lstat(self.path(name))
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def writable(self) -> bool:
        if self.fd is None:
            return os.access(self.real, os.W_OK)
        return os.access(".", os.W_OK | os.X_OK, dir_fd=self.fd)

    def read_only(self) -> bool:
        """Whether its filesystem is mounted read-only (False where that cannot be asked)."""
        try:
            if self.fd is not None and hasattr(os, "fstatvfs"):
                return bool(os.fstatvfs(self.fd).f_flag & getattr(os, "ST_RDONLY", 1))
            if hasattr(os, "statvfs"):
                return bool(os.statvfs(self.real).f_flag & getattr(os, "ST_RDONLY", 1))
        except OSError:
            pass
        return False

    def replace(self, source: str, name: str) -> None:
        if self.fd is None:
            os.replace(self.path(source), self.path(name))
        else:
            os.replace(source, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        if self.fd is None:
            os.unlink(self.path(name))
        else:
            os.unlink(name, dir_fd=self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


class Folders:
    """The folders one run writes sidecars into, each resolved the first time it is used."""

    def __init__(self) -> None:
        self._real: dict[str, str] = {}

    @contextlib.contextmanager
    def opened(self, folder: Path) -> Iterator[Folder]:
        """``folder`` as it was first seen this run, opened without following links;
        InputError when it cannot be had (OutputError: a dead disk)."""
        key = os.fspath(folder) or "."
        real = self._real.get(key)
        if real is None:
            real = self._real[key] = os.path.realpath(key)
        opened = open_folder(real, key)
        try:
            yield opened
        finally:
            opened.close()


def open_folder(real: str, shown: str) -> Folder:
    """The folder at the absolute path ``real``, its descriptor opened a component at a time
    from ``/`` without following a link at any of them; errors name ``shown``."""
    if not has_dir_fd():
        if os.path.islink(real):
            raise _swapped(shown)
        if not os.path.isdir(real):
            raise InputError(f"cannot open its folder {shown}: not a folder")
        return Folder(real, None)
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in real.split("/"):
            if part:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _swapped(shown) from exc
        raise InputError(f"cannot open its folder {shown}: {exc.strerror or exc}") from exc
    return Folder(real, fd)


def _swapped(shown: str) -> InputError:
    return InputError(
        f"its folder {shown} is not the folder it was when the run began (a link now): no "
        "sidecar is written through it"
    )


def check_before(folder: Folder, name: str, overwrite: bool, shown: Path) -> bool:
    """Before its image is decoded: True when the sidecar ``name`` exists and is kept;
    InputError when it could not be written (a name too long, not a regular file there, a
    folder not writable), OutputError when its filesystem is read-only."""
    if len(os.fsencode(name)) > NAME_MAX:
        raise InputError(f"its sidecar's name is longer than {NAME_MAX} bytes: {shown}")
    try:
        st = folder.lstat(name)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot check its sidecar {shown}: {exc.strerror}") from exc
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        raise InputError(f"its sidecar {shown} exists and is not a regular file")
    if st is not None and not overwrite:
        return True
    if not folder.writable():
        if folder.read_only():
            raise OutputError(f"cannot write sidecars: {shown.parent} is on a read-only filesystem")
        raise InputError(f"cannot write its sidecar: {shown.parent} is not writable")
    return False


def write(
    folder: Folder,
    name: str,
    text: str,
    shown: Path,
    *,
    durable: bool = False,
    mode: int | None = None,
) -> None:
    """Write ``text`` as the file ``name`` in ``folder``: a temporary file there first,
    then renamed over ``name``. Failed or interrupted, the temporary file is removed.
    ``durable`` flushes the new file to the disk before the rename, so that even a power cut
    leaves the old file or the new one (for files that hold more than mdream's answer: XMP
    sidecars); ``mode`` is its permissions (default: 0666 less the umask)."""
    tmp, out = _new_temporary(folder, shown)
    try:
        with os.fdopen(out, "w", encoding="utf-8", newline="\n", errors="surrogateescape") as f:
            f.write(text)
            f.flush()
            set_mode(f.fileno(), folder.path(tmp), _FILE_MODE if mode is None else mode)
            if durable:
                os.fsync(f.fileno())
        folder.replace(tmp, name)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            folder.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(exc, shown) from exc
        raise


def _new_temporary(folder: Folder, shown: Path) -> tuple[str, int]:
    """A new file of ours in ``folder`` (O_EXCL: never one planted there), with a short
    random name."""
    for _ in range(100):
        tmp = f".mdream-{secrets.token_hex(6)}.tmp"
        try:
            return tmp, folder.open(tmp, _NEW_FLAGS, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _write_error(exc, shown) from exc
    raise InputError("cannot make a temporary file for its sidecar", path=str(shown))


def _write_error(exc: OSError, path: Path) -> InputError | OutputError:
    message = f"cannot write sidecar: {exc.strerror or exc}"
    if exc.errno in _FATAL:
        return OutputError(message, path=str(path))
    return InputError(message, path=str(path))


def write_atomic(path: Path, text: str, *, durable: bool = False, mode: int | None = None) -> None:
    """:func:`write` for one sidecar at ``path``, its folder opened now."""
    try:
        folder = open_folder(os.path.realpath(path.parent), str(path.parent))
    except InputError as exc:
        raise InputError(f"cannot write sidecar: {exc.message}", path=str(path)) from None
    try:
        write(folder, path.name, text, path, durable=durable, mode=mode)
    finally:
        folder.close()


def holds_an_image(folder: Folder, name: str) -> bool:
    """Whether the file ``name`` in ``folder`` is a non-empty image (a sidecar never
    replaces one); read without blocking and without following a link."""
    from .images import image_head

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        file = folder.open(name, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(file).st_mode):
            return False
        head = os.read(file, 16)
    except OSError:
        return False
    finally:
        os.close(file)
    return bool(head) and image_head(head)
