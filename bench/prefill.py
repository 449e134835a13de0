"""Batched image prefill: N images evaluated in one llama_decode, or one each.

    python bench/prefill.py [--rounds R] [--batch N] [--gpu]

Two engines on the benchmark's full-size Q4_K_M pair, both answering N images at a time
(``batch=N``, default 2), one with ``batched_prefill`` and one without, alternating, so that
the machine's drift hits both. Each round asks every image one question for one token: what
is timed is the images' encode and prefill (llama.cpp's own clock, ``Timings``) and the
round's wall time. The answers must be the same on both sides. On the CPU by default;
``--gpu`` offloads (``bench/device.sh bench`` runs it with ``--gpu --batch 8``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()

    from fixtures import prepare_images, prepare_models

    from moondream_cli import locate
    from moondream_cli.engine import Engine, EngineOptions, Request, Sampling
    from moondream_cli.images import load_image

    models = prepare_models("full")
    files = locate.resolve(models["dir"])
    paths = prepare_images(args.batch, 0)["photo"]
    pixels = [load_image(path, size=378) for path in paths]
    sampling = Sampling(max_tokens=1, fixed_length=True)
    requests = [Request(p, ("Describe this image.",), tag=i) for i, p in enumerate(pixels)]
    common = EngineOptions(threads=None if args.gpu else 2, gpu=args.gpu, batch=args.batch)
    sides = {
        "one llama_decode per image": replace(common, batched_prefill=False),
        f"{args.batch} images per llama_decode": replace(common, batched_prefill=True),
    }
    engines = {name: Engine(files, options) for name, options in sides.items()}
    totals = {name: [0.0, 0.0, 0.0] for name in sides}  # encode, prefill, wall
    answers: dict[str, list[object]] = {name: [] for name in sides}
    try:
        for engine in engines.values():  # warm-up: first-use costs out of the clock
            list(engine.ask_many(requests, sampling))
        for _ in range(args.rounds):
            for name, engine in engines.items():
                engine.timings.reset()
                start = time.perf_counter()
                got = sorted((a.tag, a.text) for a in engine.ask_many(requests, sampling))
                totals[name][2] += time.perf_counter() - start
                totals[name][0] += engine.timings.encode_s
                totals[name][1] += engine.timings.image_prefill_s
                answers[name].append(got)
    finally:
        for engine in engines.values():
            engine.close()
    images = args.batch * args.rounds
    where = "GPU" if args.gpu else "CPU, 2 threads"
    print(f"{images} images per side, {args.batch} at a time, full-size Q4_K_M pair, {where}")
    print(f"{'side':34} {'encode s/img':>13} {'prefill s/img':>14} {'wall s/img':>11}")
    for name, (encode, prefill, wall) in totals.items():
        print(f"{name:34} {encode / images:13.3f} {prefill / images:14.3f} {wall / images:11.3f}")
    first, second = answers.values()
    print("answers identical on both sides:", "yes" if first == second else "NO")
    return 0 if first == second else 1


if __name__ == "__main__":
    sys.exit(main())
