"""Run a command under ``strace`` or in a network namespace of its own, and report.

The machinery behind the syscall tests and ``make privacy-check``: :func:`traced` runs a
command under ``strace -f`` and returns :mod:`syscheck`'s findings with its output;
:func:`offline` runs it under ``unshare -n`` (no network interfaces at all). Never imported
on the inference path.
"""

from __future__ import annotations

import compileall
import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import syscheck
from .syscheck import Finding

if TYPE_CHECKING:
    from PIL import Image

TOOLS = {"strace": "strace", "unshare": "util-linux"}


@dataclass(frozen=True)
class Check:
    """One mdream command line to prove private, run in a folder made by :func:`write_inputs`."""

    name: str
    args: tuple[str, ...]
    outputs: tuple[str, ...] = ()  # globs, relative to the folder: files the user asked for
    stdin: bytes = b""  # what the command reads on stdin (chat's questions)
    answers: bool = True  # it writes answers (takes --max-tokens); grep only scores
    env: tuple[tuple[str, str], ...] = ()  # set for the run (both runs' files must match)
    extra: str | None = None  # a module of an optional extra the check needs

    def runnable(self) -> bool:
        """False when the optional extra it needs is not installed here."""
        import importlib.util

        return self.extra is None or importlib.util.find_spec(self.extra) is not None


# Relative paths, so stdout can be compared between two copies of the inputs.
CHECKS = (
    Check("describe", ("describe", "a.jpg", "b.png")),
    Check("ask", ("ask", "a.jpg", "What is in the picture?")),
    Check("ask-two-questions", ("ask", "b.png", "-q", "Which colours?", "-q", "How many?")),
    Check("folder-jsonl", ("describe", "pics", "-r", "--format", "jsonl")),
    Check(
        "folder-sidecar",
        ("describe", "pics", "-r", "--sidecar"),
        # Each sidecar and its temporary file (sidecars.write), nothing else.
        outputs=("pics/*.txt", "pics/.mdream-*.tmp"),
    ),
    Check(
        "grep",
        ("grep", "-e", "a red circle", "-e", "a dog", "pics", "-r", "--min-p", "0"),
        answers=False,
    ),
    Check("chat", ("chat", "a.jpg"), stdin=b"What is it?\nWhat colour is it?\n"),
    # XMP sidecars note their date: fixed, so that the traced and the offline run's match.
    Check(
        "folder-xmp",
        ("describe", "pics", "-r", "--xmp"),
        outputs=("pics/*.xmp", "pics/.mdream-*.tmp"),
        env=(("SOURCE_DATE_EPOCH", "0"),),
        extra="exiv2",
    ),
)


def write_inputs(where: Path, pictures: Sequence[Image.Image]) -> Path:
    """Write a.jpg, b.png, pics/c.jpg and pics/d.jpg (from ``pictures``, reused in turn)."""
    names = ("a.jpg", "b.png", "pics/c.jpg", "pics/d.jpg")
    (where / "pics").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pictures[i % len(pictures)].convert("RGB").save(where / name)
    return where


def tree(where: Path) -> dict[str, bytes]:
    """Every file under ``where`` and its bytes: what a run left behind."""
    return {
        str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*")) if p.is_file()
    }


def stable_output(stdout: bytes) -> bytes:
    """stdout minus timings: JSONL records carry elapsed milliseconds, which differ per run."""
    try:
        records = [json.loads(line) for line in stdout.decode().splitlines()]
    except ValueError:
        return stdout
    if not records or not all(isinstance(r, dict) for r in records):
        return stdout
    kept = [{k: v for k, v in r.items() if "elapsed" not in k} for r in records]
    return "\n".join(json.dumps(r, sort_keys=True) for r in kept).encode()


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    findings: tuple[Finding, ...] = field(default=())


def missing_tools() -> list[str]:
    """The tools (strace, unshare) not on PATH, as ``tool (Debian package)``."""
    return [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]


def precompile(package_dir: Path) -> bool:
    """Write the package's bytecode now, as ``pip install`` does for an installed package.

    The traced runs keep bytecode writing on, so a module compiled at run time would show
    up as a finding; a checkout (editable install) is compiled here first instead.
    """
    return bool(compileall.compile_dir(str(package_dir), quiet=1))


def _run(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout: float,
    stdin: bytes = b"",
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def traced(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    allow: Iterable[str] = (),
    timeout: float = 300,
    stdin: bytes = b"",
) -> Run:
    """Run ``command`` under strace; ``findings`` lists every network use and write."""
    with tempfile.TemporaryDirectory(prefix="mdream-strace-") as tmp:
        log = os.path.join(tmp, "strace.log")
        argv = syscheck.strace_command(log, command)
        done = _run(argv, env, cwd, timeout, stdin)
        try:
            text = Path(log).read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            text = ""
        if not text.strip():
            raise RuntimeError(f"strace wrote no log: {done.stderr.decode(errors='replace')}")
    start = os.path.abspath(cwd) if cwd is not None else os.getcwd()
    found = syscheck.check(text, allow=allow, cwd=start)
    return Run(tuple(argv), done.returncode, done.stdout, done.stderr, tuple(found))


def offline(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    stdin: bytes = b"",
) -> Run:
    """Run ``command`` with no network at all (a new, empty network namespace)."""
    argv = syscheck.unshare_command(command, user_namespace=_needs_user_namespace())
    done = _run(argv, env, cwd, timeout, stdin)
    return Run(tuple(argv), done.returncode, done.stdout, done.stderr)


@functools.lru_cache(maxsize=1)
def _unshare_probe() -> tuple[bool, str | None]:
    """(use a user namespace?, why neither way works): plain ``unshare -n`` first (root)."""
    why = ""
    for user_namespace in (False, True):
        try:
            argv = syscheck.unshare_command(["true"], user_namespace=user_namespace)
            done = _run(argv, None, None, 30)
        except OSError as exc:
            return False, str(exc)
        if done.returncode == 0:
            return user_namespace, None
        why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
    return False, why


def _needs_user_namespace() -> bool:
    return _unshare_probe()[0]


def offline_works() -> str | None:
    """None when a network namespace can be made here (``unshare -n`` or ``-r -n``), else why."""
    return _unshare_probe()[1]
