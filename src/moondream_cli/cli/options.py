"""The command-line options of :class:`~moondream_cli.settings.Settings`, group by group.

Each settings group has a table here, one option per field, and a ``--help`` panel of its
own. A command takes the groups it needs with :func:`with_groups`, which adds their options
to its signature (so Typer parses, validates and documents them) and hands the command one
``settings: Settings`` built from them; the groups it does not take keep their defaults.
Adding a setting means: the field in its group in ``settings.py`` and its option in that
group's table below, nothing else; ``tests/test_settings.py`` holds the two to each other.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import typer

from ..records import Format, SidecarName
from ..reference import Fit
from ..settings import (
    ClusterOptions,
    ConsoleOptions,
    InputOptions,
    ModelOptions,
    OutputOptions,
    SamplingOptions,
    Settings,
)


def flag(*names: str, help: str) -> Any:
    """A boolean option, shown in --help without a ``<bool>`` placeholder."""
    return typer.Option(*names, help=help, metavar="")


def number(*names: str, help: str, metavar: str = "N") -> Any:
    """A numeric option with the metavar a person would write, not ``<int range>``; its range
    is checked by its settings group (``settings.py``), for the Python API too."""
    return typer.Option(*names, help=help, metavar=metavar, show_default=False)


INPUT_OPTIONS: dict[str, Any] = {
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
}

OUTPUT_OPTIONS: dict[str, Any] = {
    "fmt": Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format. Default: text; with --sidecar or --xmp, none.",
            show_default=False,
        ),
    ],
    "sidecar": Annotated[
        bool,
        flag("--sidecar", help="Write each answer beside its image (img.jpg → img.txt)."),
    ],
    "ext": Annotated[
        str, typer.Option("--ext", help="Sidecar file suffix. Default: .txt.", metavar="EXT")
    ],
    "sidecar_name": Annotated[
        SidecarName | None,
        typer.Option(
            "--sidecar-name",
            help="'stem': a.jpg → a.txt, a.xmp; 'full': a.jpg → a.jpg.txt, a.jpg.xmp (a.jpg "
            "and a.png in one folder get one each). Default: stem for --sidecar, full for --xmp.",
            show_default=False,
        ),
    ],
    "xmp": Annotated[
        bool,
        flag(
            "--xmp",
            help="Merge the caption (with --style tags, the keywords) into each image's XMP "
            "sidecar, for digiKam, darktable, Immich, PhotoPrism (the 'xmp' extra).",
        ),
    ],
    "xmp_tag_root": Annotated[
        str,
        typer.Option(
            "--xmp-tag-root",
            help="The tag mdream's keywords sit under (mdream/cat); a/b for a deeper one. "
            "Default: mdream.",
            metavar="TAG",
            show_default=False,
        ),
    ],
    "overwrite": Annotated[
        bool,
        flag(
            "--overwrite",
            help="Replace existing sidecars and XMP captions (default: keep them, skip the image).",
        ),
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
}

MODEL_OPTIONS: dict[str, Any] = {
    "model_dir": Annotated[
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
    ],
    "cpu": Annotated[bool, flag("--cpu", help="Run on the CPU even when a GPU is available.")],
    "threads": Annotated[
        int | None,
        number(
            "--threads",
            "-t",
            help="CPU threads. Default: the physical cores (the performance cores on Apple "
            "silicon), at most the CPU quota of a container.",
        ),
    ],
    "batch": Annotated[
        int | None,
        number(
            "--batch",
            "-b",
            help="Images answered together (continuous batching). Default: on the CPU, as many "
            "as fit in about one image's memory (Moondream2: 2 for --max-tokens up to ~500, "
            "else 1); on a GPU, as many as half its free memory holds.",
        ),
    ],
    "fit": Annotated[
        Fit,
        typer.Option(
            "--fit",
            help="How an image becomes the model's square: 'stretch' (default) as the reference "
            "Moondream2 did, or 'letterbox' (grey bars) as other llama.cpp tools do.",
            show_default=False,
        ),
    ],
    "max_megapixels": Annotated[
        float,
        number(
            "--max-megapixels",
            metavar="MP",
            help="Refuse images larger than this (phone photos are 12–200). Default: 250.",
        ),
    ],
}

SAMPLING_OPTIONS: dict[str, Any] = {
    "max_tokens": Annotated[
        int | None,
        number(
            "--max-tokens",
            "-n",
            help="Longest answer, in tokens. Default: describe 64 / 256 / 512 by --length, "
            "128 for --style tags; ask 256.",
        ),
    ],
    "temperature": Annotated[
        float,
        number(
            "--temperature",
            metavar="0.0–2.0",
            help="0 (default) is greedy: the same input gives the same answer.",
        ),
    ],
    "seed": Annotated[
        int | None, number("--seed", help="Sampling seed, for --temperature above 0.")
    ],
}

CLUSTER_OPTIONS: dict[str, Any] = {
    "ray": Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Answer on a Ray cluster (host:port; the 'ray' extra). Workers read the "
            "images from their own storage; see docs/cluster.md.",
            show_default=False,
        ),
    ],
    "workers": Annotated[
        int | None,
        number("--workers", help="With --ray: model copies. Default: one per node."),
    ],
    "unordered": Annotated[
        bool, flag("--unordered", help="With --ray: records as they finish, not in input order.")
    ],
}

CONSOLE_OPTIONS: dict[str, Any] = {
    "verbose": Annotated[
        bool,
        flag("--verbose", "-v", help="Show llama.cpp and libmtmd log lines on stderr."),
    ],
    "quiet": Annotated[bool, flag("--quiet", help="No progress or hints on stderr; errors only.")],
}


@dataclasses.dataclass(frozen=True)
class OptionGroup:
    """A settings group on the command line: its ``--help`` panel and its options."""

    panel: str
    options: dict[str, Any]


GROUPS: dict[type, OptionGroup] = {
    InputOptions: OptionGroup("Inputs", INPUT_OPTIONS),
    OutputOptions: OptionGroup("Outputs", OUTPUT_OPTIONS),
    ModelOptions: OptionGroup("Model", MODEL_OPTIONS),
    SamplingOptions: OptionGroup("Answers", SAMPLING_OPTIONS),
    ClusterOptions: OptionGroup("Many machines (Ray)", CLUSTER_OPTIONS),
    ConsoleOptions: OptionGroup("Messages", CONSOLE_OPTIONS),
}

# The attribute of Settings that holds each group.
SETTINGS_FIELD: dict[type, str] = {
    group: next(f.name for f in dataclasses.fields(Settings) if f.type == group.__name__)
    for group in GROUPS
}

F = TypeVar("F", bound=Callable[..., None])


def with_groups(*groups: type, replace: dict[str, Any] | None = None) -> Callable[[F], F]:
    """Give the command the options of ``groups``, each group in its own ``--help`` panel;
    it receives them as ``settings``. ``replace`` gives a field another option, by name.

    The command declares a keyword-only ``settings: Settings`` parameter; Typer sees, in its
    place, one option per field of each group (defaults from the dataclasses).
    """
    chosen = list(groups)
    replace = replace or {}

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "settings"]
        added, annotations, owner = [], {}, {}
        for group in chosen:
            spec = GROUPS[group]
            for f in dataclasses.fields(group):
                # A command may spell a field's option its own way (grep's -v is not --verbose).
                annotation = _in_panel(replace.get(f.name, spec.options[f.name]), spec.panel)
                added.append(
                    inspect.Parameter(
                        f.name,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=f.default,
                        annotation=annotation,
                    )
                )
                annotations[f.name], owner[f.name] = annotation, group

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            values: dict[type, dict[str, Any]] = {group: {} for group in chosen}
            for name, group in owner.items():
                if name in kwargs:
                    values[group][name] = kwargs.pop(name)
            built = {SETTINGS_FIELD[g]: g(**v) for g, v in values.items()}
            command(*args, settings=Settings(**built), **kwargs)

        run.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        run.__annotations__ = {
            **{k: v for k, v in command.__annotations__.items() if k != "settings"},
            **annotations,
        }
        return run  # type: ignore[return-value]

    return decorate


def _in_panel(annotation: Any, panel: str) -> Any:
    """``annotation`` with its typer.Option shown in the ``panel`` of ``--help``."""
    kind, info = get_args(annotation)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[kind, info]
