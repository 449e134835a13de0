"""Syscall proof: real `mdream` runs under strace and in a network namespace of their own.

Each command runs twice on a fresh copy of its inputs: under ``strace -f`` (no socket
syscall of any kind, nothing opened for writing but /dev/null, the terminal and the outputs
the user asked for, no other program started), and under ``unshare -n`` (no network at
all), where stdout and the files left behind must be identical. Then planted violations
inside a real run prove the checker catches them.

Bytecode: the checkout is compiled first (``syscall_audit.precompile``, what ``pip install`` does
for an installed package) and the traced child runs with bytecode writing ON. Setting
PYTHONDONTWRITEBYTECODE=1 instead would hide any write Python makes at run time; this way a
module compiled on the fly would be a finding.

strace and unshare come from Debian (`.ci/run` installs them). Missing tools make these
tests FAIL; set MDREAM_SKIP_SYSCALL_TESTS=1 to skip them on purpose.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LINUX_ONLY, ROOT, draw_photo
from moondream_cli import syscall_audit
from moondream_cli.syscheck import summary

pytestmark = [pytest.mark.slow, LINUX_ONLY]  # real runs under strace and unshare

# The same command lines `make privacy-check` runs (syscall_audit.CHECKS).
COMMANDS = [pytest.param(check, id=check.name) for check in syscall_audit.CHECKS]


@pytest.fixture(scope="session")
def syscall_tools() -> None:
    if os.environ.get("MDREAM_SKIP_SYSCALL_TESTS") == "1":
        pytest.skip("MDREAM_SKIP_SYSCALL_TESTS=1: syscall traces skipped on purpose")
    missing = syscall_audit.missing_tools()
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install strace util-linux "
            "(or set MDREAM_SKIP_SYSCALL_TESTS=1 to skip these tests)",
            pytrace=False,
        )
    why = syscall_audit.offline_works()
    if why:
        pytest.fail(f"`unshare -n true` fails here: {why}", pytrace=False)
    assert syscall_audit.precompile(ROOT / "src" / "moondream_cli")


@pytest.fixture
def child_env(tiny_model: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode writes must show up, not be hidden
    env["PYTHONPATH"] = str(ROOT / "src")
    env["MDREAM_MODEL"] = str(tiny_model)
    return env


def _inputs(where: Path) -> Path:
    pictures = [draw_photo(seed=1), draw_photo((64, 80), seed=2), draw_photo((50, 50), seed=3)]
    return syscall_audit.write_inputs(where, pictures)


def _mdream(*args: str, answers: bool = True) -> list[str]:
    return [sys.executable, "-m", "moondream_cli", *args, *(["-n", "6"] if answers else [])]


@pytest.mark.usefixtures("syscall_tools")
@pytest.mark.parametrize("check", COMMANDS)
def test_no_socket_no_write_and_same_output_without_network(
    check: syscall_audit.Check, tmp_path: Path, child_env: dict[str, str]
) -> None:
    assert check.runnable(), f"{check.extra} is missing: make install (the dev extra has it)"
    child_env = {**child_env, **dict(check.env)}
    traced_dir, offline_dir = _inputs(tmp_path / "traced"), _inputs(tmp_path / "offline")
    before = syscall_audit.tree(traced_dir)
    allow = [str(traced_dir / pattern) for pattern in check.outputs]

    run = syscall_audit.traced(
        _mdream(*check.args, answers=check.answers),
        env=child_env,
        cwd=traced_dir,
        allow=allow,
        stdin=check.stdin,
    )
    assert run.returncode == 0, run.stderr.decode()
    assert not run.findings, summary(run.findings)
    if check.outputs:  # the answers went to the sidecars the user asked for, and only there
        created = set(syscall_audit.tree(traced_dir)) - set(before)
        assert created and all(
            any(fnmatch.fnmatch(str(traced_dir / name), pattern) for pattern in allow)
            for name in created
        ), created
        assert all(syscall_audit.tree(traced_dir)[name].strip() for name in created)
    else:
        assert run.stdout.strip(), "the traced run printed no answer"
        assert syscall_audit.tree(traced_dir) == before  # nothing created, changed or removed

    cut_off = syscall_audit.offline(
        _mdream(*check.args, answers=check.answers),
        env=child_env,
        cwd=offline_dir,
        stdin=check.stdin,
    )
    assert cut_off.returncode == 0, cut_off.stderr.decode()
    assert syscall_audit.stable_output(cut_off.stdout) == syscall_audit.stable_output(run.stdout)
    assert syscall_audit.tree(offline_dir) == syscall_audit.tree(traced_dir)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real loopback server for the planted connection to reach."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        yield server


def _planted(code: str, image: Path) -> list[str]:
    """A real `mdream describe IMAGE` whose image loader first runs ``code``."""
    script = textwrap.dedent(
        """
        import sys
        import moondream_cli.images as images
        from moondream_cli.cli.app import main

        real = images.load_image

        def planted(*args, **kwargs):
        {code}
            return real(*args, **kwargs)

        images.load_image = planted
        main(sys.argv[1:])
        """
    ).format(code=textwrap.indent(textwrap.dedent(code), "    "))
    return [sys.executable, "-c", script, "describe", str(image), "-n", "4"]


@pytest.mark.usefixtures("syscall_tools")
def test_checker_catches_a_file_written_inside_a_real_run(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    image = _inputs(tmp_path / "in") / "a.jpg"
    leak = tmp_path / "leak.bin"
    code = f"""
        import os
        fd = os.open({str(leak)!r}, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"pixels")
        os.close(fd)
    """
    run = syscall_audit.traced(_planted(code, image), env=child_env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode()
    assert leak.read_bytes() == b"pixels"
    assert [(f.kind, f.syscall, f.target) for f in run.findings] == [("write", "openat", str(leak))]


@pytest.mark.usefixtures("syscall_tools")
def test_checker_catches_a_socket_opened_from_c_inside_a_real_run(
    tmp_path: Path, child_env: dict[str, str], listener: socket.socket
) -> None:
    # Straight from libc: Python's audit hooks (the in-process guard) never see this one.
    image = _inputs(tmp_path / "in") / "a.jpg"
    port = listener.getsockname()[1]
    code = f"""
        import ctypes, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
        addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", {port})
        addr += socket.inet_aton("127.0.0.1") + bytes(8)
        libc.connect(fd, ctypes.c_char_p(addr), len(addr))
        libc.close(fd)
    """
    run = syscall_audit.traced(_planted(code, image), env=child_env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode()
    conn, _ = listener.accept()  # the planted connection really happened
    conn.close()
    calls = [(f.kind, f.syscall) for f in run.findings]
    assert ("network", "socket") in calls and ("network", "connect") in calls
    (connect,) = [f for f in run.findings if f.syscall == "connect"]
    assert f"htons({port})" in connect.target and "127.0.0.1" in connect.target


@pytest.mark.usefixtures("syscall_tools")
def test_a_module_compiled_at_run_time_would_be_caught(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    # Why the checkout is precompiled: without it, bytecode writes are findings.
    pkg = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "moondream_cli",
        pkg / "moondream_cli",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    image = _inputs(tmp_path / "in") / "a.jpg"
    env = dict(child_env, PYTHONPATH=str(pkg))
    run = syscall_audit.traced(_mdream("describe", str(image)), env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode()
    written = {f.target for f in run.findings if f.kind == "write"}
    assert any(t.endswith(".pyc") or ".pyc." in t for t in written), summary(run.findings)
