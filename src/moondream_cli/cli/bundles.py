"""`mdream fetch` and `mdream bundle install|list|verify|export|remove`.

The core (`fetch`, `bundle`) is imported inside each command, never at import time: the
inference commands and `mdream --help` must not load it or huggingface-hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..progress import Progress

FETCH_EPILOG = """Examples:

  mdream fetch                                   # download, verify, quantize, install

  mdream fetch --output bundles/                 # also keep the portable tarball

  mdream fetch --from-dir /media/usb/moondream   # f16 GGUFs copied by hand; no network

  mdream fetch --recipe moondream2-2024 --output bundles/ --no-install
"""

INSTALL_EPILOG = """Examples:

  mdream bundle install moondream2-20250414-q4_k_m.tar

  mdream bundle install --default other-q4_k_m.tar
"""
LIST_EPILOG = """Examples:

  mdream bundle list
"""
VERIFY_EPILOG = """Examples:

  mdream bundle verify                           # every installed bundle

  mdream bundle verify moondream2-20250414-q4_k_m
"""
EXPORT_EPILOG = """Examples:

  mdream bundle export moondream2-20250414-q4_k_m -o /media/usb/

  mdream bundle export moondream2-20250414-q4_k_m -o copy.tar
"""
REMOVE_EPILOG = """Examples:

  mdream bundle remove moondream2-20250414-q4_k_m
"""

bundle_app = typer.Typer(
    name="bundle",
    help="Install, list, verify, export and remove model bundles (portable tarballs).",
    no_args_is_help=True,
)

QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress on stderr; errors only.")]
NameArg = Annotated[str, typer.Argument(help="Bundle name, as `mdream bundle list` shows it.")]


def register(app: typer.Typer) -> None:
    app.command(epilog=FETCH_EPILOG)(fetch)
    app.add_typer(bundle_app)
    bundle_app.command("install", epilog=INSTALL_EPILOG)(install)
    bundle_app.command("list", epilog=LIST_EPILOG)(list_)
    bundle_app.command("verify", epilog=VERIFY_EPILOG)(verify)
    bundle_app.command("export", epilog=EXPORT_EPILOG)(export)
    bundle_app.command("remove", epilog=REMOVE_EPILOG)(remove)


def fetch(
    *,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            "-r",
            help="A shipped recipe name or a recipe JSON file. Default: moondream2-20250414; "
            "with --from-dir, the recipe the files match, if any.",
            show_default=False,
        ),
    ] = None,
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from-dir",
            help="Take the f16 GGUFs from this folder instead of the hub (no network).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write the bundle tarball here (a folder or FILE.tar).",
            show_default=False,
        ),
    ] = None,
    install: Annotated[
        bool, typer.Option("--install/--no-install", help="Install the bundle under MDREAM_HOME.")
    ] = True,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Bundle name. Default: RECIPE-QUANTIZATION.", show_default=False
        ),
    ] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Make it the default model even if one is set.")
    ] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", min=1, help="Quantization threads.")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Download Moondream2 once, verify it, quantize to Q4_K_M, install it (and pack a tarball).

    Prints the tarball's path with --output, else the installed bundle's name.
    """
    from ..fetch import fetch as run_fetch

    progress = make_progress(quiet)
    with progress:
        result = run_fetch(
            recipe,
            from_dir=from_dir,
            output=output,
            install=install,
            name=name,
            threads=threads,
            make_default=default,
            progress=progress,
        )
    if result.installed is not None:
        state = "already installed" if result.already else "installed"
        progress.say(f"{state}: {result.name} in {result.installed}")
    # stdout: what was produced — the tarball's path, else the installed bundle's name.
    sys.stdout.write(f"{result.tarball if result.tarball is not None else result.name}\n")


def install(
    tarball: Annotated[Path, typer.Argument(help="A bundle tarball (.tar).", show_default=False)],
    *,
    default: Annotated[
        bool, typer.Option("--default", help="Make it the default model even if one is set.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Check a bundle tarball member by member and install it; all or nothing."""
    from ..bundle_install import install as run_install

    progress = make_progress(quiet)
    with progress:
        result = run_install(tarball, progress=progress, make_default=default)
    state = "already installed" if result.already else "installed"
    progress.say(f"{state}: {result.name} in {result.path}")
    sys.stdout.write(f"{result.name}\n")


def list_() -> None:
    """List installed bundles: name, size, quantization, source, default (*)."""
    from ..bundle import list_bundles

    for info in list_bundles():
        quant = info.quantization
        mark = "*" if info.default else " "
        flag = "" if info.intact else "\t(changed since last verified)"
        sys.stdout.write(
            f"{mark} {info.name}\t{info.size / 2**20:,.1f} MiB\t{quant}\t{info.source}{flag}\n"
        )


def verify(
    name: Annotated[
        str | None,
        typer.Argument(help="Bundle name. Default: every installed bundle.", show_default=False),
    ] = None,
    *,
    quiet: QuietOpt = False,
) -> None:
    """Re-hash an installed bundle's files against its manifest (all bundles by default)."""
    from ..bundle import installed_names
    from ..bundle import verify as run_verify
    from ..errors import EXIT_MODEL, BundleError, MdreamError

    names = [name] if name else installed_names()
    if not names:
        raise BundleError(
            "no bundle is installed — run `mdream fetch` (online) "
            "or `mdream bundle install FILE.tar`"
        )
    progress = make_progress(quiet)
    failed = 0
    with progress:
        for each in names:
            try:
                run_verify(each, progress)
            except MdreamError as exc:
                if name:
                    raise
                failed += 1
                progress.error(f"{each}: {exc}")
                continue
            sys.stdout.write(f"ok\t{each}\n")
    if failed:
        raise typer.Exit(EXIT_MODEL)


def export(
    name: NameArg,
    *,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="A folder, or the FILE.tar to write.", show_default=False
        ),
    ],
    quiet: QuietOpt = False,
) -> None:
    """Pack an installed bundle into its portable tarball, checking every byte on the way."""
    from ..bundle import export as run_export

    progress = make_progress(quiet)
    with progress:
        path = run_export(name, output, progress)
    sys.stdout.write(f"{path}\n")


def remove(name: NameArg) -> None:
    """Delete an installed bundle."""
    from ..bundle import remove as run_remove

    path = run_remove(name)
    sys.stderr.write(f"removed: {name} ({path})\n")


# -- progress on stderr ----------------------------------------------------------------------


def make_progress(quiet: bool) -> _CliProgress:
    return _CliProgress(quiet=quiet, live=not quiet and sys.stderr.isatty())


class _CliProgress(Progress):
    """A rich bar per step when stderr is a terminal; one line per step otherwise."""

    def __init__(self, *, quiet: bool, live: bool) -> None:
        self.quiet, self.live = quiet, live
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _CliProgress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bars

            console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
            self._bar = Bars(
                TextColumn("{task.description}"),
                BarColumn(),
                _amount_column(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def start(self, label: str, total: int | None = None, *, unit: str = "B") -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(label, total=total, unit=unit)
        elif not self.quiet:
            sys.stderr.write(f"mdream: {label}\n")

    def advance(self, amount: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)

    def update(self, done: int, total: int | None = None) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, total=total)

    def finish(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None

    def warn(self, message: str) -> None:
        self._print(f"mdream: warning: {message}", always=True)

    def info(self, message: str) -> None:
        self._print(f"mdream: {message}")

    def error(self, message: str) -> None:
        self._print(f"mdream: error: {message}", always=True)

    def say(self, message: str) -> None:
        self._print(f"mdream: {message}")

    def _print(self, line: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def _amount_column() -> Any:
    """Bytes as sizes and speed; other units (tensors) as done/total."""
    from rich.progress import DownloadColumn, MofNCompleteColumn, ProgressColumn, Task
    from rich.text import Text

    class Amount(ProgressColumn):
        def __init__(self) -> None:
            super().__init__()
            self._bytes, self._count = DownloadColumn(), MofNCompleteColumn()

        def render(self, task: Task) -> Text:
            if task.fields.get("unit", "B") == "B":
                return self._bytes.render(task)
            return self._count.render(task)

    return Amount()
