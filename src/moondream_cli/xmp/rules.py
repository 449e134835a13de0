"""What mdream writes into an XMP sidecar, and what it leaves alone.

Pure functions of the few properties mdream reads (:data:`KEYS`); the XMP library is
:mod:`.packet`'s business. The rules:

* The caption goes to ``dc:description``, a language alternative whose ``x-default`` item
  comes first. It is filled when there is none (or it is empty) or when it is mdream's own
  (the text mdream wrote last time, kept in ``mdream:ownCaption``); a caption of someone
  else's is replaced only with ``--overwrite``. Other languages' items are kept.
* Keywords go to ``dc:subject`` (a Bag: ``cat``), ``lr:hierarchicalSubject`` (a Bag:
  ``mdream|cat``) and ``digiKam:TagsList`` (a Seq: ``mdream/cat``), under the tag root.
  mdream owns exactly the values it added, listed per field in its own namespace
  (``mdream:ownSubject``, ``mdream:ownHierarchicalSubject``, ``mdream:ownTagsList``): a
  later run removes those and adds its new ones; every other value stays, in its order, and
  none is added twice.
* Whatever mdream changes, it notes the model (``mdream:writtenWith``) and the date
  (``mdream:writtenOn``); a tags run also notes its root (``mdream:tagRoot``), which is how a
  later run knows the image was tagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from ..errors import UsageError

NAMESPACE = "urn:mdream:xmp:1.0/"  # private: only mdream reads it
PREFIX = "mdream"

DESCRIPTION = "Xmp.dc.description"
SUBJECT = "Xmp.dc.subject"
HIERARCHICAL = "Xmp.lr.hierarchicalSubject"
TAGS_LIST = "Xmp.digiKam.TagsList"
OWN_CAPTION = "Xmp.mdream.ownCaption"
OWN_SUBJECT = "Xmp.mdream.ownSubject"
OWN_HIERARCHICAL = "Xmp.mdream.ownHierarchicalSubject"
OWN_TAGS_LIST = "Xmp.mdream.ownTagsList"
TAG_ROOT = "Xmp.mdream.tagRoot"
WRITTEN_WITH = "Xmp.mdream.writtenWith"
WRITTEN_ON = "Xmp.mdream.writtenOn"


class ArrayKind(str, Enum):
    """An XMP array's kind: unordered (Bag) or ordered (Seq)."""

    BAG = "Bag"
    SEQ = "Seq"


@dataclass(frozen=True)
class Items:
    """An XMP array of text values."""

    values: tuple[str, ...]
    kind: ArrayKind = ArrayKind.BAG


# A property's value as mdream reads and writes it: text, an array, a language alternative
# (language → text, x-default first), or None to remove the property.
Value = str | Items | dict[str, str] | None
Fields = dict[str, Value]

# (the field, where mdream lists what it added there, the field's array kind, the separator
# between a keyword and its root: None for a flat keyword)
KEYWORD_FIELDS = (
    (SUBJECT, OWN_SUBJECT, ArrayKind.BAG, None),
    (HIERARCHICAL, OWN_HIERARCHICAL, ArrayKind.BAG, "|"),
    (TAGS_LIST, OWN_TAGS_LIST, ArrayKind.SEQ, "/"),
)
KEYS = (
    DESCRIPTION,
    OWN_CAPTION,
    TAG_ROOT,
    WRITTEN_WITH,
    WRITTEN_ON,
    *(key for field in KEYWORD_FIELDS for key in field[:2]),
)


@dataclass(frozen=True)
class Update:
    """What one answer puts in a sidecar: a caption, or keywords under a root."""

    caption: str | None = None
    keywords: tuple[str, ...] | None = None
    root: tuple[str, ...] = ("mdream",)


@dataclass(frozen=True)
class Stamp:
    """Who wrote, and when: the model's name and an ISO 8601 date."""

    model: str
    date: str


# Not allowed in XML 1.0 at all (C0 controls but tab and line ends, lone surrogates,
# U+FFFE/U+FFFF), or a terminal would act on them (DEL, C1): never written into a sidecar.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_SPACES = re.compile(r"\s+")


def caption_text(answer: str) -> str:
    """A caption as it goes into XMP: characters XML cannot hold removed, CR dropped."""
    return _NOT_TEXT.sub("", answer.replace("\r", "")).strip()


def keywords(answer: str) -> tuple[str, ...]:
    """``--style tags``' answer as keywords: split at commas and line breaks, spaces
    collapsed, a closing full stop dropped, ``/`` and ``|`` (the managers' hierarchy
    separators) turned into ``-``, each keyword once (compared without case)."""
    found: dict[str, str] = {}
    for part in re.split(r"[,\n]", answer):
        word = _SPACES.sub(" ", _NOT_TEXT.sub("", part)).strip().rstrip(".").strip()
        word = re.sub(r"\s*[/|]\s*", "-", word)
        if word and word.casefold() not in found:
            found[word.casefold()] = word
    return tuple(found.values())


def tag_path(root: str) -> tuple[str, ...]:
    """``--xmp-tag-root`` as its parts: ``mdream`` → ("mdream",), ``AI/mdream`` or
    ``AI|mdream`` → ("AI", "mdream"). A usage error when it names no tag."""
    parts = tuple(_SPACES.sub(" ", p).strip() for p in re.split(r"[/|]", root))
    if not all(parts) or _NOT_TEXT.search(root) or "\n" in root or "\t" in root:
        raise UsageError(
            f"--xmp-tag-root must name a tag, such as mdream or AI/mdream, not {root!r}"
        )
    return parts


def shown_caption(fields: Fields) -> str:
    """The caption a manager shows: the x-default item, else the first one."""
    alt = fields.get(DESCRIPTION)
    if isinstance(alt, dict):
        return alt.get("x-default") or next(iter(alt.values()), "")
    return alt if isinstance(alt, str) else ""


def is_done(fields: Fields, *, tags: bool) -> bool:
    """Whether a run without ``--overwrite`` has nothing to do here: a caption run finds a
    caption (its own or anyone's), a tags run finds that mdream tagged the image."""
    if tags:
        return isinstance(fields.get(TAG_ROOT), str)
    return bool(shown_caption(fields).strip())


def changes(fields: Fields, update: Update, stamp: Stamp, *, overwrite: bool) -> Fields:
    """The properties to set (None: remove) so that the sidecar holds ``update``; empty
    when nothing changes (the caption is someone else's and stays, say)."""
    out: Fields = {}
    if update.caption is not None:
        out.update(_caption_changes(fields, caption_text(update.caption), overwrite=overwrite))
    if update.keywords is not None:
        out.update(_keyword_changes(fields, update.keywords, update.root))
    out = {key: value for key, value in out.items() if fields.get(key) != value}
    if out:
        out[WRITTEN_WITH] = stamp.model
        out[WRITTEN_ON] = stamp.date
    return out


def _caption_changes(fields: Fields, caption: str, *, overwrite: bool) -> Fields:
    shown = shown_caption(fields)
    own = fields.get(OWN_CAPTION)
    if not caption or (shown.strip() and shown != own and not overwrite):
        return {}
    alt = fields.get(DESCRIPTION)
    others = {k: v for k, v in alt.items() if k != "x-default"} if isinstance(alt, dict) else {}
    return {DESCRIPTION: {"x-default": caption, **others}, OWN_CAPTION: caption}


def _keyword_changes(fields: Fields, words: tuple[str, ...], root: tuple[str, ...]) -> Fields:
    out: Fields = {TAG_ROOT: "/".join(root)}
    for key, own_key, kind, separator in KEYWORD_FIELDS:
        current = _values(fields.get(key))
        mine = set(_values(fields.get(own_key)))
        kept = [v for v in current if v not in mine]
        wanted = [separator.join((*root, w)) if separator else w for w in words]
        added = list(dict.fromkeys(v for v in wanted if v not in kept))
        values = (*kept, *added)
        if values != current or not isinstance(fields.get(key), Items):
            out[key] = Items(values, kind) if values else None
        out[own_key] = Items(tuple(added)) if added else None
    return out


def _values(value: Value) -> tuple[str, ...]:
    if isinstance(value, Items):
        return value.values
    if isinstance(value, str) and value:
        return (value,)
    return ()
