from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_mdream

pytestmark = pytest.mark.slow  # runs `mdream` in a child process


def test_describe_prints_answer_only_and_is_repeatable(tiny_model: Path, photo: Path) -> None:
    first = run_mdream("describe", photo, "--model-dir", tiny_model, "-n", "8")
    second = run_mdream("describe", photo, "--model-dir", tiny_model, "-n", "8")
    assert first.returncode == 0, first.stderr
    assert first.stderr == b""
    assert first.stdout.endswith(b"\n") and not first.stdout.endswith(b"\n\n")
    assert first.stdout.strip()
    assert first.stdout == second.stdout
