"""What a new user meets in the first hour of folder runs: sidecars for any folder, folders
with broken links, paths that can be fed back to a shell."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import draw_photo, run_mdream

pytestmark = pytest.mark.slow  # runs mdream in a child process


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
