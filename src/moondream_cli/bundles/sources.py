"""The f16 input files of a fetch: what is known about each, and the checks it must pass.

Every file is checked against what is known about it: its size and sha256 in the recipe
where given, and online the hub's own LFS sha256 (see `hub`). A file that fails a check
stops the fetch. Files copied into a folder by hand (``--from-dir``) are found here too,
with no network. Inference never imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import manifest as mf
from ..errors import FetchError, ModelError
from ..locate import find_pair
from ..progress import Progress
from .recipe import Recipe, SourceFile, load_recipe
from .recipe import shipped as shipped_recipes


@dataclass
class CheckedFile:
    """One f16 input file, found and checked."""

    role: str
    path: Path
    size: int
    sha256: str
    name: str  # its name in the hub repo / the folder
    verified: list[str] = field(default_factory=list)  # what its sha256 was checked against
    commit: str | None = None  # the hub commit it was downloaded at


def local_sources(
    folder: Path, recipe_spec: str | None, progress: Progress
) -> tuple[Recipe | None, dict[str, CheckedFile]]:
    """Find the f16 pair in ``folder`` and check it against a recipe, when one applies.

    With no ``--recipe``, a shipped recipe applies when any of its file sizes matches;
    files that match none become a local bundle, checked only for being a GGUF pair.
    """
    if not folder.is_dir():
        raise FetchError("no such folder", path=str(folder))
    found = _find_pair(folder)
    sizes = {role: path.stat().st_size for role, path in found.items()}
    if recipe_spec is not None:
        recipe: Recipe | None = load_recipe(recipe_spec)
    else:
        recipe = next(
            (
                r
                for r in map(load_recipe, shipped_recipes())
                if any(f.size is not None and f.size == sizes[f.role] for f in r.files)
            ),
            None,
        )
    sources: dict[str, CheckedFile] = {}
    for role, path in found.items():
        if recipe is None:
            sha = hash_file(path, progress, f"hashing {path.name}")
            sources[role] = CheckedFile(role, path, sizes[role], sha, path.name, ["none"])
        else:
            sources[role] = check_file(path, recipe.file(role), None, None, progress)
    if recipe is None:
        progress.warn(
            f"the files in {folder} match no known recipe: the bundle records their hashes, "
            "but where they came from is not verified"
        )
    return recipe, sources


def _find_pair(folder: Path) -> dict[str, Path]:
    """The text and mmproj GGUF in ``folder`` (see `locate.find_pair`), as a fetch error."""
    try:
        files = find_pair(folder)
    except FetchError:
        raise
    except ModelError as exc:
        raise FetchError(exc.message, path=exc.path) from exc
    return {"text": files.text, "mmproj": files.mmproj}


def check_file(
    path: Path,
    want: SourceFile,
    hub_sha: str | None,
    hub_size: int | None,
    progress: Progress,
) -> CheckedFile:
    """Check ``path`` against the recipe's entry and, online, what the hub said about it."""
    size = path.stat().st_size
    for expected, who in ((want.size, "the recipe"), (hub_size, "the hub")):
        if expected is not None and size != expected:
            raise FetchError(f"{size} bytes, {who} says {expected}", path=str(path))
    sha = hash_file(path, progress, f"verifying {want.name}")
    verified: list[str] = []
    if hub_sha is not None:
        if sha != hub_sha:
            raise FetchError(
                f"sha256 {sha} differs from the hub's {hub_sha}; the file was deleted",
                path=want.name,
            )
        verified.append("hub-lfs-sha256")
    if want.sha256 is not None:
        if sha != want.sha256:
            raise FetchError(
                f"sha256 {sha} differs from the recipe's {want.sha256}", path=str(path)
            )
        verified.append("recipe-sha256")
    if want.sha256_reported is not None:
        if sha == want.sha256_reported:
            verified.append("reported-sha256")
        elif hub_sha is None:
            progress.warn(
                f"{want.name}: sha256 {sha} is not the third-party value in the recipe "
                f"({want.sha256_reported}); the size matches, the hash is recorded unconfirmed"
            )
    if not verified:
        verified.append("size-only" if want.size is not None else "none")
    progress.info(f"{want.name}: {size} bytes, sha256 {sha[:16]}…, verified: {', '.join(verified)}")
    return CheckedFile(want.role, path, size, sha, want.name, verified)


def hash_file(path: Path, progress: Progress, label: str) -> str:
    """The sha256 of ``path``, shown as progress under ``label``."""
    progress.start(label, path.stat().st_size)
    try:
        return mf.sha256_file(path, progress.advance)
    finally:
        progress.finish()
