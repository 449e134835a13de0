"""Download a recipe's f16 files from the Hugging Face hub, each checked as it arrives.

The hub is reached through huggingface-hub, so HF_HOME, HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE behave as everywhere else. Online, each file is also checked against the
hub's own LFS sha256 (the file's etag); offline, against the sha256 the hub cache names
its blob after. A download that fails a check is deleted from the hub cache.
Inference never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from .. import __version__, interrupt
from ..errors import FetchError
from ..progress import Progress
from .recipe import Recipe, SourceFile
from .sources import CheckedFile, check_file

_SHA256 = re.compile(r"[0-9a-f]{64}")  # fullmatch: `$` accepts a trailing newline


def hub_sources(recipe: Recipe, progress: Progress) -> dict[str, CheckedFile]:
    """Download (or find in the hub cache) and check each file ``recipe`` lists."""
    # Without this, huggingface-hub makes an extra request (an "agent harnesses" registry
    # to decorate its user agent). Read at import; an explicit setting wins.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        with interrupt.shielded():  # a signal mid-import can be lost (see `quantize`)
            # Every lazily loaded part used below, so that no later import is unshielded.
            from huggingface_hub import (  # noqa: F401
                constants,
                get_hf_file_metadata,
                hf_hub_download,
            )
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FetchError("huggingface-hub is not installed") from exc

    offline = bool(constants.is_offline_mode())
    sources: dict[str, CheckedFile] = {}
    for want in recipe.files:
        hub_sha: str | None = None
        hub_size: int | None = None
        if not offline:
            hub_sha, hub_size = _hub_metadata(recipe, want)
            _check_recipe_against_hub(recipe, want, hub_sha, hub_size, progress)
        link = _download(recipe, want, hub_size, offline, progress)
        blob = link.resolve()
        if hub_sha is None:
            # Offline: the hub cache names an LFS blob after the sha256 the hub announced.
            hub_sha = _sha_or_none(blob.name)
        try:
            sources[want.role] = check_file(blob, want, hub_sha, hub_size, progress)
        except FetchError:
            _evict(link, blob)
            raise
        # The cache keeps each file under snapshots/<commit>/: the revision actually fetched.
        sources[want.role].commit = link.parent.name
        if recipe.revision != link.parent.name:
            progress.info(f"{want.name}: revision {recipe.revision!r} is commit {link.parent.name}")
    return sources


def _hub_metadata(recipe: Recipe, want: SourceFile) -> tuple[str | None, int | None]:
    """The sha256 and size the hub announces for ``want``."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(recipe.repo, want.name, revision=recipe.revision)
    try:
        meta = get_hf_file_metadata(url)
    except Exception as exc:  # any hub failure becomes one message
        raise FetchError(
            f"cannot reach the hub for {want.name} ({_first_line(exc)}) — offline, "
            "copy the f16 files by hand and use --from-dir, or install a bundle tarball"
        ) from exc
    return _sha_or_none(meta.etag), meta.size


def _download(
    recipe: Recipe, want: SourceFile, hub_size: int | None, offline: bool, progress: Progress
) -> Path:
    """Download ``want`` into the hub cache; the path is its snapshot link."""
    from huggingface_hub import hf_hub_download

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
    return Path(local)


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


def _sha_or_none(value: str | None) -> str | None:
    value = (value or "").strip('"').lower()
    return value if _SHA256.fullmatch(value) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
