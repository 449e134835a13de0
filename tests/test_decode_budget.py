"""Decoding within a memory and time budget: an image is refused, with one line naming the
memory it would take, when its decoding would pass the budget -- counting its mode and bit
depth, not only its pixels; the decode pool's threads share one budget; a JPEG's scans are
counted before it is decoded; and Ctrl-C or SIGTERM never waits for a decode."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, draw_photo
from moondream_cli import budget
from moondream_cli.errors import InputError
from moondream_cli.images import load_image
from moondream_cli.prefetch import Decoder


def _png(mode: str, size: tuple[int, int], **kw: object) -> bytes:
    img = Image.new(mode, size)
    if mode == "P":
        img.putpalette([255, 0, 0] * 256)
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[budget.Budget]:
    """A 30 MiB budget: 5 MP decode as RGB (4 bytes a pixel), not as RGBA."""
    shared = budget.Budget(30 << 20)
    monkeypatch.setattr(budget, "DECODES", shared)
    yield shared


@pytest.mark.parametrize(
    ("mode", "kw", "fits"),
    [
        ("RGB", {}, True),
        ("L", {}, True),
        ("RGBA", {}, False),  # flattened onto white: image, background and result
        ("I;16", {}, False),  # 16-bit grey is scaled in 32 bits
        ("P", {"transparency": 0}, False),  # a palette with transparency becomes RGBA
        ("P", {}, True),
    ],
)
def test_the_budget_counts_mode_and_bit_depth_not_only_pixels(
    small_budget: budget.Budget, mode: str, kw: dict[str, object], fits: bool
) -> None:
    data = _png(mode, (2000, 2500), **kw)  # 5 MP, a few KiB of PNG
    if fits:
        assert load_image(data, size=56).width == 56
        assert small_budget.used == 0  # given back
        return
    with pytest.raises(InputError, match=rf"2000×2500 {mode} needs about \d+ MiB of memory"):
        load_image(data, size=56)


def test_the_refusal_names_the_size_it_would_take_and_the_limit(
    small_budget: budget.Budget,
) -> None:
    with pytest.raises(InputError) as caught:
        load_image(_png("RGBA", (2000, 2500)), size=56)
    assert caught.value.message == (
        "image too large to decode: 2000×2500 RGBA needs about 62 MiB of memory "
        "(the limit is 30 MiB)"
    )


def _png_header_only(width: int, height: int, colour: int) -> bytes:
    """A PNG that claims ``width``×``height`` and holds one row of data: a file of a few
    hundred bytes whose decoding would need gigabytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.fixture
def no_pillow_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the CLI runs: the size check is mdream's (images.own_the_size_check)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)


@pytest.mark.usefixtures("no_pillow_guard")
def test_a_250_mp_rgba_png_is_refused_before_a_pixel_is_decoded() -> None:
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"16000×15600 RGBA needs about 2\.8 GiB of memory"):
        load_image(_png_header_only(16000, 15600, colour=6), size=378)
    assert time.perf_counter() - started < 1  # the header only: no pixel was inflated


@pytest.mark.usefixtures("no_pillow_guard")
def test_a_250_mp_rgb_png_is_within_the_budget() -> None:
    # 4 bytes a pixel: 1 GB, under 1.5 GiB. Its data is cut short, so decoding it fails
    # as a truncated image -- after the budget let it through.
    with pytest.raises(InputError, match="truncated"):
        load_image(_png_header_only(16000, 15600, colour=2), size=378)


def test_the_decode_pool_shares_one_budget(small_budget: budget.Budget, tmp_path: Path) -> None:
    paths = []
    for i in range(6):  # each needs 4 bytes × 4 MP and more of the 30 MiB: one at a time
        path = tmp_path / f"{i}.png"
        path.write_bytes(_png("RGB", (2000, 2000)))
        paths.append(str(path))
    with Decoder(paths, lambda _, p: load_image(p, size=56), workers=4) as decoder:
        decoded = list(decoder)
    assert [p.width for p in decoded] == [56] * 6
    assert 16_000_000 <= small_budget.peak <= 30 << 20
    assert small_budget.used == 0


def _progressive(repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` more times."""
    buf = io.BytesIO()
    draw_photo((640, 480)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * repeats + data[end:]


def test_a_jpeg_with_hundreds_of_scans_is_refused_before_decoding() -> None:
    data = _progressive(600)
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"a JPEG of 6\d\d scans refused \(the limit is 100"):
        load_image(data)
    assert time.perf_counter() - started < 1


def test_an_ordinary_progressive_jpeg_decodes_and_its_scans_are_counted() -> None:
    data = _progressive(0)
    scans = budget.jpeg_scans(io.BytesIO(data))
    assert 5 <= scans <= 15  # libjpeg's default progression
    assert budget.jpeg_scans(io.BytesIO(_progressive(3))) == scans + 3
    assert load_image(data).width == 640


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "fmt", "kw", "slack"),
    [
        ("RGB", "PNG", {}, 1.25),
        ("RGBA", "PNG", {}, 1.25),
        ("I;16", "PNG", {}, 1.25),
        ("P", "PNG", {"transparency": 0}, 1.25),
        ("L", "PNG", {}, 1.25),
        ("RGB", "JPEG", {"progressive": True}, 1.25),
        ("RGBA", "WEBP", {}, 1.25),
        ("RGB", "AVIF", {}, 1.6),  # the YUV planes' depth is not known from the header
    ],
)
@pytest.mark.parametrize("stretch", [True, False])
def test_the_estimate_is_an_upper_bound_of_what_decoding_takes(
    mode: str, fmt: str, kw: dict[str, object], slack: float, stretch: bool, tmp_path: Path
) -> None:
    ext = fmt.lower()
    big, small = tmp_path / f"big.{ext}", tmp_path / f"small.{ext}"
    Image.new(mode, (5000, 5000)).save(big, fmt, **kw)  # 25 MP
    Image.new(mode, (64, 64)).save(small, fmt, **kw)
    # VmHWM, the peak RSS, is reset by exec (ru_maxrss is not: it starts at pytest's).
    code = textwrap.dedent(
        """
        import sys
        from moondream_cli import budget
        from moondream_cli.images import load_image
        def peak():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
        budget.DECODES = budget.Budget(1 << 40)
        size = 378 if sys.argv[3] == "stretch" else None
        load_image(sys.argv[1], size=size)  # the code paths warmed up on a small image
        before = peak()
        load_image(sys.argv[2], size=size)
        print(peak() - before, budget.DECODES.peak)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(small), str(big), "stretch" if stretch else "as is"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        timeout=120,
        check=True,
    )
    measured, estimated = map(int, done.stdout.split())
    assert measured <= estimated, (measured, estimated)
    assert estimated <= slack * measured + (16 << 20), (measured, estimated)  # and not far off


@pytest.mark.slow
def test_sigterm_never_waits_for_a_decode_in_progress(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    for i in range(3):
        draw_photo(seed=i).save(folder / f"{i}.jpg")
    # Each decode takes 60 s (a sleep holds no lock, as Pillow's C code holds none).
    code = textwrap.dedent(
        """
        import sys, time
        from moondream_cli import runner
        real = runner.prepare
        def slow(*args, **kwargs):
            time.sleep(60)
            return real(*args, **kwargs)
        runner.prepare = slow
        from moondream_cli.cli.app import main
        main(sys.argv[1:])
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, "describe", str(folder), "-m", str(tiny_model), "-n", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    time.sleep(4)  # the model is loaded, the decodes are under way
    sent = time.perf_counter()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert time.perf_counter() - sent < 3
    assert err.decode().strip() == "mdream: terminated"
