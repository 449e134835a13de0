"""``mdream fetch``: get a recipe's f16 GGUFs, verify them, quantize, pack, install.

This module is the pipeline. The f16 files come from the Hugging Face hub (`hub`) or from
a folder they were copied into by hand (``--from-dir``, no network; `sources`), each one
checked before it is used; then the text model is quantized, the mmproj copied, and a
manifest written that records where the files came from; then the bundle is packed and
installed.
Inference never imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, paths, reference
from .. import manifest as mf
from ..errors import FetchError, MdreamError, ModelError, UsageError
from ..pairing import check_pair
from ..progress import Progress
from ..registry import named_default
from .hub import hub_sources
from .installed import set_default
from .quantize import quantize
from .recipe import Recipe, load_recipe
from .sources import CheckedFile, hash_file, local_sources
from .staging import models_lock, move_into_place, remove_stale, staging
from .tarball import output_folder_or_file, pack

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchResult:
    name: str
    installed: Path | None
    tarball: Path | None
    already: bool  # the same bundle was installed already: nothing was rebuilt


def fetch(
    recipe: str | None = None,
    *,
    from_dir: Path | None = None,
    output: str | os.PathLike[str] | None = None,
    install: bool = True,
    name: str | None = None,
    threads: int | None = None,
    make_default: bool = False,
    progress: Progress | None = None,
) -> FetchResult:
    """Build a bundle from a recipe (default: the shipped default recipe) and install it."""
    progress = progress or Progress()
    if not install and output is None:
        raise UsageError("nothing to do: --no-install needs --output FOLDER|FILE.tar")
    if name is not None and not mf.valid_name(name):
        raise UsageError(f"invalid bundle name {name!r}: {mf.NAME_RULE}")
    if output is not None:
        output = output_folder_or_file(output)
    if from_dir is not None:
        chosen, sources = local_sources(from_dir, recipe, progress)
    else:
        chosen = load_recipe(recipe)
        sources = hub_sources(chosen, progress)
    bundle_name = name or (chosen.bundle_name if chosen else _local_name(sources))
    if not mf.valid_name(bundle_name):
        raise FetchError(f"invalid bundle name {bundle_name!r}")

    installed = paths.models_dir() / bundle_name
    quant = chosen.quantization if chosen else "Q4_K_M"
    if install and _already_built(installed, sources):
        progress.info(f"{bundle_name} is already installed from the same files")
        if make_default:
            set_default(bundle_name)
        tarball = pack(installed, output, progress) if output is not None else None
        return FetchResult(bundle_name, installed, tarball, already=True)

    # Q4_K_M is about a third of f16; the mmproj is copied as it is.
    ratio = 1.0 if quant == "F16" else 0.4
    need = int(sources["text"].size * ratio) + sources["mmproj"].size
    with _workspace(install, output, bundle_name, need, progress) as work:
        manifest = _build(work, bundle_name, chosen, sources, quant, threads, progress)
        tarball = pack(work, output, progress) if output is not None else None
        if install:
            with models_lock(paths.models_dir(), progress):
                move_into_place(work, installed)
                if make_default or named_default() is None:
                    set_default(manifest.name)
    return FetchResult(bundle_name, installed if install else None, tarball, already=False)


# -- building --------------------------------------------------------------------------------


def _already_built(installed: Path, sources: dict[str, CheckedFile]) -> bool:
    try:
        manifest = mf.read_manifest(installed)
        if not mf.verified_recently(installed, manifest):
            return False
    except ModelError:
        return False
    recorded = manifest.extra.get("source", {})
    files = recorded.get("files", []) if isinstance(recorded, dict) else []
    hashes = {f.get("role"): f.get("sha256") for f in files if isinstance(f, dict)}
    return all(hashes.get(role) == s.sha256 for role, s in sources.items())


@contextlib.contextmanager
def _workspace(
    install: bool, output: Path | None, name: str, need: int, progress: Progress
) -> Iterator[Path]:
    """A build folder beside where the bundle ends up; gone afterwards unless moved away."""
    if install:
        parent = paths.models_dir()
        remove_stale(parent, progress)
    else:
        assert output is not None
        parent = output if output.is_dir() else output.parent
    with staging(parent, "build", name, need) as work:
        yield work


def _build(
    work: Path,
    name: str,
    recipe: Recipe | None,
    sources: dict[str, CheckedFile],
    quant: str,
    threads: int | None,
    progress: Progress,
) -> mf.Manifest:
    text_name = f"text-model-{quant.lower()}.gguf"
    mmproj_name = "mmproj-f16.gguf"
    text_out = work / text_name
    check_pair(sources["text"].path, sources["mmproj"].path)
    if quant == "F16":
        _copy(sources["text"].path, text_out, progress, f"copying {sources['text'].name}")
    else:
        progress.start(f"quantizing to {quant}", None, unit="tensors")
        try:
            quantize(
                sources["text"].path,
                text_out,
                quant,
                threads=threads,
                progress=lambda done, total: progress.update(done, total),
            )
        finally:
            progress.finish()
    text_sha = hash_file(text_out, progress, f"hashing {text_name}")
    mmproj_sha = _copy(
        sources["mmproj"].path, work / mmproj_name, progress, f"copying {sources['mmproj'].name}"
    )
    if mmproj_sha != sources["mmproj"].sha256:
        raise FetchError("changed while it was being copied", path=str(sources["mmproj"].path))
    files = (
        mf.FileEntry(text_name, "text", text_out.stat().st_size, text_sha),
        mf.FileEntry(mmproj_name, "mmproj", (work / mmproj_name).stat().st_size, mmproj_sha),
    )
    manifest = mf.Manifest(name=name, files=files, extra=_extra(recipe, sources, quant))
    # Validate exactly what installs will read back.
    mf.parse_manifest(manifest.to_json(), where=name)
    (work / mf.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    mf.record_verified(work, manifest)
    return manifest


def _extra(recipe: Recipe | None, sources: dict[str, CheckedFile], quant: str) -> dict[str, Any]:
    from ..engine import native

    from_hub = any(s.commit for s in sources.values())
    source: dict[str, Any] = {
        "fetched_from": "hub" if from_hub else "folder",
        "recipe": recipe.name if recipe else None,
        "repo": recipe.repo if recipe else None,
        "revision": next((s.commit for s in sources.values() if s.commit), None)
        or (recipe.revision if recipe else None),
        "revision_requested": recipe.revision if recipe else None,
        "files": [
            {
                "role": s.role,
                "name": s.name,
                "size": s.size,
                "sha256": s.sha256,
                "verified_against": s.verified,
            }
            for s in sources.values()
        ],
    }
    return {
        "model": reference.model_name(sources["mmproj"].sha256),
        "source": source,
        "quantization": {"text": quant, "mmproj": "F16"},
        "llama_cpp_python": native.version(),
        "license": recipe.license if recipe else "unknown",
        "created_by": f"mdream {__version__}",
    }


def _local_name(sources: dict[str, CheckedFile]) -> str:
    return f"moondream2-local-{sources['text'].sha256[:8]}-q4_k_m"


def _copy(src: Path, dst: Path, progress: Progress, label: str) -> str:
    """Copy ``src`` to ``dst`` and return the sha256 of what was written."""
    digest = hashlib.sha256()
    progress.start(label, src.stat().st_size)
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                fout.write(chunk)
                progress.advance(len(chunk))
    finally:
        progress.finish()
    return digest.hexdigest()


__all__ = ["FetchResult", "MdreamError", "fetch"]
