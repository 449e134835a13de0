"""The installed bundles: list them, pick the default, verify, export, remove.

Which folders are bundles and which is the default is :mod:`moondream_cli.registry`'s rule,
shared with inference; this module adds what changes them.

Bundles live under ``MDREAM_HOME`` (see `paths`), one folder each; they arrive by
`bundle_install` (from a tarball) or `fetch` (from f16 files), and leave as a tarball
by `export` (see `tarball`). Inference never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import manifest as mf
from .. import paths, registry
from ..errors import BundleError, ModelError
from ..progress import Progress
from ..registry import default_name, installed_names, named_default
from .staging import models_lock
from .tarball import output_folder_or_file, pack

NOTHING_INSTALLED = (
    "no bundle is installed — run `mdream fetch` (online) or `mdream bundle install FILE.tar`"
)


@dataclass(frozen=True)
class BundleInfo:
    name: str
    path: Path
    size: int
    quantization: str
    source: str
    default: bool
    intact: bool  # sizes and recorded mtimes match (the cheap check)
    model: str = "?"  # the release the files hold (manifest "model"; "?" in older bundles)
    failed: str | None = None  # why its last full check failed (``manifest.record_failed``)

    @property
    def state(self) -> str:
        if self.failed is not None:
            return f"failed its last full check: {self.failed} (mdream bundle verify)"
        return "verified" if self.intact else "changed since last verified"


def current_default() -> str:
    """The bundle inference uses when no model is given (``registry``). BundleError when
    there is none, saying how to get one."""
    if not installed_names():
        raise BundleError(NOTHING_INSTALLED)
    try:
        return registry.require_default()
    except ModelError as exc:
        raise BundleError(exc.message) from None


def choose_default(name: str) -> None:
    """Make the installed bundle ``name`` the default (``mdream bundle default NAME``)."""
    registry.bundle_dir(name)  # the error lists what is installed
    with models_lock(paths.models_dir()):
        set_default(name)


def set_default(name: str) -> None:
    if name not in installed_names():
        raise BundleError(f"no bundle named {name!r} is installed")
    path = paths.default_file()
    # A temporary file of our own (O_EXCL: never one planted there), renamed over the old one.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_record(name, path, exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(name + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _cannot_record(name, path, exc) from exc


def _cannot_record(name: str, path: Path, exc: OSError) -> BundleError:
    return BundleError(
        f"cannot record {name} as the default bundle: {exc.strerror or exc} — "
        f"free some space, then run `mdream bundle default {name}`",
        path=str(path),
    )


def list_bundles() -> list[BundleInfo]:
    default = default_name()
    names = installed_names()
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
                model=str(manifest.extra.get("model") or "?"),
                failed=mf.failed_check(directory),
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
    directory = registry.bundle_dir(name)
    manifest = mf.read_manifest(directory)
    progress.start(f"verifying {name}", sum(e.size for e in manifest.files))
    try:
        mf.verify_full(directory, manifest, progress.advance)
    except ModelError as exc:
        # Remembered: inference and doctor refuse the bundle until a full check passes.
        mf.record_failed(directory, str(exc))
        raise
    finally:
        progress.finish()
    mf.record_verified(directory, manifest)
    mf.clear_failed(directory)


def export(
    name: str,
    out: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Pack an installed bundle back into its tarball (byte-identical to the one installed);
    an existing tarball is replaced only with ``overwrite``."""
    return pack(
        registry.bundle_dir(name), output_folder_or_file(out), progress, overwrite=overwrite
    )


@dataclass(frozen=True)
class Removed:
    path: Path
    was_default: bool  # it was the default: ``default`` and ``left`` say what is now
    default: str | None  # the default now, if any
    left: list[str]  # the bundles still installed


def remove(name: str) -> Removed:
    """Delete an installed bundle. When it was the default and one bundle is left, that one
    becomes the default; with several left, none is until the user chooses."""
    directory = registry.bundle_dir(name)
    with models_lock(paths.models_dir()):
        was_default = default_name() == name
        try:
            prefix = paths.work_prefix("remove", name)
            trash = Path(tempfile.mkdtemp(prefix=prefix, dir=directory.parent))
            os.rename(directory, trash / name)
        except OSError as exc:
            raise BundleError(f"cannot remove: {exc.strerror or exc}", path=str(directory)) from exc
        shutil.rmtree(trash, ignore_errors=True)
        left = installed_names()
        if was_default:
            paths.default_file().unlink(missing_ok=True)
            if len(left) == 1:
                set_default(left[0])
    return Removed(directory, was_default, named_default(), left)
