"""Which folders under ``MDREAM_HOME/models`` are installed bundles, and which one is the
default: the one rule that inference (``locate``), ``doctor`` and the ``bundle`` commands share.

A bundle is a folder with a valid bundle name (``manifest.valid_name``) that holds a
``manifest.json``. The default is the bundle ``MDREAM_HOME/default`` names, when it is
installed, else the only bundle installed. Nothing here downloads or writes: inference may
import it.
"""

from __future__ import annotations

from pathlib import Path

from . import bounded, paths
from . import manifest as mf
from .errors import ModelError

NO_MODEL_HINT = (
    "no model installed — run `mdream fetch` (online), or `mdream bundle install FILE.tar` "
    "(offline), or pass --model-dir DIR"
)


def installed_names() -> list[str]:
    """The installed bundles' names, sorted."""
    root = paths.models_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if mf.valid_name(p.name) and p.is_dir() and (p / mf.MANIFEST).is_file()
    )


def named_default() -> str | None:
    """The bundle ``MDREAM_HOME/default`` names, if it is installed."""
    try:
        named = bounded.read_text(paths.default_file(), bounded.DEFAULT).strip()
    except ModelError:
        return None  # missing, or not a small text file: as if none were named
    return named if named in installed_names() else None


def default_name() -> str | None:
    """The default bundle: the one named, else the only one installed; None when there is
    none or several and none is named."""
    names = installed_names()
    return named_default() or (names[0] if len(names) == 1 else None)


def require_default() -> str:
    """The default bundle's name; ModelError saying what to do when there is none."""
    named = default_name()
    if named is not None:
        return named
    names = installed_names()
    if not names:
        raise ModelError(NO_MODEL_HINT)
    raise ModelError(
        f"no bundle is the default ({len(names)} installed: {', '.join(names)}) — "
        "choose one with `mdream bundle default NAME`, or pass --model-dir NAME"
    )


def bundle_dir(name: str) -> Path:
    """The folder of the installed bundle ``name``; ModelError listing what is installed."""
    if not mf.valid_name(name) or name not in installed_names():
        have = ", ".join(installed_names()) or "none"
        raise ModelError(f"no bundle named {name!r} is installed (installed: {have})")
    return paths.models_dir() / name
