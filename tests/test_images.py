"""images.load_image: every supported format, orientation, alpha, odd modes, and bad input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat, TiffImagePlugin

from conftest import draw_photo
from moondream_cli import images
from moondream_cli.errors import InputError
from moondream_cli.images import FORMATS, Pixels, fit, load_image, own_the_size_check
from moondream_cli.inputs import looks_like_image
from moondream_cli.reference import Fit


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_supported_format_decodes_to_rgb(fmt: str, tmp_path: Path) -> None:
    img = draw_photo((64, 48))
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_encode(img, fmt))
    pixels = load_image(path)
    assert (pixels.width, pixels.height) == (64, 48)
    assert len(pixels.data) == 64 * 48 * 3
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless: exactly the same pixels
        assert pixels.data == img.tobytes()


def test_path_bytes_and_pil_image_give_the_same_pixels(tmp_path: Path) -> None:
    img = draw_photo()
    data = _encode(img, "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert load_image(path) == load_image(data) == load_image(img)


def test_exif_orientation_is_applied_then_dropped() -> None:
    img = draw_photo((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    pixels = load_image(_encode(img, "PNG", exif=exif.tobytes()))
    expected = img.transpose(Image.Transpose.ROTATE_270)
    assert (pixels.width, pixels.height) == (40, 80)
    assert pixels.data == expected.tobytes()
    assert pixels.to_image().info == {}


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 255, 255))
    pixels = load_image(_encode(img, "PNG")).to_image()
    assert pixels.getpixel((1, 1)) == (255, 255, 255)
    assert pixels.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    out = load_image(_encode(img, "PNG", transparency=0)).to_image()
    assert out.getpixel((2, 2)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_first_frame_of_an_animated_gif() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert load_image(data).to_image().getpixel((4, 4)) == (255, 0, 0)


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    out = load_image(_encode(img, "JPEG")).to_image()
    r, g, b = out.getpixel((8, 8))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (8, 8), 32768)  # mid-grey in 16 bits
    out = load_image(_encode(img, "TIFF")).to_image()
    r, g, b = out.getpixel((0, 0))  # type: ignore[misc]
    assert 120 <= r <= 135 and r == g == b


def test_8_bit_grey_becomes_rgb() -> None:
    img = Image.new("L", (8, 8), 77)
    assert load_image(_encode(img, "PNG")).to_image().getpixel((0, 0)) == (77, 77, 77)


def test_multipage_tiff_uses_first_page() -> None:
    pages = [Image.new("RGB", (8, 8), c) for c in ((10, 20, 30), (200, 100, 0))]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    assert load_image(buf.getvalue()).to_image().getpixel((0, 0)) == (10, 20, 30)
    assert TiffImagePlugin  # the plug-in is what makes TIFF readable


def test_truncated_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(_encode(draw_photo((200, 200)), "JPEG")[:400])
    with pytest.raises(InputError) as err:
        load_image(path)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_image(path)


def test_non_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("just some text\n")
    with pytest.raises(InputError, match="not a supported image"):
        load_image(path)


def test_unsupported_format_is_refused_even_if_pillow_could_read_it() -> None:
    with pytest.raises(InputError, match="not a supported image"):
        load_image(_encode(draw_photo(), "PPM"))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)


def test_an_image_over_the_megapixel_limit_is_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (2000, 1000)), "PNG")
    with pytest.raises(InputError, match=r"2000×1000 is 2 MP, over the 1\.5 MP limit"):
        load_image(data, max_megapixels=1.5)
    assert load_image(data, max_megapixels=2.5).width == 2000


def test_mdream_owns_the_size_check_so_pillows_lower_guard_never_fires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _encode(Image.new("L", (200, 200)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's guard, 4× exceeded
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(data)  # a library user who kept Pillow's guard gets a clear line
    own_the_size_check()  # what the CLI and a Ray worker do (the API leaves it alone)
    assert load_image(data).width == 200


def test_large_jpeg_is_decoded_at_reduced_scale_but_keeps_aspect() -> None:
    img = draw_photo((3200, 1600))
    pixels = load_image(_encode(img, "JPEG", quality=85))
    assert pixels.width >= 756 and pixels.height >= 378
    assert pixels.width < 3200
    assert abs(pixels.width / pixels.height - 2.0) < 0.01


def test_stretch_is_pillows_bicubic_resize_of_the_stripped_image() -> None:
    img = draw_photo((160, 90))  # 16:9, like most photos
    data = _encode(img, "PNG")
    pixels = load_image(data, size=56)
    assert (pixels.width, pixels.height) == (56, 56)
    expected = load_image(data).to_image().resize((56, 56), Image.Resampling.BICUBIC)
    assert pixels.data == expected.tobytes()


def test_stretch_applies_after_the_exif_orientation() -> None:
    img = draw_photo((120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    upright = load_image(data)
    assert (upright.width, upright.height) == (60, 120)
    stretched = load_image(data, size=56)
    assert stretched.data == upright.to_image().resize((56, 56), Image.Resampling.BICUBIC).tobytes()


def test_letterbox_and_an_image_already_square_are_left_to_libmtmd() -> None:
    wide = load_image(_encode(draw_photo((160, 90)), "PNG"), size=56, fit_to=Fit.LETTERBOX)
    assert (wide.width, wide.height) == (160, 90)
    square = load_image(_encode(draw_photo((56, 56)), "PNG"), size=56)
    assert square == load_image(_encode(draw_photo((56, 56)), "PNG"))


def test_fit_refuses_pixels_that_do_not_match_their_size() -> None:
    with pytest.raises(InputError, match="does not match"):
        fit(Pixels(4, 4, b"\x00" * 3), 56)


def test_a_large_jpeg_stretched_from_its_draft_is_close_to_full_decoding() -> None:
    data = _encode(draw_photo((4000, 3000)), "JPEG", quality=90)
    drafted = load_image(data, size=378).to_image()
    with Image.open(io.BytesIO(data)) as full:
        reference = full.convert("RGB").resize((378, 378), Image.Resampling.BICUBIC)
    diff = ImageChops.difference(drafted, reference)
    extrema = diff.getextrema()
    assert isinstance(extrema, tuple)
    assert max(band[1] for band in extrema if isinstance(band, tuple)) <= 16  # sharp edges
    assert sum(ImageStat.Stat(diff).mean) / 3 < 1.0


def test_avif_decodes_with_pillows_own_decoder(tmp_path: Path) -> None:
    img = draw_photo((64, 48))
    path = tmp_path / "phone.avif"
    img.save(path, quality=95)
    pixels = load_image(path)
    assert (pixels.width, pixels.height) == (64, 48)
    assert looks_like_image(str(path))


@pytest.mark.skipif(not images.HEIF, reason="pillow-heif (the 'heic' extra) is not installed")
def test_heic_decodes_through_the_optional_extra_and_is_stripped(tmp_path: Path) -> None:
    img = draw_photo((64, 48))
    exif = Image.Exif()
    exif[0x0110] = "iPhone 15 Pro"
    path = tmp_path / "IMG_0001.HEIC"
    img.save(path, format="HEIF", quality=95, exif=exif.tobytes())
    pixels = load_image(path)
    assert (pixels.width, pixels.height) == (64, 48)
    assert b"iPhone" not in pixels.data
    assert looks_like_image(str(path))


def test_heic_without_its_decoder_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "IMG_0002.heic"
    path.write_bytes(b"\x00\x00\x00\x1cftypheic" + b"\x00" * 64)  # a HEIC Pillow cannot open
    monkeypatch.setattr(images, "HEIF", False)
    with pytest.raises(InputError, match=r"needs its decoder: pip install 'mdream\[heic\]'"):
        load_image(path)
