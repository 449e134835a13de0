"""The Python API leaves process-wide state as it found it: Pillow's decompression bomb guard
(``Image.MAX_IMAGE_PIXELS``) belongs to the application that embeds mdream. The CLI owns its
process, and mdream's own size check replaces Pillow's there."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import draw_photo, run_mdream
from moondream_cli import answer_paths
from moondream_cli.loader import open_model
from moondream_cli.settings import ModelOptions, SamplingOptions, Settings


def test_the_api_leaves_pillows_guard_as_it_found_it(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12_345)  # the application's own choice
    settings = Settings(
        model=ModelOptions(model_dir=tiny_model, threads=1), sampling=SamplingOptions(max_tokens=2)
    )
    with open_model(settings, max_tokens=2):
        pass
    assert Image.MAX_IMAGE_PIXELS == 12_345
    draw_photo((100, 100)).save(tmp_path / "small.png")  # 10,000 pixels: under the app's guard
    records = list(answer_paths([str(tmp_path / "small.png")], settings=settings))
    assert records[0].ok
    assert Image.MAX_IMAGE_PIXELS == 12_345


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.slow
def test_the_cli_owns_the_size_check_so_a_200_mp_photo_passes_pillows_guard(
    tiny_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "phone.png"
    path.write_bytes(_png_header(16320, 12240))  # 200 MP: over Pillow's 179 MP error limit
    done = run_mdream("describe", path, "-m", tiny_model, "-n", "2")
    err = done.stderr.decode()
    assert done.returncode == 1
    assert "decompression bomb" not in err and "truncated" in err  # decoded, then cut short


def test_doctor_names_the_platform_without_starting_a_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platform
    import subprocess

    from moondream_cli.doctor import gather

    expected = platform.platform()  # starts `uname -p` (once, then cached by Python)

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a program was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    monkeypatch.setattr(platform, "_uname_cache", None)  # computed afresh, not cached
    monkeypatch.setattr(platform, "_platform_cache", {})
    monkeypatch.setattr(platform._Processor, "get", staticmethod(lambda: no_child("uname -p")))  # type: ignore[attr-defined]
    assert gather(self_check=False).platform == expected
