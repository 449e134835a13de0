"""Metadata never reaches the model or any output; only oriented pixels do.

Images carry a unique marker in every metadata field a camera or editor writes: EXIF (camera
make/model, GPS, serial number, user comment, an embedded thumbnail), XMP, an ICC profile,
PNG tEXt/zTXt/iTXt chunks and JPEG comments. The tests check the markers really are in the
files, that no marker shows up in stdout or stderr (with llama.cpp's verbose log on), and
that the pixels handed to the model equal a stripped, rotated copy of the same pixels.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from pathlib import Path

import pytest
from PIL import Image, ImageCms, PngImagePlugin

from conftest import draw_photo, run_mdream
from moondream_cli.images import Pixels, load_image

LEAK = "MDREAM-LEAK"
MARK = {
    field: f"{LEAK}-{field}-{n:04d}"
    for n, field in enumerate(
        [
            "make",
            "model",
            "description",
            "artist",
            "gps-datum",
            "serial",
            "user-comment",
            "thumbnail",
            "xmp",
            "icc",
            "comment",
            "png-text",
            "png-ztxt",
            "png-itxt",
        ]
    )
}
ROTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation -> the turn that shows it upright


def _ifd(entries: list[tuple[int, int, bytes]], start: int, next_ifd: int = 0) -> bytes:
    """One little-endian TIFF IFD at offset ``start``; values over 4 bytes follow the table."""
    sizes = {2: 1, 3: 2, 4: 4, 5: 8, 7: 1}
    table = struct.pack("<H", len(entries))
    data = b""
    data_at = start + 2 + 12 * len(entries) + 4
    for tag, typ, value in sorted(entries):
        count = len(value) // sizes[typ]
        if len(value) <= 4:
            table += struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, typ, count, data_at + len(data))
            data += value + b"\0" * (len(value) % 2)
    return table + struct.pack("<I", next_ifd) + data


def _ascii(text: str) -> bytes:
    return text.encode() + b"\0"


def _thumbnail() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 0, 0)).save(buf, "JPEG", comment=MARK["thumbnail"])
    return buf.getvalue()


def exif_block(orientation: int) -> bytes:
    """A TIFF-format EXIF block: IFD0 (camera, orientation), Exif IFD, GPS IFD, IFD1 thumbnail."""
    ifd0 = [
        (0x010E, 2, _ascii(MARK["description"])),
        (0x010F, 2, _ascii(MARK["make"])),
        (0x0110, 2, _ascii(MARK["model"])),
        (0x0112, 3, struct.pack("<H", orientation)),
        (0x013B, 2, _ascii(MARK["artist"])),
        (0x8769, 4, b"\0\0\0\0"),  # Exif IFD offset, set below
        (0x8825, 4, b"\0\0\0\0"),  # GPS IFD offset, set below
    ]
    exif = [
        (0x9286, 7, b"ASCII\0\0\0" + MARK["user-comment"].encode()),
        (0xA431, 2, _ascii(MARK["serial"])),
    ]
    gps = [
        (0x0001, 2, b"N\0"),
        (0x0002, 5, struct.pack("<6I", 48, 1, 51, 1, 2959, 100)),
        (0x0003, 2, b"E\0"),
        (0x0004, 5, struct.pack("<6I", 2, 1, 17, 1, 4030, 100)),
        (0x0012, 2, _ascii(MARK["gps-datum"])),
    ]
    thumb = _thumbnail()
    ifd1 = [
        (0x0103, 3, struct.pack("<H", 6)),
        (0x0201, 4, b"\0" * 4),
        (0x0202, 4, struct.pack("<I", len(thumb))),
    ]
    at0 = 8
    at_exif = at0 + len(_ifd(ifd0, at0))
    at_gps = at_exif + len(_ifd(exif, at_exif))
    at1 = at_gps + len(_ifd(gps, at_gps))
    at_thumb = at1 + len(_ifd(ifd1, at1))
    ifd0[5] = (0x8769, 4, struct.pack("<I", at_exif))
    ifd0[6] = (0x8825, 4, struct.pack("<I", at_gps))
    ifd1[1] = (0x0201, 4, struct.pack("<I", at_thumb))
    return (
        b"II*\0"
        + struct.pack("<I", at0)
        + _ifd(ifd0, at0, next_ifd=at1)
        + _ifd(exif, at_exif)
        + _ifd(gps, at_gps)
        + _ifd(ifd1, at1)
        + thumb
    )


def xmp_packet() -> bytes:
    return (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        f'xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="{MARK["xmp"]}"/></rdf:RDF>'
        '</x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def icc_profile() -> bytes:
    """A real sRGB profile with a marker after its declared end."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile + MARK["icc"].encode()


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def jpeg_with_metadata(plain: bytes, orientation: int) -> bytes:
    """``plain`` (a JPEG) with EXIF, XMP, ICC and a comment inserted after SOI."""
    assert plain[:2] == b"\xff\xd8"
    segments = (
        _segment(0xE1, b"Exif\0\0" + exif_block(orientation))
        + _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + xmp_packet())
        + _segment(0xE2, b"ICC_PROFILE\0\x01\x01" + icc_profile())
        + _segment(0xFE, MARK["comment"].encode())
    )
    return plain[:2] + segments + plain[2:]


def png_with_metadata(base: Image.Image, orientation: int) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARK["png-text"])
    info.add_text("Software", MARK["png-ztxt"], zip=True)
    info.add_itxt("Description", MARK["png-itxt"], lang="en", tkey="Beschreibung")
    info.add_itxt("XML:com.adobe.xmp", xmp_packet().decode())
    buf = io.BytesIO()
    base.save(buf, "PNG", pnginfo=info, exif=exif_block(orientation), icc_profile=icc_profile())
    return buf.getvalue()


def webp_with_metadata(base: Image.Image, orientation: int) -> bytes:
    buf = io.BytesIO()
    base.save(
        buf,
        "WEBP",
        lossless=True,
        exif=b"Exif\0\0" + exif_block(orientation),
        icc_profile=icc_profile(),
        xmp=xmp_packet(),
    )
    return buf.getvalue()


@pytest.fixture
def tagged(tmp_path: Path) -> dict[str, tuple[Path, Image.Image]]:
    """name -> (image file full of metadata, the upright stripped reference picture)."""
    base = draw_photo((96, 64), seed=5)
    plain = io.BytesIO()
    base.save(plain, "JPEG", quality=92)
    decoded = Image.open(io.BytesIO(plain.getvalue())).convert("RGB")
    # The stripped copy: the same decoded pixels rebuilt from raw bytes, nothing else.
    jpeg_pixels = Image.frombytes("RGB", decoded.size, decoded.tobytes())
    base_pixels = Image.frombytes("RGB", base.size, base.tobytes())
    files = {
        "jpeg": ("tagged.jpg", jpeg_with_metadata(plain.getvalue(), 6), jpeg_pixels, 6),
        "png": ("tagged.png", png_with_metadata(base, 3), base_pixels, 3),
        "webp": ("tagged.webp", webp_with_metadata(base, 8), base_pixels, 8),
    }
    out = {}
    for name, (filename, data, pixels, orientation) in files.items():
        path = tmp_path / filename
        path.write_bytes(data)
        out[name] = (path, pixels.transpose(ROTATION[orientation]))
    return out


def _markers_in(path: Path) -> set[str]:
    """The markers Pillow itself finds in a file (decompressed chunks included)."""
    with Image.open(path) as img:
        img.load()
        found = repr(img.info).encode() + path.read_bytes()
        found += repr(getattr(img, "text", {})).encode()
        exif = img.getexif()
        for ifd in (exif, exif.get_ifd(0x8769), exif.get_ifd(0x8825)):
            found += repr(dict(ifd)).encode()
    return {m for m in MARK.values() if m.encode() in found}


def test_the_test_images_really_carry_every_marker(
    tagged: dict[str, tuple[Path, Image.Image]],
) -> None:
    jpeg_and_shared = set(MARK.values()) - {MARK["png-text"], MARK["png-ztxt"], MARK["png-itxt"]}
    assert _markers_in(tagged["jpeg"][0]) == jpeg_and_shared
    png = _markers_in(tagged["png"][0])
    assert {
        MARK["png-text"],
        MARK["png-ztxt"],
        MARK["png-itxt"],
        MARK["xmp"],
        MARK["gps-datum"],
        MARK["thumbnail"],
        MARK["make"],
    } <= png
    assert {MARK["xmp"], MARK["make"], MARK["gps-datum"]} <= _markers_in(tagged["webp"][0])
    with Image.open(tagged["jpeg"][0]) as img:
        assert img.getexif()[0x0112] == 6
        assert MARK["icc"].encode() in img.info["icc_profile"]


@pytest.mark.parametrize("kind", ["jpeg", "png", "webp"])
def test_model_gets_exactly_the_upright_stripped_pixels(
    kind: str, tagged: dict[str, tuple[Path, Image.Image]]
) -> None:
    path, reference = tagged[kind]
    pixels = load_image(path)
    assert [f.name for f in dataclasses.fields(Pixels)] == ["width", "height", "data"]
    assert (pixels.width, pixels.height) == reference.size
    assert pixels.data == reference.tobytes()
    with Image.open(path) as raw:  # and the orientation really was applied
        assert raw.convert("RGB").tobytes() != pixels.data
    # Encoded bytes in memory give the same pixels as the file.
    assert load_image(path.read_bytes()).data == pixels.data


@pytest.mark.slow
def test_no_metadata_in_any_output_and_same_answer_as_stripped_copy(
    tagged: dict[str, tuple[Path, Image.Image]], tiny_model: Path, tmp_path: Path
) -> None:
    images: list[Path] = []
    for kind, (path, reference) in tagged.items():
        stripped = tmp_path / f"stripped-{kind}.png"
        reference.save(stripped)
        images += [path, stripped]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(tagged["jpeg"][0].read_bytes()[:-200])  # metadata intact, scan cut
    described = run_mdream(
        "describe", *images, broken, "--model-dir", tiny_model, "-n", "8", "--verbose"
    )
    asked = run_mdream(
        "ask",
        tagged["jpeg"][0],
        tagged["png"][0],
        "-q",
        "Which camera took this photo, where, and who made it?",
        "-q",
        "Caption?",
        "--model-dir",
        tiny_model,
        "-n",
        "8",
        "--verbose",
    )

    assert described.returncode == 1  # only broken.jpg failed
    assert asked.returncode == 0, asked.stderr.decode()
    assert b"llama" in described.stderr  # the verbose native log was on and captured
    for run in (described, asked):
        assert LEAK.encode() not in run.stdout + run.stderr
    answers = dict(line.split("\t", 1) for line in described.stdout.decode().splitlines())
    assert len(answers) == len(images)
    for kind, (path, _) in tagged.items():
        assert answers[str(path)] == answers[str(tmp_path / f"stripped-{kind}.png")]
    assert f"{broken}:" in described.stderr.decode()
