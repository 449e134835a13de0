"""What each side runs, in a child process of its own: the naive llama-cpp-python loop and mdream.

Both go through the same sequence (:func:`_loop`): the folder runs, a warm single image, and an
extra question on an image already seen. mdream is seen through its public API only.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import EXTRA_QUESTION, QUESTION


def _naive_llama(cfg: dict[str, Any]) -> Any:
    """The reference as its users write it: Llama + MoondreamChatHandler, model loaded once."""
    import llama_cpp
    from llama_cpp.llama_chat_format import MoondreamChatHandler

    from moondream_cli.engine import native

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
    native.route_logs_to_stderr(False)  # libmtmd's per-image debug lines otherwise reach stderr
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
    # MoondreamChatHandler loads the mmproj on its first image; load it here, inside the
    # clock, so both sides' load times cover the same two files (bench/README.md, "Load").
    llm.chat_handler._init_mtmd_context(llm)
    load_s = time.perf_counter() - t0

    def call(path: str, question: str, tokens: int) -> tuple[float, int]:
        t = time.perf_counter()
        n = _naive_ask(llm, path, question, tokens)
        return time.perf_counter() - t, n

    res = _loop(cfg, call)
    res["load_s"] = load_s
    llm.close()
    return res


def naive_cold(cfg: dict[str, Any]) -> dict[str, Any]:
    llm = _naive_llama(cfg)
    _naive_ask(llm, cfg["images"]["photo"][0], QUESTION, cfg["tokens"])
    llm.close()
    return {}


def _same_weight_placement(llama_cpp: Any, gpu: bool) -> None:
    """Load weights as mdream does: on AMX CPUs, without the extra buffer types whose AMX
    kernels segfault in a GCC 12 build (llama.cpp #20824; bench/README.md, "AMX"). `Llama`
    has no parameter for it."""
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
    from moondream_cli.engine import Engine, EngineOptions, Request, Sampling
    from moondream_cli.images import load_image
    from moondream_cli.locate import resolve
    from moondream_cli.prompts import describe_question, question_prompt

    t0 = time.perf_counter()
    # As `mdream describe DIR` sizes it: the question's prompt in bytes plus the answer.
    seq_tokens = len(question_prompt(QUESTION).encode()) + cfg["tokens"]
    opts = {"seq_tokens": seq_tokens, **cfg.get("options", {})}
    options = EngineOptions(threads=cfg["threads"], gpu=cfg["gpu"], **opts)
    engine = Engine(resolve(cfg["dir"]), options)
    load_s = time.perf_counter() - t0
    load_parts = engine.load_seconds
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
    res.update(grep_timings(engine, cfg["images"]["photo"]))
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
    res["load_parts"] = load_parts
    if cfg.get("split"):
        res.update(split_timings(engine, pixels, sampling))
    engine.close()
    return res


def grep_timings(engine: Any, paths: list[str]) -> dict[str, Any]:
    """`mdream grep` over the photo folder, as its folder run scores: one query, then three
    (one encode per image either way; each query one forward pass, no token sampled). Also
    the time each run spent on the images inside llama.cpp (encode and prefill): the same
    work in both runs, whose run-to-run noise on a shared machine is larger than what two
    queries add, so the extra-query row leaves it out."""
    from moondream_cli.engine import Request, Sampling
    from moondream_cli.images import load_image
    from moondream_cli.loader import yes_no_tokens
    from moondream_cli.prompts import grep_question

    scoring = Sampling(max_tokens=1, yes_no=yes_no_tokens(engine))
    res: dict[str, Any] = {}
    for n, queries in ((1, ("a receipt",)), (3, ("a receipt", "a dog", "a red car"))):
        asked = tuple(grep_question(q) for q in queries)
        requests = (Request(load_image(p), asked, tag=p, label=p) for p in paths)
        engine.timings.reset()
        t = time.perf_counter()
        for answer in engine.ask_many(requests, scoring):
            if answer.error is not None:
                raise answer.error
        res[f"grep{n}_s"] = (time.perf_counter() - t) / max(1, len(paths))
        image_s = engine.timings.encode_s + engine.timings.image_prefill_s
        res[f"grep{n}_image_s"] = image_s / max(1, len(paths))
    return res


def split_timings(engine: Any, pixels: Any, sampling: Any) -> dict[str, Any]:
    """Image encode, image prefill and per-token decode, timed separately inside llama.cpp
    (the engine's own :class:`~moondream_cli.engine.Timings`)."""
    engine.timings.reset()
    engine.set_image(pixels, key=object())  # a key never seen: encoded again
    t = time.perf_counter()
    answer = engine.ask(QUESTION, sampling)
    decode_s = time.perf_counter() - t
    timings = engine.timings
    return {
        "encode_s": timings.encode_s,
        "prefill_s": timings.image_prefill_s,
        "image_tokens": timings.image_positions,
        "answer_s": decode_s,
        "answer_tok_s": engine.last_tokens / decode_s,
        "split_answer": answer,
    }
