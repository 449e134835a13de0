"""Build a bundle folder beside where it ends up, then move it into place in one rename.

Both ways a bundle arrives use this: `fetch` builds one from f16 files, `bundle_install`
extracts one from a tarball. A half-built bundle never looks like an installed one.
Inference never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import BundleError, MdreamError

_SPACE_MARGIN = 64 << 20


@contextlib.contextmanager
def staging(parent: Path, prefix: str, need: int) -> Iterator[Path]:
    """A fresh folder to build a bundle in, inside a hidden folder in ``parent``.

    Free space is checked first. The bundle folder is nested one level down so that a
    half-built one (after a crash) never looks like an installed bundle. On exit the hidden
    folder is removed with whatever is left in it, and on failure so are any folders this
    call had to create. OS errors become BundleError.
    """
    created = [p for p in reversed([parent, *parent.parents]) if not p.exists()]
    hidden: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(parent).free
        if free < need + _SPACE_MARGIN:
            raise BundleError(
                f"not enough free space in {parent}: {need / 2**20:,.0f} MiB needed, "
                f"{free / 2**20:,.0f} MiB free"
            )
        hidden = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        folder = hidden / "bundle"
        folder.mkdir()
    except BaseException:
        if hidden is not None:
            shutil.rmtree(hidden, ignore_errors=True)
        _remove_created(created)
        raise
    try:
        yield folder
    except BaseException as exc:
        shutil.rmtree(hidden, ignore_errors=True)
        _remove_created(created)
        if isinstance(exc, OSError) and not isinstance(exc, MdreamError):
            raise BundleError(f"failed: {exc.strerror or exc}") from exc
        raise
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when still empty


def move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing (damaged) copy is swapped out first."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.rename(target, old / target.name)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old / target.name, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)
