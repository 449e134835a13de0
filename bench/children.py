"""Running each side in a child process: its wall time and its own peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import CACHE, MTMD_CLI, QUESTION, ROOT

BENCH = Path(__file__).resolve().parent / "bench.py"


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
        str(BENCH),
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
        str(BENCH),
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
