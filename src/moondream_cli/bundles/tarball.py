"""Write a bundle folder as a deterministic tarball: what `fetch` and `bundle export` make.

A bundle tarball is plain tar (GGUF does not compress): ``manifest.json`` first, then each
file the manifest lists, in manifest order, with fixed mtimes and owners, so the same
inputs give the same bytes. Reading one back is `bundle_install`'s job.
Inference never imports this module.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

from .. import bounded
from .. import manifest as mf
from ..errors import BundleError, MdreamError, ModelError, UsageError
from ..portable import write_flags
from ..progress import Progress

SUFFIX = ".tar"


def tarball_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def output_folder_or_file(out: str | os.PathLike[str]) -> Path:
    """``--output`` as ``cp`` reads a destination: an existing folder, or a name ending in a
    slash (a folder, made if its parent exists), holds the tarball under its own name;
    anything else is the tarball's file name. A parent folder that does not exist is a
    usage error (exit 2), before any work."""
    text = os.fspath(out)
    path = Path(text)
    if path.is_dir():
        return path
    if text.endswith(("/", os.sep)):
        if not path.parent.is_dir():
            raise UsageError(f"the folder {path.parent} does not exist", path=text)
        try:
            path.mkdir()
        except OSError as exc:
            raise UsageError(f"cannot create the folder: {exc.strerror or exc}", path=text) from exc
        return path
    if not path.parent.is_dir():
        raise UsageError(
            f"the folder {path.parent} does not exist (give an existing folder, or FOLDER/ "
            "to make one)",
            path=text,
        )
    return path


def pack(
    directory: Path, out: Path, progress: Progress | None = None, *, overwrite: bool = True
) -> Path:
    """Write the bundle in ``directory`` as a deterministic tarball; ``out`` may be a folder.

    Each file is hashed while it is copied: a file that no longer matches its manifest
    entry aborts the pack and leaves no tarball behind. Without ``overwrite`` an existing
    tarball is an error (UsageError), checked again as the new one takes its name.
    """
    progress = progress or Progress()
    manifest_bytes = _read_manifest_bytes(directory)
    manifest = mf.parse_manifest(manifest_bytes, where=str(directory / mf.MANIFEST))
    target = out / tarball_name(manifest.name) if out.is_dir() else out
    if not overwrite and os.path.lexists(target):
        raise _exists(target)
    partial = target.with_name(target.name + ".partial")
    raw = _open_partial(partial)  # before the `try`: a file in the way is not ours to delete
    total = sum(e.size for e in manifest.files)
    progress.start(f"packing {target.name}", total)
    try:
        with raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_member(mf.MANIFEST, len(manifest_bytes)), _BytesReader(manifest_bytes))
            for entry in manifest.files:
                _add_checked(tar, directory / entry.path, entry, progress)
        _rename(partial, target, overwrite)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, MdreamError):
            raise BundleError(f"cannot write: {exc.strerror or exc}", path=str(target)) from exc
        raise
    finally:
        progress.finish()
    return target


def _add_checked(tar: tarfile.TarFile, path: Path, entry: mf.FileEntry, progress: Progress) -> None:
    digest = hashlib.sha256()
    with bounded.open_file(path, bounded.GGUF) as f:
        if os.fstat(f.fileno()).st_size != entry.size:
            raise ModelError("size differs from the manifest", path=str(path))
        tar.addfile(_member(entry.path, entry.size), _HashingReader(f, digest, progress))
    if digest.hexdigest() != entry.sha256:
        raise ModelError(
            "sha256 differs from the manifest — run `mdream bundle verify`", path=str(path)
        )


def _open_partial(partial: Path) -> IO[bytes]:
    """A new file at ``partial``, opened without following links. A stale one (a regular
    file of ours, from a run that died) is replaced; anything else there -- a link that could
    point at any file, another user's file -- is refused and left alone."""
    try:
        st = os.lstat(partial)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BundleError(f"cannot write: {exc.strerror or exc}", path=str(partial)) from exc
    else:
        mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()  # Windows: no owners here
        if not stat.S_ISREG(st.st_mode) or not mine:
            raise BundleError(
                "is in the way and is not a partial tarball of ours (a link, or another "
                "user's file) — remove it, or write the tarball elsewhere",
                path=str(partial),
            )
        partial.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | write_flags()  # binary on Windows
    try:
        fd = os.open(partial, flags, 0o644)
    except OSError as exc:
        raise BundleError(f"cannot write: {exc.strerror or exc}", path=str(partial)) from exc
    return os.fdopen(fd, "wb")


def _rename(partial: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(partial, target)
        return
    try:
        os.link(partial, target)  # fails if a tarball appeared meanwhile
    except FileExistsError:
        raise _exists(target) from None
    except OSError:  # no hard links here (FAT, some network shares): check, then rename
        if os.path.lexists(target):
            raise _exists(target) from None
        os.replace(partial, target)
        return
    partial.unlink()


def _exists(target: Path) -> UsageError:
    return UsageError("already exists — pass --overwrite to replace it", path=str(target))


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk


class _HashingReader:
    def __init__(self, f: IO[bytes], digest: Any, progress: Progress) -> None:
        self._f, self._digest, self._progress = f, digest, progress

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._digest.update(chunk)
        self._progress.advance(len(chunk))
        return chunk


def _read_manifest_bytes(directory: Path) -> bytes:
    return bounded.read_file(directory / mf.MANIFEST, bounded.MANIFEST)
