"""inputs.expand: folders, recursion, hidden and non-image files, lists, dedupe, laziness."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest

from moondream_cli.errors import UsageError
from moondream_cli.inputs import Source, expand, looks_like_image, read_list
from pipelines_helpers import make_folder


def labels(sources: Iterator[Source]) -> list[str]:
    return [s.label for s in sources]


def test_folder_keeps_images_in_name_order_and_skips_hidden_and_non_images(tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    got = labels(expand([str(album)]))
    # corrupt.jpg starts like a JPEG, so it stays (its record will carry the error);
    # fake.png does not, notes.txt has no image extension, hidden entries and sub/ are skipped.
    assert got == [str(album / n) for n in ("a.jpg", "b.png", "c.webp", "corrupt.jpg")]


def test_recursive_descends_into_subfolders_but_not_hidden_ones(tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    got = labels(expand([str(album)], recursive=True))
    assert got[-1] == str(album / "sub" / "d.jpg")
    assert len(got) == 5
    assert not any("hidden" in g for g in got)


def test_symlink_loops_end_and_duplicates_are_dropped(tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    (album / "sub" / "loop").symlink_to(album, target_is_directory=True)
    (album / "sub" / "again.jpg").symlink_to(album / "a.jpg")
    got = labels(expand([str(album), str(album / "a.jpg"), f"{album}/./b.png"], recursive=True))
    assert len(got) == len(set(got)) == 5
    assert str(album / "sub" / "again.jpg") not in got  # same file as a.jpg


def test_explicit_files_are_kept_even_if_missing_or_not_images(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    got = labels(expand([str(notes), str(tmp_path / "missing.jpg"), "-", "-"]))
    assert got == [str(notes), str(tmp_path / "missing.jpg"), "-"]


def test_expand_is_lazy_over_arguments() -> None:
    def args() -> Iterator[str]:
        yield "first.jpg"
        raise AssertionError("expand read past what was asked for")

    assert labels(islice(expand(args()), 1)) == ["first.jpg"]


def test_nul_list_keeps_spaces_newlines_and_non_ascii(tmp_path: Path) -> None:
    names = ["with space.jpg", "new\nline.jpg", "naïve café 日本.png", "plain.jpg"]
    stream = io.BytesIO(b"\0".join(os.fsencode(n) for n in names) + b"\0")
    assert list(read_list(stream, null=True)) == names


def test_newline_list_ignores_blank_lines_and_crlf() -> None:
    stream = io.BytesIO(b"a.jpg\r\n\nb c.jpg\nlast.png")
    assert list(read_list(stream)) == ["a.jpg", "b c.jpg", "last.png"]


def test_list_is_read_in_chunks_not_all_at_once() -> None:
    class Endless(io.RawIOBase):
        reads = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            Endless.reads += 1
            chunk = b"x.jpg\n" * (len(b) // 6)
            b[: len(chunk)] = chunk
            return len(chunk)

    got = list(islice(read_list(Endless()), 3))  # type: ignore[arg-type]
    assert got == ["x.jpg"] * 3
    assert Endless.reads == 1


def test_a_path_on_a_slow_pipe_is_handed_out_before_the_pipe_fills_or_ends() -> None:
    # A folder watcher writes one path and waits: that path must come out now, not when a
    # whole chunk has arrived or the writer closes the pipe.
    import threading

    r, w = os.pipe()
    reader = os.fdopen(r, "rb")  # buffered, like sys.stdin.buffer
    got: list[str] = []
    first = threading.Event()

    def consume() -> None:
        for name in read_list(reader):
            got.append(name)
            first.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    os.write(w, b"first.jpg\n")
    try:
        assert first.wait(timeout=10), "the first path waited for more input"
        assert got == ["first.jpg"]
    finally:
        os.write(w, b"second.jpg\n")
        os.close(w)
        thread.join(timeout=10)
        reader.close()
    assert got == ["first.jpg", "second.jpg"]


def test_files_from_list_cannot_name_stdin() -> None:
    with pytest.raises(UsageError):
        list(expand([], files_from=io.BytesIO(b"a.jpg\n-\n")))


def test_content_sniffing(tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    assert looks_like_image(str(album / "c.webp"))
    assert looks_like_image(str(album / "corrupt.jpg"))
    assert not looks_like_image(str(album / "fake.png"))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert looks_like_image(str(empty))  # kept, so that its record says "empty file"
