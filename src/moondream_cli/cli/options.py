"""The command-line options of :class:`~moondream_cli.settings.Settings`, one per field.

``describe`` and ``ask`` take every setting through :func:`with_settings`, which adds these
options to the command's signature (so Typer parses, validates and documents them) and hands
the command one ``settings: Settings``. Adding a setting means: the field in ``settings.py``
and its option in :data:`SETTING_OPTIONS`, nothing else; a test holds the two to each other.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..records import Format
from ..reference import Fit
from ..settings import Settings


def flag(*names: str, help: str) -> Any:
    """A boolean option, shown in --help without a ``<bool>`` placeholder."""
    return typer.Option(*names, help=help, metavar="")


ModelDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-dir",
        "-m",
        metavar="DIR|NAME",
        help="Folder with a text GGUF and an mmproj GGUF, or an installed bundle. "
        "Default: $MDREAM_MODEL, else the installed default bundle.",
        file_okay=False,
        show_default=False,
    ),
]
CpuOpt = Annotated[bool, flag("--cpu", help="Run on the CPU even when a GPU is available.")]

# Each field of Settings, in its order, as the option that sets it.
SETTING_OPTIONS: dict[str, Any] = {
    "recursive": Annotated[
        bool, flag("--recursive", "-r", help="Descend into subfolders of folder arguments.")
    ],
    "files_from": Annotated[
        str | None,
        typer.Option(
            "--files-from",
            help="Read image paths from FILE ('-': stdin), one per line (NUL-separated with -0).",
            metavar="FILE",
            show_default=False,
        ),
    ],
    "null": Annotated[
        bool, flag("--null", "-0", help="--files-from entries end in NUL (find -print0).")
    ],
    "fmt": Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format. Default: text; with --sidecar and no --format, none.",
            show_default=False,
        ),
    ],
    "sidecar": Annotated[
        bool,
        flag("--sidecar", help="Write each answer beside its image (img.jpg → img.txt)."),
    ],
    "ext": Annotated[str, typer.Option("--ext", help="Sidecar file suffix.", metavar="EXT")],
    "overwrite": Annotated[
        bool,
        flag("--overwrite", help="Replace existing sidecars (default: keep them, skip the image)."),
    ],
    "fail_fast": Annotated[bool, flag("--fail-fast", help="Stop at the first input that fails.")],
    "resume": Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Skip images FILE (an earlier --format jsonl run's output) answered "
            "without error; add the new records to it with '>> FILE'.",
            metavar="FILE",
            show_default=False,
        ),
    ],
    "model_dir": ModelDirOpt,
    "cpu": CpuOpt,
    "threads": Annotated[
        int | None,
        typer.Option(
            "--threads",
            "-t",
            min=1,
            metavar="N",
            help="CPU threads. Default: the number of physical cores.",
        ),
    ],
    "max_tokens": Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            "-n",
            min=1,
            metavar="N",
            help="Longest answer, in tokens. Default: describe 64 / 256 / 512 by --length, "
            "128 for --style tags; ask 256.",
            show_default=False,
        ),
    ],
    "temperature": Annotated[
        float,
        typer.Option(
            "--temperature",
            min=0.0,
            help="0 (default) is greedy: the same input gives the same answer.",
        ),
    ],
    "seed": Annotated[
        int | None, typer.Option("--seed", help="Sampling seed, for --temperature > 0.")
    ],
    "batch": Annotated[
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
    ],
    "fit": Annotated[
        Fit,
        typer.Option(
            "--fit",
            help="How an image becomes the model's square: 'stretch' (default) as the reference "
            "Moondream2 did, or 'letterbox' (grey bars) as other llama.cpp tools do.",
        ),
    ],
    "max_megapixels": Annotated[
        float,
        typer.Option(
            "--max-megapixels",
            min=0.01,
            help="Refuse images larger than this many megapixels (phone photos are 12–200).",
        ),
    ],
    "ray": Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Answer on a Ray cluster (host:port; the 'ray' extra). Workers read the "
            'images from their own storage; see the README, "Many machines".',
            show_default=False,
        ),
    ],
    "workers": Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            metavar="N",
            help="With --ray: model copies on the cluster. Default: one per node.",
            show_default=False,
        ),
    ],
    "unordered": Annotated[
        bool, flag("--unordered", help="With --ray: records as they finish, not in input order.")
    ],
    "verbose": Annotated[
        bool,
        flag("--verbose", "-v", help="Show llama.cpp and libmtmd log lines on stderr."),
    ],
    "quiet": Annotated[bool, flag("--quiet", help="No progress or hints on stderr; errors only.")],
}

F = TypeVar("F", bound=Callable[..., None])


def with_settings(command: F) -> F:
    """Give ``command`` every setting as an option; it receives them as ``settings``.

    The command declares a keyword-only ``settings: Settings`` parameter; Typer sees, in its
    place, one option per field of :class:`Settings` (defaults from the dataclass).
    """
    fields = dataclasses.fields(Settings)
    missing = {f.name for f in fields} ^ set(SETTING_OPTIONS)
    if missing:
        raise TypeError(f"Settings fields and SETTING_OPTIONS differ: {sorted(missing)}")
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "settings"]
    added = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default,
            annotation=SETTING_OPTIONS[f.name],
        )
        for f in fields
    ]
    names = {f.name for f in fields}

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        values = {name: kwargs.pop(name) for name in names if name in kwargs}
        command(*args, settings=Settings(**values), **kwargs)

    run.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    run.__annotations__ = {
        **{k: v for k, v in command.__annotations__.items() if k != "settings"},
        **SETTING_OPTIONS,
    }
    return run  # type: ignore[return-value]
