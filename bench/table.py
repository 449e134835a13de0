"""The benchmark's table: one row per metric, ratios against the naive loop, PASS/FAIL per
target."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from children import Run
from shared import EXTRA_ROWS

# `mdream grep`'s one query is held to 0.75× the time of a describe of this many tokens.
GREP_DESCRIBE_TOKENS = 64


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
    """Every metric for the three sides, with its target and verdict where it has one."""
    n, m = naive.result, md.result
    cli_ips = {
        k: len(cli[f"{k}_s"]) / sum(cli[f"{k}_s"]) if cli and cli[f"{k}_s"] else None
        for k in ("photo", "noise")
    }
    cli_per_image = (1 / cli_ips["photo"]) if cli_ips["photo"] else None
    rows = [
        Row("folder, photo-like JPEGs", ips(n, "photo"), cli_ips["photo"], ips(m, "photo"),
            "images/s", "higher"),
        Row("folder, noise JPEGs", ips(n, "noise"), cli_ips["noise"], ips(m, "noise"),
            "images/s", "higher"),
        Row("per image, photo-like", per_image(n, "photo"), cli_per_image,
            per_image(m, "photo"), "s", "lower"),
        Row("warm single image", n["fresh_s"], None, m["fresh_s"], "s", "lower"),
        Row("cold describe one.jpg, wall", cold_naive.wall_s, cli["cold_s"] if cli else None,
            cold_md.wall_s, "s", "lower"),
        Row("peak RSS", naive.peak_rss_mb, cli["peak_rss_mb"] if cli else None,
            md.peak_rss_mb, "MB", "lower"),
        Row("extra question, seen image", n["extra_s"], None, m["extra_s"], "s", "lower"),
        *(
            Row(label, n[f"extra{suffix}_s"] / n[f"fresh{suffix}_s"], None,
                m[f"extra{suffix}_s"] / m[f"fresh{suffix}_s"], "ratio", "lower")
            for label, suffix in EXTRA_ROWS
        ),
        Row("load", n["load_s"], None, m["load_s"], "s", "lower"),
        *_grep_rows(m),
    ]  # fmt: skip
    _check_targets({r.metric: r for r in rows}, naive, md, cold_md, cli, gpu)
    return rows


def _grep_rows(m: dict[str, Any]) -> list[Row]:
    """`mdream grep`, against mdream's own describe at the same settings (no naive side)."""
    if "grep1_s" not in m:
        return []
    describe = per_image(m, "photo")
    one, three = m["grep1_s"], m["grep3_s"]
    return [
        Row("grep, 1 query, per image", None, None, one, "s", "lower"),
        Row("grep, 3 queries, per image", None, None, three, "s", "lower"),
        Row("grep 1 query / describe, per image", None, None, one / describe, "ratio", "lower"),
        Row("grep, each extra query / image", None, None, extra_query(m), "ratio", "lower"),
    ]  # fmt: skip


def extra_query(m: dict[str, Any]) -> float:
    """What each query past the first adds to an image's time, as a share of the one-query
    time: the two runs' difference once each run's own image work (encode and prefill inside
    llama.cpp, the same work twice) is taken out. Results without those timings: the walls."""
    one, three = m["grep1_s"], m["grep3_s"]
    added = (three - m.get("grep3_image_s", 0.0)) - (one - m.get("grep1_image_s", 0.0))
    return float(added / 2 / one)


def per_image(result: dict[str, Any], kind: str) -> float:
    return float(result[f"folder_{kind}_s"]) / max(1, int(result[f"folder_{kind}_n"]))


def ips(result: dict[str, Any], kind: str) -> float:
    return 1.0 / per_image(result, kind)


def _check_targets(
    by: dict[str, Row], naive: Run, md: Run, cold_md: Run, cli: dict[str, Any] | None, gpu: bool
) -> None:
    n, m = naive.result, md.result

    def check(metric: str, target: str, ok: bool) -> None:
        by[metric].target, by[metric].verdict = target, "PASS" if ok else "FAIL"

    if gpu:
        check("folder, photo-like JPEGs", "≥ 20 images/s", ips(m, "photo") >= 20)
        check("warm single image", "≤ 0.15 s", m["fresh_s"] <= 0.15)
        if cli:
            check("cold describe one.jpg, wall", "≤ 1.0× mtmd-cli", cold_md.wall_s <= cli["cold_s"])
    else:
        # On the CPU the time is in llama.cpp's kernels, which both sides share: parity is
        # the target (bench/README.md, "Why the 0.8× per-image target is missed").
        ratio = per_image(m, "photo") / per_image(n, "photo")
        check("per image, photo-like", "≤ 1.0× naive", ratio <= 1.0)
    check("peak RSS", "≤ 1.1× naive", md.peak_rss_mb <= 1.1 * naive.peak_rss_mb)
    for label, suffix in EXTRA_ROWS:
        ratio = m[f"extra{suffix}_s"] / m[f"fresh{suffix}_s"]
        check(label, "≤ 0.15 (mdream)", ratio <= 0.15)
    if "grep1_s" in m:
        one = m["grep1_s"]
        describe = per_image(m, "photo")
        # A query costs what an answer's image costs; the target is against a 64-token
        # describe. Against --quick's 16 tokens the image is nearly all of both: not checked.
        if min(m["tokens"]) >= GREP_DESCRIBE_TOKENS:
            check("grep 1 query / describe, per image", "≤ 0.75 (mdream)", one / describe <= 0.75)
        else:
            row = by["grep 1 query / describe, per image"]
            row.target = f"≤ 0.75 at {GREP_DESCRIBE_TOKENS} tokens"
            row.verdict = "–"
        check("grep, each extra query / image", "≤ 0.05 (mdream)", extra_query(m) <= 0.05)


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
