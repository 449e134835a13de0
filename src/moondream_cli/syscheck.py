"""Read an ``strace -f`` log and list everything a private run must not do.

Pure: text in, findings out. The test suite and ``make privacy-check`` run mdream under
``strace`` (see :func:`strace_command`) and hand the log to :func:`check`. A finding is:

- ``network``: any socket syscall (socket, socketpair, connect, bind, listen, accept,
  send*/recv*, ...) of any address family. AF_UNIX is reported too: a local socket can
  reach a daemon (nscd, a resolver, a desktop bus) that forwards what it is told, and
  inference needs no socket at all, so the strict rule costs nothing.
- ``write``: a file opened for writing or creating (open/openat/openat2 with O_WRONLY,
  O_RDWR, O_CREAT, O_TRUNC, O_APPEND or O_TMPFILE; creat), or a name created, moved or
  removed (mkdir, rename, link, symlink, unlink, rmdir, mknod, truncate) — unless the path
  is on the allow-list: ``/dev/null``, the terminal (``/dev/tty``, ``/dev/pts/*``), GPU
  device nodes (``/dev/nvidia*``, ``/dev/dri/*``, ``/dev/kfd``: not storage) and the outputs
  the user asked for. A GPU driver's on-disk cache (``~/.nv/ComputeCache``) is a finding.
- ``process``: a program executed after the traced command itself (a helper such as
  Ghostscript could do anything; mdream never starts one).
- ``opaque``: an io_uring set up. Opens, connects and writes submitted through io_uring are
  not syscalls strace can show, so using it at all is a finding.

Attempts count even when the kernel refused them: a failed ``connect`` still tried.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

NETWORK_SYSCALLS = frozenset(
    {
        "socket",
        "socketpair",
        "connect",
        "bind",
        "listen",
        "accept",
        "accept4",
        "sendto",
        "sendmsg",
        "sendmmsg",
        "recvfrom",
        "recvmsg",
        "recvmmsg",
        "getsockopt",
        "setsockopt",
        "getsockname",
        "getpeername",
        "shutdown",
    }
)
OPEN_SYSCALLS = frozenset({"open", "openat", "openat2", "creat"})
# syscall -> indexes of its path arguments, and (for the *at forms) the dirfd before each.
NAME_SYSCALLS: dict[str, tuple[tuple[int | None, int], ...]] = {
    "mkdir": ((None, 0),),
    "mkdirat": ((0, 1),),
    "rmdir": ((None, 0),),
    "unlink": ((None, 0),),
    "unlinkat": ((0, 1),),
    "rename": ((None, 0), (None, 1)),
    "renameat": ((0, 1), (2, 3)),
    "renameat2": ((0, 1), (2, 3)),
    "link": ((None, 1),),
    "linkat": ((2, 3),),
    "symlink": ((None, 1),),
    "symlinkat": ((1, 2),),
    "mknod": ((None, 0),),
    "mknodat": ((0, 1),),
    "truncate": ((None, 0),),
}
EXEC_SYSCALLS = frozenset({"execve", "execveat"})
OPAQUE_SYSCALLS = frozenset({"io_uring_setup"})
WRITE_FLAGS = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE"})
# Character devices, not storage: the terminal, and the GPU device nodes a driver opens
# read-write to send the GPU its work (NVIDIA, DRM/Vulkan, ROCm).
ALWAYS_ALLOWED = ("/dev/null", "/dev/tty", "/dev/pts/*", "/dev/nvidia*", "/dev/dri/*", "/dev/kfd")

# What strace is asked to trace. `?name`: no error on architectures without that syscall
# (aarch64 has no open/creat/mkdir/...).
TRACED = (
    "%network",
    *(
        "?" + name
        for name in sorted(OPEN_SYSCALLS | set(NAME_SYSCALLS) | EXEC_SYSCALLS | OPAQUE_SYSCALLS)
    ),
)

_LINE = re.compile(r"^(?:\[pid\s+)?(?P<pid>\d+)\]?\s+(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>.*)$", re.S)
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$", re.S)
_FD_PATH = re.compile(r"^(?:-?\d+|AT_FDCWD)<(?P<path>.*)>$", re.S)


@dataclass(frozen=True)
class Syscall:
    pid: int
    name: str
    args: tuple[str, ...]
    result: str
    line: str


@dataclass(frozen=True)
class Finding:
    kind: str  # "network" | "write" | "process" | "opaque"
    syscall: str
    target: str  # the path, or the socket call's arguments
    pid: int
    result: str
    line: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.syscall} {self.target} = {self.result} (pid {self.pid})"


def strace_command(log_file: str, command: Sequence[str]) -> list[str]:
    """The argv that runs ``command`` under strace, following every thread and child.

    ``-y`` prints the path behind each descriptor, so ``openat(dirfd, "name")`` resolves.
    """
    return [
        "strace",
        "-f",
        "-y",
        "-qq",
        "-o",
        log_file,
        "-e",
        "trace=" + ",".join(TRACED),
        *command,
    ]


def unshare_command(command: Sequence[str], *, user_namespace: bool) -> list[str]:
    """The argv that runs ``command`` in a new network namespace: no interfaces but a dead lo.

    Root makes the namespace directly; without privileges a user namespace (``-r``) is needed.
    """
    return ["unshare", *(["-r"] if user_namespace else []), "-n", *command]


def parse_strace(text: str) -> list[Syscall]:
    """Completed syscalls from an ``strace -f -o FILE`` log, resumed calls joined up."""
    calls: list[Syscall] = []
    pending: dict[int, str] = {}
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = int(m["pid"]), m["rest"]
        if rest.startswith(("+++", "---")):
            continue
        if rest.endswith(_UNFINISHED):
            pending[pid] = rest[: -len(_UNFINISHED)]
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            head = pending.pop(pid, None)
            if head is None:
                head = resumed["name"] + "("  # the start was not in the log
            rest = head + resumed["rest"]
        call = _CALL.match(rest)
        if call:
            calls.append(
                Syscall(
                    pid, call["name"], tuple(split_args(call["args"])), call["ret"].strip(), raw
                )
            )
    return calls


def split_args(text: str) -> list[str]:
    """Split strace's argument list at top-level commas (quotes, braces and brackets nest)."""
    args: list[str] = []
    depth, start, i, quoted = 0, 0, 0, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "{[(<":
            depth += 1
        elif c in "}])>":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail or args:
        args.append(tail)
    return args


def unquote(arg: str) -> str:
    """The string strace printed as ``"..."`` (C escapes decoded); other text as is."""
    arg = arg.strip()
    if arg.endswith("..."):  # a string strace cut short
        arg = arg[:-3]
    if len(arg) < 2 or not (arg.startswith('"') and arg.endswith('"')):
        return arg
    body = arg[1:-1]
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "\\": 92, '"': 34, "'": 39}
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 == len(body):
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x" and re.match(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1 :])
            assert digits is not None
            out.append(int(digits.group(), 8) & 0xFF)
            i += 1 + len(digits.group())
        else:
            out.append(simple.get(nxt, ord(nxt) if ord(nxt) < 256 else 63))
            i += 2
    return os.fsdecode(bytes(out))


def _resolve(dirfd: str | None, path_arg: str, cwd: str | None) -> str:
    path = unquote(path_arg)
    if path.startswith("/"):
        return os.path.normpath(path)
    base: str | None = cwd
    if dirfd is not None:
        # With -y strace prints where each descriptor points: AT_FDCWD</cwd>, 5</some/dir>.
        fd = _FD_PATH.match(dirfd.strip())
        if fd:
            base = fd["path"]
        elif dirfd.strip() != "AT_FDCWD":
            base = None
    if base is None:
        return path  # cannot tell where: reported as printed, never allow-listed by accident
    return os.path.normpath(os.path.join(base, path))


def _open_flags(call: Syscall) -> set[str]:
    if call.name == "creat":
        return {"O_CREAT", "O_WRONLY", "O_TRUNC"}
    index = {"open": 1, "openat": 2, "openat2": 2}[call.name]
    if len(call.args) <= index:
        return set()
    flags = call.args[index]
    if call.name == "openat2":  # {flags=O_RDONLY|O_CLOEXEC, resolve=...}
        m = re.search(r"flags=([A-Z0-9_|]+)", flags)
        flags = m.group(1) if m else ""
    return set(flags.split("|"))


def allowed(path: str, allow: Iterable[str]) -> bool:
    """Whether ``path`` matches an allow-list entry (exact, or a glob such as /dev/pts/*)."""
    return any(path == pattern or fnmatchcase(path, pattern) for pattern in allow)


def findings(
    calls: Iterable[Syscall], *, allow: Iterable[str] = (), cwd: str | None = None
) -> list[Finding]:
    """Every network use, write and extra program in ``calls``, minus allow-listed paths.

    ``allow`` adds paths or globs (the outputs the user asked for) to :data:`ALWAYS_ALLOWED`;
    ``cwd`` is where the traced command started, to place relative paths.
    """
    allow_list = (*ALWAYS_ALLOWED, *(os.path.normpath(str(p)) for p in allow))
    found: list[Finding] = []
    first_exec = True
    for call in calls:
        if call.name in NETWORK_SYSCALLS:
            found.append(
                Finding(
                    "network", call.name, ", ".join(call.args), call.pid, call.result, call.line
                )
            )
        elif call.name in OPEN_SYSCALLS:
            if not _open_flags(call) & WRITE_FLAGS:
                continue
            if call.name in ("open", "creat"):
                path = _resolve(None, call.args[0], cwd)
            else:
                path = _resolve(call.args[0], call.args[1], cwd)
            if not allowed(path, allow_list):
                found.append(Finding("write", call.name, path, call.pid, call.result, call.line))
        elif call.name in NAME_SYSCALLS:
            for dirfd_index, path_index in NAME_SYSCALLS[call.name]:
                if path_index >= len(call.args):
                    continue
                dirfd = call.args[dirfd_index] if dirfd_index is not None else None
                path = _resolve(dirfd, call.args[path_index], cwd)
                if not allowed(path, allow_list):
                    found.append(
                        Finding("write", call.name, path, call.pid, call.result, call.line)
                    )
        elif call.name in OPAQUE_SYSCALLS:
            found.append(
                Finding("opaque", call.name, ", ".join(call.args), call.pid, call.result, call.line)
            )
        elif call.name in EXEC_SYSCALLS:
            if first_exec:
                first_exec = False  # the traced command itself
                continue
            target = unquote(call.args[0]) if call.args else ""
            found.append(Finding("process", call.name, target, call.pid, call.result, call.line))
    return found


def check(text: str, *, allow: Iterable[str] = (), cwd: str | None = None) -> list[Finding]:
    """Parse an strace log and return its findings; an empty list means a clean run."""
    return findings(parse_strace(text), allow=allow, cwd=cwd)


def summary(found: Sequence[Finding], *, limit: int = 20) -> str:
    """Findings as lines, for an error message or a report."""
    if not found:
        return "no findings"
    lines = [str(f) for f in found[:limit]]
    if len(found) > limit:
        lines.append(f"... and {len(found) - limit} more")
    return "\n".join(lines)
