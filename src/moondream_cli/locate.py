"""Find the model to use: ``--model-dir``, else ``MDREAM_MODEL``, else the default bundle.

A model folder is either an installed bundle (it holds ``manifest.json``) or any folder
holding one text GGUF and one mmproj GGUF, told apart by their GGUF metadata. Which
installed bundle is the default is :mod:`.registry`'s rule, shared with the bundle commands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from . import paths, registry
from .errors import ModelError
from .gguf_meta import architecture
from .pairing import check_pair


@dataclass(frozen=True)
class ModelFiles:
    text: Path
    mmproj: Path
    name: str
    bundle: Path | None = None  # the installed bundle folder, when it is one


def resolve(model_dir: str | os.PathLike[str] | None = None) -> ModelFiles:
    """Return the model files to load, checked; raise ModelError with what to do next."""
    if model_dir is not None:
        given = Path(model_dir)
        installed = paths.models_dir() / str(model_dir)
        if not given.is_dir() and mf.valid_name(str(model_dir)) and installed.is_dir():
            return from_dir(installed)  # --model-dir NAME: an installed bundle
        return from_dir(given)
    env = os.environ.get("MDREAM_MODEL")
    if env:
        candidate = Path(env).expanduser()
        if candidate.is_dir():
            return from_dir(candidate)
        installed = paths.models_dir() / env
        if mf.valid_name(env) and installed.is_dir():
            return from_dir(installed)
        raise ModelError(f"MDREAM_MODEL={env!r} is neither a folder nor an installed bundle")
    return from_dir(registry.bundle_dir(registry.require_default()))


def from_dir(directory: Path) -> ModelFiles:
    if not directory.is_dir():
        names = ", ".join(registry.installed_names()) or "none"
        raise ModelError(
            f"no such model folder or installed bundle (installed: {names}) — "
            "run `mdream bundle list`, `mdream fetch`, or `mdream bundle install FILE.tar`",
            path=str(directory),
        )
    files = _from_bundle(directory) if (directory / mf.MANIFEST).is_file() else find_pair(directory)
    check_pair(files.text, files.mmproj)
    return files


def _from_bundle(directory: Path) -> ModelFiles:
    manifest = mf.read_manifest(directory)
    failed = mf.failed_check(directory)
    if failed is not None:
        raise ModelError(
            f"bundle {directory.name} failed its last full check ({failed}) — restore the "
            f"file and run `mdream bundle verify {directory.name}`, or reinstall it with "
            "`mdream bundle install FILE.tar`",
            path=str(directory),
        )
    if not mf.verified_recently(directory, manifest):
        # Never verified here, or changed since: hash in full before trusting it.
        mf.verify_full(directory, manifest)
    return ModelFiles(
        text=directory / manifest.entry("text").path,
        mmproj=directory / manifest.entry("mmproj").path,
        name=manifest.name,
        bundle=directory,
    )


def find_pair(directory: Path) -> ModelFiles:
    """The text and mmproj GGUF in ``directory``, told apart by metadata, not by name."""
    texts: list[Path] = []
    projectors: list[Path] = []
    for path in sorted(directory.glob("*.gguf")):
        (projectors if architecture(path) == "clip" else texts).append(path)
    if len(texts) != 1 or len(projectors) != 1:
        raise ModelError(
            f"expected one text GGUF and one mmproj GGUF, found {len(texts)} and {len(projectors)}",
            path=str(directory),
        )
    return ModelFiles(text=texts[0], mmproj=projectors[0], name=directory.name)
