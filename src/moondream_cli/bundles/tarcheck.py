"""Read a tarball's raw headers before `tarfile` does, and refuse what it must never be given.

CPython's tarfile parses a pax extended header with regular expressions that take time
quadratic in its size (CVE-2024-6232, fixed in 3.11.10 and 3.12.6): a crafted 1.5 MB header
keeps ``tarfile.open`` busy for an hour, before any check of ours could run. A bundle's members
have short names (128 characters at most), so every extended header -- pax ``x``/``X``/``g``,
GNU long name ``L`` and long link ``K`` -- over :data:`EXTENDED_MAX` is refused here, first.
Sparse members (GNU type ``S``, pax ``GNU.sparse.*`` keys) are refused too: a tarball of a few
KiB can hold a 1 GiB hole that extracting would write out in full before its hash fails.

The walk follows tarfile's own rules for where the next header is (a pax ``size`` moves it);
where it cannot be sure to agree with tarfile (two pax headers for one member, a global
``size``), it refuses. A header that is not a valid tar header ends the walk: tarfile stops
there too, or says the file is not a tarball. Inference never imports this module.
"""

from __future__ import annotations

import struct
import tarfile
from typing import BinaryIO

from ..errors import BundleError

BLOCK = 512
# Short enough that tarfile's quadratic search stays harmless: 64 KiB of digits took 8 s on
# Python 3.11.7, 8 KiB about 0.1 s. A bundle member's pax header is about 100 bytes.
EXTENDED_MAX = 8 << 10
_PAX = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.XGLTYPE)
_GNU_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


def check_headers(f: BinaryIO, where: str) -> None:
    """Walk every header of the tar in ``f`` and raise BundleError naming ``where`` for an
    oversized extended header or a sparse member. ``f`` is left at its start."""
    offset = 0
    local: dict[bytes, bytes] | None = None  # the pax header for the next member, if any
    while True:
        f.seek(offset)
        block = f.read(BLOCK)
        size = _header_size(block)
        if size is None:
            break  # the end, damage, or not a tarball: tarfile decides which
        kind = block[156:157]
        if kind == tarfile.GNUTYPE_SPARSE:
            raise BundleError(_sparse(_name(block)), path=where)
        data_end = offset + BLOCK + _blocks(size)
        if kind in _PAX or kind in _GNU_LONG:
            if size > EXTENDED_MAX:
                raise BundleError(
                    f"an extended tar header of {size:,} bytes (more than {EXTENDED_MAX:,}) "
                    "refused: a bundle has none this large — the tarball is damaged or hostile",
                    path=where,
                )
            if kind in _PAX:
                records = _pax_records(f.read(size), where)
                if any(key.startswith(b"GNU.sparse.") for key in records):
                    name = records.get(b"GNU.sparse.name") or records.get(b"path") or b"?"
                    raise BundleError(_sparse(name.decode("utf-8", "replace")), path=where)
                if kind == tarfile.XGLTYPE:
                    if b"size" in records:
                        raise BundleError("a global pax header sets a size: refused", path=where)
                elif local is not None:
                    raise BundleError("a member has two pax headers: refused", path=where)
                else:
                    local = records
            offset = data_end
            continue
        if local is not None and b"size" in local:
            size = _pax_size(local[b"size"], where)
        if kind in tarfile.REGULAR_TYPES or kind not in tarfile.SUPPORTED_TYPES:
            offset += BLOCK + _blocks(size)
        else:
            offset += BLOCK  # links, folders, devices: tarfile reads no data after them
        local = None
    f.seek(0)


def _header_size(block: bytes) -> int | None:
    """The size field of a valid tar header block; None where tarfile would see none."""
    if len(block) < BLOCK:
        return None
    checksum = _number(block[148:156])
    unsigned = 256 + sum(struct.unpack_from("148B8x356B", block))
    signed = 256 + sum(struct.unpack_from("148b8x356b", block))
    if checksum is None or checksum not in (unsigned, signed):
        return None
    size = _number(block[124:136])
    return None if size is None or size < 0 else size


def _number(field: bytes) -> int | None:
    """A tar number field, decoded as tarfile's ``nti`` does (octal, or base-256)."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    text = field.split(b"\0", 1)[0]
    try:
        return int(text.decode("ascii").strip() or "0", 8)
    except (UnicodeDecodeError, ValueError):
        return None


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _pax_records(data: bytes, where: str) -> dict[bytes, bytes]:
    """The ``LENGTH KEY=VALUE\\n`` records of a pax header, read in one linear pass."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] not in (b"\0", b""):
        space = data.find(b" ", pos, pos + 24)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit() or int(digits) <= len(digits) + 1:
            raise BundleError("a pax header is malformed", path=where)
        end = pos + int(digits)
        record = data[space + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError("a pax header is malformed", path=where)
        key, _, value = record[:-1].partition(b"=")
        records[key] = value
        pos = end
    return records


def _pax_size(value: bytes, where: str) -> int:
    if not value.isdigit():
        raise BundleError("a pax header gives an invalid size", path=where)
    return int(value)


def _name(block: bytes) -> str:
    return block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")


def _sparse(name: str) -> str:
    return (
        f"member {name!r} is a sparse file; a bundle holds only regular files "
        "(a tiny tarball could otherwise unpack into gigabytes)"
    )
