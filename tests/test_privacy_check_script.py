"""`make privacy-check` (scripts/privacy_check.py) passes on a clean install and fails on a leak."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from test_doctor import install_bundle

pytestmark = pytest.mark.slow  # runs scripts/privacy_check.py, strace and all, in a child

SCRIPT = ROOT / "scripts" / "privacy_check.py"


def _check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
        input=b"",
    )


@pytest.fixture
def tools() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip(f"strace and unshare -n are Linux-only; this is {sys.platform}")
    if os.environ.get("MDREAM_SKIP_SYSCALL_TESTS") == "1":
        pytest.skip("MDREAM_SKIP_SYSCALL_TESTS=1: syscall traces skipped on purpose")


@pytest.mark.usefixtures("tools")
def test_passes_on_the_installed_model(isolated_home: Path, tiny_model: Path) -> None:
    install_bundle(isolated_home, tiny_model)
    run = _check("--only", "ask")
    assert run.returncode == 0, run.stderr.decode()
    lines = run.stdout.decode().splitlines()
    assert lines[0].split()[0] == "check"
    assert lines[1].split()[:3] == ["ask", "PASS", "PASS"]
    assert lines[-1] == "privacy-check: PASS"


@pytest.mark.usefixtures("tools")
def test_fails_when_the_run_writes_a_file(
    isolated_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    # A sitecustomize on PYTHONPATH runs inside every mdream child: a planted leak.
    install_bundle(isolated_home, tiny_model)
    plant = tmp_path / "plant"
    plant.mkdir()
    leak = tmp_path / "leak.txt"
    (plant / "sitecustomize.py").write_text(f"open({str(leak)!r}, 'a').write('x')\n")
    run = _check("--only", "ask", env={"PYTHONPATH": str(plant)})
    assert run.returncode == 1, run.stderr.decode()
    assert leak.exists()
    row = run.stdout.decode().splitlines()[1].split()
    assert row[:2] == ["ask", "FAIL"]  # (its bytecode, never compiled, is written too)
    assert run.stdout.decode().splitlines()[-1] == "privacy-check: FAIL"
    assert f"write: openat {leak}" in run.stderr.decode()


def test_says_what_to_do_without_a_model() -> None:
    run = _check()
    assert run.returncode == 3
    assert run.stdout == b""
    assert b"no model installed" in run.stderr
