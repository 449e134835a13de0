"""Hostile and unlucky inputs: whatever one input is, it costs exactly its own record, nothing
blocks, nothing is read without bound, and nothing vanishes silently.

The two EXIF files in tests/data/hostile were found by mutating a JPEG's EXIF block: Pillow's
``exif_transpose`` raised ``struct.error`` and ``TypeError`` on them, writing the block back.
mdream reads the orientation and drops the block, so they decode now.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, JpegImagePlugin

from conftest import ROOT, draw_photo, within
from moondream_cli.engine import Engine, EngineOptions, Sampling
from moondream_cli.errors import InputError
from moondream_cli.images import load_image, read_bounded
from moondream_cli.inputs import Tally, expand
from moondream_cli.locate import find_pair
from moondream_cli.runner import answer_inputs

HOSTILE = Path(__file__).parent / "data" / "hostile"


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Engine]:
    with Engine(find_pair(tiny_model), EngineOptions(threads=1, gpu=False, batch=1)) as loaded:
        yield loaded


@pytest.mark.parametrize("name", ["exif-type-error.jpg", "exif-struct-error.jpg"])
def test_a_broken_exif_block_is_dropped_and_its_orientation_kept(name: str) -> None:
    pixels = load_image(HOSTILE / name)
    with Image.open(HOSTILE / name) as img:
        assert img.getexif()[0x0112] == 6  # rotate 90° clockwise to display
        assert (pixels.width, pixels.height) == (img.height, img.width)


@pytest.mark.parametrize("raised", [TypeError("odd"), struct.error("bad"), KeyError("k")])
def test_whatever_the_decoder_raises_is_an_input_error(
    raised: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.jpg"
    draw_photo().save(path)

    def load(self: Image.Image) -> None:
        raise raised

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    with pytest.raises(InputError, match=f"\\({type(raised).__name__}: ") as caught:
        load_image(path)
    assert caught.value.path == str(path)


def test_a_corrupt_image_costs_only_its_own_record(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    draw_photo(seed=1).save(folder / "a.jpg")
    (folder / "b.jpg").write_bytes((HOSTILE / "exif-type-error.jpg").read_bytes()[:600])
    draw_photo(seed=2).save(folder / "c.jpg")
    results = list(
        answer_inputs(expand([str(folder)]), ["What is it?"], engine, Sampling(max_tokens=2))
    )
    assert [r.source.label.rsplit("/", 1)[1] for r in results] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [r.records[0].ok for r in results] == [True, False, True]
    assert "truncated" in str(results[1].records[0].error)


def test_a_fifo_in_a_folder_neither_blocks_the_walk_nor_the_read(tmp_path: Path) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    draw_photo().save(folder / "a.jpg")
    os.mkfifo(folder / "b.jpg")  # nobody ever writes to it
    sources = within(5, lambda: list(expand([str(folder)])))
    assert isinstance(sources, list) and [s.label[-5:] for s in sources] == ["a.jpg", "b.jpg"]
    with pytest.raises(InputError, match=r"not a regular file \(a FIFO\)"):
        within(5, lambda: load_image(folder / "b.jpg"))


def test_a_device_is_refused_without_reading_it() -> None:
    with pytest.raises(InputError, match=r"not a regular file \(a character device\)"):
        within(5, lambda: load_image("/dev/zero"))


def test_a_huge_sparse_file_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(6 << 30)  # 6 GiB, almost all hole
    with pytest.raises(InputError, match="file too large for an image"):
        load_image(path)
    with pytest.raises(InputError, match="file too large"):
        read_bounded(str(path), limit=1 << 20)


@pytest.mark.slow
def test_an_unreadable_folder_is_a_record_not_silence(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    draw_photo().save(locked / "a.jpg")
    locked.chmod(0)
    # Root reads any folder: the walk runs in a child without that capability.
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop the capability")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from moondream_cli.inputs import expand\n"
        "print([(s.label, s.error) for s in expand([sys.argv[2]])])"
    )
    try:
        done = subprocess.run(
            [
                *(drop if os.geteuid() == 0 else []),
                sys.executable,
                "-c",
                code,
                str(ROOT / "src"),
                str(locked),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert "cannot read the folder: Permission denied" in done.stdout, done.stdout


def test_folder_walks_count_the_files_that_are_not_images(tmp_path: Path) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    draw_photo().save(folder / "a.jpg")
    (folder / "notes.txt").write_text("hi")
    (folder / "fake.png").write_text("not a png")
    tally = Tally()
    assert len(list(expand([str(folder)], tally=tally))) == 1
    assert tally.not_images == 2


def _deep_folder(top: Path, levels: int) -> None:
    """``top/d/d/…/d`` ``levels`` deep, made by descriptor (its path outgrows PATH_MAX), with
    an image at the top and one 100 levels down."""
    top.mkdir()
    draw_photo().save(top / "a.jpg")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(levels):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
        if level == 99:
            photo = os.open("b.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(photo, (top / "a.jpg").read_bytes())
            os.close(photo)
    os.close(fd)


def _remove_deep_folder(top: Path) -> None:
    """Undo :func:`_deep_folder` by descriptor, bottom up: pytest's own clean-up of old
    temporary folders (shutil.rmtree) recurses once per level and would fail on it."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    with contextlib.suppress(FileNotFoundError):
        while True:
            fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    while len(fds) > 1:
        fd = fds.pop()
        for name in os.listdir(fd):
            os.unlink(name, dir_fd=fd)
        os.close(fd)
        os.rmdir("d", dir_fd=fds[-1])
    os.close(fds[0])


@pytest.fixture
def deep_folder(tmp_path: Path) -> Iterator[Path]:
    _deep_folder(tmp_path / "deep", 1100)
    yield tmp_path / "deep"
    _remove_deep_folder(tmp_path / "deep")


def test_a_folder_1100_levels_deep_is_walked_without_recursion(deep_folder: Path) -> None:
    sources = list(expand([str(deep_folder)], recursive=True))
    assert sources[0].label.endswith("deep/a.jpg")
    assert sources[1].label.endswith("/d" * 100 + "/b.jpg")
    # Past PATH_MAX a folder cannot be opened by its path: that folder's record says so.
    assert all(s.error is None or "too long" in s.error for s in sources)


def test_walking_order_is_files_first_then_each_subfolder_in_turn(tmp_path: Path) -> None:
    for name in ("b/z.png", "b/c/y.png", "a/x.png", "top.png", "b/w.png"):
        path = tmp_path / "t" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_photo().save(path)
    labels = [s.label.split("/t/", 1)[1] for s in expand([str(tmp_path / "t")], recursive=True)]
    assert labels == ["top.png", "a/x.png", "b/w.png", "b/z.png", "b/c/y.png"]
