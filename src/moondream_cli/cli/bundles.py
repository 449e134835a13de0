"""`mdream fetch` and `mdream bundle install|list|default|verify|export|remove`.

The core (`moondream_cli.bundles`) is imported inside each command, never at import time: the
inference commands and `mdream --help` must not load it or huggingface-hub.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .help import Group
from .output import Output

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

  mdream bundle list | tail -n +2 | cut -f1      # names only
"""
DEFAULT_EPILOG = """Examples:

  mdream bundle default                          # print the default bundle

  mdream bundle default moondream2-20250414-q4_k_m
"""
VERIFY_EPILOG = """Examples:

  mdream bundle verify                           # every installed bundle

  mdream bundle verify moondream2-20250414-q4_k_m
"""
EXPORT_EPILOG = """Examples:

  mdream bundle export moondream2-20250414-q4_k_m -o /media/usb/

  mdream bundle export moondream2-20250414-q4_k_m -o copy.tar --overwrite
"""
REMOVE_EPILOG = """Examples:

  mdream bundle remove moondream2-20250414-q4_k_m
"""

bundle_app = typer.Typer(
    name="bundle",
    help="Install, list, choose, verify, export and remove model bundles (portable tarballs).",
    no_args_is_help=True,
    cls=Group,
)

QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress on stderr; errors only.")]
NameArg = Annotated[str, typer.Argument(help="Bundle name, as `mdream bundle list` shows it.")]


def register_bundle_commands(app: typer.Typer) -> None:
    app.command("fetch", epilog=FETCH_EPILOG)(fetch_command)
    app.add_typer(bundle_app)
    bundle_app.command("install", epilog=INSTALL_EPILOG)(install_command)
    bundle_app.command("list", epilog=LIST_EPILOG)(list_command)
    bundle_app.command("default", epilog=DEFAULT_EPILOG)(default_command)
    bundle_app.command("verify", epilog=VERIFY_EPILOG)(verify_command)
    bundle_app.command("export", epilog=EXPORT_EPILOG)(export_command)
    bundle_app.command("remove", epilog=REMOVE_EPILOG)(remove_command)


def fetch_command(
    *,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",  # no -r: in describe and ask, -r is --recursive
            help="A shipped recipe name or a recipe JSON file. Default: moondream2-20250414; "
            "with --from-dir, the recipe the files match, if any.",
            metavar="NAME|FILE",
            show_default=False,
        ),
    ] = None,
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from-dir",
            help="Take the f16 GGUFs from this folder instead of the hub (no network).",
            metavar="DIR",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write the bundle tarball here: a folder (an existing one, or FOLDER/ to "
            "make it), or the FILE.tar to write.",
            metavar="DIR|FILE",
            show_default=False,
        ),
    ] = None,
    install: Annotated[
        bool,
        typer.Option(
            "--install/--no-install",
            help="Install the bundle under MDREAM_HOME (default), or only pack it.",
        ),
    ] = True,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Bundle name. Default: RECIPE-QUANTIZATION.",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Make it the default model even if one is set.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option("--threads", "-t", min=1, metavar="N", help="Quantization threads."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Download Moondream2 once, verify it, quantize to Q4_K_M, install it (and pack a tarball).

    Prints the tarball's path with --output, else the installed bundle's name.
    """
    from ..bundles.fetch import fetch as run_fetch

    progress = Output(quiet=quiet)
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
        progress.info(f"{state}: {result.name} in {result.installed}")
    # stdout: what was produced — the tarball's path, else the installed bundle's name.
    sys.stdout.write(f"{result.tarball if result.tarball is not None else result.name}\n")


def install_command(
    tarball: Annotated[Path, typer.Argument(help="A bundle tarball (.tar).", show_default=False)],
    *,
    default: Annotated[
        bool, typer.Option("--default", help="Make it the default model even if one is set.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Check a bundle tarball member by member and install it; all or nothing."""
    from ..bundles.install import install as run_install

    progress = Output(quiet=quiet)
    with progress:
        result = run_install(tarball, progress=progress, make_default=default)
    state = "already installed" if result.already else "installed"
    progress.info(f"{state}: {result.name} in {result.path}")
    sys.stdout.write(f"{result.name}\n")


LIST_HEADER = "NAME\tDEFAULT\tSIZE\tQUANTIZATION\tMODEL\tSOURCE\tSTATE\n"


def list_command() -> None:
    """List installed bundles: name, default (*), size, quantization, model, source, state."""
    from .. import paths
    from ..bundles.installed import NOTHING_INSTALLED, list_bundles
    from ..records import escape

    out = Output()
    for left in paths.leftovers():
        out.info(left.describe())
    infos = list_bundles()
    sys.stdout.write(LIST_HEADER)
    if not infos:
        out.info(NOTHING_INSTALLED)
    for info in infos:
        fields = (
            info.name,
            "*" if info.default else "",
            f"{info.size / 2**20:,.1f} MiB",
            info.quantization,
            info.model,
            info.source,
            info.state,
        )
        # The manifest's words are its writer's: escaped, they cannot forge a row.
        sys.stdout.write("\t".join(escape(f) for f in fields) + "\n")


def default_command(
    name: Annotated[
        str | None,
        typer.Argument(
            help="The bundle to use when no model is given. Default: print the current one.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Choose the default bundle, or print which one it is."""
    from ..bundles.installed import choose_default, current_default

    if name is None:
        sys.stdout.write(f"{current_default()}\n")
        return
    choose_default(name)
    Output().info(f"default: {name}")


def verify_command(
    name: Annotated[
        str | None,
        typer.Argument(help="Bundle name. Default: every installed bundle.", show_default=False),
    ] = None,
    *,
    quiet: QuietOpt = False,
) -> None:
    """Re-hash an installed bundle's files against its manifest (all bundles by default)."""
    from ..bundles.installed import verify as run_verify
    from ..errors import EXIT_MODEL, BundleError, Failed, MdreamError
    from ..registry import installed_names

    names = [name] if name else installed_names()
    if not names:
        raise BundleError(
            "no bundle is installed — run `mdream fetch` (online) "
            "or `mdream bundle install FILE.tar`"
        )
    progress = Output(quiet=quiet)
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
        raise Failed(f"{failed} of {len(names)} bundles failed verification", EXIT_MODEL)


def export_command(
    name: NameArg,
    *,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="A folder (an existing one, or FOLDER/ to make it) for the tarball under its "
            "own name, or the FILE.tar to write.",
            metavar="DIR|FILE",
            show_default=False,
        ),
    ],
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the tarball if it exists (default: refuse)."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Pack an installed bundle into its portable tarball, checking every byte on the way."""
    from ..bundles.installed import export as run_export

    progress = Output(quiet=quiet)
    with progress:
        path = run_export(name, output, progress, overwrite=overwrite)
    sys.stdout.write(f"{path}\n")


def remove_command(name: NameArg) -> None:
    """Delete an installed bundle."""
    from ..bundles.installed import remove as run_remove

    removed = run_remove(name)
    out = Output()
    out.info(f"removed: {name} ({removed.path})")
    if not removed.was_default or not removed.left:
        return
    if removed.default is not None:
        out.info(f"{removed.default} is the default bundle now")
    else:
        out.info(
            f"no bundle is the default now ({len(removed.left)} installed: "
            f"{', '.join(removed.left)}) — choose one with `mdream bundle default NAME`"
        )
