"""What decoding an image takes, and the memory every decode in the process shares.

A 970 KB PNG can hold 250 megapixels of RGBA: legal, under the megapixel limit, and about
3 GB once Pillow has decoded and flattened it. So before an image is decoded, its header is
read and :func:`decode_bytes` says how many bytes its decoding will hold at its peak,
counting its mode and bit depth (Pillow keeps RGB in 4 bytes a pixel, 16-bit grey in 2), the
copies the conversion to 8-bit RGB makes, and what the decoder itself keeps (a progressive
JPEG's coefficients, WebP's and AVIF's own buffers). An image that needs more than
:data:`DECODE_BUDGET` is refused with one line naming that size; the others take their
share of the budget while they decode (:meth:`Budget.reserve`), so the prefetch pool's
threads together never hold more than it: a thread waits until the others have finished.

A JPEG's scans are counted before it is decoded (:func:`jpeg_scans`), as libjpeg-turbo's
``-maxscans`` does: each scan of a progressive JPEG passes over every coefficient again, so
a small file with its last scan repeated 600 times decodes for minutes.

The figures behind the table: bench/README.md, "Decoding memory".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from . import interrupt
from .bounded import describe_size
from .errors import InputError

# Decoding one image, and all the decodes in flight together, may hold at most this much:
# a 250 MP RGB PNG (4 bytes a pixel) fits, its RGBA or 16-bit twin does not.
DECODE_BUDGET = 3 << 29  # 1.5 GiB
# A progressive JPEG from a camera or an encoder has about 10 scans; mozjpeg's, up to 13.
MAX_JPEG_SCANS = 100

# Bytes a pixel takes in Pillow's memory, by mode (RGB is stored as 4 bytes, LA as 4).
_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_ALPHA = frozenset({"RGBA", "LA", "La", "PA", "RGBa"})
_WIDE_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Decoders that hold images of their own besides Pillow's, in bytes a pixel: libwebp's
# animation decoder keeps its RGBA canvas and the frame Pillow copies; libavif and libheif
# their YUV planes and an RGB(A) conversion (bench/README.md, "Decoding memory").
_DECODER_PIXEL = {"WEBP": 12, "AVIF": 8, "HEIF": 6}
# Whatever the size: a decoder's state and row buffers, the Python objects around them.
_FIXED = 4 << 20


def peak_per_pixel(mode: str, *, transparency: bool, rotated: bool, unfitted: bool) -> int:
    """Bytes a pixel the decode holds at its peak (images.py's steps, each old image freed
    as soon as the next exists): the decoded image, its EXIF rotation, the conversion to
    RGB (flattening alpha onto white holds the image, the background and the result), and,
    when the pixels are not stretched to the model's square, their packed RGB copy."""
    decoded = _PIXEL.get(mode, 4)
    steps = [decoded]
    if rotated:
        steps.append(2 * decoded)
    if mode in _ALPHA or (mode == "P" and transparency):
        steps.append(12)  # RGBA + white background + composite
    elif mode in _WIDE_GREY:
        steps.append(8)  # 32-bit grey twice while it is scaled to 8 bits
    elif mode == "F":
        steps.append(5)  # float grey, then 8-bit grey
    elif mode != "RGB":
        steps.append(decoded + 4)  # the mode and its RGB conversion
    # RGB being stretched; or RGB and its packed bytes, which Pillow's tobytes holds twice
    # (the encoder's pieces, then their join).
    steps.append(10 if unfitted else 4)
    return max(steps)


def image_bytes(mode: str, size: tuple[int, int]) -> int:
    """Bytes Pillow holds for an image of ``mode`` and ``size``."""
    return _PIXEL.get(mode, 4) * size[0] * size[1]


def decode_bytes(
    fmt: str | None,
    mode: str,
    size: tuple[int, int],
    *,
    side: int | None = None,
    transparency: bool = False,
    rotated: bool = False,
    jpeg_coefficients: int = 0,
) -> int:
    """Bytes decoding an image of ``size`` (as decoded: a JPEG's draft size) will hold at
    its peak, stretched to a square of ``side`` (None: not stretched); ``jpeg_coefficients``:
    what a progressive JPEG's decoder keeps besides."""
    width, height = size
    per_pixel = peak_per_pixel(
        mode, transparency=transparency, rotated=rotated, unfitted=side is None
    )
    # A stretch resizes rows first: one image of side × height (RGB, 4 bytes a pixel).
    stretch = 4 * side * (height + side) if side is not None else 0
    pixels = width * height * (per_pixel + _DECODER_PIXEL.get(fmt or "", 0))
    return pixels + stretch + jpeg_coefficients + _FIXED


def progressive_coefficients(size: tuple[int, int], layers: list[tuple[str, int, int, int]]) -> int:
    """Bytes libjpeg keeps for a progressive JPEG of full ``size``: every component's DCT
    coefficients, 2 bytes each, at its own sampling (Pillow's ``layer``: id, h, v, table)."""
    factors = [(int(h), int(v)) for _, h, v, _ in layers] or [(1, 1)]
    hmax = max(h for h, _ in factors)
    vmax = max(v for _, v in factors)
    share = sum(h * v for h, v in factors) / (hmax * vmax)
    return int(2 * share * size[0] * size[1]) + 1


def jpeg_scans(f: BinaryIO) -> int:
    """The scans (SOS markers) in the JPEG ``f``, counted without decoding: in entropy-coded
    data a 0xFF is always followed by 0x00 or a restart marker, so every 0xFF 0xDA is one.
    ``f`` is left where it was."""
    start = f.tell()
    f.seek(0)
    count, tail = 0, b""
    try:
        while chunk := f.read(1 << 20):
            joined = tail + chunk
            count += joined.count(b"\xff\xda")
            tail = joined[-1:] if joined[-1:] == b"\xff" else b""
    finally:
        f.seek(start)
    return count


def check_scans(scans: int) -> None:
    if scans > MAX_JPEG_SCANS:
        raise InputError(
            f"a JPEG of {scans:,} scans refused (the limit is {MAX_JPEG_SCANS}; an ordinary "
            "progressive JPEG has about 10): decoding it would take minutes"
        )


class Budget:
    """Bytes that decodes in flight may hold together. Thread-safe; on the main thread
    every wait is shielded from Ctrl-C (``interrupt``'s rule) and short."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0  # the most held at once, for tests and measurements
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, need: int, what: str, *, rotated: bool = False) -> Iterator[Reservation]:
        """Hold ``need`` bytes while the block runs, waiting for other decodes to finish
        first if they hold too much; InputError naming ``what`` and the size when ``need``
        alone is more than the budget. ``rotated``: ``need`` counts an EXIF rotation."""
        self._refuse_over(need, what)
        while not self._take(need):
            pass
        held = Reservation(self, need, what, rotated)
        try:
            yield held
        finally:
            with interrupt.shielded(), self._cond:
                self.used -= held.need
                self._cond.notify_all()

    def _refuse_over(self, need: int, what: str) -> None:
        if need > self.total:
            raise InputError(
                f"image too large to decode: {what} needs about {describe_size(need)} of "
                f"memory (the limit is {describe_size(self.total)})"
            )

    def _take(self, need: int) -> bool:
        with interrupt.shielded(), self._cond:
            if self.used + need > self.total:
                self._cond.wait(0.1)
                return False
            self._add(need)
            return True

    def _add(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)


class Reservation:
    """What one decode holds of a :class:`Budget`."""

    def __init__(self, budget: Budget, need: int, what: str, rotated: bool) -> None:
        self.budget, self.need, self.what, self.rotated = budget, need, what, rotated

    def grow(self, extra: int) -> None:
        """Hold ``extra`` bytes more, learnt only while decoding (a PNG's EXIF rotation can
        come after its pixels): refused like the first request when the whole is more than
        the budget, taken at once otherwise -- waiting here, holding a share, could wait
        for ever on another decode doing the same."""
        self.budget._refuse_over(self.need + extra, self.what)
        with interrupt.shielded(), self.budget._cond:
            self.budget._add(extra)
            self.need += extra
        self.rotated = True


# One budget for the whole process: the prefetch pool's threads, and the API's callers.
DECODES = Budget(DECODE_BUDGET)
