"""The XMP sidecars of one run: which file is an image's, whether it has what the run would
write (then the image is skipped), and the merge written beside the image.

An image's sidecar is the one that exists under either name (``a.jpg.xmp`` or ``a.xmp``;
the one ``--sidecar-name`` names first, ``full`` by default), else a new one under that
name. It is read without following a link (a link at its name is an error record: mdream
neither writes through a link nor replaces someone's link with a file), merged by
:mod:`.rules` through :mod:`.packet`, and replaced atomically (``sidecars.write_atomic``:
a temporary file in the same folder, flushed to the disk, then renamed), keeping its
permissions; a read-only sidecar is left alone. The image file itself is never opened.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import interrupt
from ..errors import InputError
from ..portable import read_flags
from ..records import (
    XMP_EXT,
    SidecarName,
    escape_controls,
    sidecar_naming,
    sidecar_path,
)
from ..sidecars import write_atomic
from . import packet, rules

MAX_BYTES = 64 << 20  # a darktable history with many masks is a few MB


@dataclass
class XmpSidecars:
    """Checks and writes the XMP sidecars of one run, as ``--xmp`` and its options say."""

    naming: SidecarName | None = None
    tags: bool = False  # the answers are --style tags' keywords, not captions
    root: tuple[str, ...] = ("mdream",)
    overwrite: bool = False
    stamp: rules.Stamp = field(default_factory=lambda: rules.Stamp("", ""))
    written: int = 0  # sidecars written
    kept: int = 0  # captions of someone else's left as they were (no --overwrite)
    planned: dict[str, str] = field(default_factory=dict)  # sidecar (real path) → its image

    def __post_init__(self) -> None:
        packet.require()

    def names(self, image: str) -> tuple[str, ...]:
        """Both names an image's sidecar may have: files beside images that are theirs."""
        return tuple(sidecar_path(image, XMP_EXT, n).name for n in SidecarName)

    def path(self, image: str) -> Path:
        chosen = sidecar_naming(XMP_EXT, self.naming)
        other = SidecarName.STEM if chosen is SidecarName.FULL else SidecarName.FULL
        for naming in (chosen, other):
            path = sidecar_path(image, XMP_EXT, naming)
            if os.path.lexists(path):
                return path
        return sidecar_path(image, XMP_EXT, chosen)

    def done(self, image: str) -> bool:
        """Before the image is decoded: True when its sidecar has what this run would write
        and may not be redone (no ``--overwrite``); InputError when the sidecar cannot be
        read or written, so that no inference is spent on it."""
        path = self._claim(image)
        data = _read(path)
        fields = _fields(path, data)
        if not self.overwrite and rules.is_done(fields, tags=self.tags):
            return True
        if data is not None and _read_only(path):
            raise InputError(f"its XMP sidecar {path} is read-only: mdream leaves it alone")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write its XMP sidecar: {path.parent} is not writable")
        return False

    def write(self, image: str, answer: str) -> None:
        """Merge ``answer`` into the image's sidecar and replace it (nothing is written when
        nothing changes). InputError: this image's sidecar only; OutputError: the disk."""
        path = self.path(image)
        before = _identity(path)
        if before is not None and _read_only(path):
            raise InputError(f"its XMP sidecar {path} is read-only: mdream leaves it alone")
        data = _read(path)
        fields = _fields(path, data)
        if self.tags:
            wanted = rules.Update(keywords=rules.keywords(answer), root=self.root)
        else:
            wanted = rules.Update(caption=answer)
        changes = rules.changes(fields, wanted, self.stamp, overwrite=self.overwrite)
        if not changes:
            shown = rules.shown_caption(fields)
            if not self.tags and shown.strip() and shown != rules.caption_text(answer):
                self.kept += 1  # someone else's caption, and no --overwrite
            return
        try:
            text = packet.update(data, changes).decode("utf-8")
        except packet.XmpError as exc:
            raise InputError(f"its XMP sidecar {path}: {exc.message}") from None
        if _identity(path) != before:
            raise InputError(
                f"its XMP sidecar {path} changed while mdream merged into it (is another "
                "program writing it?): run again to merge into the new one"
            )
        mode = stat.S_IMODE(before[2]) if before is not None else None
        with interrupt.shielded():  # the sidecar lands whole, or not at all
            write_atomic(path, text, durable=True, mode=mode)
        self.written += 1

    def _claim(self, image: str) -> Path:
        """The image's sidecar, which no other image of this run may share."""
        path = self.path(image)
        key = os.path.realpath(path)
        if key == os.path.realpath(image):
            raise InputError("its XMP sidecar would be the image itself (it is named .xmp)")
        other = self.planned.setdefault(key, image)
        if other != image:
            hint = ""
            if sidecar_naming(XMP_EXT, self.naming) is SidecarName.STEM:
                full = sidecar_path(image, XMP_EXT, SidecarName.FULL).name
                hint = f": with --sidecar-name full each image gets its own ({full})"
            raise InputError(f"{path} is the XMP sidecar of {other} too{hint}")
        return path


def now() -> str:
    """The date a run notes in the sidecars it writes, in ISO 8601 with its UTC offset:
    now, or ``SOURCE_DATE_EPOCH`` (seconds since 1970, UTC) for sidecars that must come out
    the same byte for byte."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), timezone.utc).isoformat(timespec="seconds")
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _fields(path: Path, data: bytes | None) -> rules.Fields:
    """What mdream reads of the sidecar ``data`` (from ``path``), or an error naming it."""
    try:
        return packet.read(data, rules.KEYS) if data else {}
    except packet.XmpError as exc:
        raise InputError(f"its XMP sidecar {path}: {exc.message}") from None


def _read_only(path: Path) -> bool:
    """No write permission for anyone (``chmod a-w``, which root would write through), or
    none for this user."""
    return not os.lstat(path).st_mode & 0o222 or not os.access(path, os.W_OK)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """What tells a replaced or rewritten file from the one read: inode, size, mode, mtime."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot check its XMP sidecar {path}: {exc.strerror}") from exc
    return st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns


def _read(path: Path) -> bytes | None:
    """The sidecar's bytes; None when there is none, or it is empty (nothing to keep)."""
    flags = read_flags() | getattr(os, "O_NOFOLLOW", 0)
    if os.path.islink(path):
        raise _link(path)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link(path) from None
        raise InputError(f"cannot read its XMP sidecar {path}: {exc.strerror}") from exc
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"its XMP sidecar {path} exists and is not a regular file")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise InputError(f"its XMP sidecar {path} is over {MAX_BYTES >> 20} MiB")
    data = data.lstrip()  # exiv2 takes a packet only from its first byte
    return data or None


def _link(path: Path) -> InputError:
    return InputError(
        f"its XMP sidecar {escape_controls(str(path))} is a symbolic link: mdream neither "
        "writes through a link nor replaces one (merge into the file it names, or remove it)"
    )
