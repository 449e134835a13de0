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
reference run on the same weights (knobs.py, `fidelity`). --batch N runs mdream's folder with
N sequences decoded together instead of its default. How it all works: bench/README.md.

The parts: shared.py (paths, questions), fixtures.py (model files, images), sides.py (what
each side runs in its child), children.py (starting children, wall time, peak RSS),
table.py (rows, targets), knobs.py (the knob study).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import decode
from children import (
    Run,
    best,
    run_cold_mdream,
    run_cold_naive,
    run_mtmd_cli,
    run_worker,
)
from fixtures import prepare_images, worker_prepare
from knobs import render_knobs, run_knobs, worker_knob
from shared import CACHE, MTMD_CLI, log
from sides import naive_cold, worker_mdream, worker_naive
from table import Row, build_rows, host_info, render

WORKERS = {
    "naive": worker_naive,
    "naive-cold": naive_cold,
    "mdream": worker_mdream,
    "knob": worker_knob,
    "prepare": worker_prepare,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--size", choices=("full", "tiny"), default="full")
    add("--quick", action="store_true", help="few images and tokens: minutes on a CPU")
    add("--images", type=int, help="photo-like images in the folder run")
    add("--noise-images", type=int, help="pure-noise images in the folder run")
    add("--tokens", type=int, help="new tokens per answer (EOS masked)")
    add("--threads", type=int, help="threads for every side (default: physical cores)")
    add("--cpu", action="store_true", help="no GPU offload even when available")
    add("--knobs", action="store_true", help="also time CPU settings one by one")
    add("--batch", type=int, help="mdream's folder run: sequences decoded together (--batch N)")
    add("--repeat", type=int, default=2, help="runs per side, alternating; the best is kept")
    add("--worker", help=argparse.SUPPRESS)
    add("--worker-config", help=argparse.SUPPRESS)
    add("--worker-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Path]]:
    """The run's configuration (what every side is given) and the model files."""
    from moondream_cli.engine import default_threads, gpu_available

    CACHE.mkdir(parents=True, exist_ok=True)
    gpu = gpu_available() and not args.cpu
    threads = args.threads or default_threads()
    n_photo = args.images or (2 if args.quick else (64 if gpu else 6))
    n_noise = args.noise_images
    if n_noise is None:
        n_noise = 1 if args.quick else (16 if gpu else 2)
    tokens = args.tokens or (16 if args.quick else 64)
    # Written in a child: a child's peak RSS starts from its parent's at fork (Linux keeps the
    # pre-exec high-water mark), so this process must stay small for the RSS column to be true.
    log("model files: writing or reusing the cached ones ...")
    prepared = run_worker("prepare", {"size": args.size, "knobs": args.knobs})
    models = {k: Path(v) for k, v in prepared.result.items()}
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
    return cfg, models


@dataclass
class Measured:
    naive_runs: list[Run]
    md_runs: list[Run]
    cold_md: Run
    cold_naive: Run
    cli: dict[str, Any] | None
    knobs: list[dict[str, Any]]
    decoding: dict[str, Any]

    @property
    def naive(self) -> Run:
        return best(self.naive_runs)

    @property
    def md(self) -> Run:
        return best(self.md_runs)


def measure(args: argparse.Namespace, cfg: dict[str, Any], models: dict[str, Path]) -> Measured:
    # The machine may be shared: alternate the sides and keep each side's best run.
    naive_runs: list[Run] = []
    md_runs: list[Run] = []
    md_cfg = dict(cfg, split=True)
    if args.batch:
        md_cfg["options"] = {"batch": args.batch}
    for i in range(args.repeat):
        log(f"naive MoondreamChatHandler loop (run {i + 1}/{args.repeat}) ...")
        naive_runs.append(run_worker("naive", cfg))
        log(f"  {naive_runs[-1].wall_s:.1f} s")
        log(f"mdream (run {i + 1}/{args.repeat}) ...")
        md_runs.append(run_worker("mdream", md_cfg))
        log(f"  {md_runs[-1].wall_s:.1f} s")
    for side, runs in (("naive", naive_runs), ("mdream", md_runs)):
        for key, want in (("tokens", cfg["tokens"]), ("tokens_1", 1)):
            short = [t for run in runs for t in run.result[key] if t < want]
            if short:
                raise SystemExit(f"bench: the {side} side generated {short} tokens, not {want}")
    log("cold `mdream describe one.jpg` ...")
    cold_md = run_cold_mdream(cfg)
    log("cold naive, one image ...")
    cold_naive = run_cold_naive(cfg)
    cli = None
    if MTMD_CLI.is_file():
        log("llama-mtmd-cli, one process per image ...")
        cli = run_mtmd_cli(cfg)
    knobs = run_knobs(cfg, models) if args.knobs else []
    # Last: it decodes in this process, whose peak memory the children above start from.
    log("decoding rate, 1 and 2 workers ...")
    decoding = decode.measure([Path(p) for p in cfg["images"]["photo"]])
    return Measured(naive_runs, md_runs, cold_md, cold_naive, cli, knobs, decoding)


def report(
    args: argparse.Namespace, cfg: dict[str, Any], got: Measured, rows: list[Row], when: Any
) -> None:
    """The table and its notes, on stdout."""
    tokens, m = cfg["tokens"], got.md.result
    host = host_info(cfg["threads"], cfg["gpu"])
    files = "Q4_K_M text, f16 mmproj" if args.size == "full" else "f16 text and mmproj"
    print(
        f"mdream benchmark {when:%Y-%m-%d %H:%M} UTC — {args.size}-size Moondream2-shaped "
        f"random weights ({files}), {'GPU' if cfg['gpu'] else 'CPU'}: {host['cpu']}, "
        f"{cfg['threads']} threads, {tokens} new tokens per answer, batch {m['batch']}"
    )
    print()
    print(render(rows, "not built: run make bench-ref" if got.cli is None else ""))
    print(
        f"cold describe: `mdream describe` generates {m['describe_tokens']} of at most "
        f"{tokens} tokens (its EOS is not masked); the naive cold run generates {tokens}."
    )
    naive_tokens = sorted({t for run in got.naive_runs for t in run.result["tokens"]})
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
    parts = m.get("load_parts") or {}
    if parts:
        print(
            f"mdream load {m['load_s']:.2f} s: "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in parts.items())
            + "; the rest: importing llama_cpp, finding and checking the files"
        )
    print()
    folder = m["folder_photo_n"] / m["folder_photo_s"] if m.get("folder_photo_s") else None
    print(decode.render(got.decoding, folder))
    if got.knobs:
        print()
        print(render_knobs(got.knobs))
        print(
            f"fidelity: each setting is fed the f32 reference's greedy answer ({tokens} tokens); "
            "logit error = ‖logits − reference‖ / ‖reference − its mean‖, averaged over the "
            "steps; top token = how often its most likely next token is the reference's. "
            "Random weights leave the top logits almost tied, so greedy answers flip at any "
            "rounding difference and are not compared."
        )
    sys.stdout.flush()


def save(
    args: argparse.Namespace, cfg: dict[str, Any], got: Measured, rows: list[Row], when: Any
) -> Path:
    naive, md = got.naive, got.md
    result = {
        "date": when.isoformat(),
        "size": args.size,
        "quick": args.quick,
        "host": host_info(cfg["threads"], cfg["gpu"]),
        "config": dict(cfg),
        "naive": {**naive.result, "wall_s": naive.wall_s, "peak_rss_mb": naive.peak_rss_mb},
        "mdream": {**md.result, "wall_s": md.wall_s, "peak_rss_mb": md.peak_rss_mb},
        "runs": {
            "naive": [{**r.result, "peak_rss_mb": r.peak_rss_mb} for r in got.naive_runs],
            "mdream": [{**r.result, "peak_rss_mb": r.peak_rss_mb} for r in got.md_runs],
        },
        "cold": {
            "mdream_s": got.cold_md.wall_s,
            "naive_s": got.cold_naive.wall_s,
            "mdream_peak_rss_mb": got.cold_md.peak_rss_mb,
        },
        "llama_mtmd_cli": got.cli,
        "rows": [vars(r) for r in rows],
        "knobs": got.knobs,
        "decoding": got.decoding,
    }
    out = CACHE / f"result-{when:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:  # one side, in the child process run_worker started
        res = WORKERS[args.worker](json.loads(args.worker_config))
        Path(args.worker_out).write_text(json.dumps(res))
        return 0
    cfg, models = prepare(args)
    got = measure(args, cfg, models)
    rows = build_rows(got.naive, got.md, got.cold_md, got.cold_naive, got.cli, cfg["gpu"])
    when = dt.datetime.now(dt.timezone.utc)
    report(args, cfg, got, rows, when)
    log(f"result: {save(args, cfg, got, rows, when)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
