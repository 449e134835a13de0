"""Where one image's time goes inside llama.cpp, operation by operation.

    python bench/profile_ops.py [--dir DIR] [--image JPEG] [--text-fa] [--no-vision-fa]

Runs the image encode, the image prefill (730 positions at full size) and a few single-token
decode steps of the files in DIR (default: the benchmark's cached full-size Q4_K_M pair) with
llama.cpp's eval callback asking for every node, so the scheduler computes the graph one
node at a time and each node's time can be read off the clock. That costs some speed (the
totals come out a little higher than an undisturbed run) but shows which operations dominate.
Tables go to stdout. `make bench` must have written the files once.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
N_BATCH = 1024  # the engine's EngineOptions.n_batch
sys.path.insert(0, str(ROOT / "src"))


class Clock:
    """Per-operation time between consecutive eval callbacks (one node per graph compute)."""

    def __init__(self, llama_cpp: Any) -> None:
        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_op_desc.restype = lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_op_desc.argtypes = lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self.times: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        self._last: float | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def _on_node(self, tensor: int, ask: bool, _user: int) -> bool:
        if ask:
            return True  # yes, show me this node: computes the graph node by node
        now = time.perf_counter()
        if self._last is not None:
            op = self._lib.ggml_op_desc(tensor).decode()
            name = self._lib.ggml_get_name(tensor).decode().rsplit("-", 1)[0]
            # Weight matmuls carry the weight's name (ffn_up, wqkv, ...); keep them apart.
            key = f"{op} {name}" if op == "MUL_MAT" and not name.startswith("node") else op
            self.times[key][0] += now - self._last
            self.times[key][1] += 1
        self._last = time.perf_counter()
        return True

    def start(self) -> None:
        self.times.clear()
        self._last = None

    def report(self, title: str, total: float, repeat: int = 1) -> None:
        print(f"\n{title}: {total / repeat:.3f} s")
        print("| operation | seconds | share | nodes |")
        print("|---|---|---|---|")
        spent = sum(t for t, _ in self.times.values()) or 1.0
        for key, (t, n) in sorted(self.times.items(), key=lambda kv: -kv[1][0])[:12]:
            print(f"| {key} | {t / repeat:.3f} | {100 * t / spent:.0f} % | {n // repeat} |")


def parse_args() -> argparse.Namespace:
    from moondream_cli.engine import CPU_UBATCH, EngineOptions, cpu_kv_cells

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--dir", type=Path, default=ROOT / ".cache/bench/full/q4_k_m")
    add("--image", type=Path, default=ROOT / ".cache/bench/images/photo-0.jpg")
    add("--threads", type=int, default=os.cpu_count() or 1)
    add("--text-fa", action="store_true", help="text-model flash attention on")
    add("--no-vision-fa", action="store_true", help="vision flash attention off")
    add("--steps", type=int, default=8, help="decode steps to time")
    add(
        "--extra-bufts",
        action="store_true",
        help="load with llama.cpp's extra buffer types (AMX) even on AMX CPUs, where mdream "
        'does not: needs a build with bench/amx_tilecfg_fix.h (bench/README.md, "AMX")',
    )
    # mdream's CPU defaults for a lone image
    cells = cpu_kv_cells(EngineOptions().n_ctx)
    add("--n-ctx", type=int, default=cells, help=f"text-model KV cells ({cells})")
    add("--n-ubatch", type=int, default=CPU_UBATCH, help=f"tokens per micro-batch ({CPU_UBATCH})")
    add("--kv-type", choices=("f16", "f32", "q8_0"), default="f16", help="KV cache type")
    return parser.parse_args()


def load(args: argparse.Namespace, clock: Clock) -> tuple[Any, Any, Any]:
    """The text model, its context and the mmproj, each node of both timed by ``clock``."""
    import llama_cpp as ll
    import llama_cpp.mtmd_cpp as mtmd

    from moondream_cli.engine import cpu_has_amx, native
    from moondream_cli.locate import resolve

    native.route_logs_to_stderr(False)
    files = resolve(args.dir)
    on, off = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED, ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
    mparams = ll.llama_model_default_params()
    mparams.n_gpu_layers = 0
    # as the engine loads it on the CPU, unless asked
    mparams.use_extra_bufts = args.extra_bufts or not cpu_has_amx()
    model = ll.llama_model_load_from_file(os.fsencode(files.text), mparams)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = args.n_ctx, N_BATCH, args.n_ubatch
    cparams.flash_attn_type = on if args.text_fa else off
    cparams.n_threads = cparams.n_threads_batch = args.threads
    cparams.type_k = cparams.type_v = {"f32": 0, "f16": 1, "q8_0": 8}[args.kv_type]  # GGML_TYPE_*
    cparams.cb_eval = clock.callback
    ctx = ll.llama_init_from_model(model, cparams)
    pparams = mtmd.mtmd_context_params_default()
    pparams.use_gpu, pparams.n_threads, pparams.warmup = False, args.threads, False
    pparams.flash_attn_type = off if args.no_vision_fa else on
    pparams.cb_eval = clock.callback
    mctx = mtmd.mtmd_init_from_file(os.fsencode(files.mmproj), model, pparams)
    if not model or not ctx or not mctx:
        raise SystemExit("profile_ops: cannot load the model files")
    return model, ctx, mctx


def profile_image(path: Path, ctx: Any, mctx: Any, clock: Clock) -> int:
    """Encode the image and prefill it, each timed; return the positions it took."""
    import llama_cpp as ll
    import llama_cpp.mtmd_cpp as mtmd

    from moondream_cli.images import load_image

    pixels = load_image(path)
    buf = (ctypes.c_uint8 * len(pixels.data)).from_buffer_copy(pixels.data)
    bitmap = mtmd.mtmd_bitmap_init(pixels.width, pixels.height, buf)
    chunks = mtmd.mtmd_input_chunks_init()
    text = b"<|endoftext|>" + mtmd.mtmd_default_marker()
    inp = mtmd.mtmd_input_text()
    inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
    bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
    if mtmd.mtmd_tokenize(mctx, chunks, ctypes.byref(inp), bitmaps, 1) != 0:
        raise SystemExit("profile_ops: mtmd_tokenize failed")
    n_past = 0  # the image alone: the BOS before it is one more decode step, timed below
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            continue
        clock.start()
        t = time.perf_counter()
        if mtmd.mtmd_encode_chunk(mctx, chunk) != 0:
            raise SystemExit("profile_ops: encode failed")
        clock.report("image encode (vision encoder + projector)", time.perf_counter() - t)
        embd = mtmd.mtmd_get_output_embd(mctx)
        new_n_past = ll.llama_pos(0)
        clock.start()
        t = time.perf_counter()
        rc = mtmd.mtmd_helper_decode_image_chunk(
            mctx, ctx, chunk, embd, n_past, 0, N_BATCH, ctypes.byref(new_n_past),
            mtmd.mtmd_helper_post_decode_callback(0), None,
        )  # fmt: skip
        if rc != 0:
            raise SystemExit("profile_ops: image prefill failed")
        positions = new_n_past.value - n_past
        clock.report(f"image prefill ({positions} positions)", time.perf_counter() - t)
        n_past = int(new_n_past.value)
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bitmap)
    return n_past


def profile_decode(ctx: Any, n_past: int, steps: int, clock: Clock) -> None:
    """``steps`` single-token decode steps after the image, their mean timed."""
    import llama_cpp as ll

    batch = ll.llama_batch_init(1, 0, 1)
    clock.start()
    total = 0.0
    for step in range(steps):
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = 300 + step, n_past + step, 1
        batch.seq_id[0][0], batch.logits[0], batch.n_tokens = 0, True, 1
        t = time.perf_counter()
        if ll.llama_decode(ctx, batch) != 0:
            raise SystemExit("profile_ops: decode failed")
        total += time.perf_counter() - t
    clock.report(f"one decode step (mean of {steps}, after the image)", total, steps)
    ll.llama_batch_free(batch)


def main() -> int:
    import llama_cpp as ll
    import llama_cpp.mtmd_cpp as mtmd

    args = parse_args()
    clock = Clock(ll)
    model, ctx, mctx = load(args, clock)
    n_past = profile_image(args.image, ctx, mctx, clock)
    profile_decode(ctx, n_past, args.steps, clock)
    mtmd.mtmd_free(mctx)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
