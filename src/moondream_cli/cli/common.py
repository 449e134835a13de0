"""Options shared by the inference commands, and the stdout discipline they run under."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

ModelDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-dir",
        "-m",
        help="Folder with a text GGUF and an mmproj GGUF, or an installed bundle. "
        "Default: $MDREAM_MODEL, else the installed default bundle.",
        file_okay=False,
        show_default=False,
    ),
]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="Run on the CPU even when a GPU is available.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads", "-t", min=1, help="CPU threads. Default: the number of physical cores."
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option("--max-tokens", "-n", min=1, help="Longest answer, in tokens."),
]
TemperatureOpt = Annotated[
    float,
    typer.Option(
        "--temperature",
        min=0.0,
        help="0 (default) is greedy: the same input gives the same answer.",
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Sampling seed, for --temperature > 0.")
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch",
        "-b",
        min=1,
        help="Images answered together (continuous batching). Default: on the CPU, as many "
        "as fit in about one image's memory (Moondream2: 2 for --max-tokens up to ~500, "
        "else 1); on a GPU, as many as half its free memory holds.",
        show_default=False,
    ),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show llama.cpp and libmtmd log lines on stderr.")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", help="No progress or hints on stderr; errors only.")
]


def claim_stdout() -> TextIO:
    """Keep fd 1 for results alone.

    The real stdout is moved to a private descriptor that only mdream writes to, and fd 1
    is pointed at stderr, so any stray C-level print from a native library can never mix
    into the results. Returns the stream results are written to (also set as sys.stdout).
    """
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    tty = os.isatty(private)
    binary = os.fdopen(private, "wb", buffering=0 if tty else -1)
    stream = io.TextIOWrapper(
        binary,
        encoding="utf-8",
        errors="replace",
        newline="\n",
        line_buffering=tty,
        write_through=tty,
    )
    sys.stdout = stream
    return stream
