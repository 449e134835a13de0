"""The knob study (``--knobs``): each CPU setting on its own, its timings, and how far its logits
are from an exact-arithmetic f32 reference on the same weights (:func:`fidelity`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from children import run_worker
from shared import CACHE, QUESTION, log
from sides import split_timings

KNOBS: list[tuple[str, dict[str, Any], str]] = [
    # Exact arithmetic on the same weights: the yardstick of the fidelity columns.
    (
        "f32 reference (f32 weights and KV cache, no FA)",
        {"reference": True, "flash_attn": False, "vision_flash_attn": False},
        "dir_reference",
    ),
    (
        "the naive loop's settings: text FA off, vision FA off, n_ubatch 512",
        {"vision_flash_attn": False, "n_ubatch": 512},
        "dir",
    ),
    ("mdream default: text FA off (CPU), vision FA on", {}, "dir"),
    ("text FA on", {"flash_attn": True}, "dir"),
    ("n_ubatch 512", {"n_ubatch": 512}, "dir"),
    ("n_ubatch 1024", {"n_ubatch": 1024}, "dir"),
    ("1 thread", {"threads": 1}, "dir"),
    ("mmproj Q8_0", {}, "dir_mmproj_q8"),
]


def run_knobs(cfg: dict[str, Any], models: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    fidelity_file = CACHE / "fidelity-reference.npz"
    fidelity_file.unlink(missing_ok=True)
    for name, opts, dir_key in KNOBS:
        kcfg = dict(
            cfg, dir=str(models[dir_key]), options=dict(opts), fidelity_file=str(fidelity_file)
        )
        kcfg["reference"] = kcfg["options"].pop("reference", False)
        if "threads" in opts:
            kcfg["threads"] = kcfg["options"].pop("threads")
        log(f"knob: {name} ...")
        run = run_worker("knob", kcfg)
        r = run.result
        rows.append(
            {
                "setting": name,
                "encode_s": r["encode_s"],
                "prefill_s": r["prefill_s"],
                "image_tokens": r["image_tokens"],
                "answer_tok_s": r["answer_tok_s"],
                "peak_rss_mb": run.peak_rss_mb,
                "logit_error": r["logit_error"],
                "top1_agree": r["top1_agree"],
            }
        )
    return rows


def render_knobs(rows: list[dict[str, Any]]) -> str:
    head = [
        "setting",
        "image encode (s)",
        "image prefill (s)",
        "answer (tok/s)",
        "peak RSS (MB)",
        "logit error vs f32",
        "top token = f32's",
    ]
    body = [
        [
            r["setting"],
            f"{r['encode_s']:.2f}",
            f"{r['prefill_s']:.2f}",
            f"{r['answer_tok_s']:.1f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{100 * r['logit_error']:.2f} %",
            f"{100 * r['top1_agree']:.0f} %",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in body
    ]
    return "\n".join(lines)


def worker_knob(cfg: dict[str, Any]) -> dict[str, Any]:
    """One engine setting: encode / prefill / answer timings and the answer they give."""
    from moondream_cli.engine import Engine, EngineOptions, Sampling
    from moondream_cli.images import load_image
    from moondream_cli.locate import resolve

    if cfg.get("reference"):
        _f32_kv_cache()
    options = EngineOptions(threads=cfg["threads"], gpu=cfg["gpu"], **cfg.get("options", {}))
    t0 = time.perf_counter()
    engine = Engine(resolve(cfg["dir"]), options)
    load_s = time.perf_counter() - t0
    pixels = load_image(cfg["images"]["photo"][0])
    sampling = Sampling(max_tokens=cfg["tokens"], fixed_length=True)
    res = split_timings(engine, pixels, sampling)
    res["load_s"] = load_s
    res.update(fidelity(engine, cfg))
    engine.close()
    return res


def _f32_kv_cache() -> None:
    """The reference keeps its KV cache in f32 too (llama.cpp's default is f16)."""
    import llama_cpp

    default = llama_cpp.llama_context_default_params

    def params() -> Any:
        p = default()
        p.type_k = p.type_v = 0  # GGML_TYPE_F32
        return p

    llama_cpp.llama_context_default_params = params


def fidelity(engine: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Next-token logits along one answer, compared with the f32 reference's.

    Random weights leave the top logits nearly tied, so a greedy answer flips at the first
    rounding difference and "same answer" says nothing about accuracy. Instead every setting
    is fed the reference's own greedy answer (teacher forcing) and its logits at each step
    are compared with the reference's: relative error ‖l − ref‖ / ‖ref − mean(ref)‖, and how
    often its top token is the reference's. The reference run (``cfg["reference"]``) writes
    them to ``cfg["fidelity_file"]``; every other run reads that file."""
    import numpy as np

    path = Path(cfg["fidelity_file"])
    ref = None if cfg.get("reference") else np.load(path)
    rows: list[Any] = []

    def choose(logits: memoryview) -> int:
        rows.append(np.array(logits, dtype=np.float32))
        return int(rows[-1].argmax()) if ref is None else int(ref["tokens"][len(rows) - 1])

    tokens = engine.trace_logits(QUESTION, cfg["tokens"], choose)
    logits = np.stack(rows)
    if ref is None:
        np.savez(path, logits=logits, tokens=np.array(tokens))
        return {"logit_error": 0.0, "top1_agree": 1.0}
    want = ref["logits"]
    spread = np.linalg.norm(want - want.mean(axis=1, keepdims=True), axis=1)
    error = np.linalg.norm(logits - want, axis=1) / spread
    return {
        "logit_error": float(error.mean()),
        "top1_agree": float((logits.argmax(axis=1) == want.argmax(axis=1)).mean()),
    }


def prepare_reference(size: str, text: Path, mmproj: Path, ref: Path | None = None) -> Path:
    """The exact-arithmetic reference for the fidelity columns: the files under test with every
    tensor widened to f32 (Q4_K_M dequantized, f16 converted; both lossless), so that only the
    arithmetic differs. Written once, cached in ``ref``."""
    import gguf
    import numpy as np

    import moondream_gguf

    ref = ref or CACHE / f"{size}-v{moondream_gguf.GENERATOR_VERSION}" / "f32-reference"
    if (ref / ".done").is_file():
        return ref
    ref.mkdir(parents=True, exist_ok=True)
    log(f"writing the f32 reference pair into {ref} (7 GB at full size, once) ...")
    t = time.perf_counter()
    stored: dict[str, Any] = {}

    class Widened(gguf.GGUFWriter):
        """The generator's writer, storing each tensor as the file under test holds it, in f32."""

        def add_tensor(self, name: str, tensor: Any, *args: Any, **kwargs: Any) -> None:
            src = stored[name]
            data = gguf.quants.dequantize(src.data, src.tensor_type)
            super().add_tensor(name, np.asarray(data, np.float32).reshape(tensor.shape))

    shape = moondream_gguf.SHAPES[size]
    real = gguf.GGUFWriter
    gguf.GGUFWriter = Widened  # type: ignore[misc]
    try:
        for src_path, write, name in (
            (text, moondream_gguf.write_text_model, "text-f32.gguf"),
            (mmproj, moondream_gguf.write_mmproj, "mmproj-f32.gguf"),
        ):
            stored = {tensor.name: tensor for tensor in gguf.GGUFReader(str(src_path)).tensors}
            write(ref / name, shape)
    finally:
        gguf.GGUFWriter = real  # type: ignore[misc]
    (ref / ".done").write_text("ok\n")
    log(f"  done in {time.perf_counter() - t:.1f} s")
    return ref
