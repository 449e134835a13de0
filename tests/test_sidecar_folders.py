"""Sidecars are written through a descriptor of their folder, opened without following links:
a folder swapped for a link during the run is refused, not written through; a name too long
for its sidecar costs no inference; a read-only filesystem stops the run with exit 5."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import draw_photo, run_mdream
from moondream_cli import sidecars
from moondream_cli.errors import InputError, OutputError
from moondream_cli.inputs import Source
from moondream_cli.progress import Progress
from moondream_cli.records import Record
from moondream_cli.runner import ImageResult
from moondream_cli.settings import OutputOptions
from moondream_cli.sink import Sink


def _sink(**options: object) -> Sink:
    return Sink(OutputOptions(sidecar=True, **options), io.StringIO(), None, False, Progress())  # type: ignore[arg-type]


def _answered(label: str) -> Iterator[ImageResult]:
    yield ImageResult(Source(label), [Record(label, "q", "an answer")])


# "path": as where the OS has no dir_fd (Windows), the folder checked by path before each write.
@pytest.mark.parametrize("folders", ["descriptor", "path"])
def test_a_folder_swapped_for_a_link_mid_run_is_not_written_through(
    tmp_path: Path, folders: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if folders == "path":
        monkeypatch.setattr(sidecars, "has_dir_fd", lambda: False)
    sub, other = tmp_path / "race" / "sub", tmp_path / "other"
    sub.mkdir(parents=True)
    other.mkdir()
    for i in (1, 2):
        draw_photo(seed=i).save(sub / f"i0{i}.jpg")
        (other / f"i0{i}.txt").write_text("someone else's file\n")
    sink = _sink()
    first, second = str(sub / "i01.jpg"), str(sub / "i02.jpg")
    assert not sink.exists(Source(first)) and not sink.exists(Source(second))  # decoded ahead
    sink.consume(_answered(first))
    assert (sub / "i01.txt").read_text() == "an answer\n"
    # The swap, after the first sidecar appeared.
    sub.rename(tmp_path / "race" / "moved")
    sub.symlink_to(other)
    sink.consume(_answered(second))
    assert (other / "i02.txt").read_text() == "someone else's file\n"
    assert sink.outcome.failed == 1 and sink.outcome.sidecars == 1


def test_the_folder_a_user_names_through_a_link_is_followed_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    draw_photo().save(real / "a.jpg")
    (tmp_path / "link").symlink_to(real)
    sink = _sink()
    label = str(tmp_path / "link" / "a.jpg")
    assert not sink.exists(Source(label))
    sink.consume(_answered(label))
    assert (real / "a.txt").read_text() == "an answer\n"


def test_a_name_at_the_limit_is_written_and_one_past_it_costs_no_inference(
    tmp_path: Path,
) -> None:
    at_limit = str(tmp_path / ("x" * 251 + ".jpg"))  # its .txt sidecar: 255 bytes
    draw_photo().save(at_limit)
    sink = _sink()
    assert not sink.exists(Source(at_limit))
    sink.consume(_answered(at_limit))
    assert (tmp_path / ("x" * 251 + ".txt")).read_text() == "an answer\n"
    over = str(tmp_path / ("y" * 250 + ".jpeg"))  # its .caption sidecar: 258 bytes
    draw_photo().save(over)
    with pytest.raises(InputError, match="longer than 255 bytes"):
        _sink(ext=".caption").exists(Source(over))


@contextlib.contextmanager
def _read_only_bind(folder: Path) -> Iterator[Path]:
    """``folder`` bind-mounted read-only onto itself (needs root)."""
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_filesystem_is_an_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    draw_photo().save(folder / "a.jpg")
    with _read_only_bind(folder), pytest.raises(OutputError, match="read-only filesystem"):
        _sink().exists(Source(str(folder / "a.jpg")))


@pytest.mark.slow
def test_a_read_only_bind_mount_under_sidecar_is_exit_5_before_any_inference(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    for i in range(3):
        draw_photo(seed=i).save(folder / f"{i}.jpg")
    with _read_only_bind(folder):
        done = run_mdream("describe", folder, "-m", tiny_model, "--sidecar", "-n", "2")
    err = done.stderr.decode()
    assert done.returncode == 5, err
    assert err.count("\n") == 1 and "read-only filesystem" in err
    assert sorted(os.listdir(folder)) == ["0.jpg", "1.jpg", "2.jpg"]
