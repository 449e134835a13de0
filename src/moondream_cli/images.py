"""Decode an image in memory into clean RGB pixels for the model.

Every image goes through :func:`load_image`: decode with an explicit list of formats
(no Ghostscript, no exotic plug-ins), take the first frame, apply the EXIF orientation,
flatten alpha onto white, convert to 8-bit RGB, and rebuild the image from raw pixels so
that no metadata (EXIF, XMP, ICC, text chunks, comments) survives. Given the projector's
``size``, it then stretches the image to that square as the reference Moondream2 did
(:func:`fit`, :mod:`.reference`). Nothing touches disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image, UnidentifiedImageError

from . import bounded, budget
from .errors import InputError
from .reference import Fit

# HEIC/HEIF (iPhones) through pillow-heif, an optional extra (`pip install 'mdream[heic]'`):
# its wheels bundle libheif, libde265 and the GPL x265 encoder. AVIF is Pillow's own.
HEIF_EXTRA = "pip install 'mdream[heic]'"
try:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF = True
except ImportError:
    HEIF = False
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", *(("HEIF",) if HEIF else ()))
EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
    | {".avif", ".heic", ".heif", ".hif"}
)
# ISO-BMFF brands (bytes 8–12, after "ftyp") of HEIF images, to name the missing decoder.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")
# The model sees 378×378; JPEGs are decoded by libjpeg at a reduced scale (1/2 to 1/8) while
# they stay at least twice that in each dimension: 5.8× faster for a 12 MP photo, and the
# stretched pixels differ from full decoding's by 0.2 on average (bench/README.md, "JPEG
# draft decoding"). A 1080p photo is decoded in full.
DRAFT_FACTOR = 2
DEFAULT_DRAFT_SIDE = 378

# One documented limit on what an image may be (README, "Usage"): phone photos of 200 MP
# decode (JPEGs at a reduced scale); `--max-megapixels` raises or lowers it.
MAX_MEGAPIXELS = 250
# Larger files are refused before a byte is read: an uncompressed 250 MP TIFF is 750 MB.
MAX_FILE_BYTES = 1 << 30

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image

# Pillow's warnings about what it tolerates (corrupt EXIF, odd TIFF tags) are noise on a
# user's terminal: what cannot be decoded becomes that image's error record instead.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


@dataclass(frozen=True)
class Pixels:
    """Packed 8-bit RGB rows, exactly what ``mtmd_bitmap_init`` takes."""

    width: int
    height: int
    data: bytes

    def to_image(self) -> Image.Image:
        return Image.frombytes("RGB", (self.width, self.height), self.data)


@dataclass(frozen=True)
class Prepare:
    """How images become the model's pixels: fitted to the projector's ``size`` as ``fit``
    says (:func:`fit`), and refused above ``max_megapixels``."""

    size: int | None = None
    fit: Fit = Fit.STRETCH
    max_megapixels: float = MAX_MEGAPIXELS


def own_the_size_check() -> None:
    """Leave the size check to mdream (``max_megapixels`` and the decode budget): Pillow's
    own bomb guard would refuse, with two different limits, the 108 and 200 MP photos phones
    take. It changes Pillow's process-wide ``MAX_IMAGE_PIXELS``: only a front-end that owns
    its process calls it (the CLI, a Ray worker), never the Python API."""
    Image.MAX_IMAGE_PIXELS = None


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
    max_megapixels: float = MAX_MEGAPIXELS,
) -> Pixels:
    """Decode ``source`` (a path, encoded bytes or a PIL image) into stripped RGB pixels;
    with the projector's ``size``, fitted to it as ``fit_to`` says (:func:`fit`).

    Whatever goes wrong with one image is an :class:`InputError` naming it: an unreadable,
    special or oversized file, an undecodable or oversized image, one whose decoding would
    take more memory than the decode budget (:mod:`.budget`), whatever the decoder raises.
    """
    name = label or _label(source)
    try:
        return _decode(source, name, size, fit_to, max_megapixels)
    except InputError as exc:
        exc.path = exc.path or name
        raise
    except Image.DecompressionBombError as exc:  # Pillow's guard, where a front-end kept it
        raise InputError(
            f"image too large (Pillow's decompression bomb guard): {exc}", path=name
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(_unsupported(source), path=name) from exc
    except MemoryError as exc:
        raise InputError("not enough memory to decode the image", path=name) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"corrupt or truncated image: {exc}", path=name) from exc
    except Exception as exc:
        raise InputError(f"corrupt image ({type(exc).__name__}: {exc})", path=name) from exc


def prepare(source: ImageSource, how: Prepare, *, label: str | None = None) -> Pixels:
    """:func:`load_image` as ``how`` says."""
    return load_image(
        source, label=label, size=how.size, fit_to=how.fit, max_megapixels=how.max_megapixels
    )


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


def _decode(
    source: ImageSource, name: str, size: int | None, how: Fit, max_megapixels: float
) -> Pixels:
    if isinstance(source, Image.Image):
        _check_size(source.size, max_megapixels)
        return _clean(source, name, size, how, owned=False)
    held = len(source) if isinstance(source, (bytes, bytearray, memoryview)) else 0
    with _stream(source) as f:
        if held == 0 and not f.read(1):
            raise InputError("empty file", path=name)
        f.seek(0)
        with Image.open(f, formats=FORMATS) as img:
            _check_size(img.size, max_megapixels)
            rotated = _orientation(img, loaded=False) is not None
            stretch = size if size and how is Fit.STRETCH else None
            need = held + _decode_need(img, f, size or DEFAULT_DRAFT_SIDE, stretch, rotated)
            what = f"{img.width}×{img.height} {img.mode}"
            with budget.DECODES.reserve(need, what, rotated=rotated) as share:
                img.seek(0)
                img.load()
                return _clean(img, name, size, how, owned=True, held=share)


def _stream(source: ImageSource) -> BinaryIO:
    """The encoded image as a binary stream: a path opened by the bounded reader (never a
    FIFO or a device; Pillow reads it as it decodes, so its bytes are not held twice), or
    the bytes themselves."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return bounded.open_file(os.fspath(source), bounded.IMAGE)  # type: ignore[arg-type]


def _decode_need(
    img: Image.Image, f: BinaryIO, side: int, stretch: int | None, rotated: bool
) -> int:
    """The bytes decoding ``img`` and stretching it to ``stretch`` will hold at their peak
    (:func:`budget.decode_bytes`); a JPEG's scans are counted first, and it is set to decode
    at a reduced scale, at least twice ``side`` in each dimension."""
    coefficients = 0
    if img.format == "JPEG":
        budget.check_scans(budget.jpeg_scans(f))
        if img.info.get("progressive"):
            coefficients = budget.progressive_coefficients(img.size, getattr(img, "layer", []))
        img.draft("RGB", (DRAFT_FACTOR * side, DRAFT_FACTOR * side))
    return budget.decode_bytes(
        img.format,
        img.mode,
        img.size,
        transparency="transparency" in img.info,
        side=stretch,
        rotated=rotated,
        jpeg_coefficients=coefficients,
    )


def _unsupported(source: ImageSource) -> str:
    if not HEIF and _is_heif(source):
        return f"a HEIC/HEIF image needs its decoder: {HEIF_EXTRA}"
    return f"not a supported image (supported: {', '.join(FORMATS)})"


def _is_heif(source: ImageSource) -> bool:
    head = bytes(source[:12]) if isinstance(source, (bytes, bytearray, memoryview)) else b""
    if isinstance(source, (str, Path)):
        try:
            with bounded.open_file(source, bounded.IMAGE) as f:
                head = f.read(12)
        except InputError:
            return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def _check_size(size: tuple[int, int], max_megapixels: float) -> None:
    width, height = size
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        limit = f"{max_megapixels:g}"
        shown = f"{megapixels:,.0f}" if megapixels >= 100 else _short(megapixels, 2)
        if shown == limit:  # never "1 MP, over the 1 MP limit"
            shown = _short(megapixels, 6)
        raise InputError(
            f"image too large: {width}×{height} is {shown} MP, over the {limit} MP limit "
            "(--max-megapixels raises it)"
        )


def _short(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def read_bounded(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path`` (the bounded reader, :mod:`.bounded`),
    refused before reading when it is a folder, a FIFO or a device, or larger than ``limit``."""
    return bounded.read_file(path, replace(bounded.IMAGE, limit=limit))


# stdin: a pipe or a file; never a terminal or a device (`describe - < /dev/zero`).
_STDIN = bounded.Kind("an image", MAX_FILE_BYTES, InputError, streams=True)


def read_stream(stream: BinaryIO, limit: int = MAX_FILE_BYTES) -> bytes:
    """An image's bytes from a stream (stdin), at most ``limit`` of them. A device is
    refused unread; bytes that do not start like an image's are refused after the first
    few, not after ``limit`` of them."""
    kind = replace(_STDIN, limit=limit)
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        bounded.check_fd(stream.fileno(), kind, None)  # not a real descriptor: read anyway
    head = stream.read(16)
    if head and not image_head(head):
        raise InputError(f"not a supported image (supported: {', '.join(FORMATS)})")
    out = io.BytesIO()
    out.write(head)
    while out.tell() <= limit and (chunk := stream.read(min(1 << 20, limit + 1 - out.tell()))):
        out.write(chunk)
    if out.tell() > limit:
        raise InputError(bounded.too_large(kind, out.tell()))
    return out.getvalue()


# First bytes of every format FORMATS decodes.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


def image_head(head: bytes) -> bool:
    """Whether a file that starts with ``head`` (16 bytes) may be a supported image."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp":  # ISO-BMFF: AVIF, HEIC (a missing decoder is the record's error)
        return head[8:12] in (b"avif", b"avis", *HEIF_BRANDS)
    return head.startswith(_MAGIC)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image, *, loaded: bool = True) -> Image.Transpose | None:
    """The transposition the EXIF orientation asks for. Before the image is ``loaded``,
    only what Pillow knows without decoding the pixels: a PNG's EXIF may follow them."""
    if not loaded and img.format == "PNG" and "exif" not in img.info:
        return None
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    return _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


class _Steps:
    """The images one decode goes through, the last in ``img``: each is closed (its pixels
    freed) as soon as the next exists, so that at most two are held at a time (the
    caller's own image is never closed)."""

    def __init__(self, img: Image.Image, owned: bool) -> None:
        self.img = img
        self.keep = None if owned else img

    def then(self, new: Image.Image) -> Image.Image:
        if new is not self.img and self.img is not self.keep:
            self.img.close()
        self.img = new
        return new


def _clean(
    img: Image.Image,
    name: str,
    size: int | None,
    how: Fit,
    *,
    owned: bool,
    held: budget.Reservation | None = None,
) -> Pixels:
    """Orient ``img``, convert it to 8-bit RGB, stretch it to ``size`` if ``how`` says so,
    and rebuild it from raw bytes, which guarantees that no metadata rides along. ``held``:
    the decode's share of the budget, counted without a rotation if it was not known yet."""
    steps = _Steps(img, owned)
    method = _orientation(img)
    if method is not None:
        if held is not None and not held.rotated:
            held.grow(budget.image_bytes(img.mode, img.size))  # the rotated copy
        steps.then(img.transpose(method))
    _to_rgb(steps)
    if steps.img.width < 1 or steps.img.height < 1:
        raise InputError("image has no pixels", path=name)
    if size and how is Fit.STRETCH and steps.img.size != (size, size):
        steps.then(steps.img.resize((size, size), Image.Resampling.BICUBIC))
    rgb = steps.img
    pixels = Pixels(rgb.width, rgb.height, rgb.tobytes())
    steps.then(rgb)  # nothing new: the last image stays with the caller's `with`
    return pixels


def _to_rgb(steps: _Steps) -> None:
    """``steps.img`` as 8-bit RGB: 16/32-bit grey scaled, not clipped; alpha (a palette's
    transparency too) flattened onto white."""
    img = steps.img
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        if mode.startswith("I;16"):
            top = 65535.0
            img = steps.then(img.convert("I"))
        else:
            extrema = img.getextrema()
            top = float(max(1, int(extrema[1])))  # type: ignore[arg-type]
        scale = 255.0 / top
        img = steps.then(img.point(lambda v: v * scale))
        img = steps.then(img.convert("L"))
    elif mode == "F":
        img = steps.then(img.convert("L"))
    if mode == "P" and "transparency" in img.info:
        img = steps.then(img.convert("RGBA"))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else steps.then(img.convert("RGBA"))
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(background, rgba)
        background.close()
        img = steps.then(flat)
        img = steps.then(img.convert("RGB"))
    elif img.mode != "RGB":
        steps.then(img.convert("RGB"))
