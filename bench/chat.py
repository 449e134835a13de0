"""A conversation's second turn against a fresh `ask` with the same history, on the full-size
Moondream2-shaped pair (bench/README.md, "Chat").

The fresh side is what a tool without the cached conversation pays (llama-cpp-python's
MoondreamChatHandler resets the cache every call): the image encoded again and the whole
history string evaluated. Both answer the same tokens (EOS masked, --tokens each).

    python bench/chat.py [--tokens 16] [--threads N] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures import prepare_images, prepare_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    from moondream_cli.chat import Conversation
    from moondream_cli.engine import Engine, EngineOptions, Sampling
    from moondream_cli.images import load_image
    from moondream_cli.locate import resolve
    from moondream_cli.prompts import chat_prompt

    models = prepare_models("full")
    photo = prepare_images(1, 0)["photo"][0]
    sampling = Sampling(max_tokens=args.tokens, fixed_length=True)
    with Engine(resolve(models["dir"]), EngineOptions(threads=args.threads, batch=1)) as engine:
        pixels = load_image(photo, size=engine.image_size)
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            chat = Conversation(engine, pixels, sampling)
            t = time.perf_counter()
            chat.ask("What is in this picture?")
            first = time.perf_counter() - t
            t = time.perf_counter()
            chat.ask("What colour is it?")
            second = time.perf_counter() - t
            tokens = engine.tokenize(chat_prompt(chat.turns[:1], "What colour is it?"))
            t = time.perf_counter()
            engine.set_image(pixels, key=object())  # a new key: encoded again, as a fresh call
            engine.continue_image(0, tokens, sampling)
            fresh = time.perf_counter() - t
            for name, value in (("first", first), ("second", second), ("fresh", fresh)):
                best[name] = min(best.get(name, value), value)
    print(f"first turn (image encoded): {best['first']:.2f} s")
    print(f"second turn, cached conversation: {best['second']:.2f} s")
    print(f"fresh ask with the same history: {best['fresh']:.2f} s")
    print(f"second turn / fresh: {best['second'] / best['fresh']:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
