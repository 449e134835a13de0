"""The `mdream` command as a user runs it: stdout, stderr and exit codes, in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_mdream
from moondream_cli import Moondream
from moondream_cli.engine import Sampling

pytestmark = pytest.mark.slow  # every test runs `mdream` in a child process


def test_describe_stdout_is_exactly_the_api_answer(
    md: Moondream, tiny_model: Path, photo: Path
) -> None:
    result = run_mdream("describe", photo, "--model-dir", tiny_model, "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    expected = md.describe(photo, sampling=Sampling(max_tokens=16))
    assert result.stdout.decode() == expected + "\n"


def test_ask_prints_the_answer(md: Moondream, tiny_model: Path, photo: Path) -> None:
    result = run_mdream("ask", photo, "What is on the table?", "-m", tiny_model, "-n", "12")
    assert result.returncode == 0, result.stderr
    expected = md.ask(photo, "What is on the table?", sampling=Sampling(max_tokens=12))
    assert result.stdout.decode() == expected + "\n"
    assert result.stderr == b""


def test_verbose_sends_llama_logs_to_stderr_never_stdout(tiny_model: Path, photo: Path) -> None:
    quiet = run_mdream("describe", photo, "-m", tiny_model, "-n", "8")
    loud = run_mdream("describe", photo, "-m", tiny_model, "-n", "8", "--verbose")
    assert loud.returncode == 0
    assert loud.stdout == quiet.stdout
    assert b"llama" in loud.stderr or b"clip" in loud.stderr  # llama.cpp's own lines
    assert b"llama_" not in loud.stdout and b"clip_" not in loud.stdout


def test_corrupt_image_exits_1_with_one_line_naming_the_file(
    tiny_model: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    result = run_mdream("describe", bad, "-m", tiny_model)
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"mdream: error: {bad}: ")
    assert "Traceback" not in result.stderr.decode()


def test_batch_keeps_going_past_a_bad_file_and_exits_1(
    tiny_model: Path, photo: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.png"
    result = run_mdream(
        "describe", photo, missing, photo.with_name("photo.jpg"), "-m", tiny_model, "-n", "4"
    )
    assert result.returncode == 1
    assert result.stdout.decode().startswith(f"{photo}\t")
    assert f"mdream: error: {missing}: no such file" in result.stderr.decode()


def test_no_model_anywhere_exits_3_naming_both_ways_to_get_one(photo: Path) -> None:
    result = run_mdream("describe", photo)
    assert result.returncode == 3
    err = result.stderr.decode()
    assert "mdream fetch" in err and "mdream bundle install" in err
    assert result.stdout == b""
    assert len(err.splitlines()) == 1


def test_model_dir_without_a_pair_exits_3(photo: Path, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    result = run_mdream("describe", photo, "-m", tmp_path / "models")
    assert result.returncode == 3
    assert "one text GGUF and one mmproj GGUF" in result.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        ["describe"],
        ["describe", "x.jpg", "--length", "huge"],
        ["describe", "x.jpg", "--no-such-option"],
        ["ask", "x.jpg"],
        ["ask", "x.jpg", "   "],
        ["describe", "x.jpg", "--threads", "0"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_mdream(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == b""
    assert result.stderr.decode().startswith("mdream: error: ")


def test_debug_env_shows_a_traceback(photo: Path) -> None:
    result = run_mdream("describe", photo, env={"MDREAM_DEBUG": "1"})
    assert result.returncode == 3
    assert "Traceback" in result.stderr.decode()


def test_version_and_help() -> None:
    version = run_mdream("--version")
    assert version.returncode == 0
    assert version.stdout.decode().startswith("mdream ")
    for args in (["--help"], ["describe", "--help"], ["ask", "--help"]):
        result = run_mdream(*args)
        assert result.returncode == 0
        assert b"Usage" in result.stdout


def test_help_does_not_import_llama_cpp() -> None:
    probe = (
        "import sys\n"
        "from moondream_cli.cli.app import main\n"
        "try:\n    main(['describe', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED' if 'llama_cpp' in sys.modules else 'LAZY', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        cwd=ROOT,
        check=False,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.stderr.decode().strip().endswith("LAZY"), result.stderr


def test_model_found_through_MDREAM_MODEL(tiny_model: Path, photo: Path) -> None:
    result = run_mdream("describe", photo, "-n", "4", env={"MDREAM_MODEL": str(tiny_model)})
    assert result.returncode == 0, result.stderr


def test_pair_is_recognised_by_metadata_not_file_names(
    tiny_model: Path, photo: Path, tmp_path: Path
) -> None:
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "mmproj.gguf").write_bytes(
        (tiny_model / "moondream2-text-model-f16.gguf").read_bytes()
    )
    (swapped / "text-model.gguf").write_bytes(
        (tiny_model / "moondream2-mmproj-f16.gguf").read_bytes()
    )
    a = run_mdream("describe", photo, "-n", "6", "-m", swapped)
    b = run_mdream("describe", photo, "-n", "6", "-m", tiny_model)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout


def test_answer_streams_to_a_terminal(md: Moondream, tiny_model: Path, photo: Path) -> None:
    """With a TTY on stdout the answer arrives token by token; the text is the same."""
    import os
    import pty

    leader, follower = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moondream_cli",
            "describe",
            str(photo),
            "-m",
            str(tiny_model),
            "-n",
            "16",
        ],
        stdout=follower,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    shown = b"".join(chunks).replace(b"\r\n", b"\n").decode()
    expected = md.describe(photo, sampling=Sampling(max_tokens=16))
    assert shown == expected + "\n"
