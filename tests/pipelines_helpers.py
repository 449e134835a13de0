"""Builders for the pipeline tests: a folder with every kind of entry a real one has."""

from __future__ import annotations

from pathlib import Path

from conftest import draw_photo

GOOD_TOP = ("a.jpg", "b.png", "c.webp")
CORRUPT = "corrupt.jpg"
# A schema whose enum and booleans the grammar must respect.
SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "kind": {"enum": ["cat", "dog", "other"]},
        "outdoor": {"type": "boolean"},
    },
    "required": ["count", "kind", "outdoor"],
    "additionalProperties": False,
}


def make_folder(root: Path) -> Path:
    """``root/album`` with good images, a truncated JPEG, hidden files and folders, non-images
    (by extension and by content) and a subfolder holding one more image."""
    album = root / "album"
    (album / "sub").mkdir(parents=True)
    (album / ".hidden-dir").mkdir()
    draw_photo(seed=1).save(album / "a.jpg", quality=90)
    draw_photo(seed=2).save(album / "b.png")
    draw_photo(seed=3).save(album / "c.webp")
    draw_photo(seed=4).save(album / "sub" / "d.jpg")
    draw_photo(seed=5).save(album / ".hidden.jpg")
    draw_photo(seed=6).save(album / ".hidden-dir" / "e.jpg")
    (album / CORRUPT).write_bytes((album / "a.jpg").read_bytes()[:300])
    (album / "notes.txt").write_text("not an image\n")
    (album / "fake.png").write_text("text pretending to be a PNG\n")
    return album


def make_many(root: Path, count: int) -> list[Path]:
    """``count`` distinct image files (hard links of one PNG: distinct paths, cheap to make)."""
    root.mkdir(parents=True, exist_ok=True)
    first = root / "img-0000.png"
    draw_photo(seed=7).save(first)
    paths = [first]
    for i in range(1, count):
        path = root / f"img-{i:04d}.png"
        path.hardlink_to(first)
        paths.append(path)
    return paths
