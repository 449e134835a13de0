"""Build a bundle folder beside where it ends up, then move it into place in one rename.

Both ways a bundle arrives use this: `fetch` builds one from f16 files, `bundle_install`
extracts one from a tarball. A half-built bundle never looks like an installed one.

Two runs may build bundles of the same name at once: each checks the target and moves its
folder into place only while it holds :func:`models_lock`, so the second one sees what the
first installed. Each work folder's name records its process (`paths.work_prefix`); one
whose process is gone (SIGKILL, power cut) is removed by the next install or fetch
(:func:`remove_stale`). Inference never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .. import interrupt, paths
from ..errors import BundleError, MdreamError
from ..progress import Progress

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no race protection
    fcntl = None  # type: ignore[assignment]

_SPACE_MARGIN = 64 << 20
LOCK = ".lock"


@contextlib.contextmanager
def models_lock(folder: Path, progress: Progress | None = None) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively: who holds it may look at a target and move a bundle
    there (or set the default) knowing no other mdream does the same meanwhile.

    The holder deletes the file before it lets go, so none is left behind; a waiter that then
    wakes up holding a deleted file's lock opens the new one and waits again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    told = progress is None
    while True:
        fd = _open_lock(path)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not told and progress is not None:
                        progress.info("waiting for another mdream install to finish")
                        told = True
                    fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C and SIGTERM still end the wait
            if _still_linked(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        raise BundleError(f"cannot lock: {exc.strerror or exc}", path=str(path)) from exc


def _still_linked(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def remove_stale(folder: Path, progress: Progress) -> None:
    """Remove the work folders in ``folder`` whose process is gone (see `paths.leftovers`);
    a bundle that was being replaced when its process died is put back first."""
    for left in paths.leftovers(folder):
        if left.pid is None:
            continue  # no process recorded: the user decides (`bundle list` names it)
        if left.path.name.startswith(".old-"):
            for copy in left.path.iterdir():
                if not (folder / copy.name).exists():
                    with contextlib.suppress(OSError):
                        os.rename(copy, folder / copy.name)
                        progress.info(
                            f"restored {copy.name}, left half replaced by a run that died"
                        )
        shutil.rmtree(left.path, ignore_errors=True)
        if not left.path.exists():
            progress.info(f"removed {left.path.name}, left by a run that died (process {left.pid})")


@contextlib.contextmanager
def staging(parent: Path, kind: str, name: str, need: int) -> Iterator[Path]:
    """A fresh folder to build bundle ``name`` in, inside a hidden folder in ``parent``
    named after ``kind`` ("staging", "build") and this process.

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
        hidden = Path(tempfile.mkdtemp(prefix=paths.work_prefix(kind, name), dir=parent))
        folder = hidden / "bundle"
        folder.mkdir()
    except BaseException:
        with interrupt.shielded():
            if hidden is not None:
                shutil.rmtree(hidden, ignore_errors=True)
            _remove_created(created)
        raise
    try:
        yield folder
    except BaseException as exc:
        # A second Ctrl-C must not stop the cleanup half way: it is raised once it is done.
        with interrupt.shielded():
            shutil.rmtree(hidden, ignore_errors=True)
            _remove_created(created)
        if isinstance(exc, OSError) and not isinstance(exc, MdreamError):
            raise BundleError(f"failed: {exc.strerror or exc}") from exc
        raise
    with interrupt.shielded():
        shutil.rmtree(hidden, ignore_errors=True)


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when still empty


def move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing (damaged) copy is swapped out first.
    Call it holding :func:`models_lock`. Shielded: Ctrl-C between the two renames would leave
    no bundle at ``target``."""
    with interrupt.shielded():
        _move(staging, target)


def _move(staging: Path, target: Path) -> None:
    if target.exists():
        old = Path(
            tempfile.mkdtemp(prefix=paths.work_prefix("old", target.name), dir=target.parent)
        )
        os.rename(target, old / target.name)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old / target.name, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)
