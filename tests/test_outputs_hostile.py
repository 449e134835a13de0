"""Outputs under pressure: a full or closed stdout, a full or read-only disk, sidecars that
would collide with images or each other, names and locales that are not UTF-8, and control
characters — every case one clear line and a documented exit code, nothing lost or forged.
Child processes throughout: the promises are about the real stdout and exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, draw_photo, run_mdream
from test_doctor import install_bundle

pytestmark = pytest.mark.slow


def _err(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stderr.decode("utf-8", errors="replace")


def _shell(redirect: str, *args: object) -> subprocess.CompletedProcess[bytes]:
    """mdream with its stdout redirected by a real shell (``> /dev/full``, ``>&-``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    command = [sys.executable, "-m", "moondream_cli", *map(str, args)]
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirect}', "sh", *command],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here (Linux has one)")
def test_a_full_stdout_is_exit_5_with_one_line(tiny_model: Path, photo: Path) -> None:
    done = _shell("> /dev/full", "describe", photo, "-m", tiny_model, "-n", "2")
    assert done.returncode == 5, _err(done)
    assert _err(done).count("\n") == 1 and "cannot write the results to stdout" in _err(done)


def test_a_closed_stdout_is_exit_5_unless_results_go_to_sidecars(
    tiny_model: Path, photo: Path
) -> None:
    closed = _shell(">&-", "describe", photo, "-m", tiny_model, "-n", "2")
    assert closed.returncode == 5, _err(closed)
    assert "stdout is closed" in _err(closed) and "Traceback" not in _err(closed)
    sidecar = _shell(">&-", "describe", photo, "-m", tiny_model, "-n", "2", "--sidecar")
    assert sidecar.returncode == 0, _err(sidecar)
    assert photo.with_suffix(".txt").read_text().strip()


def test_a_sidecar_suffix_that_names_an_image_is_refused(tiny_model: Path, photo: Path) -> None:
    draw_photo().save(photo.with_suffix(".png"))
    before = photo.with_suffix(".png").read_bytes()
    done = run_mdream(
        "describe", photo, "-m", tiny_model, "--sidecar", "--ext", ".png", "--overwrite"
    )
    assert done.returncode == 2 and "image suffix" in _err(done)
    assert photo.with_suffix(".png").read_bytes() == before


def test_two_images_sharing_a_sidecar_name_cost_the_second_its_record_only(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    draw_photo(seed=1).save(folder / "a.jpg")
    draw_photo(seed=2).save(folder / "a.png")
    (folder / "b").mkdir()
    draw_photo(seed=3).save(folder / "c.jpg")
    (folder / "c.txt").mkdir()  # a folder where c's sidecar would go
    done = run_mdream("describe", folder, "-m", tiny_model, "--sidecar", "-n", "2")
    assert done.returncode == 1
    lines = _err(done).splitlines()
    assert any("a.png" in line and "is the sidecar of" in line for line in lines), lines
    assert any("c.jpg" in line and "not a regular file" in line for line in lines), lines
    assert (folder / "a.txt").read_text().strip()
    assert "wrote 1 .txt sidecar" in _err(done)


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_sidecar_run_with_exit_5_and_no_temporary_files(
    tiny_model: Path, tmp_path: Path
) -> None:
    with _tmpfs(tmp_path / "small", "256k") as disk:
        for i in range(3):
            draw_photo((32, 24), seed=i).save(disk / f"{i}.png")
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        done = run_mdream("describe", disk, "-m", tiny_model, "--sidecar", "-n", "2")
        names = sorted(p.name for p in disk.iterdir())
    assert done.returncode == 5, _err(done)
    assert "No space left on device" in _err(done)
    assert names == ["0.png", "1.png", "2.png", "filler"]  # no sidecar, no temporary file


def test_a_read_only_disk_is_found_before_any_inference_and_is_exit_5(
    tiny_model: Path, tmp_path: Path
) -> None:
    with _tmpfs(tmp_path / "ro", "1m") as disk:
        draw_photo().save(disk / "a.png")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        done = run_mdream("describe", disk, "-m", tiny_model, "--sidecar", "-n", "2")
    assert done.returncode == 5, _err(done)  # the README's promise: a read-only disk stops it
    assert "is on a read-only filesystem" in _err(done)


def test_a_newline_in_a_file_name_cannot_forge_a_line(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "a\nmdream: all fine.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    done = run_mdream("describe", bad, "-m", tiny_model)
    assert done.returncode == 1
    (line,) = _err(done).splitlines()
    assert line.startswith("mdream: error: ") and "a\\nmdream: all fine.jpg" in line


def test_a_name_that_is_not_utf8_comes_back_exactly(tiny_model: Path, tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    draw_photo().save(os.fsdecode(raw))
    jsonl = run_mdream("describe", os.fsdecode(raw), "-m", tiny_model, "-n", "2", "-f", "jsonl")
    assert jsonl.returncode == 0, _err(jsonl)
    assert b"\\udce9" in jsonl.stdout
    assert os.fsencode(json.loads(jsonl.stdout)["path"]) == raw
    tsv = run_mdream("describe", os.fsdecode(raw), "-m", tiny_model, "-n", "2", "-f", "tsv")
    assert tsv.stdout.splitlines()[1].split(b"\t")[0] == raw  # the name's own bytes


def test_a_non_utf8_locale_takes_non_ascii_questions(tiny_model: Path, photo: Path) -> None:
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = run_mdream("ask", photo, "Est-ce très rouge ?", "-m", tiny_model, "-n", "2", env=env)
    assert done.returncode == 0, _err(done)
    choices = run_mdream("ask", photo, "--choices", "très,ja", "-m", tiny_model, env=env)
    assert choices.returncode == 0, _err(choices)
    assert choices.stdout.decode("utf-8").strip() in ("très", "ja")


@pytest.mark.parametrize("last", ["missing.jpg", "shop/", "IMAGE_DIR"])
def test_ask_refuses_a_path_where_the_question_goes(
    tiny_model: Path, photo: Path, tmp_path: Path, last: str
) -> None:
    if last == "IMAGE_DIR":
        last = str(tmp_path)
    done = run_mdream("ask", photo, last, "-m", tiny_model)
    assert done.returncode == 2 and "looks like a path" in _err(done)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quiet", "--verbose"], "contradict"),
        (["--seed", "3"], "seed only matters with a temperature above 0"),
        (["--style", "tags", "--length", "long"], "--length applies to captions"),
    ],
)
def test_contradictory_options_are_refused(
    tiny_model: Path, photo: Path, flags: list[str], message: str
) -> None:
    done = run_mdream("describe", photo, "-m", tiny_model, *flags)
    assert done.returncode == 2 and message in _err(done)


def test_model_dir_takes_an_installed_bundle_name(
    tiny_model: Path, photo: Path, isolated_home: Path
) -> None:
    install_bundle(isolated_home, tiny_model, "tiny")
    done = run_mdream("describe", photo, "-m", "tiny", "-n", "2")
    assert done.returncode == 0, _err(done)
    missing = run_mdream("describe", photo, "-m", "nosuch", "-n", "2")
    assert missing.returncode == 3 and "installed: tiny" in _err(missing)
