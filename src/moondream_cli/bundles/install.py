"""Install a bundle tarball under ``MDREAM_HOME``, trusting nothing in it; all or nothing.

Every member must be a regular file the manifest lists, with its size and sha256; files
are extracted into a staging folder beside the target (see `staging`) and renamed into
place only when all of them check out. Inference never imports this module.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .. import bounded, paths
from .. import manifest as mf
from ..errors import BundleError, ModelError
from ..pairing import check_pair
from ..progress import Progress
from ..registry import named_default
from .installed import set_default
from .staging import models_lock, move_into_place, remove_stale, staging
from .tarcheck import check_headers

_MANIFEST_MAX = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    already: bool = False  # the same bundle was already installed: nothing was done


def install(
    tarball: Path, *, progress: Progress | None = None, make_default: bool = False
) -> Installed:
    """Check and install a bundle tarball under ``MDREAM_HOME``; all or nothing."""
    progress = progress or Progress()
    where = str(tarball)
    # Opened without blocking (a FIFO is refused, not waited on), a regular file only.
    raw = bounded.open_file(tarball, bounded.TARBALL)
    with raw:
        try:
            # Before tarfile parses anything: it must never see a huge pax header.
            check_headers(raw, where)
            tar = tarfile.open(fileobj=raw, mode="r:")  # noqa: SIM115 - closed below
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
    _refuse_a_different_bundle(target, manifest_bytes, manifest.name, where)
    need = sum(e.size for e in manifest.files)
    remove_stale(paths.models_dir(), progress)
    with staging(paths.models_dir(), "staging", manifest.name, need) as folder:
        _extract_members(tar, manifest, folder, where, progress)
        try:  # verified bytes, but do they make one model? Before anything is replaced.
            check_pair(folder / manifest.entry("text").path, folder / manifest.entry("mmproj").path)
        except ModelError as exc:
            raise BundleError(exc.message, path=where) from exc
        (folder / mf.MANIFEST).write_bytes(manifest_bytes)
        mf.record_verified(folder, manifest)
        with models_lock(paths.models_dir(), progress):
            # Again, now that no other install can: one may have finished meanwhile.
            already = _same_bundle_installed(target, manifest_bytes, manifest)
            if not already:
                _refuse_a_different_bundle(target, manifest_bytes, manifest.name, where)
                move_into_place(folder, target)
            if make_default or named_default() is None:
                set_default(manifest.name)
    return Installed(manifest.name, target, already=already)


def _refuse_a_different_bundle(target: Path, manifest_bytes: bytes, name: str, where: str) -> None:
    if target.exists() and not _manifest_equal(target, manifest_bytes):
        raise BundleError(
            f"a different bundle named {name!r} is installed — "
            f"run `mdream bundle remove {name}` first",
            path=where,
        )


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
    if member.issparse():  # `tarcheck` refuses these first; kept in case it ever misses one
        raise BundleError(f"member {name!r} is a sparse file; refused", path=where)
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
        return bounded.read_file(target / mf.MANIFEST, bounded.MANIFEST) == manifest_bytes
    except ModelError:
        return False


def _same_bundle_installed(target: Path, manifest_bytes: bytes, manifest: mf.Manifest) -> bool:
    if not _manifest_equal(target, manifest_bytes):
        return False
    try:
        return mf.verified_recently(target, manifest)
    except ModelError:
        return False  # files missing or resized: reinstall over it
