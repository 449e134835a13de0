"""The CPU side of feeding the model: decoded-and-stretched images per second, and what JPEG
draft decoding changes in the pixels the model sees.

    python bench/decode.py [--images N]

``make bench`` runs :func:`measure` too and prints it under its table, next to the model's own
images/s, so that it shows whether decoding or the model is the bottleneck.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]

SIDE = 378  # Moondream2's projector input


def decode_rate(paths: list[Path], workers: int, rounds: int = 3) -> float:
    """Images per second through mdream's decoder (decode, orient, strip, stretch), in order."""
    from moondream_cli.images import load_image
    from moondream_cli.prefetch import Decoder

    def decode(index: int, path: Path) -> int:
        return len(load_image(path, size=SIDE).data)

    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        with Decoder(paths, decode, workers=workers, lookahead=workers + 2) as decoder:
            assert all(n == SIDE * SIDE * 3 for n in decoder)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def draft_difference(size: tuple[int, int], seed: int = 0) -> dict[str, float]:
    """Stretched pixels from a JPEG decoded reduced (as mdream does) against full decoding:
    mean and max absolute difference per channel value, and the speed-up."""
    from fixtures import draw_photo
    from PIL import Image, ImageChops, ImageStat

    from moondream_cli.images import load_image

    buf = io.BytesIO()
    draw_photo(seed).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    start = time.perf_counter()
    drafted = load_image(data, size=SIDE).to_image()
    drafted_s = time.perf_counter() - start
    start = time.perf_counter()
    with Image.open(io.BytesIO(data)) as img:
        full = img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    full_s = time.perf_counter() - start
    diff = ImageChops.difference(drafted, full)
    extrema = diff.getextrema()
    return {
        "mean": sum(ImageStat.Stat(diff).mean) / 3,
        "max": float(max(band[1] for band in extrema if isinstance(band, tuple))),
        "speedup": full_s / drafted_s,
    }


def measure(paths: list[Path]) -> dict[str, Any]:
    return {
        "images_per_s": {w: decode_rate(paths, w) for w in (1, 2)},
        "draft": {f"{w}x{h}": draft_difference((w, h)) for w, h in ((1920, 1080), (4032, 3024))},
    }


def render(got: dict[str, Any], model_images_per_s: float | None = None) -> str:
    rates = got["images_per_s"]
    lines = [
        "decoding (decode, orient, strip, stretch to 378², 1920×1080 photo-like JPEGs): "
        + ", ".join(
            f"{rate:.0f} images/s with {w} worker{'s' * (w > 1)}" for w, rate in rates.items()
        )
    ]
    if model_images_per_s:
        lines[0] += f" — the model: {model_images_per_s:.2f} images/s"
    for size, d in got["draft"].items():
        if d["max"] == 0:
            lines.append(f"JPEG draft at {size}: decoded in full (no reduced scale keeps 756 px)")
            continue
        lines.append(
            f"JPEG draft at {size}: {d['speedup']:.1f}× faster than full decoding; stretched "
            f"pixels differ by {d['mean']:.2f} on average, {d['max']:.0f} at most (of 255)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from fixtures import prepare_images

    got = measure(prepare_images(args.images, 0)["photo"])
    print(json.dumps(got, indent=2) if args.json else render(got))


if __name__ == "__main__":
    main()
