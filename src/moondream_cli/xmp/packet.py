"""The XMP library behind two calls: :func:`read` a sidecar's properties, :func:`update` it.

The library is python-exiv2 (the 'xmp' extra: ``pip install 'mdream[xmp]'``), a binding of
libexiv2, which digiKam and darktable themselves use to read and write their sidecars.
mdream hands it bytes and takes bytes back: exiv2 opens no file, the image's least of all
(:mod:`.sidecars` reads and replaces the sidecar). Every property mdream does not change
comes back with its value as it was, whatever its namespace, structure or qualifiers
(darktable's history stack, regions, ratings); the layout of the text (attributes or
elements, indentation, the packet wrapper) is exiv2's, as when digiKam rewrites a sidecar.

Threads: the sink checks sidecars on the inputs thread and writes them on the main one,
and exiv2's XMP toolkit keeps process-wide state (registered namespaces, the log handler)
that is not thread-safe: every use holds ``_LOCK``. exiv2's own log lines never reach
stderr: they are collected while a packet is read, and an error among them (a sidecar that
is not well-formed XML, say) makes the read fail, so that a sidecar exiv2 could not read
whole is never written back as the little it did read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InputError, UsageError
from .rules import NAMESPACE, PREFIX, ArrayKind, Fields, Items, Value

INSTALL = "pip install 'mdream[xmp]'"
_LOCK = threading.Lock()
_ready: list[Any] = []  # the exiv2 module, once imported and set up


class XmpError(InputError):
    """A sidecar that exiv2 cannot read as XMP, or a property in a shape mdream does not
    change (a caption that is a structure, say): the image's record says so, the file stays."""


def require() -> None:
    """A usage error (exit 2) with the install line when the XMP library is missing: said
    before the model loads, not once per image."""
    with _LOCK:
        _exiv2()


def read(data: bytes, keys: Iterable[str]) -> Fields:
    """The properties ``keys`` of the XMP packet ``data`` (those it has)."""
    with _LOCK, _collected() as errors:
        exiv2 = _exiv2()
        try:
            image = _open(exiv2, data, errors)
            return _fields(exiv2, image.xmpData(), set(keys))
        except exiv2.Exiv2Error as exc:
            raise XmpError(f"exiv2 could not read this sidecar ({exc.message})") from None


def update(data: bytes | None, changes: Fields) -> bytes:
    """The packet ``data`` (None: a new one) with ``changes`` made, every other property as
    it was, serialized as UTF-8."""
    with _LOCK, _collected() as errors:
        exiv2 = _exiv2()
        try:
            if data:
                image = _open(exiv2, data, errors)
            else:
                image = exiv2.ImageFactory.create(exiv2.ImageType.xmp)
            xmp = image.xmpData()
            for key, value in changes.items():
                _set(exiv2, xmp, key, value)
            image.writeMetadata()
        except exiv2.Exiv2Error as exc:
            raise XmpError(f"exiv2 could not write this sidecar ({exc.message})") from None
        if errors:
            raise XmpError(f"exiv2 could not write this sidecar ({errors[0]})")
        return bytes(image.io().data())


def _exiv2() -> Any:
    if not _ready:
        try:
            import exiv2
        except ImportError:
            raise UsageError(f"--xmp needs the XMP extra (python-exiv2): {INSTALL}") from None
        exiv2.LogMsg.setHandler(exiv2.pythonHandler)  # to _collected, never to stderr
        exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.warn)
        exiv2.XmpParser.initialize()
        exiv2.XmpProperties.registerNs(NAMESPACE, PREFIX)
        _ready.append(exiv2)
    return _ready[0]


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(" ".join(record.getMessage().split()))


@contextmanager
def _collected() -> Iterator[list[str]]:
    """exiv2's log lines of the block (python-exiv2 passes them to the 'exiv2' logger),
    kept from stderr; yields the list the errors among them go to."""
    logger = logging.getLogger("exiv2")
    collector = _Collector()
    logger.addHandler(collector)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield collector.errors
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate


def _open(exiv2: Any, data: bytes, errors: list[str]) -> Any:
    try:
        image = exiv2.ImageFactory.open(data)
    except exiv2.Exiv2Error as exc:
        raise XmpError(f"not an XMP sidecar exiv2 can read ({exc.message})") from None
    if image.imageType() != exiv2.ImageType.xmp:
        raise XmpError("not an XMP sidecar: it holds an image")
    image.readMetadata()
    if errors:
        raise XmpError(f"not an XMP sidecar exiv2 can read whole ({errors[0]})")
    return image


def _fields(exiv2: Any, xmp: Any, keys: set[str]) -> Fields:
    fields: Fields = {}
    for datum in xmp:
        key = datum.key()
        if key in keys:
            fields[key] = _value(exiv2, key, datum.value())
    return fields


def _value(exiv2: Any, key: str, value: Any) -> Value:
    kind = value.typeId()
    if kind == exiv2.TypeId.langAlt:
        alt = dict(value)
        return {"x-default": alt.pop("x-default")} | alt if "x-default" in alt else alt
    if kind in (exiv2.TypeId.xmpBag, exiv2.TypeId.xmpSeq, exiv2.TypeId.xmpAlt):
        seq = ArrayKind.SEQ if kind == exiv2.TypeId.xmpSeq else ArrayKind.BAG
        return Items(tuple(str(item) for item in value), seq)
    text = str(value)
    if kind != exiv2.TypeId.xmpText or text.startswith("type="):
        name = key.removeprefix("Xmp.").replace(".", ":", 1)
        raise XmpError(f"{name} in this sidecar is a structure: mdream leaves the file alone")
    return text


def _set(exiv2: Any, xmp: Any, key: str, value: Value) -> None:
    if value is None:
        if xmp.findKey(exiv2.XmpKey(key)) != xmp.end():
            del xmp[key]
    elif isinstance(value, Items):
        type_id = exiv2.TypeId.xmpSeq if value.kind is ArrayKind.SEQ else exiv2.TypeId.xmpBag
        xmp[key] = exiv2.XmpArrayValue(list(value.values), type_id)
    elif isinstance(value, dict):
        xmp[key] = exiv2.LangAltValue(value)
    else:
        xmp[key] = exiv2.XmpTextValue(value)
