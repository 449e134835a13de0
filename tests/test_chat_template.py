"""Invariant 5: a GGUF's embedded chat template is never executed; the prompt is ours."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import moondream_gguf
from conftest import run_mdream

pytestmark = pytest.mark.slow  # runs `mdream` in a child process

# Jinja that would fail loudly, or leak into the prompt, if anything rendered it.
HOSTILE = "{{ raise_exception('the embedded chat template was executed') }}LEAKED-TEMPLATE"


def test_embedded_chat_template_is_ignored(tiny_model: Path, photo: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    moondream_gguf.write_text_model(hostile / moondream_gguf.TEXT_NAME, chat_template=HOSTILE)
    shutil.copy(tiny_model / moondream_gguf.MMPROJ_NAME, hostile / moondream_gguf.MMPROJ_NAME)
    from moondream_cli.gguf_meta import read_metadata

    assert read_metadata(hostile / moondream_gguf.TEXT_NAME)["tokenizer.chat_template"] == HOSTILE

    with_template = run_mdream("ask", photo, "What is it?", "-m", hostile, "-n", "10")
    without = run_mdream("ask", photo, "What is it?", "-m", tiny_model, "-n", "10")
    assert with_template.returncode == 0, with_template.stderr
    assert with_template.stderr == b""
    # Same weights, same prompt: the template changed nothing and leaked nowhere.
    assert with_template.stdout == without.stdout
    assert b"LEAKED" not in with_template.stdout
