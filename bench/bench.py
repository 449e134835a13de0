"""mdream against the naive llama-cpp-python loop and llama-mtmd-cli, on the same files and images.

    python bench/bench.py [--size full|tiny] [--quick] [--knobs] [--batch N]

Writes (and caches under .cache/bench/) Moondream2-shaped random-weight GGUFs with the
project's own generator, quantizes the text model to Q4_K_M, draws 1920×1080 JPEGs (photo-like
and pure noise), then measures every side in its own child process (so each peak RSS is that
side's alone) and prints one table with ratios and PASS/FAIL per target on stdout. Progress
goes to stderr, and so does the path of the JSON result (.cache/bench/result-<date>.json).
Every side generates exactly the same number of new tokens: EOS is masked on all of them.

--knobs adds a table of CPU settings, one process each: where the time goes (image encode,
image prefill, answer) and how far each setting's logits are from an exact-arithmetic f32
reference run on the same weights (see `fidelity`). --batch N runs mdream's folder with
N sequences decoded together instead of its default.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import datetime as dt
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "tests", ROOT / "src"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

CACHE = ROOT / ".cache" / "bench"
MTMD_CLI = ROOT / ".cache" / "bench-ref" / "bin" / "llama-mtmd-cli"
QUESTION = "Describe this image."
EXTRA_QUESTION = "What colours are in it?"
# The extra-question ratio rows: with the run's answer length (keys extra_s / fresh_s), and
# with one-token answers (extra_1_s / fresh_1_s), which take the answer's own decoding out.
EXTRA_ROWS = (("extra / fresh", ""), ("extra / fresh, 1-token answers", "_1"))
Q4_NAME = "moondream2-text-model-Q4_K_M.gguf"


def log(msg: str) -> None:
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


# -- inputs: model files and images ---------------------------------------------------------
def prepare_models(size: str, knobs: bool = False) -> dict[str, Path]:
    """f16 pair from the generator, Q4_K_M text model and, for --knobs, a Q8_0 mmproj: each
    written once, cached."""
    import moondream_gguf

    base = CACHE / size
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
    import llama_cpp

    from moondream_cli import _native_log

    _native_log.install(False)  # one log line per tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    partial = dst.with_name(dst.name + ".partial")
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(partial), params)
    if rc != 0:
        raise SystemExit(f"bench: llama_model_quantize failed (code {rc})")
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
    real = moondream_gguf.gguf.GGUFWriter
    moondream_gguf.gguf.GGUFWriter = Q8Writer  # type: ignore[misc]
    try:
        moondream_gguf.write_mmproj(partial, shape, 1)  # write_pair's mmproj seed
    finally:
        moondream_gguf.gguf.GGUFWriter = real  # type: ignore[misc]
    partial.replace(dst)


def prepare_reference(size: str, text: Path, mmproj: Path, ref: Path | None = None) -> Path:
    """The exact-arithmetic reference for the fidelity columns: the files under test with every
    tensor widened to f32 (Q4_K_M dequantized, f16 converted; both lossless), so that only the
    arithmetic differs. Written once, cached in ``ref``."""
    import gguf
    import numpy as np

    import moondream_gguf

    ref = ref or CACHE / size / "f32-reference"
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
    real = moondream_gguf.gguf.GGUFWriter
    moondream_gguf.gguf.GGUFWriter = Widened  # type: ignore[misc]
    try:
        for src_path, write, name in (
            (text, moondream_gguf.write_text_model, "text-f32.gguf"),
            (mmproj, moondream_gguf.write_mmproj, "mmproj-f32.gguf"),
        ):
            stored = {tensor.name: tensor for tensor in gguf.GGUFReader(str(src_path)).tensors}
            write(ref / name, shape)
    finally:
        moondream_gguf.gguf.GGUFWriter = real  # type: ignore[misc]
    (ref / ".done").write_text("ok\n")
    log(f"  done in {time.perf_counter() - t:.1f} s")
    return ref


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


# -- the sides, each run in its own child process ---------------------------------------------
def _naive_llama(cfg: dict[str, Any]) -> Any:
    """The reference as its users write it: Llama + MoondreamChatHandler, model loaded once."""
    import llama_cpp
    from llama_cpp.llama_chat_format import MoondreamChatHandler

    from moondream_cli import _native_log

    gpu = bool(cfg["gpu"])
    _same_weight_placement(llama_cpp, gpu)
    handler = MoondreamChatHandler(clip_model_path=cfg["mmproj"], verbose=False)
    llm = llama_cpp.Llama(
        model_path=cfg["text"],
        chat_handler=handler,
        n_ctx=2048,
        n_threads=cfg["threads"],
        n_threads_batch=cfg["threads"],
        n_gpu_layers=-1 if gpu else 0,
        verbose=False,
    )
    _native_log.install(False)  # libmtmd's per-image debug lines otherwise reach stderr
    return llm


def _naive_ask(llm: Any, path: str, question: str, tokens: int) -> int:
    """One image + question through the chat handler (a data: URI, never a URL); EOS masked so
    every side generates ``tokens`` tokens. Returns how many it generated."""
    uri = "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode()
    out = llm.create_chat_completion(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": uri}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        max_tokens=tokens,
        temperature=0.0,
        repeat_penalty=1.0,
        logit_bias={str(llm.token_eos()): float("-inf")},
    )
    return int(out["usage"]["completion_tokens"])


def worker_naive(cfg: dict[str, Any]) -> dict[str, Any]:
    """The naive loop: llama-cpp-python's MoondreamChatHandler, model loaded once, data: URIs."""
    t0 = time.perf_counter()
    llm = _naive_llama(cfg)
    load_s = time.perf_counter() - t0

    def call(path: str, question: str, tokens: int) -> tuple[float, int]:
        t = time.perf_counter()
        n = _naive_ask(llm, path, question, tokens)
        return time.perf_counter() - t, n

    res = _loop(cfg, call)
    res["load_s"] = load_s
    llm.close()
    return res


def _same_weight_placement(llama_cpp: Any, gpu: bool) -> None:
    """Load weights as mdream does: on AMX CPUs, without the extra buffer types whose AMX
    kernels segfault in a GCC 12 build (llama.cpp #20824; README). `Llama` has no parameter
    for it."""
    from moondream_cli.engine import cpu_has_amx

    if gpu or not cpu_has_amx():
        return
    default = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_model_default_params = params
    llama_cpp.llama.llama_cpp.llama_model_default_params = params


def _loop(
    cfg: dict[str, Any], call: Callable[[str, str, int], tuple[float, int]]
) -> dict[str, Any]:
    """The same sequence for every in-process side: folders, warm single, extra question."""
    res: dict[str, Any] = {"tokens": []}
    for kind in ("photo", "noise"):
        paths = cfg["images"][kind]
        t = time.perf_counter()
        for p in paths:
            _, n = call(p, QUESTION, cfg["tokens"])
            res["tokens"].append(n)
        res[f"folder_{kind}_s"] = time.perf_counter() - t
        res[f"folder_{kind}_n"] = len(paths)
    path = cfg["images"]["photo"][0]
    for suffix, tokens in (("", cfg["tokens"]), ("_1", 1)):
        fresh_s, n = call(path, QUESTION, tokens)
        res.setdefault(f"tokens{suffix}", []).append(n)
        extra_s, n = call(path, EXTRA_QUESTION, tokens)
        res[f"tokens{suffix}"].append(n)
        res.update({f"fresh{suffix}_s": fresh_s, f"extra{suffix}_s": extra_s})
    return res


def worker_mdream(cfg: dict[str, Any]) -> dict[str, Any]:
    from moondream_cli.api import Moondream
    from moondream_cli.engine import EngineOptions, Request, Sampling
    from moondream_cli.images import load_image
    from moondream_cli.prompts import describe_question, question_prompt

    t0 = time.perf_counter()
    # As `mdream describe DIR` sizes it: the question's prompt in bytes plus the answer.
    seq_tokens = len(question_prompt(QUESTION).encode()) + cfg["tokens"]
    opts = {"seq_tokens": seq_tokens, **cfg.get("options", {})}
    options = EngineOptions(threads=cfg["threads"], gpu=cfg["gpu"], **opts)
    md = Moondream(cfg["dir"], options=options)
    load_s = time.perf_counter() - t0
    engine = md.engine
    sampling = Sampling(max_tokens=cfg["tokens"], fixed_length=True)
    res: dict[str, Any] = {"tokens": [], "batch": engine.batch, "answers": {}}
    for kind in ("photo", "noise"):
        paths = cfg["images"][kind]
        requests = (Request(load_image(p), (QUESTION,), tag=p, label=p) for p in paths)
        t = time.perf_counter()
        for answer in engine.ask_many(requests, sampling):
            if answer.error is not None:
                raise answer.error
            res["tokens"].append(answer.tokens)
            res["answers"][answer.tag] = answer.text
        res[f"folder_{kind}_s"] = time.perf_counter() - t
        res[f"folder_{kind}_n"] = len(paths)
    path = cfg["images"]["photo"][0]
    # A fresh call, then an extra question on the same image: with the run's answer length,
    # and with one-token answers (what is left when the answer's own decoding is taken out).
    for suffix, tokens in (("", cfg["tokens"]), ("_1", 1)):
        length = Sampling(max_tokens=tokens, fixed_length=True)
        t = time.perf_counter()
        pixels = load_image(path)
        key = object()  # a key never seen: encoded again, as a new image is
        engine.set_image(pixels, key=key)
        engine.ask(QUESTION, length)
        res[f"fresh{suffix}_s"] = time.perf_counter() - t
        res.setdefault(f"tokens{suffix}", []).append(engine.last_tokens)
        t = time.perf_counter()
        engine.set_image(pixels, key=key)  # the same image: its KV prefix is reused
        engine.ask(EXTRA_QUESTION, length)
        res[f"extra{suffix}_s"] = time.perf_counter() - t
        res[f"tokens{suffix}"].append(engine.last_tokens)
    # What the cold `mdream describe -n N` run generates: its EOS is not masked.
    engine.set_image(pixels, key=key)
    engine.ask(describe_question("normal"), Sampling(max_tokens=cfg["tokens"]))
    res["describe_tokens"] = engine.last_tokens
    res["load_s"] = load_s
    if cfg.get("split"):
        res.update(split_timings(engine, pixels, sampling))
    md.close()
    return res


def split_timings(engine: Any, pixels: Any, sampling: Any) -> dict[str, float]:
    """Image encode, image prefill and per-token decode, timed separately inside llama.cpp."""
    ll, mtmd = engine._ll, engine._mtmd
    engine._clear_memory()
    engine._prefix_key, engine._prefix_len = None, 0
    buf = (ctypes.c_uint8 * len(pixels.data)).from_buffer_copy(pixels.data)
    bitmap = mtmd.mtmd_bitmap_init(pixels.width, pixels.height, buf)
    chunks = mtmd.mtmd_input_chunks_init()
    text = engine._bos_text + mtmd.mtmd_default_marker()
    inp = mtmd.mtmd_input_text()
    inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
    bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
    assert mtmd.mtmd_tokenize(engine._mctx, chunks, ctypes.byref(inp), bitmaps, 1) == 0
    n_past = 0
    encode_s = prefill_s = 0.0
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        new_n_past = ll.llama_pos(0)
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            t = time.perf_counter()
            assert mtmd.mtmd_encode_chunk(engine._mctx, chunk) == 0
            encode_s += time.perf_counter() - t
            embd = mtmd.mtmd_get_output_embd(engine._mctx)
            t = time.perf_counter()
            rc = mtmd.mtmd_helper_decode_image_chunk(
                engine._mctx,
                engine._ctx,
                chunk,
                embd,
                n_past,
                0,
                engine.options.n_batch,
                ctypes.byref(new_n_past),
                mtmd.mtmd_helper_post_decode_callback(0),
                None,
            )
            prefill_s += time.perf_counter() - t
        else:
            rc = mtmd.mtmd_helper_eval_chunk_single(
                engine._mctx,
                engine._ctx,
                chunk,
                n_past,
                0,
                engine.options.n_batch,
                False,
                ctypes.byref(new_n_past),
            )
        assert rc == 0
        n_past = int(new_n_past.value)
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bitmap)
    engine._prefix_len, engine._prefix_key = n_past, object()
    t = time.perf_counter()
    answer = engine.ask(QUESTION, sampling)
    decode_s = time.perf_counter() - t
    return {
        "encode_s": encode_s,
        "prefill_s": prefill_s,
        "image_tokens": n_past,
        "answer_s": decode_s,
        "answer_tok_s": engine.last_tokens / decode_s,
        "split_answer": answer,
    }


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

    from moondream_cli.engine import Sampling

    ll = engine._ll
    path = Path(cfg["fidelity_file"])
    ref = None if cfg.get("reference") else np.load(path)
    n_vocab = int(ll.llama_vocab_n_tokens(engine._vocab))
    pos, _ = engine._prefill_question(QUESTION, Sampling())
    steps = cfg["tokens"]
    logits = np.empty((steps, n_vocab), np.float32)
    tokens = []
    for k in range(steps):
        ptr = ll.llama_get_logits_ith(engine._ctx, -1)
        logits[k] = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
        token = int(logits[k].argmax()) if ref is None else int(ref["tokens"][k])
        tokens.append(token)
        engine._decode([token], pos)
        pos += 1
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


def worker_prepare(cfg: dict[str, Any]) -> dict[str, str]:
    """The model files (and, for --knobs, the f32 reference), written once and cached."""
    models = prepare_models(cfg["size"], cfg["knobs"])
    if cfg["knobs"]:
        models["dir_reference"] = prepare_reference(cfg["size"], models["text"], models["mmproj"])
    return {k: str(v) for k, v in models.items()}


WORKERS = {
    "naive": worker_naive,
    "mdream": worker_mdream,
    "knob": worker_knob,
    "prepare": worker_prepare,
}


@dataclass
class Run:
    result: dict[str, Any]
    wall_s: float
    peak_rss_mb: float
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def best(runs: list[Run]) -> Run:
    """Each timing at its minimum over the runs (noise on a shared machine only adds time);
    the peak RSS at its maximum."""
    merged = dict(runs[0].result)
    for key, value in runs[0].result.items():
        if key.endswith("_s") and isinstance(value, float):
            merged[key] = min(float(r.result[key]) for r in runs)
    if "answer_tok_s" in merged:
        merged["answer_tok_s"] = max(float(r.result["answer_tok_s"]) for r in runs)
    return Run(
        merged,
        min(r.wall_s for r in runs),
        max(r.peak_rss_mb for r in runs),
        runs[-1].log,
    )


def run_child(argv: list[str], *, timeout: float = 3600) -> tuple[int, float, float, str]:
    """Run a child; return its exit code, wall time, its own peak RSS (MB) and its stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    with open(CACHE / "child-stderr.log", "w+b") as errf:
        t = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf, env=env
        )
        deadline = time.monotonic() + timeout
        while True:
            # wait4 gives this child's own rusage: its peak RSS, not the largest child's so far.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.02)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read().decode("utf-8", "replace")
    return proc.returncode, wall, usage.ru_maxrss / 1024.0, err  # ru_maxrss: KiB on Linux


def run_worker(name: str, cfg: dict[str, Any]) -> Run:
    out = CACHE / f"worker-{name}.json"
    out.unlink(missing_ok=True)
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--worker-config",
        json.dumps(cfg),
        "--worker-out",
        str(out),
    ]
    rc, wall, rss, err = run_child(argv)
    if rc != 0 or not out.is_file():
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"bench: the {name} side failed (exit {rc})")
    return Run(json.loads(out.read_text()), wall, rss, err)


def run_cold_mdream(cfg: dict[str, Any]) -> Run:
    """`mdream describe one.jpg`, a fresh process, as a user types it."""
    argv = [
        sys.executable,
        "-m",
        "moondream_cli",
        "describe",
        cfg["images"]["photo"][0],
        "--model-dir",
        cfg["dir"],
        "-n",
        str(cfg["tokens"]),
        "--threads",
        str(cfg["threads"]),
    ]
    if not cfg["gpu"]:
        argv.append("--cpu")
    rc, wall, rss, err = run_child(argv)
    if rc != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"bench: mdream describe failed (exit {rc})")
    return Run({}, wall, rss, err)


def run_cold_naive(cfg: dict[str, Any]) -> Run:
    """The naive side started fresh for one image: load, one call, exit."""
    one = dict(cfg, images={"photo": [cfg["images"]["photo"][0]], "noise": []}, cold=True)
    out = CACHE / "worker-naive-cold.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "naive-cold",
        "--worker-config",
        json.dumps(one),
        "--worker-out",
        str(out),
    ]
    rc, wall, rss, err = run_child(argv)
    if rc != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"bench: the naive cold run failed (exit {rc})")
    return Run({}, wall, rss, err)


def run_mtmd_cli(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """llama-mtmd-cli, one process per image (how it is used), same files and settings."""
    from moondream_cli.engine import cpu_has_amx

    if not MTMD_CLI.is_file():
        return None
    per: list[float] = []
    rss = 0.0
    paths = cfg["images"]["photo"] + cfg["images"]["noise"]
    for p in paths:
        argv = [
            str(MTMD_CLI),
            "-m",
            cfg["text"],
            "--mmproj",
            cfg["mmproj"],
            "--image",
            p,
            "-p",
            QUESTION,
            "-n",
            str(cfg["tokens"]),
            "-t",
            str(cfg["threads"]),
            "--temp",
            "0",
            "--ignore-eos",
            "--chat-template",
            "vicuna",  # what ggml-org's Moondream2 GGUF carries; the generated one has none
            "-c",
            "2048",
            "-ngl",
            "99" if cfg["gpu"] else "0",
        ]
        if not cfg["gpu"]:
            argv.append("--no-mmproj-offload")
            if cpu_has_amx():
                argv.append("--no-repack")  # what mdream does there: see _same_weight_placement
        rc, wall, peak, err = run_child(argv)
        if rc != 0:
            sys.stderr.write(err[-4000:])
            raise SystemExit(f"bench: llama-mtmd-cli failed (exit {rc})")
        per.append(wall)
        rss = max(rss, peak)
    n_photo = len(cfg["images"]["photo"])
    return {
        "photo_s": per[:n_photo],
        "noise_s": per[n_photo:],
        "cold_s": per[0],
        "peak_rss_mb": rss,
    }


# -- the table -------------------------------------------------------------------------------
@dataclass
class Row:
    metric: str
    naive: float | None
    cli: float | None
    mdream: float | None
    unit: str
    better: str  # "lower" or "higher"
    target: str = ""
    verdict: str = ""


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "MB":
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def render(rows: list[Row], cli_note: str) -> str:
    head = ["metric", "naive loop", "llama-mtmd-cli", "mdream", "mdream/naive", "target", "check"]
    body = []
    for r in rows:
        body.append(
            [
                f"{r.metric} ({r.unit})",
                _fmt(r.naive, r.unit),
                _fmt(r.cli, r.unit),
                _fmt(r.mdream, r.unit),
                _ratio(r.mdream, r.naive),
                r.target,
                r.verdict,
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in body:
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
    if cli_note:
        lines.append(f"llama-mtmd-cli: {cli_note}")
    return "\n".join(lines)


def build_rows(
    naive: Run, md: Run, cold_md: Run, cold_naive: Run, cli: dict[str, Any] | None, gpu: bool
) -> list[Row]:
    n, m = naive.result, md.result

    def per_image(r: dict[str, Any], kind: str) -> float:
        return float(r[f"folder_{kind}_s"]) / max(1, int(r[f"folder_{kind}_n"]))

    def ips(r: dict[str, Any], kind: str) -> float:
        return 1.0 / per_image(r, kind)

    cli_ips = {
        k: len(cli[f"{k}_s"]) / sum(cli[f"{k}_s"]) if cli and cli[f"{k}_s"] else None
        for k in ("photo", "noise")
    }
    rows = [
        Row(
            "folder, photo-like JPEGs",
            ips(n, "photo"),
            cli_ips["photo"],
            ips(m, "photo"),
            "images/s",
            "higher",
        ),
        Row(
            "folder, noise JPEGs",
            ips(n, "noise"),
            cli_ips["noise"],
            ips(m, "noise"),
            "images/s",
            "higher",
        ),
        Row(
            "per image, photo-like",
            per_image(n, "photo"),
            (1 / cli_ips["photo"]) if cli_ips["photo"] else None,
            per_image(m, "photo"),
            "s",
            "lower",
        ),
        Row("warm single image", n["fresh_s"], None, m["fresh_s"], "s", "lower"),
        Row(
            "cold describe one.jpg, wall",
            cold_naive.wall_s,
            cli["cold_s"] if cli else None,
            cold_md.wall_s,
            "s",
            "lower",
        ),
        Row(
            "peak RSS",
            naive.peak_rss_mb,
            cli["peak_rss_mb"] if cli else None,
            md.peak_rss_mb,
            "MB",
            "lower",
        ),
        Row("extra question, seen image", n["extra_s"], None, m["extra_s"], "s", "lower"),
        *(
            Row(
                label,
                n[f"extra{suffix}_s"] / n[f"fresh{suffix}_s"],
                None,
                m[f"extra{suffix}_s"] / m[f"fresh{suffix}_s"],
                "ratio",
                "lower",
            )
            for label, suffix in EXTRA_ROWS
        ),
        Row("load", n["load_s"], None, m["load_s"], "s", "lower"),
    ]
    by = {r.metric: r for r in rows}

    def check(metric: str, target: str, ok: bool) -> None:
        by[metric].target, by[metric].verdict = target, "PASS" if ok else "FAIL"

    if gpu:
        check("folder, photo-like JPEGs", "≥ 20 images/s", ips(m, "photo") >= 20)
        check("warm single image", "≤ 0.15 s", m["fresh_s"] <= 0.15)
        if cli:
            check("cold describe one.jpg, wall", "≤ 1.0× mtmd-cli", cold_md.wall_s <= cli["cold_s"])
    else:
        check(
            "per image, photo-like",
            "≤ 0.8× naive",
            per_image(m, "photo") <= 0.8 * per_image(n, "photo"),
        )
    check("peak RSS", "≤ 1.1× naive", md.peak_rss_mb <= 1.1 * naive.peak_rss_mb)
    for label, suffix in EXTRA_ROWS:
        ratio = m[f"extra{suffix}_s"] / m[f"fresh{suffix}_s"]
        check(label, "≤ 0.15 (mdream)", ratio <= 0.15)
    return rows


def host_info(threads: int, gpu: bool) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import llama_cpp

    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(mem_gb, 1),
        "threads": threads,
        "gpu_offload": gpu,
        "llama_cpp_python": llama_cpp.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


# -- knob study ----------------------------------------------------------------------------
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


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument(
        "--quick", action="store_true", help="few images and tokens: minutes on a CPU"
    )
    parser.add_argument("--images", type=int, help="photo-like images in the folder run")
    parser.add_argument("--noise-images", type=int, help="pure-noise images in the folder run")
    parser.add_argument("--tokens", type=int, help="new tokens per answer (EOS masked)")
    parser.add_argument(
        "--threads", type=int, help="threads for every side (default: physical cores)"
    )
    parser.add_argument("--cpu", action="store_true", help="no GPU offload even when available")
    parser.add_argument("--knobs", action="store_true", help="also time CPU settings one by one")
    parser.add_argument(
        "--batch", type=int, help="mdream's folder run: sequences decoded together (--batch N)"
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per side, alternating; the best is kept"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        cfg = json.loads(args.worker_config)
        name = "naive" if args.worker == "naive-cold" else args.worker
        if args.worker == "naive-cold":
            cfg["cold_only"] = True
            res = _naive_cold(cfg)
        else:
            res = WORKERS[name](cfg)
        Path(args.worker_out).write_text(json.dumps(res))
        return 0

    from moondream_cli.engine import gpu_available, physical_cores

    CACHE.mkdir(parents=True, exist_ok=True)
    gpu = gpu_available() and not args.cpu
    threads = args.threads or physical_cores()
    n_photo = args.images or (2 if args.quick else (64 if gpu else 6))
    n_noise = (
        args.noise_images
        if args.noise_images is not None
        else (1 if args.quick else (16 if gpu else 2))
    )
    tokens = args.tokens or (16 if args.quick else 64)
    # Written in a child: a child's peak RSS starts from its parent's at fork (Linux keeps the
    # pre-exec high-water mark), so this process must stay small for the RSS column to be true.
    log("model files: writing or reusing the cached ones ...")
    models = {
        k: Path(v)
        for k, v in run_worker("prepare", {"size": args.size, "knobs": args.knobs}).result.items()
    }
    images = prepare_images(n_photo, n_noise)
    cfg: dict[str, Any] = {
        "text": str(models["text"]),
        "mmproj": str(models["mmproj"]),
        "dir": str(models["dir"]),
        "images": {k: [str(p) for p in v] for k, v in images.items()},
        "tokens": tokens,
        "threads": threads,
        "gpu": gpu,
    }
    log(
        f"{args.size} model, {n_photo} photo-like + {n_noise} noise 1920×1080 JPEGs, "
        f"{tokens} new tokens each, {threads} threads, {'GPU' if gpu else 'CPU'}"
    )
    # The machine may be shared: alternate the sides and keep each side's best run.
    naive_runs: list[Run] = []
    md_runs: list[Run] = []
    for i in range(args.repeat):
        log(f"naive MoondreamChatHandler loop (run {i + 1}/{args.repeat}) ...")
        naive_runs.append(run_worker("naive", cfg))
        log(f"  {naive_runs[-1].wall_s:.1f} s")
        log(f"mdream (run {i + 1}/{args.repeat}) ...")
        md_cfg = dict(cfg, split=True)
        if args.batch:
            md_cfg["options"] = {"batch": args.batch}
        md_runs.append(run_worker("mdream", md_cfg))
        log(f"  {md_runs[-1].wall_s:.1f} s")
    for side, runs in (("naive", naive_runs), ("mdream", md_runs)):
        for key, want in (("tokens", tokens), ("tokens_1", 1)):
            short = [t for run in runs for t in run.result[key] if t < want]
            if short:
                raise SystemExit(f"bench: the {side} side generated {short} tokens, not {want}")
    naive, md = best(naive_runs), best(md_runs)
    log("cold `mdream describe one.jpg` ...")
    cold_md = run_cold_mdream(cfg)
    log("cold naive, one image ...")
    cold_naive = run_cold_naive(cfg)
    cli = None
    if MTMD_CLI.is_file():
        log("llama-mtmd-cli, one process per image ...")
        cli = run_mtmd_cli(cfg)
    cli_note = "not built: run make bench-ref" if cli is None else ""
    rows = build_rows(naive, md, cold_md, cold_naive, cli, gpu)
    knobs = run_knobs(cfg, models) if args.knobs else []

    when = dt.datetime.now(dt.timezone.utc)
    host = host_info(threads, gpu)
    files = "Q4_K_M text, f16 mmproj" if args.size == "full" else "f16 text and mmproj"
    title = (
        f"mdream benchmark {when:%Y-%m-%d %H:%M} UTC — {args.size}-size Moondream2-shaped "
        f"random weights ({files}), {'GPU' if gpu else 'CPU'}: {host['cpu']}, "
        f"{threads} threads, {tokens} new tokens per answer, batch {md.result['batch']}"
    )
    print(title)
    print()
    print(render(rows, cli_note))
    m = md.result
    print(
        f"cold describe: `mdream describe` generates {m['describe_tokens']} of at most "
        f"{tokens} tokens (its EOS is not masked); the naive cold run generates {tokens}."
    )
    naive_tokens = sorted({t for run in naive_runs for t in run.result["tokens"]})
    print(
        f"tokens per answer: mdream exactly {tokens}; naive {naive_tokens} (llama-cpp-python "
        "finishes an incomplete UTF-8 character past max_tokens). Best of "
        f"{args.repeat} alternating runs per side."
    )
    if "encode_s" in m:
        print()
        print(
            f"mdream inside llama.cpp: image encode {m['encode_s']:.2f} s, image prefill "
            f"{m['prefill_s']:.2f} s ({m['image_tokens']} positions), answer "
            f"{m['answer_tok_s']:.1f} tok/s"
        )
    if knobs:
        print()
        print(render_knobs(knobs))
        print(
            f"fidelity: each setting is fed the f32 reference's greedy answer ({tokens} tokens); "
            "logit error = ‖logits − reference‖ / ‖reference − its mean‖, averaged over the "
            "steps; top token = how often its most likely next token is the reference's. "
            "Random weights leave the top logits almost tied, so greedy answers flip at any "
            "rounding difference and are not compared."
        )
    sys.stdout.flush()
    result = {
        "date": when.isoformat(),
        "size": args.size,
        "quick": args.quick,
        "host": host,
        "config": {k: v for k, v in cfg.items()},
        "naive": {**naive.result, "wall_s": naive.wall_s, "peak_rss_mb": naive.peak_rss_mb},
        "mdream": {**md.result, "wall_s": md.wall_s, "peak_rss_mb": md.peak_rss_mb},
        "runs": {
            "naive": [{**r.result, "peak_rss_mb": r.peak_rss_mb} for r in naive_runs],
            "mdream": [{**r.result, "peak_rss_mb": r.peak_rss_mb} for r in md_runs],
        },
        "cold": {
            "mdream_s": cold_md.wall_s,
            "naive_s": cold_naive.wall_s,
            "mdream_peak_rss_mb": cold_md.peak_rss_mb,
        },
        "llama_mtmd_cli": cli,
        "rows": [vars(r) for r in rows],
        "knobs": knobs,
    }
    out = CACHE / f"result-{when:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    log(f"result: {out}")
    return 0


def _naive_cold(cfg: dict[str, Any]) -> dict[str, Any]:
    llm = _naive_llama(cfg)
    _naive_ask(llm, cfg["images"]["photo"][0], QUESTION, cfg["tokens"])
    llm.close()
    return {}


if __name__ == "__main__":
    raise SystemExit(main())
