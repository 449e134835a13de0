"""Read a GGUF file's key/value header without loading the model.

Used to tell a text model from an mmproj by metadata (not by file name) and to check a
file is a GGUF at all before llama.cpp sees it. Pure Python, reads only the header.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from .errors import ModelError

_MAGIC = b"GGUF"
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (token lists, merges) are skipped, not kept.
_KEEP_ARRAY = 64
_MAX_KV = 1 << 20


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _unpack(f: BinaryIO, fmt: str) -> object:
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _read(f, 8))
    return _read(f, n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int) -> object:
    if vtype in _SCALARS:
        return _unpack(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        (itype,) = struct.unpack("<I", _read(f, 4))
        (count,) = struct.unpack("<Q", _read(f, 8))
        if count <= _KEEP_ARRAY:
            return [_value(f, itype) for _ in range(count)]
        if itype in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[itype]) * count, 1)
        else:
            for _ in range(count):
                _value(f, itype)
        return None
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_metadata(path: Path) -> dict[str, object]:
    """Return the GGUF header's keys; raise ModelError when ``path`` is not a GGUF file."""
    try:
        with open(path, "rb") as f:
            if _read(f, 4) != _MAGIC:
                raise ModelError("not a GGUF file", path=str(path))
            version = _unpack(f, "<I")
            if version not in (2, 3):
                raise ModelError(f"unsupported GGUF version {version}", path=str(path))
            _unpack(f, "<Q")  # tensor count
            n_kv = int(_unpack(f, "<Q"))  # type: ignore[call-overload]
            if n_kv > _MAX_KV:
                raise ModelError("corrupt GGUF header", path=str(path))
            meta: dict[str, object] = {}
            for _ in range(n_kv):
                key = _string(f)
                (vtype,) = struct.unpack("<I", _read(f, 4))
                meta[key] = _value(f, vtype)
            return meta
    except (EOFError, ValueError, struct.error) as exc:
        raise ModelError("truncated or corrupt GGUF header", path=str(path)) from exc
    except OSError as exc:
        raise ModelError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc


def architecture(path: Path) -> str:
    arch = read_metadata(path).get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError("GGUF file has no general.architecture", path=str(path))
    return arch
