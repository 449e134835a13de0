"""Portable model bundles: pack a deterministic tarball, install one safely, list, verify, remove.

A bundle tarball is plain tar (GGUF does not compress): ``manifest.json`` first, then each
file the manifest lists, in manifest order, with fixed mtimes and owners, so the same
inputs give the same bytes. Installing trusts nothing in the tarball: every member must be
a regular file the manifest lists, with its size and sha256; files are extracted into a
staging folder beside the target and renamed into place only when all of them check out.
Inference never imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import manifest as mf
from . import paths
from .errors import BundleError, MdreamError, ModelError
from .progress import Progress

SUFFIX = ".tar"
_MANIFEST_MAX = 1 << 20
_SPACE_MARGIN = 64 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    already: bool = False  # the same bundle was already installed: nothing was done


@dataclass(frozen=True)
class BundleInfo:
    name: str
    path: Path
    size: int
    quantization: str
    source: str
    default: bool
    intact: bool  # sizes and recorded mtimes match (the cheap check)


# -- packing ---------------------------------------------------------------------------------


def tarball_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def output_folder_or_file(out: Path) -> Path:
    """``--output``: a path ending in ``.tar`` names the tarball; anything else is a folder,
    created if missing (so `--output bundles/` never silently becomes a file named bundles)."""
    if out.suffix != ".tar" and not out.exists():
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise BundleError(
                f"cannot create folder: {exc.strerror or exc}", path=str(out)
            ) from exc
    return out


def pack(directory: Path, out: Path, progress: Progress | None = None) -> Path:
    """Write the bundle in ``directory`` as a deterministic tarball; ``out`` may be a folder.

    Each file is hashed while it is copied: a file that no longer matches its manifest
    entry aborts the pack and leaves no tarball behind.
    """
    progress = progress or Progress()
    manifest_bytes = _read_manifest_bytes(directory)
    manifest = mf.parse_manifest(manifest_bytes, where=str(directory / mf.MANIFEST))
    target = out / tarball_name(manifest.name) if out.is_dir() else out
    partial = target.with_name(target.name + ".partial")
    total = sum(e.size for e in manifest.files)
    progress.start(f"packing {target.name}", total)
    try:
        with (
            open(partial, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.addfile(_member(mf.MANIFEST, len(manifest_bytes)), _BytesReader(manifest_bytes))
            for entry in manifest.files:
                path = directory / entry.path
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    if os.fstat(f.fileno()).st_size != entry.size:
                        raise ModelError("size differs from the manifest", path=str(path))
                    tar.addfile(
                        _member(entry.path, entry.size), _HashingReader(f, digest, progress)
                    )
                if digest.hexdigest() != entry.sha256:
                    raise ModelError(
                        "sha256 differs from the manifest — run `mdream bundle verify`",
                        path=str(path),
                    )
        os.replace(partial, target)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, MdreamError):
            raise BundleError(f"cannot write: {exc.strerror or exc}", path=str(target)) from exc
        raise
    finally:
        progress.finish()
    return target


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
    path = directory / mf.MANIFEST
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read manifest: {exc.strerror or exc}", path=str(path)) from exc


# -- installing ------------------------------------------------------------------------------


def install(
    tarball: Path, *, progress: Progress | None = None, make_default: bool = False
) -> Installed:
    """Check and install a bundle tarball under ``MDREAM_HOME``; all or nothing."""
    progress = progress or Progress()
    where = str(tarball)
    try:
        tar = tarfile.open(tarball, mode="r:")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError as exc:
        raise BundleError("no such file", path=where) from exc
    except IsADirectoryError as exc:
        raise BundleError("is a directory, not a bundle tarball", path=where) from exc
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError("not a tar archive (a bundle is a plain .tar)", path=where) from exc
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", path=where) from exc
    with tar:
        try:
            return _install_from(tar, where, progress, make_default)
        except (tarfile.TarError, EOFError) as exc:
            raise BundleError(f"damaged or truncated tarball: {exc}", path=where) from exc


def _install_from(
    tar: tarfile.TarFile, where: str, progress: Progress, make_default: bool
) -> Installed:
    first = tar.next()
    if first is None or first.name != mf.MANIFEST or not first.isreg():
        raise BundleError(f"the first member must be {mf.MANIFEST}", path=where)
    if first.size > _MANIFEST_MAX:
        raise BundleError(f"{mf.MANIFEST} is too large", path=where)
    manifest_bytes = _read_member(tar, first, where)
    try:
        manifest = mf.parse_manifest(manifest_bytes, where=f"{where}:{mf.MANIFEST}")
    except ModelError as exc:
        raise BundleError(str(exc)) from exc
    target = paths.models_dir() / manifest.name
    if _same_bundle_installed(target, manifest_bytes, manifest):
        if make_default:
            set_default(manifest.name)
        return Installed(manifest.name, target, already=True)
    if target.exists() and not _manifest_equal(target, manifest_bytes):
        raise BundleError(
            f"a different bundle named {manifest.name!r} is installed — "
            f"run `mdream bundle remove {manifest.name}` first",
            path=where,
        )
    need = sum(e.size for e in manifest.files)
    with staging(paths.models_dir(), f".staging-{manifest.name}-", need) as folder:
        _extract_members(tar, manifest, folder, where, progress)
        (folder / mf.MANIFEST).write_bytes(manifest_bytes)
        mf.record_verified(folder, manifest)
        move_into_place(folder, target)
    if make_default or default_name() is None:
        set_default(manifest.name)
    return Installed(manifest.name, target)


def _extract_members(
    tar: tarfile.TarFile, manifest: mf.Manifest, staging: Path, where: str, progress: Progress
) -> None:
    expected = {e.path: e for e in manifest.files}
    seen: set[str] = set()
    progress.start(f"installing {manifest.name}", sum(e.size for e in manifest.files))
    try:
        while (member := tar.next()) is not None:
            _check_member(member, expected, seen, staging, where)
            entry = expected[member.name]
            seen.add(member.name)
            _extract_one(tar, member, entry, staging / entry.path, where, progress)
    finally:
        progress.finish()
    missing = sorted(set(expected) - seen)
    if missing:
        raise BundleError(f"member {missing[0]!r} listed in the manifest is missing", path=where)


def _check_member(
    member: tarfile.TarInfo,
    expected: dict[str, mf.FileEntry],
    seen: set[str],
    staging: Path,
    where: str,
) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
        # data_filter would quietly make these relative; a bundle never contains them.
        raise BundleError(f"unsafe member {name!r} refused: path leaves the bundle", path=where)
    # The stdlib's own safety filter first (absolute paths, "..", links out, devices), where
    # this Python has it (3.10.12+, 3.11.4+)...
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(member, str(staging))
        except tarfile.FilterError as exc:
            raise BundleError(f"unsafe member {name!r} refused: {exc}", path=where) from exc
    # ...then our whitelist: only regular files the manifest names, each once.
    if not member.isreg():
        kind = (
            "link"
            if member.issym() or member.islnk()
            else "directory"
            if member.isdir()
            else "special file"
        )
        raise BundleError(
            f"member {name!r} is a {kind}; only regular files are allowed", path=where
        )
    if name not in expected:
        raise BundleError(f"member {name!r} is not listed in the manifest", path=where)
    if name in seen:
        raise BundleError(f"member {name!r} appears twice", path=where)
    if member.size != expected[name].size:
        raise BundleError(
            f"member {name!r} is {member.size} bytes, the manifest says {expected[name].size}",
            path=where,
        )


def _extract_one(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    entry: mf.FileEntry,
    dest: Path,
    where: str,
    progress: Progress,
) -> None:
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - regular files always have data
        raise BundleError(f"member {member.name!r} has no data", path=where)
    digest = hashlib.sha256()
    written = 0
    with src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
            progress.advance(len(chunk))
    if written != entry.size:
        raise BundleError(f"member {member.name!r} is truncated", path=where)
    if digest.hexdigest() != entry.sha256:
        raise BundleError(
            f"member {member.name!r} fails its sha256 check (damaged or tampered)", path=where
        )


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> bytes:
    src = tar.extractfile(member)
    data = src.read() if src is not None else b""
    if len(data) != member.size:
        raise BundleError(f"member {member.name!r} is truncated", path=where)
    return data


def _manifest_equal(target: Path, manifest_bytes: bytes) -> bool:
    try:
        return (target / mf.MANIFEST).read_bytes() == manifest_bytes
    except OSError:
        return False


def _same_bundle_installed(target: Path, manifest_bytes: bytes, manifest: mf.Manifest) -> bool:
    if not _manifest_equal(target, manifest_bytes):
        return False
    try:
        return mf.verified_recently(target, manifest)
    except ModelError:
        return False  # files missing or resized: reinstall over it


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


# -- the installed set -----------------------------------------------------------------------


def installed_names() -> list[str]:
    root = paths.models_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if mf.valid_name(p.name) and p.is_dir() and (p / mf.MANIFEST).is_file()
    )


def default_name() -> str | None:
    try:
        named = paths.default_file().read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return named if named in installed_names() else None


def set_default(name: str) -> None:
    if name not in installed_names():
        raise BundleError(f"no bundle named {name!r} is installed")
    path = paths.default_file()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, path)


def bundle_dir(name: str) -> Path:
    if not mf.valid_name(name) or name not in installed_names():
        have = ", ".join(installed_names()) or "none"
        raise BundleError(f"no bundle named {name!r} is installed (installed: {have})")
    return paths.models_dir() / name


def list_bundles() -> list[BundleInfo]:
    default = default_name()
    names = installed_names()
    if default is None and len(names) == 1:
        default = names[0]
    infos = []
    for name in names:
        directory = paths.models_dir() / name
        try:
            manifest = mf.read_manifest(directory)
        except ModelError:
            infos.append(BundleInfo(name, directory, 0, "?", "?", name == default, False))
            continue
        try:
            intact = mf.verified_recently(directory, manifest)
        except ModelError:
            intact = False
        source = manifest.extra.get("source")
        repo = source.get("repo") if isinstance(source, dict) else None
        infos.append(
            BundleInfo(
                name=name,
                path=directory,
                size=sum(e.size for e in manifest.files),
                quantization=_text_quantization(manifest),
                source=str(repo or "local files"),
                default=name == default,
                intact=intact,
            )
        )
    return infos


def _text_quantization(manifest: mf.Manifest) -> str:
    quant = manifest.extra.get("quantization")
    if isinstance(quant, dict):
        quant = quant.get("text")
    return str(quant) if quant else "?"


def verify(name: str, progress: Progress | None = None) -> None:
    """Re-hash every file of an installed bundle; raise ModelError on the first mismatch."""
    progress = progress or Progress()
    directory = bundle_dir(name)
    manifest = mf.read_manifest(directory)
    progress.start(f"verifying {name}", sum(e.size for e in manifest.files))
    try:
        mf.verify_full(directory, manifest, progress.advance)
    finally:
        progress.finish()
    mf.record_verified(directory, manifest)


def export(name: str, out: Path, progress: Progress | None = None) -> Path:
    """Pack an installed bundle back into its tarball (byte-identical to the one installed)."""
    return pack(bundle_dir(name), output_folder_or_file(out), progress)


def remove(name: str) -> Path:
    directory = bundle_dir(name)
    was_default = default_name() == name
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".remove-{name}-", dir=directory.parent))
        os.rename(directory, trash / name)
    except OSError as exc:
        raise BundleError(f"cannot remove: {exc.strerror or exc}", path=str(directory)) from exc
    shutil.rmtree(trash, ignore_errors=True)
    if was_default:
        paths.default_file().unlink(missing_ok=True)
    return directory
