"""The benchmark's inputs: Moondream2-shaped model files and 1920×1080 JPEGs, written once and
cached under .cache/bench/."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

from shared import CACHE, Q4_NAME, log


def prepare_models(size: str, knobs: bool = False) -> dict[str, Path]:
    """f16 pair from the generator, Q4_K_M text model and, for --knobs, a Q8_0 mmproj: each
    written once, cached."""
    import moondream_gguf

    # Versioned: files from an older generator (another vocabulary) are never reused.
    base = CACHE / f"{size}-v{moondream_gguf.GENERATOR_VERSION}"
    f16 = base / "f16"
    text16, mmproj16 = f16 / moondream_gguf.TEXT_NAME, f16 / moondream_gguf.MMPROJ_NAME
    if not (f16 / ".done").is_file():
        log(f"writing the {size} Moondream2-shaped f16 pair into {f16} ...")
        t = time.perf_counter()
        moondream_gguf.write_pair(f16, moondream_gguf.SHAPES[size])
        (f16 / ".done").write_text("ok\n")
        log(f"  done in {time.perf_counter() - t:.1f} s")
    if size == "tiny":
        # The tiny rows (64 wide) do not fit K-quant blocks; llama-cpp-python's handler crashes
        # on the fallback file. The tiny size only exercises the harness: keep it f16.
        q4, text_q4 = f16, text16
    else:
        q4 = base / "q4_k_m"
        q4.mkdir(parents=True, exist_ok=True)
        text_q4 = q4 / Q4_NAME
        if not text_q4.is_file():
            log("quantizing the text model to Q4_K_M ...")
            t = time.perf_counter()
            quantize_text(text16, text_q4)
            log(f"  done in {time.perf_counter() - t:.1f} s")
        _link(mmproj16, q4 / mmproj16.name)
    models = {"dir": q4, "text": text_q4, "mmproj": q4 / mmproj16.name}
    if not knobs:
        return models
    q8 = base / "mmproj-q8_0"
    q8.mkdir(parents=True, exist_ok=True)
    mmproj_q8 = q8 / "moondream2-mmproj-Q8_0.gguf"
    if not mmproj_q8.is_file():
        log("writing the same mmproj with Q8_0 matrices ...")
        t = time.perf_counter()
        write_mmproj_q8(mmproj_q8, moondream_gguf.SHAPES[size])
        log(f"  done in {time.perf_counter() - t:.1f} s")
    _link(text_q4, q8 / text_q4.name)
    return dict(models, dir_mmproj_q8=q8)


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def quantize_text(src: Path, dst: Path) -> None:
    """mdream's own quantizer, so the benchmark's file is what `mdream fetch` makes (GPT-2's
    pre-tokenizer written in: the naive side then tokenizes the same way)."""
    from moondream_cli.bundles.quantize import quantize

    partial = dst.with_name(dst.name + ".partial")
    quantize(src, partial, "Q4_K_M")
    partial.replace(dst)


def write_mmproj_q8(dst: Path, shape: Any) -> None:
    """The generator's mmproj (same seed, same values) with its 2-D matrices stored as Q8_0."""
    import gguf
    import numpy as np

    import moondream_gguf

    class Q8Writer(gguf.GGUFWriter):
        def add_tensor(self, name: str, tensor: Any, *args: Any, **kwargs: Any) -> None:
            matrix = tensor.ndim == 2 and tensor.dtype == np.float16 and tensor.shape[1] % 32 == 0
            if matrix and name != "v.position_embd.weight":
                q = gguf.quants.quantize(tensor.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
                super().add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                return
            super().add_tensor(name, tensor, *args, **kwargs)

    partial = dst.with_name(dst.name + ".partial")
    real = gguf.GGUFWriter
    gguf.GGUFWriter = Q8Writer  # type: ignore[misc]
    try:
        moondream_gguf.write_mmproj(partial, shape, 1)  # write_pair's mmproj seed
    finally:
        gguf.GGUFWriter = real  # type: ignore[misc]
    partial.replace(dst)


def prepare_images(n_photo: int, n_noise: int) -> dict[str, list[Path]]:
    from PIL import Image

    folder = CACHE / "images"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {"photo": [], "noise": []}
    for kind, n in (("photo", n_photo), ("noise", n_noise)):
        for i in range(n):
            path = folder / f"{kind}-{i}.jpg"
            if not path.is_file():
                img = draw_photo(i) if kind == "photo" else draw_noise(i)
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                path.write_bytes(buf.getvalue())
                assert Image.open(path).size == (1920, 1080)
            out[kind].append(path)
    return out


def draw_photo(seed: int) -> Any:
    """A photo-like 1920×1080 picture: sky and ground gradients, shapes, mild sensor noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(100 + seed)
    w, h = 1920, 1080
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    top, bottom = rng.uniform(60, 230, 3), rng.uniform(20, 200, 3)
    arr = (top * (1 - y) + bottom * y) * np.ones((1, w, 1))
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 200))
        x1, y1 = x0 + int(rng.integers(60, 700)), y0 + int(rng.integers(60, 500))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse((x0, y0, x1, y1), fill=color)
        else:
            d.rectangle((x0, y0, x1, y1), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 4, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def draw_noise(seed: int) -> Any:
    """Pure noise: the worst case for JPEG decoding."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(200 + seed)
    return Image.fromarray(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8), "RGB")


def worker_prepare(cfg: dict[str, Any]) -> dict[str, str]:
    """The model files (and, for --knobs, the f32 reference), written once and cached."""
    from knobs import prepare_reference

    models = prepare_models(cfg["size"], cfg["knobs"])
    if cfg["knobs"]:
        models["dir_reference"] = prepare_reference(cfg["size"], models["text"], models["mmproj"])
    return {k: str(v) for k, v in models.items()}
