"""The pixel road, judged by a model that sees: what mdream makes of a file decides the answer.

Each test asks the trained tiny Moondream (tests/data/shapes-moondream) about an image of its
world written in some awkward way (an EXIF rotation, a palette, CMYK, 16 bits, alpha, a huge
JPEG, AVIF, HEIC), and expects the answer the picture calls for. Where it helps, the same
test shows that the mistake it guards against would change the answer.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

import shapes_world as world
from conftest import run_mdream
from moondream_cli import Moondream

SHAPE = world.SHAPE_QUESTION
COLOUR = world.COLOUR_QUESTION
WHERE = world.WHERE_QUESTION
BACKGROUND = world.BACKGROUND_QUESTION
DIRECTION = world.DIRECTION_QUESTION


def scene(seed: int = 0, **fixed: object) -> world.Scene:
    """A PNG-saved scene with these attributes; the rest drawn from the world."""
    drawn = world.random_scene(random.Random(f"pixels:{seed}"), **fixed)
    return replace(drawn, jpeg_quality=None)


def png(img: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **params)
    return out.getvalue()


# -- EXIF orientation -----------------------------------------------------------------------

# How Pillow's exif_transpose turns each orientation upright; each of these is its own
# inverse but 6 and 8, which undo each other.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STORE = {**UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
# Which way the arrow points upright, and which way it lies in the stored pixels: each case
# one the model can tell apart (a mirror left-right turns a left arrow, not an up one).
ARROWS = {
    2: ("left", "right"),
    3: ("up", "down"),
    4: ("up", "down"),
    5: ("up", "left"),
    6: ("up", "left"),
    7: ("up", "right"),
    8: ("up", "right"),
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_the_exif_orientation_is_applied_before_the_model_sees_the_arrow(
    trained_md: Moondream, orientation: int
) -> None:
    points, lies = ARROWS[orientation]
    upright = world.draw(scene(orientation, shape="arrow", direction=points, background="white"))
    stored = upright.transpose(STORE[orientation])
    assert stored.transpose(UPRIGHT[orientation]).tobytes() == upright.tobytes()
    data = _jpeg_with_orientation(stored, orientation)
    assert trained_md.ask(data, DIRECTION) == points
    # The same pixels without the tag: the model sees which way they lie (so the test would
    # catch an orientation left unapplied).
    assert trained_md.ask(stored, DIRECTION) == lies


def _jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


# -- channels and modes -----------------------------------------------------------------------


@pytest.mark.parametrize("colour", ["red", "blue", "green", "yellow"])
def test_red_is_red_the_channels_keep_their_order(trained_md: Moondream, colour: str) -> None:
    img = world.draw(scene(1, colour=colour, shape="circle", background="white"))
    assert trained_md.ask(png(img), COLOUR) == colour
    # Swapped to BGR, red and blue trade places: the model would say so.
    swapped = Image.merge("RGB", img.split()[::-1])
    bgr = {"red": "blue", "blue": "red"}.get(colour)
    if bgr:
        assert trained_md.ask(swapped, COLOUR) == bgr


def test_transparency_is_flattened_onto_white(trained_md: Moondream) -> None:
    s = scene(2, colour="red", shape="star", background=world.TRANSPARENT)
    img = world.draw(s)  # RGBA; the transparent pixels hold black (0, 0, 0, 0)
    assert img.mode == "RGBA" and img.getpixel((0, 0)) == (0, 0, 0, 0)
    assert trained_md.ask(png(img), BACKGROUND) == "white"
    assert trained_md.describe(png(img)) == world.caption(s).strip()
    # Flattened onto black instead, or the alpha dropped, the model would see black.
    assert trained_md.ask(img.convert("RGB"), BACKGROUND) == "black"


def test_a_palette_image_with_a_transparent_index_is_flattened_onto_white(
    trained_md: Moondream,
) -> None:
    rgba = world.draw(scene(3, colour="blue", shape="square", background=world.TRANSPARENT))
    paletted = rgba.convert("RGB").quantize(8)
    # the palette index of the transparent (black) corner becomes PNG's transparent colour
    data = png(paletted, transparency=paletted.getpixel((0, 0)))
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert trained_md.ask(data, BACKGROUND) == "white"
    assert trained_md.ask(data, COLOUR) == "blue"


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA"])
def test_palette_cmyk_and_alpha_modes_keep_the_colours(trained_md: Moondream, mode: str) -> None:
    img = world.draw(scene(4, colour="orange", shape="triangle", background="beige"))
    if mode == "P":
        data = png(img.quantize(16))
    elif mode == "CMYK":
        out = io.BytesIO()
        img.convert("CMYK").save(out, "JPEG", quality=95)
        data = out.getvalue()
    else:  # greyscale with alpha: grey stays grey
        img = world.draw(scene(4, colour="black", shape="triangle", background="grey"))
        data = png(img.convert("LA"))
    assert Image.open(io.BytesIO(data)).mode == mode
    expected = "black" if mode == "LA" else "orange"
    assert trained_md.ask(data, COLOUR) == expected
    assert trained_md.ask(data, SHAPE) == "triangle"


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_greyscale_and_16_bit_greyscale_keep_black_and_white(
    trained_md: Moondream, mode: str
) -> None:
    img = world.draw(scene(5, colour="black", shape="circle", background="white"))
    grey = img.convert("L")
    if mode == "I;16":
        grey = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)
    data = png(grey)
    assert Image.open(io.BytesIO(data)).mode == mode
    assert trained_md.ask(data, COLOUR) == "black"
    assert trained_md.ask(data, BACKGROUND) == "white"


def test_a_16_bit_rgb_png_keeps_its_colours(trained_md: Moondream) -> None:
    img = world.draw(scene(6, colour="purple", shape="square", background="white"))
    data = _png16(np.asarray(img, dtype=np.uint16) * 257)
    with Image.open(io.BytesIO(data)) as check:  # 48-bit: Pillow reads it as 8-bit RGB
        assert check.mode == "RGB"
    assert trained_md.ask(data, COLOUR) == "purple"
    assert trained_md.ask(data, SHAPE) == "square"


def _png16(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow writes none), written by hand."""
    h, w, _ = rgb.shape
    rows = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# -- size and format ---------------------------------------------------------------------


def test_a_large_jpeg_decoded_in_draft_mode_keeps_the_answer(trained_md: Moondream) -> None:
    s = world.Scene(
        shape="star", colour="green", position="right", background="beige",
        width=4000, height=3000, size=0.4, x=0.74, y=0.5, jpeg_quality=90,
    )  # fmt: skip
    data = world.encode(s)
    assert trained_md.load(data).width == world.IMAGE_SIZE
    assert trained_md.describe(data) == world.caption(s).strip()


def _has_heif() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


DECODERS = [
    pytest.param(
        "AVIF", marks=pytest.mark.skipif(not features.check("avif"), reason="no AVIF in Pillow")
    ),
    pytest.param("HEIF", marks=pytest.mark.skipif(not _has_heif(), reason="no pillow-heif")),
]


@pytest.mark.parametrize("fmt", DECODERS)
def test_avif_and_heic_photos_are_seen_as_drawn(trained_md: Moondream, fmt: str) -> None:
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
    s = scene(7, colour="yellow", shape="circle", position="top", background="black")
    out = io.BytesIO()
    world.draw(s).save(out, fmt, quality=90)
    assert trained_md.describe(out.getvalue()) == world.caption(s).strip()


# -- stretch or letterbox ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_stretch_and_the_letterbox_are_not_mixed_up(
    trained_model: Path, tmp_path: Path
) -> None:
    """Very wide and very tall images with the shape near an edge. Stretched to the square
    (the reference's way, mdream's default) the picture fills it, as in the model's world:
    every caption is right, on white. Letterboxed (llama.cpp's way) the picture is a band
    between grey bars the model never saw: the background is not white any more, and the
    captions go wrong."""
    scenes = {
        tmp_path / "wide.png": world.make("circle", "red", "left", "white", 300, 100),
        tmp_path / "tall.png": world.make("star", "red", "top", "white", 100, 300),
        tmp_path / "wider.png": world.make("triangle", "red", "right", "white", 400, 100),
    }
    for path, scene in scenes.items():
        path.write_bytes(world.encode(scene))
    common: list[str | Path] = ["ask", *scenes, "-q", world.DESCRIBE, "-q", BACKGROUND]
    common += ["-m", trained_model]
    stretched = run_mdream(*common, "--format", "jsonl")
    letterboxed = run_mdream(*common, "--format", "jsonl", "--fit", "letterbox")
    assert stretched.returncode == letterboxed.returncode == 0, letterboxed.stderr

    def answers(out: bytes) -> list[str]:
        return [json.loads(line)["answer"] for line in out.splitlines()]

    right = [a for s in scenes.values() for a in (world.caption(s).strip(), "white")]
    assert answers(stretched.stdout) == right
    boxed = answers(letterboxed.stdout)
    print("letterboxed:", boxed)
    assert len(boxed) == len(right)
    assert all(ours != theirs for ours, theirs in zip(boxed, right, strict=True))
