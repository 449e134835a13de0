"""A bundle's manifest and the checks that decide whether its files can be trusted.

``manifest.json`` lists every model file with its role, size and sha256. Installing a
bundle hashes every file against it and then records each file's size and mtime in
``.verified.json``; before inference only that cheap record is compared, and
``mdream bundle verify`` re-hashes in full. A full check that fails is remembered in
``.failed.json`` (and the cheap record dropped): inference and ``doctor`` refuse the bundle
until a full check passes again, however unchanged its sizes and times look.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from . import bounded
from .errors import ModelError
from .portable import read_flags

MANIFEST = "manifest.json"
VERIFIED = ".verified.json"
FAILED = ".failed.json"
FORMAT = 1
ROLES = ("text", "mmproj")
# Matched with fullmatch: `$` would also accept a name that ends in a newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "a bundle name is letters, digits, '.', '_' and '-', starting with a letter or digit"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# No model file comes near a pebibyte; a larger size is a hostile manifest, whose sums and
# MiB figures would otherwise overflow.
MAX_SIZE = 1 << 50
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str
    role: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    files: tuple[FileEntry, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def entry(self, role: str) -> FileEntry:
        for f in self.files:
            if f.role == role:
                return f
        raise ModelError(f"bundle {self.name!r} has no {role} file")

    def to_json(self) -> str:
        body: dict[str, Any] = {"format": FORMAT, "name": self.name}
        body.update(self.extra)
        body["files"] = [
            {"path": f.path, "role": f.role, "size": f.size, "sha256": f.sha256} for f in self.files
        ]
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and ".." not in name


def valid_size(size: object) -> TypeGuard[int]:
    """A file size a manifest or recipe may give: an int (not a bool) in 0..MAX_SIZE."""
    return isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_SIZE


def parse_manifest(text: str | bytes, *, where: str = MANIFEST) -> Manifest:
    """Parse and validate manifest JSON; every problem is a ModelError naming ``where``."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"manifest is not valid JSON: {exc}", path=where) from exc
    except RecursionError as exc:  # `[[[[…`: deeper than any manifest
        raise ModelError("manifest is nested too deeply", path=where) from exc
    if not isinstance(raw, dict):
        raise ModelError("manifest is not a JSON object", path=where)
    if raw.get("format") != FORMAT:
        raise ModelError(f"unsupported manifest format {raw.get('format')!r}", path=where)
    name = raw.get("name")
    if not isinstance(name, str) or not valid_name(name):
        raise ModelError(f"invalid bundle name {name!r}", path=where)
    files_raw = raw.get("files")
    if not isinstance(files_raw, list) or not files_raw:
        raise ModelError("manifest lists no files", path=where)
    files: list[FileEntry] = []
    for item in files_raw:
        files.append(_parse_entry(item, where))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise ModelError("manifest lists a file twice", path=where)
    roles = sorted(f.role for f in files)
    if roles != sorted(ROLES):
        raise ModelError("manifest must list exactly one text and one mmproj file", path=where)
    extra = {k: v for k, v in raw.items() if k not in ("format", "name", "files")}
    return Manifest(name=name, files=tuple(files), extra=extra)


def _parse_entry(item: object, where: str) -> FileEntry:
    if not isinstance(item, dict):
        raise ModelError("manifest file entry is not an object", path=where)
    path, role, size, sha = item.get("path"), item.get("role"), item.get("size"), item.get("sha256")
    if not isinstance(path, str) or "/" in path or "\\" in path or not valid_name(path):
        raise ModelError(f"manifest file name {path!r} is not a plain file name", path=where)
    if path in (MANIFEST, VERIFIED):
        raise ModelError(f"manifest file name {path!r} is reserved", path=where)
    if role not in ROLES:
        raise ModelError(f"manifest file {path!r} has unknown role {role!r}", path=where)
    if not valid_size(size):
        raise ModelError(f"manifest file {path!r} has an invalid size", path=where)
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ModelError(f"manifest file {path!r} has an invalid sha256", path=where)
    return FileEntry(path=path, role=str(role), size=size, sha256=sha)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    return parse_manifest(bounded.read_file(path, bounded.MANIFEST), where=str(path))


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with bounded.open_file(path, bounded.GGUF) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def verify_full(
    directory: Path, manifest: Manifest, progress: Callable[[int], None] | None = None
) -> None:
    """Hash every file against the manifest; raise ModelError on the first mismatch."""
    for entry in manifest.files:
        path = directory / entry.path
        _check_size(path, entry)
        actual = sha256_file(path, progress)
        if actual != entry.sha256:
            raise ModelError(
                f"sha256 mismatch (expected {entry.sha256}, got {actual})", path=str(path)
            )


def _check_size(path: Path, entry: FileEntry) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ModelError("model file is missing", path=str(path)) from exc
    if st.st_size != entry.size:
        raise ModelError(
            f"size {st.st_size} differs from the manifest's {entry.size}", path=str(path)
        )
    return st


def record_verified(directory: Path, manifest: Manifest) -> None:
    """Remember size and mtime of each file just hashed, for the cheap check at load time."""
    record = {
        e.path: {"size": (st := (directory / e.path).stat()).st_size, "mtime_ns": st.st_mtime_ns}
        for e in manifest.files
    }
    tmp = directory / (VERIFIED + ".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / VERIFIED)


def record_failed(directory: Path, reason: str) -> None:
    """Remember that a full check failed, and why; forget the last one that passed."""
    (directory / VERIFIED).unlink(missing_ok=True)
    tmp = directory / (FAILED + ".tmp")
    tmp.write_text(json.dumps({"reason": reason}) + "\n", encoding="utf-8")
    os.replace(tmp, directory / FAILED)


def clear_failed(directory: Path) -> None:
    (directory / FAILED).unlink(missing_ok=True)


def failed_check(directory: Path) -> str | None:
    """Why the bundle's last full check failed, or None if it did not (or none failed)."""
    try:
        fd = os.open(directory / FAILED, read_flags())
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"its failure record cannot be read ({exc.strerror or exc})"
    with open(fd, "rb") as f:
        data = f.read(65536)
    try:
        reason = json.loads(data)["reason"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return "its failure record is damaged"
    return str(reason) if isinstance(reason, str) else "its failure record is damaged"


def verified_recently(directory: Path, manifest: Manifest) -> bool:
    """True when every file still has the size and mtime recorded after its last full hash."""
    try:
        record = json.loads(bounded.read_text(directory / VERIFIED, bounded.VERIFIED))
    except (ModelError, ValueError, RecursionError):
        return False
    if not isinstance(record, dict):
        return False
    for entry in manifest.files:
        st = _check_size(directory / entry.path, entry)
        seen = record.get(entry.path)
        if not isinstance(seen, dict) or seen.get("mtime_ns") != st.st_mtime_ns:
            return False
        if seen.get("size") != st.st_size:
            return False
    return True
