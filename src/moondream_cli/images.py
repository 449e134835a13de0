"""Decode an image in memory into clean RGB pixels for the model.

Every image goes through :func:`load_image`: decode with an explicit list of formats
(no Ghostscript, no exotic plug-ins), take the first frame, apply the EXIF orientation,
flatten alpha onto white, convert to 8-bit RGB, and rebuild the image from raw pixels so
that no metadata (EXIF, XMP, ICC, text chunks, comments) survives. Given the projector's
``size``, it then stretches the image to that square as the reference Moondream2 did
(:func:`fit`, :mod:`.reference`). Nothing touches disk.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .reference import Fit

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)
# The model sees 378×378; JPEGs are decoded by libjpeg at a reduced scale (1/2 to 1/8) while
# they stay at least twice that in each dimension: 5.8× faster for a 12 MP photo, and the
# stretched pixels differ from full decoding's by 0.2 on average (bench/README.md, "JPEG
# draft decoding"). A 1080p photo is decoded in full.
DRAFT_FACTOR = 2
DEFAULT_DRAFT_SIDE = 378

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image


@dataclass(frozen=True)
class Pixels:
    """Packed 8-bit RGB rows, exactly what ``mtmd_bitmap_init`` takes."""

    width: int
    height: int
    data: bytes

    def to_image(self) -> Image.Image:
        return Image.frombytes("RGB", (self.width, self.height), self.data)


def _label(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Image.Image):
        return "<image>"
    return "<bytes>"


def load_image(
    source: ImageSource,
    *,
    label: str | None = None,
    size: int | None = None,
    fit_to: Fit = Fit.STRETCH,
) -> Pixels:
    """Decode ``source`` (a path, encoded bytes or a PIL image) into stripped RGB pixels;
    with the projector's ``size``, fitted to it as ``fit_to`` says (:func:`fit`)."""
    name = label or _label(source)
    pixels = _decode(source, name, size or DEFAULT_DRAFT_SIDE)
    return fit(pixels, size, fit_to) if size else pixels


def fit(pixels: Pixels, size: int | None, how: Fit = Fit.STRETCH) -> Pixels:
    """``pixels`` for a projector that takes ``size``×``size``: stretched to it with Pillow's
    bicubic filter, as the reference's ``Resize((378, 378), BICUBIC)`` did; left as they are
    to letterbox (libmtmd pads them itself) or when the size is unknown or already right."""
    if how is not Fit.STRETCH or not size or (pixels.width, pixels.height) == (size, size):
        return pixels
    if (
        pixels.width < 1
        or pixels.height < 1
        or len(pixels.data) != pixels.width * pixels.height * 3
    ):
        raise InputError("pixel data does not match the image size")
    square = pixels.to_image().resize((size, size), Image.Resampling.BICUBIC)
    return Pixels(size, size, square.tobytes())


def _decode(source: ImageSource, name: str, side: int) -> Pixels:
    try:
        if isinstance(source, Image.Image):
            return _clean(source, name)
        data = _read_source(source, name)
        if not data:
            raise InputError("empty file", path=name)
        with warnings.catch_warnings():
            # Pillow warns between 1× and 2× its pixel limit and raises above; both are bombs.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (DRAFT_FACTOR * side, DRAFT_FACTOR * side))
                img.seek(0)
                img.load()
                return _clean(img, name)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image too large (decompression bomb guard): {exc}", path=name) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"not a supported image (supported: {', '.join(FORMATS)})", path=name
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"corrupt or truncated image: {exc}", path=name) from exc


def _read_source(source: ImageSource, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)  # type: ignore[arg-type]
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError("no such file", path=name) from exc
    except IsADirectoryError as exc:
        raise InputError("is a directory", path=name) from exc
    except PermissionError as exc:
        raise InputError("permission denied", path=name) from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path=name) from exc


def _clean(img: Image.Image, name: str) -> Pixels:
    img = ImageOps.exif_transpose(img) or img
    rgb = _to_rgb(img)
    if rgb.width < 1 or rgb.height < 1:
        raise InputError("image has no pixels", path=name)
    # Rebuilding from raw bytes guarantees that no metadata rides along.
    return Pixels(rgb.width, rgb.height, rgb.tobytes())


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16/32-bit grey: scale to 8 bits instead of clipping everything above 255.
        if mode.startswith("I;16"):
            top = 65535.0
        else:
            extrema = img.getextrema()
            top = float(max(1, int(extrema[1])))  # type: ignore[arg-type]
        scale = 255.0 / top
        img = img.convert("I").point(lambda v: v * scale).convert("L")
    elif mode == "F":
        img = img.convert("L")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img
