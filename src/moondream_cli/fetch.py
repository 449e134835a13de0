"""``mdream fetch``: get a recipe's f16 GGUFs, verify them, quantize, pack, install.

Sources are the Hugging Face hub (through huggingface-hub, so HF_HOME, HF_TOKEN,
HF_ENDPOINT and HF_HUB_OFFLINE behave as everywhere else) or a folder the files were copied
into by hand (``--from-dir``, no network). Every file is checked against what is known
about it: its size and sha256 in the recipe where given, and online the hub's own LFS
sha256 (the file's etag). A file that fails a check is deleted and the fetch stops.
Inference never imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, bundle, paths
from . import manifest as mf
from .errors import FetchError, MdreamError, ModelError
from .locate import find_pair
from .progress import Progress
from .quantize import quantize
from .recipe import Recipe, SourceFile
from .recipe import load as load_recipe
from .recipe import shipped as shipped_recipes

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass
class Source:
    """One f16 input file, found and checked."""

    role: str
    path: Path
    size: int
    sha256: str
    name: str  # its name in the hub repo / the folder
    verified: list[str] = field(default_factory=list)  # what its sha256 was checked against
    commit: str | None = None  # the hub commit it was downloaded at


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
    output: Path | None = None,
    install: bool = True,
    name: str | None = None,
    threads: int | None = None,
    make_default: bool = False,
    progress: Progress | None = None,
) -> FetchResult:
    """Build a bundle from a recipe (default: the shipped default recipe) and install it."""
    progress = progress or Progress()
    if not install and output is None:
        raise FetchError("nothing to do: --no-install needs --output")
    if output is not None:
        output = bundle.output_folder_or_file(output)
    if output is not None and not output.is_dir() and not output.parent.is_dir():
        raise FetchError("output folder does not exist", path=str(output))
    if from_dir is not None:
        chosen, sources = _local_sources(from_dir, recipe, progress)
    else:
        chosen = load_recipe(recipe)
        sources = _hub_sources(chosen, progress)
    bundle_name = name or (chosen.bundle_name if chosen else _local_name(sources))
    if not mf.valid_name(bundle_name):
        raise FetchError(f"invalid bundle name {bundle_name!r}")

    installed = paths.models_dir() / bundle_name
    quant = chosen.quantization if chosen else "Q4_K_M"
    if install and _already_built(installed, sources):
        progress.info(f"{bundle_name} is already installed from the same files")
        if make_default:
            bundle.set_default(bundle_name)
        tarball = bundle.pack(installed, output, progress) if output is not None else None
        return FetchResult(bundle_name, installed, tarball, already=True)

    # Q4_K_M is about a third of f16; the mmproj is copied as it is.
    ratio = 1.0 if quant == "F16" else 0.4
    need = int(sources["text"].size * ratio) + sources["mmproj"].size
    with _workspace(install, output, bundle_name, need) as work:
        manifest = _build(work, bundle_name, chosen, sources, quant, threads, progress)
        tarball = bundle.pack(work, output, progress) if output is not None else None
        if install:
            bundle.move_into_place(work, installed)
    if install and (make_default or bundle.default_name() is None):
        bundle.set_default(manifest.name)
    return FetchResult(bundle_name, installed if install else None, tarball, already=False)


# -- sources ---------------------------------------------------------------------------------


def _hub_sources(recipe: Recipe, progress: Progress) -> dict[str, Source]:
    # Without this, huggingface-hub makes an extra request (an "agent harnesses" registry
    # to decorate its user agent). Read at import; an explicit setting wins.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FetchError("huggingface-hub is not installed") from exc

    offline = bool(constants.is_offline_mode())
    sources: dict[str, Source] = {}
    for want in recipe.files:
        hub_sha: str | None = None
        hub_size: int | None = None
        if not offline:
            url = hf_hub_url(recipe.repo, want.name, revision=recipe.revision)
            try:
                meta = get_hf_file_metadata(url)
            except Exception as exc:  # any hub failure becomes one message
                raise FetchError(
                    f"cannot reach the hub for {want.name} ({_first_line(exc)}) — offline, "
                    "copy the f16 files by hand and use --from-dir, or install a bundle tarball"
                ) from exc
            hub_sha = _sha_or_none(meta.etag)
            hub_size = meta.size
            _check_recipe_against_hub(recipe, want, hub_sha, hub_size, progress)
        progress.start(f"downloading {want.name}", hub_size or want.size)
        try:
            local = hf_hub_download(
                recipe.repo,
                want.name,
                revision=recipe.revision,
                library_name="mdream",
                library_version=__version__,
                tqdm_class=_tqdm_class(progress),
            )
        except Exception as exc:
            if offline:
                raise FetchError(
                    f"{want.name} is not in the hub cache and HF_HUB_OFFLINE is set — fetch "
                    "online once, or copy the f16 files by hand and use --from-dir"
                ) from exc
            raise FetchError(f"download of {want.name} failed: {_first_line(exc)}") from exc
        finally:
            progress.finish()
        link = Path(local)
        blob = link.resolve()
        if hub_sha is None:
            # Offline: the hub cache names an LFS blob after the sha256 the hub announced.
            hub_sha = _sha_or_none(blob.name)
        try:
            sources[want.role] = _check_file(blob, want, hub_sha, hub_size, progress)
        except FetchError:
            _evict(link, blob)
            raise
        # The cache keeps each file under snapshots/<commit>/: the revision actually fetched.
        sources[want.role].commit = link.parent.name
        if recipe.revision != link.parent.name:
            progress.info(f"{want.name}: revision {recipe.revision!r} is commit {link.parent.name}")
    return sources


def _check_recipe_against_hub(
    recipe: Recipe, want: SourceFile, hub_sha: str | None, hub_size: int | None, progress: Progress
) -> None:
    where = f"{recipe.repo}@{recipe.revision}/{want.name}"
    if want.size is not None and hub_size is not None and want.size != hub_size:
        raise FetchError(
            f"the hub says {hub_size} bytes, the recipe {want.size} — the recipe is out of date",
            path=where,
        )
    if want.sha256 and hub_sha and want.sha256 != hub_sha:
        raise FetchError(
            f"the hub's sha256 {hub_sha} differs from the recipe's {want.sha256}", path=where
        )
    if want.sha256_reported and hub_sha and want.sha256_reported != hub_sha:
        progress.warn(
            f"{want.name}: the hub's sha256 {hub_sha} differs from the third-party value in "
            f"the recipe ({want.sha256_reported}); trusting the hub"
        )


def _local_sources(
    folder: Path, recipe_spec: str | None, progress: Progress
) -> tuple[Recipe | None, dict[str, Source]]:
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
    sources: dict[str, Source] = {}
    for role, path in found.items():
        if recipe is None:
            sha = _hash(path, progress, f"hashing {path.name}")
            sources[role] = Source(role, path, sizes[role], sha, path.name, ["none"])
        else:
            sources[role] = _check_file(path, recipe.file(role), None, None, progress)
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


def _check_file(
    path: Path,
    want: SourceFile,
    hub_sha: str | None,
    hub_size: int | None,
    progress: Progress,
) -> Source:
    size = path.stat().st_size
    for expected, who in ((want.size, "the recipe"), (hub_size, "the hub")):
        if expected is not None and size != expected:
            raise FetchError(f"{size} bytes, {who} says {expected}", path=str(path))
    sha = _hash(path, progress, f"verifying {want.name}")
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
    return Source(want.role, path, size, sha, want.name, verified)


def _evict(link: Path, blob: Path) -> None:
    """Delete a bad download from the hub cache: the blob and the snapshot link to it."""
    for path in (link, blob):
        with contextlib.suppress(OSError):
            path.unlink()


def _tqdm_class(progress: Progress) -> type:
    """A stand-in for tqdm that huggingface-hub drives; it forwards bytes to ``progress``."""

    class _Bar:
        def __init__(
            self, *args: Any, total: int | None = None, initial: int = 0, **kw: Any
        ) -> None:
            progress.update(initial, total)

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: int | float | None = 1) -> None:
            progress.advance(int(n or 0))

        def close(self) -> None:
            return None

    return _Bar


# -- building --------------------------------------------------------------------------------


def _already_built(installed: Path, sources: dict[str, Source]) -> bool:
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
def _workspace(install: bool, output: Path | None, name: str, need: int) -> Iterator[Path]:
    """A build folder beside where the bundle ends up; gone afterwards unless moved away."""
    if install:
        parent = paths.models_dir()
    else:
        assert output is not None
        parent = output if output.is_dir() else output.parent
    with bundle.staging(parent, f".build-{name}-", need) as work:
        yield work


def _build(
    work: Path,
    name: str,
    recipe: Recipe | None,
    sources: dict[str, Source],
    quant: str,
    threads: int | None,
    progress: Progress,
) -> mf.Manifest:
    text_name = f"text-model-{quant.lower()}.gguf"
    mmproj_name = "mmproj-f16.gguf"
    text_out = work / text_name
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
    text_sha = _hash(text_out, progress, f"hashing {text_name}")
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


def _extra(recipe: Recipe | None, sources: dict[str, Source], quant: str) -> dict[str, Any]:
    import llama_cpp

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
        "source": source,
        "quantization": {"text": quant, "mmproj": "F16"},
        "llama_cpp_python": str(getattr(llama_cpp, "__version__", "unknown")),
        "license": recipe.license if recipe else "unknown",
        "created_by": f"mdream {__version__}",
    }


def _local_name(sources: dict[str, Source]) -> str:
    return f"moondream2-local-{sources['text'].sha256[:8]}-q4_k_m"


def _hash(path: Path, progress: Progress, label: str) -> str:
    progress.start(label, path.stat().st_size)
    try:
        return mf.sha256_file(path, progress.advance)
    finally:
        progress.finish()


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


def _sha_or_none(value: str | None) -> str | None:
    value = (value or "").strip('"').lower()
    return value if _SHA256.match(value) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = ["FetchResult", "MdreamError", "fetch"]
