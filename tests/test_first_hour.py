"""What a new user meets in the first hour of folder runs: sidecars for any folder, folders
with broken links, paths that can be fed back to a shell."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import draw_photo, run_mdream

pytestmark = pytest.mark.slow  # runs mdream in a child process
MDREAM = [sys.executable, "-m", "moondream_cli"]


def _album(root: Path) -> Path:
    album = root / "album"
    album.mkdir()
    draw_photo(seed=1).save(album / "a.jpg")
    draw_photo(seed=2).save(album / "a.png")
    draw_photo(seed=3).save(album / "b.jpg")
    return album


def test_two_images_that_share_a_stem_each_get_a_sidecar_with_full_names(
    tiny_model: Path, tmp_path: Path
) -> None:
    album = _album(tmp_path)
    stem = run_mdream("describe", album, "--sidecar", "-m", tiny_model, "-n", "3")
    assert stem.returncode == 1
    err = stem.stderr.decode()
    assert "album/a.txt is the sidecar of" in err
    assert "with --sidecar-name full each image gets its own (a.png.txt)" in err
    for name in ("a.txt", "b.txt"):
        (album / name).unlink()

    full = run_mdream(
        "describe", album, "--sidecar", "--sidecar-name", "full", "-m", tiny_model, "-n", "3"
    )
    assert full.returncode == 0, full.stderr
    assert sorted(p.name for p in album.glob("*.txt")) == ["a.jpg.txt", "a.png.txt", "b.jpg.txt"]


def test_a_second_sidecar_run_does_not_count_its_own_sidecars_as_files_left_out(
    tiny_model: Path, tmp_path: Path
) -> None:
    album = _album(tmp_path)
    (album / "notes.txt").write_text("mine")
    args = ("describe", album, "--sidecar", "--sidecar-name", "full", "-m", tiny_model, "-n", "2")
    assert run_mdream(*args).returncode == 0
    again = run_mdream(*args)
    assert again.returncode == 0
    err = again.stderr.decode()
    assert "kept 3 existing .txt sidecars" in err
    assert "left out 1 file in the folders that is not an image" in err  # notes.txt only


def test_a_broken_link_in_a_folder_is_skipped_and_named(tiny_model: Path, tmp_path: Path) -> None:
    album = _album(tmp_path)
    os.symlink(album / "gone.jpg", album / "c.jpg")
    done = run_mdream("describe", album, "-m", tiny_model, "-n", "2", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    paths = [json.loads(line)["path"] for line in done.stdout.decode().splitlines()]
    assert len(paths) == 3 and not any(p.endswith("c.jpg") for p in paths)
    assert "skipped 1 broken symbolic link in the folders" in done.stderr.decode()


def test_records_of_the_current_folder_keep_their_dot_slash(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Fed back to a shell (`xargs mdream ask`), `-dash.jpg` would read as an option.
    album = tmp_path / "album"
    album.mkdir()
    draw_photo().save(album / "-dash.jpg")
    done = run_mdream("describe", ".", "-m", tiny_model, "-n", "2", "-f", "jsonl", cwd=album)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == "./-dash.jpg"
    again = run_mdream("describe", "./-dash.jpg", "-m", tiny_model, "-n", "2", cwd=album)
    assert again.returncode == 0, again.stderr


def _on_a_terminal(*args: str | os.PathLike[str]) -> tuple[int, str]:
    """mdream with a terminal for stdin (a pty), as a person types the command."""
    import pty
    import subprocess
    import sys

    from conftest import ROOT

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "moondream_cli", *map(str, args)],
            stdin=follower,
            capture_output=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
    finally:
        os.close(follower)
        os.close(leader)
    return done.returncode, done.stderr.decode()


def test_an_image_from_stdin_when_stdin_is_the_terminal_is_refused_not_waited_for(
    tiny_model: Path,
) -> None:
    code, err = _on_a_terminal("describe", "-", "-m", tiny_model)
    assert code == 2
    assert "stdin is this terminal: pipe one in (cat photo.jpg | mdream describe -)" in err


def test_ctrl_c_while_an_answer_streams_puts_the_message_on_a_line_of_its_own(
    tiny_model: Path, tmp_path: Path
) -> None:
    # It read `clashes^Cmdream: interrupted`: the message glued to the half-written answer.
    import pty
    import select
    import signal
    import subprocess
    import time

    from conftest import ROOT

    image = tmp_path / "photo.png"
    draw_photo().save(image)
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [*MDREAM, "describe", str(image), "-m", str(tiny_model), "-n", "1500"],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while len(screen) < 40 and time.monotonic() < deadline:  # the answer is streaming
            if select.select([leader], [], [], 1)[0]:
                screen += os.read(leader, 4096)
        child.send_signal(signal.SIGINT)
        assert child.wait(30) == 130
        while select.select([leader], [], [], 0.5)[0]:
            try:
                screen += os.read(leader, 4096)
            except OSError:
                break
    finally:
        child.kill()
        os.close(leader)
    text = screen.decode(errors="replace").replace("\r\n", "\n")
    assert "mdream: interrupted" in text
    assert "\nmdream: interrupted" in text, text[-200:]  # at the start of its own line


def test_a_folder_run_on_a_narrow_terminal_never_wraps_its_progress_line(
    tiny_model: Path, tmp_path: Path
) -> None:
    # At 50 columns the bar wrapped, and every refresh left a stale half-line behind.
    import fcntl
    import pty
    import re
    import struct
    import subprocess
    import termios

    from conftest import ROOT

    album = tmp_path / "album"
    album.mkdir()
    for i in range(6):
        draw_photo(seed=i).save(album / f"{i}.png")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [*MDREAM, "describe", str(album), "-m", str(tiny_model), "-n", "8", "--format", "jsonl"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**env, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert done.returncode == 0
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    lines = [line for part in plain.split("\n") for line in part.split("\r") if line.strip()]
    assert any("6/6" in line and "img/s" in line for line in lines), lines
    assert max(len(line) for line in lines) <= 50, [line for line in lines if len(line) > 50]
