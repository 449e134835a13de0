"""The few OS calls that differ between Linux, macOS and Windows, each with its fallback.

Code elsewhere calls these instead of the POSIX-only originals, so that the main path (read
an image, answer it, write its record or sidecar, ``--resume``) runs on native Windows too:

- :func:`read_flags`: ``os.open`` flags for reading a file that may be a FIFO. POSIX opens it
  non-blocking (a FIFO is then seen and refused, never waited on); Windows has no
  ``O_NONBLOCK`` and no FIFOs at a path, but needs ``O_BINARY``, or the C runtime turns
  CR LF into LF and stops at a Ctrl-Z byte.
- :func:`set_mode`: ``os.fchmod`` where it exists (POSIX; Windows only from Python 3.13),
  else ``os.chmod`` by path.
- :func:`appends`: whether a file descriptor writes at the end of its file (``fcntl``'s
  ``O_APPEND`` on POSIX; Windows: its position is the file's end).
- :func:`process_alive`: ``os.kill(pid, 0)`` on POSIX; on Windows that call would
  *terminate* the process, so the process is opened and asked for its exit code instead.

Each reads ``os`` and ``sys`` when called, so a test can take an attribute away.
"""

from __future__ import annotations

import os
import sys

_STILL_ACTIVE = 259  # GetExitCodeProcess while the process runs
_QUERY_LIMITED_INFORMATION = 0x1000  # PROCESS_QUERY_LIMITED_INFORMATION
_ACCESS_DENIED = 5  # ERROR_ACCESS_DENIED: it exists, and is someone else's


def read_flags() -> int:
    """``os.open`` flags to read a file without blocking on a FIFO, in binary, not inherited
    by child processes: as many of those as this OS has."""
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_BINARY", "O_CLOEXEC", "O_NOINHERIT"):
        flags |= getattr(os, name, 0)
    return flags


def write_flags() -> int:
    """Extra ``os.open`` flags for writing a file: binary, not inherited, never through a
    link at its name (where this OS can refuse one)."""
    flags = 0
    for name in ("O_BINARY", "O_CLOEXEC", "O_NOINHERIT", "O_NOFOLLOW"):
        flags |= getattr(os, name, 0)
    return flags


def set_mode(fd: int, path: str | os.PathLike[str], mode: int) -> None:
    """Give the open file ``fd`` (at ``path``) the permission bits ``mode``."""
    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        fchmod(fd, mode)
    else:  # Windows before Python 3.13: only the read-only bit means anything there
        os.chmod(path, mode)


def appends(fd: int) -> bool:
    """Whether writes to ``fd`` go to the end of its file (the shell's ``>>``), rather than
    over it from the start (``>``, which has emptied it already)."""
    try:
        import fcntl
    except ImportError:  # Windows: `>>` opens the file with its position at the end
        return os.lseek(fd, 0, os.SEEK_CUR) == os.fstat(fd).st_size
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _alive_on_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    return True


def _alive_on_windows(pid: int) -> bool:
    if sys.platform == "win32":  # (mypy reads this on Windows only)
        import _winapi  # CPython's own Win32 calls, as subprocess makes them

        try:
            handle = _winapi.OpenProcess(_QUERY_LIMITED_INFORMATION, False, pid)
        except OSError as exc:
            return getattr(exc, "winerror", None) == _ACCESS_DENIED
        try:
            return bool(_winapi.GetExitCodeProcess(handle) == _STILL_ACTIVE)
        finally:
            _winapi.CloseHandle(handle)
    return True  # not reached: process_alive calls this on Windows only


__all__ = ["appends", "process_alive", "read_flags", "set_mode", "write_flags"]
