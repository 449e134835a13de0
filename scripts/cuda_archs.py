#!/usr/bin/env python3
"""The CUDA architectures `make install GPU=cuda` builds for: ones this toolkit can build.

Prints a CMAKE_CUDA_ARCHITECTURES list (e.g. ``86`` or ``75;80;86;89;90;100;120``):

- the GPUs this machine has, by ``nvidia-smi --query-gpu=compute_cap`` (one build, fast,
  and for exactly the card that runs it);
- on a machine without a GPU (or whose driver is not loaded), ggml's own default list cut to
  what ``nvcc --list-gpu-arch`` reports: CUDA 12 keeps Pascal and Volta (as PTX, as ggml
  does) and cannot build Blackwell before 12.8; CUDA 13 starts at Turing.

Prints nothing, and says why on stderr, when there is no ``nvcc`` or it can build none of
them (a Pascal card under CUDA 13): the Makefile then stops with that message. The
Makefile's ``CUDA_ARCHS=...`` skips all of this. Standard library only: it runs on the
system Python before the virtual environment exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

# ggml-cuda/CMakeLists.txt's default (its Maxwell PTX left out: 50 lacks the __dp4a the
# quantized kernels use), with Hopper and Blackwell built outright.
DEFAULT = ("61-virtual", "70-virtual", "75", "80", "86", "89", "90", "100", "120")


def _run(argv: list[str]) -> str | None:
    """``argv``'s stdout, or None when it is missing, fails or hangs."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def nvcc() -> str | None:
    """The nvcc CMake would find: $CUDACXX, then PATH, then $CUDA_HOME/$CUDA_PATH, then
    /usr/local/cuda."""
    if os.environ.get("CUDACXX"):
        return os.environ["CUDACXX"]
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
            return os.path.join(root, "bin", "nvcc")
    return None


def toolkit_archs(listing: str) -> set[int]:
    """The architectures ``nvcc --list-gpu-arch`` lists (``compute_86`` → 86)."""
    return {int(n) for n in re.findall(r"\bcompute_(\d+)[a-z]?\b", listing)}


def present_archs(listing: str) -> list[int]:
    """The GPUs ``nvidia-smi --query-gpu=compute_cap --format=csv,noheader`` lists
    (``8.6`` → 86), each once, in order."""
    found: list[int] = []
    for line in listing.splitlines():
        match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", line)
        if match:
            arch = int(match[1]) * 10 + int(match[2])
            if arch not in found:
                found.append(arch)
    return found


def _number(entry: str) -> int:
    return int(entry.split("-")[0])


def pick(toolkit: set[int], present: list[int]) -> tuple[list[str], str | None]:
    """(architectures, why there are none)."""
    if present:
        usable = [str(a) for a in present if a in toolkit]
        if usable:
            return usable, None
        cards = ", ".join(f"{a // 10}.{a % 10}" for a in present)
        return [], (
            f"this machine's GPU (compute capability {cards}) is not one this CUDA toolkit "
            f"builds for (it builds {min(toolkit)}…{max(toolkit)}): install a toolkit that "
            "supports it (Pascal and Volta: CUDA 12), or pass CUDA_ARCHS=… to build anyway"
        )
    usable = [e for e in DEFAULT if _number(e) in toolkit]
    if usable:
        return usable, None
    return [], "this CUDA toolkit builds none of " + ";".join(DEFAULT) + ": pass CUDA_ARCHS=…"


def main() -> int:
    compiler = nvcc()
    if compiler is None:
        print(
            "mdream: no CUDA toolkit found (no nvcc on PATH, in $CUDA_HOME or /usr/local/cuda): "
            "install the CUDA toolkit, 11.8 or later (docs/gpu.md)",
            file=sys.stderr,
        )
        return 1
    listing = _run([compiler, "--list-gpu-arch"])
    if listing is None or not toolkit_archs(listing):
        print(
            f"mdream: `{compiler} --list-gpu-arch` lists no architecture: a CUDA toolkit "
            "11.8 or later is needed (docs/gpu.md)",
            file=sys.stderr,
        )
        return 1
    smi = _run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    archs, why = pick(toolkit_archs(listing), present_archs(smi or ""))
    if why:
        print(f"mdream: {why}", file=sys.stderr)
        return 1
    print(";".join(archs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
