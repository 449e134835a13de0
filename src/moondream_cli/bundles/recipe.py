"""Bundle recipes: which hub files make a bundle, how they are checked, how they are quantized.

A recipe is data, one JSON file per bundle; shipped ones live in the repo's ``bundles/``
folder and are installed as package data ``moondream_cli.recipes``.
``sha256`` is enforced wherever it is given; ``sha256_reported`` is a third-party claim that
is compared and reported but never trusted, because such sources have disagreed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .. import bounded
from .. import manifest as mf
from ..errors import BundleError, UsageError

if TYPE_CHECKING:
    from importlib.abc import Traversable

FORMAT = 1
DEFAULT = "moondream2-20250414"
# Target names accepted in a recipe; values are llama.cpp's LLAMA_FTYPE_* names (None: keep f16).
QUANTIZATIONS: dict[str, str | None] = {
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "F16": None,
}
# Matched with fullmatch: `$` would also accept a trailing newline.
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SourceFile:
    role: str  # "text" or "mmproj"
    name: str  # file name in the hub repo
    size: int | None
    sha256: str | None  # enforced
    sha256_reported: str | None = None  # compared, never trusted


@dataclass(frozen=True)
class Recipe:
    name: str
    repo: str
    revision: str
    license: str
    quantization: str
    files: tuple[SourceFile, ...]
    description: str = ""
    origin: str = ""  # where the recipe was read from
    model: str = ""  # which model release the files hold, as a user should be told

    def file(self, role: str) -> SourceFile:
        return next(f for f in self.files if f.role == role)

    @property
    def bundle_name(self) -> str:
        return f"{self.name}-{self.quantization.lower()}"


def _shipped_folder() -> Traversable:
    """The recipes folder: ``bundles/`` in a source checkout, package data in a wheel."""
    checkout = Path(__file__).resolve().parents[3] / "bundles"  # src/moondream_cli/bundles/
    if checkout.is_dir():
        return checkout
    return resources.files("moondream_cli.recipes")


def shipped() -> list[str]:
    """Names of the recipes that ship with mdream."""
    folder = _shipped_folder()
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_recipe(name_or_file: str | None = None) -> Recipe:
    """A shipped recipe by name, or a recipe JSON file by path (default: :data:`DEFAULT`)."""
    spec = name_or_file or DEFAULT
    if spec in shipped():
        res = _shipped_folder() / f"{spec}.json"
        return parse_recipe(res.read_bytes(), origin=f"shipped recipe {spec}")
    path = Path(spec).expanduser()
    if path.suffix == ".json" or path.exists():
        if not path.exists() and not path.is_symlink():
            raise UsageError("no such recipe file", path=str(path))
        return parse_recipe(bounded.read_file(path, bounded.RECIPE), origin=str(path))
    raise UsageError(
        f"unknown recipe {spec!r} — shipped recipes: {', '.join(shipped())}; or give a JSON file"
    )


def parse_recipe(text: str | bytes, *, origin: str = "recipe") -> Recipe:
    """Validate recipe JSON; every problem is a BundleError naming ``origin``."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"recipe is not valid JSON: {exc}", path=origin) from exc
    except RecursionError as exc:
        raise BundleError("recipe is nested too deeply", path=origin) from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"not a format-{FORMAT} recipe", path=origin)

    def text_field(key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise BundleError(f"recipe field {key!r} must be a non-empty string", path=origin)
        return value

    name = text_field("name")
    if not mf.valid_name(name):
        raise BundleError(f"invalid recipe name {name!r}", path=origin)
    repo = text_field("repo")
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise BundleError(f"invalid hub repo {repo!r} (expected owner/name)", path=origin)
    quant = text_field("quantization").upper()
    if quant not in QUANTIZATIONS:
        raise BundleError(
            f"unknown quantization {quant!r} (known: {', '.join(QUANTIZATIONS)})", path=origin
        )
    files_raw = raw.get("files")
    if not isinstance(files_raw, dict) or sorted(files_raw) != sorted(mf.ROLES):
        raise BundleError(
            "recipe 'files' must have exactly a 'text' and an 'mmproj' entry", path=origin
        )
    files = tuple(_source_file(role, files_raw[role], origin) for role in mf.ROLES)
    if files[0].name == files[1].name:
        raise BundleError("recipe names the same file twice", path=origin)
    return Recipe(
        name=name,
        repo=repo,
        revision=text_field("revision", "main"),
        license=text_field("license"),
        quantization=quant,
        files=files,
        description=str(raw.get("description", "")),
        origin=origin,
        model=str(raw.get("model", "")),
    )


def _source_file(role: str, item: object, origin: str) -> SourceFile:
    if not isinstance(item, dict):
        raise BundleError(f"recipe file {role!r} is not an object", path=origin)
    name, size = item.get("name"), item.get("size")
    if not isinstance(name, str) or not mf.valid_name(name):
        raise BundleError(f"recipe file {role!r} has an invalid name {name!r}", path=origin)
    if size is not None and (not mf.valid_size(size) or size == 0):
        raise BundleError(f"recipe file {name!r} has an invalid size", path=origin)
    hashes = {}
    for key in ("sha256", "sha256_reported"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not _SHA256.fullmatch(value)):
            raise BundleError(f"recipe file {name!r} has an invalid {key}", path=origin)
        hashes[key] = value
    return SourceFile(role, name, size, hashes["sha256"], hashes["sha256_reported"])
