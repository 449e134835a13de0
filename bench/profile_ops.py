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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache/bench/full/q4_k_m")
    parser.add_argument("--image", type=Path, default=ROOT / ".cache/bench/images/photo-0.jpg")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--text-fa", action="store_true", help="text-model flash attention on")
    parser.add_argument("--no-vision-fa", action="store_true", help="vision flash attention off")
    parser.add_argument("--steps", type=int, default=8, help="decode steps to time")
    parser.add_argument(
        "--extra-bufts",
        action="store_true",
        help="load with llama.cpp's extra buffer types (AMX) even on AMX CPUs, where mdream "
        'does not: needs a build with bench/amx_tilecfg_fix.h (bench/README.md, "AMX")',
    )
    # mdream's CPU defaults for a lone image
    from moondream_cli.engine import CPU_UBATCH, EngineOptions, cpu_kv_cells

    cells = cpu_kv_cells(EngineOptions().n_ctx)
    parser.add_argument("--n-ctx", type=int, default=cells, help=f"text-model KV cells ({cells})")
    parser.add_argument(
        "--n-ubatch", type=int, default=CPU_UBATCH, help=f"tokens per micro-batch ({CPU_UBATCH})"
    )
    parser.add_argument(
        "--kv-type", choices=("f16", "f32", "q8_0"), default="f16", help="text-model KV cache type"
    )
    args = parser.parse_args()

    import llama_cpp as ll
    import llama_cpp.mtmd_cpp as mtmd

    from moondream_cli.engine import cpu_has_amx, native
    from moondream_cli.images import load_image
    from moondream_cli.locate import resolve

    native.route_logs_to_stderr(False)
    files = resolve(args.dir)
    clock = Clock(ll)
    on = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
    off = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED

    mparams = ll.llama_model_default_params()
    mparams.n_gpu_layers = 0
    # as the engine loads it on the CPU, unless asked
    mparams.use_extra_bufts = args.extra_bufts or not cpu_has_amx()
    model = ll.llama_model_load_from_file(os.fsencode(files.text), mparams)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = args.n_ctx, 1024, args.n_ubatch
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

    pixels = load_image(args.image)
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
            mctx,
            ctx,
            chunk,
            embd,
            n_past,
            0,
            cparams.n_batch,
            ctypes.byref(new_n_past),
            mtmd.mtmd_helper_post_decode_callback(0),
            None,
        )
        if rc != 0:
            raise SystemExit("profile_ops: image prefill failed")
        clock.report(
            f"image prefill ({new_n_past.value - n_past} positions)", time.perf_counter() - t
        )
        n_past = int(new_n_past.value)

    batch = ll.llama_batch_init(1, 0, 1)
    clock.start()
    total = 0.0
    for step in range(args.steps):
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = 300 + step, n_past + step, 1
        batch.seq_id[0][0], batch.logits[0], batch.n_tokens = 0, True, 1
        t = time.perf_counter()
        if ll.llama_decode(ctx, batch) != 0:
            raise SystemExit("profile_ops: decode failed")
        total += time.perf_counter() - t
    clock.report(f"one decode step (mean of {args.steps}, after the image)", total, args.steps)
    ll.llama_batch_free(batch)
    mtmd.mtmd_input_chunks_free(chunks)
    mtmd.mtmd_bitmap_free(bitmap)
    mtmd.mtmd_free(mctx)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
