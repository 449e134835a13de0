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
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .portable import read_flags
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
    """Leave the size check to mdream (``max_megapixels``): Pillow's own bomb guard would
    refuse, with two different limits, the 108 and 200 MP photos phones take. Front-ends
    call this once; it changes Pillow's process-wide ``MAX_IMAGE_PIXELS``."""
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
    special or oversized file, an undecodable or oversized image, whatever the decoder raises.
    """
    name = label or _label(source)
    pixels = _decode(source, name, size or DEFAULT_DRAFT_SIDE, max_megapixels)
    try:
        return fit(pixels, size, fit_to) if size else pixels
    except MemoryError as exc:
        raise InputError("not enough memory to fit the image", path=name) from exc


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


def _decode(source: ImageSource, name: str, side: int, max_megapixels: float) -> Pixels:
    try:
        if isinstance(source, Image.Image):
            _check_size(source.size, max_megapixels)
            return _clean(source, name)
        data = _read_source(source, name)
        if not data:
            raise InputError("empty file", path=name)
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            _check_size(img.size, max_megapixels)
            if img.format == "JPEG":
                img.draft("RGB", (DRAFT_FACTOR * side, DRAFT_FACTOR * side))
            img.seek(0)
            img.load()
            return _clean(img, name)
    except InputError as exc:
        exc.path = exc.path or name
        raise
    except Image.DecompressionBombError as exc:  # Pillow's guard, where a front-end kept it
        raise InputError(
            f"image too large (Pillow's decompression bomb guard): {exc}", path=name
        ) from exc
    except UnidentifiedImageError as exc:
        if not HEIF and _is_heif(source):
            raise InputError(
                f"a HEIC/HEIF image needs its decoder: {HEIF_EXTRA}", path=name
            ) from exc
        raise InputError(
            f"not a supported image (supported: {', '.join(FORMATS)})", path=name
        ) from exc
    except MemoryError as exc:
        raise InputError("not enough memory to decode the image", path=name) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"corrupt or truncated image: {exc}", path=name) from exc
    except Exception as exc:
        raise InputError(f"corrupt image ({type(exc).__name__}: {exc})", path=name) from exc


def _is_heif(source: ImageSource) -> bool:
    head = bytes(source[:12]) if isinstance(source, (bytes, bytearray, memoryview)) else b""
    if isinstance(source, (str, Path)):
        try:
            with open(source, "rb") as f:
                head = f.read(12)
        except OSError:
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


def _read_source(source: ImageSource, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return read_bounded(os.fspath(source))  # type: ignore[arg-type]
    except InputError as exc:
        exc.path = name
        raise


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def read_bounded(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, refused (InputError) before reading when
    it is a folder, a FIFO or a device, or larger than ``limit``. Opening never blocks: a
    FIFO is opened non-blocking, seen to be one, and closed."""
    try:
        fd = os.open(path, read_flags())
    except FileNotFoundError as exc:
        raise InputError("no such file") from exc
    except IsADirectoryError as exc:
        raise InputError("is a directory") from exc
    except PermissionError as exc:
        raise InputError("permission denied") from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
            raise InputError(f"not a regular file ({kind})")
        _check_bytes(st.st_size, limit)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    _check_bytes(len(data), limit)  # it grew while being read
    return data


def read_stream(stream: BinaryIO, limit: int = MAX_FILE_BYTES) -> bytes:
    """An image's bytes from a stream (stdin), at most ``limit`` of them."""
    try:
        st = os.fstat(stream.fileno())
        if stat.S_ISREG(st.st_mode):
            _check_bytes(st.st_size, limit)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file descriptor: the read below is bounded anyway
    data = stream.read(limit + 1)
    _check_bytes(len(data), limit)
    return data


def _check_bytes(size: int, limit: int) -> None:
    if size > limit:
        raise InputError(
            f"file too large for an image ({size / 2**20:,.0f} MiB; the limit is "
            f"{limit / 2**20:,.0f} MiB)"
        )


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
