"""The XMP merge rules (``xmp.rules``) and the library behind them (``xmp.packet``,
python-exiv2 in this process): what mdream writes, what it owns, what it never touches."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from moondream_cli.errors import InputError, UsageError
from moondream_cli.records import SidecarName
from moondream_cli.xmp import packet, rules
from moondream_cli.xmp.rules import (
    DESCRIPTION,
    HIERARCHICAL,
    OWN_CAPTION,
    SUBJECT,
    TAGS_LIST,
    ArrayKind,
    Items,
    Stamp,
    Update,
)
from moondream_cli.xmp.sidecars import XmpSidecars

DATA = Path(__file__).parent / "data" / "xmp"
STAMP = Stamp("tiny", "2026-01-02T03:04:05+00:00")
READ = (*rules.KEYS, "Xmp.dc.title", "Xmp.xmp.Rating")


def merged(data: bytes | None, update: Update, *, overwrite: bool = False) -> bytes:
    fields = packet.read(data, rules.KEYS) if data else {}
    changes = rules.changes(fields, update, STAMP, overwrite=overwrite)
    return packet.update(data, changes) if changes else (data or b"")


def every_property(data: bytes) -> dict[str, str]:
    """Every property exiv2 reads in ``data``: key → type and value, as its tool prints them."""
    import exiv2

    image = exiv2.ImageFactory.open(data)
    image.readMetadata()
    return {d.key(): f"{d.typeName()} {d.value()}" for d in image.xmpData()}


# -- the caption ---------------------------------------------------------------------------------


def test_a_caption_goes_into_a_new_sidecar_as_x_default() -> None:
    fields = packet.read(merged(None, Update(caption="A cat on a mat.")), READ)
    assert fields[DESCRIPTION] == {"x-default": "A cat on a mat."}
    assert fields[OWN_CAPTION] == "A cat on a mat."
    assert fields[rules.WRITTEN_WITH] == "tiny" and fields[rules.WRITTEN_ON] == STAMP.date


def test_mdreams_own_caption_is_replaced_and_someone_elses_only_with_overwrite() -> None:
    own = merged(None, Update(caption="First words."))
    assert packet.read(merged(own, Update(caption="Better words.")), READ)[DESCRIPTION] == {
        "x-default": "Better words."
    }
    users = (DATA / "digikam.xmp").read_bytes()
    assert merged(users, Update(caption="A beach.")) == users  # nothing written at all
    forced = packet.read(merged(users, Update(caption="A beach."), overwrite=True), READ)
    # x-default first, the other language kept; the title untouched
    assert list(forced[DESCRIPTION].items()) == [  # type: ignore[union-attr]
        ("x-default", "A beach."),
        ("de-DE", "Anna baut eine Sandburg"),
    ]
    assert forced["Xmp.dc.title"] == {"x-default": "Anna at the beach", "de-DE": "Anna am Strand"}


def test_a_caption_the_user_edited_after_mdream_is_theirs() -> None:
    fields: rules.Fields = {DESCRIPTION: {"x-default": "Edited by me."}, OWN_CAPTION: "Mine."}
    assert rules.changes(fields, Update(caption="New."), STAMP, overwrite=False) == {}
    assert rules.changes(fields, Update(caption="New."), STAMP, overwrite=True)[DESCRIPTION] == {
        "x-default": "New."
    }


def test_an_empty_or_unprintable_answer_writes_no_caption() -> None:
    assert rules.changes({}, Update(caption=" \x07 "), STAMP, overwrite=True) == {}
    assert rules.caption_text("Two\r\nlines\x1b[31m\ufffe") == "Two\nlines[31m"


# -- keywords ------------------------------------------------------------------------------------


def test_keywords_go_into_the_three_fields_under_the_root() -> None:
    words = rules.keywords("cat, Mat., black/white\n cat ,, sofa|bed")
    assert words == ("cat", "Mat", "black-white", "sofa-bed")
    fields = packet.read(merged(None, Update(keywords=words, root=("AI", "md"))), READ)
    assert fields[SUBJECT] == Items(words, ArrayKind.BAG)
    assert fields[HIERARCHICAL] == Items(tuple(f"AI|md|{w}" for w in words), ArrayKind.BAG)
    assert fields[TAGS_LIST] == Items(tuple(f"AI/md/{w}" for w in words), ArrayKind.SEQ)
    assert fields[rules.TAG_ROOT] == "AI/md"


def test_a_later_run_replaces_mdreams_keywords_and_never_the_users() -> None:
    users = (DATA / "digikam.xmp").read_bytes()
    first = merged(users, Update(keywords=("sand", "Beach", "sea")))
    second = packet.read(merged(first, Update(keywords=("sea", "sky"))), READ)
    # "Beach" was the user's already: not added, not owned, so still there after run two
    assert second[SUBJECT] == Items(("Anna", "Beach", "sea", "sky"))
    assert second[TAGS_LIST] == Items(
        ("Family/Anna", "Places/Beach", "mdream/sea", "mdream/sky"), ArrayKind.SEQ
    )
    hierarchical = ("Family|Anna", "Places|Beach", "mdream|sea", "mdream|sky")
    assert second[HIERARCHICAL] == Items(hierarchical)
    assert second[rules.OWN_SUBJECT] == Items(("sea", "sky"))


def test_the_same_keywords_again_change_nothing_and_duplicate_nothing() -> None:
    once = merged(None, Update(keywords=("a", "b")))
    fields = packet.read(once, rules.KEYS)
    assert rules.changes(fields, Update(keywords=("a", "b")), STAMP, overwrite=True) == {}
    again = packet.read(merged(once, Update(keywords=rules.keywords("b, B, a, c"))), READ)
    assert again[SUBJECT] == Items(("b", "a", "c"))
    assert again[TAGS_LIST] == Items(("mdream/b", "mdream/a", "mdream/c"), ArrayKind.SEQ)


def test_keywords_leave_the_caption_alone_and_the_caption_leaves_keywords() -> None:
    both = merged(merged(None, Update(caption="A cat.")), Update(keywords=("cat",)))
    fields = packet.read(both, READ)
    assert fields[DESCRIPTION] == {"x-default": "A cat."} and fields[SUBJECT] == Items(("cat",))
    again = packet.read(merged(both, Update(caption="Another cat.")), READ)
    assert again[SUBJECT] == Items(("cat",))


def test_done_means_a_caption_for_caption_runs_and_mdreams_root_for_tags_runs() -> None:
    assert rules.is_done({DESCRIPTION: {"x-default": "theirs"}}, tags=False)
    assert not rules.is_done({DESCRIPTION: {"x-default": " "}}, tags=False)
    assert not rules.is_done({SUBJECT: Items(("theirs",))}, tags=True)
    assert rules.is_done({rules.TAG_ROOT: "mdream"}, tags=True)


def test_a_tag_root_names_a_tag() -> None:
    assert rules.tag_path("AI|mdream ") == ("AI", "mdream")
    with pytest.raises(UsageError):
        rules.tag_path("a//b")


# -- the library ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["darktable.xmp", "digikam.xmp"])
def test_every_other_property_keeps_its_value(name: str) -> None:
    before = (DATA / name).read_bytes()
    after = merged(merged(before, Update(caption="x")), Update(keywords=("k",)))
    old, new = every_property(before), every_property(after)
    ours = {DESCRIPTION, SUBJECT, HIERARCHICAL, TAGS_LIST}
    assert {k: v for k, v in new.items() if k not in ours and not k.startswith("Xmp.mdream.")} == {
        k: v for k, v in old.items() if k not in ours
    }
    assert "Xmp.darktable.history[2]/darktable:params" in new or name != "darktable.xmp"


def test_a_sidecar_exiv2_cannot_read_whole_is_refused_and_nothing_reaches_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    broken = (DATA / "darktable.xmp").read_bytes().replace(b"</rdf:Seq>", b"", 1)
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    for data in (broken, b"not xml at all", b"<?xml version='1.0'?><html/>", jpeg.getvalue()):
        with pytest.raises(packet.XmpError):
            packet.read(data, rules.KEYS)
    assert capfd.readouterr().err == ""


def test_a_caption_that_is_a_structure_is_left_alone() -> None:
    odd = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
      xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""
      xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description rdf:parseType="Resource">
      <dc:title>t</dc:title></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"""
    with pytest.raises(packet.XmpError, match="structure"):
        packet.read(odd, rules.KEYS)


# -- the files ------------------------------------------------------------------------------------


def test_the_sidecar_is_the_existing_one_under_either_name(tmp_path: Path) -> None:
    image = str(tmp_path / "a.jpg")
    full, stem = XmpSidecars(), XmpSidecars(naming=SidecarName.STEM)
    assert full.path(image) == tmp_path / "a.jpg.xmp"
    assert stem.path(image) == tmp_path / "a.xmp"
    (tmp_path / "a.xmp").write_bytes(b"")
    assert full.path(image) == tmp_path / "a.xmp"
    (tmp_path / "a.jpg.xmp").write_bytes(b"")
    assert full.path(image) == tmp_path / "a.jpg.xmp" and stem.path(image) == tmp_path / "a.xmp"


def test_links_read_only_files_and_shared_stems_are_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.xmp").write_bytes((DATA / "darktable.xmp").read_bytes())
    os.symlink(tmp_path / "elsewhere.xmp", tmp_path / "a.jpg.xmp")
    with pytest.raises(InputError, match="symbolic link"):
        XmpSidecars().done(str(tmp_path / "a.jpg"))
    (tmp_path / "b.jpg.xmp").write_bytes((DATA / "darktable.xmp").read_bytes())
    (tmp_path / "b.jpg.xmp").chmod(0o444)  # read-only for root too: no write bit at all
    with pytest.raises(InputError, match="read-only"):
        XmpSidecars().done(str(tmp_path / "b.jpg"))


def test_two_images_that_would_share_a_stem_sidecar_cost_the_second_its_record(
    tmp_path: Path,
) -> None:
    sidecars = XmpSidecars(naming=SidecarName.STEM)
    assert not sidecars.done(str(tmp_path / "c.jpg"))
    with pytest.raises(InputError, match="--sidecar-name full"):
        sidecars.done(str(tmp_path / "c.png"))


def test_an_empty_sidecar_holds_nothing_to_keep_and_a_caption_fills_it(tmp_path: Path) -> None:
    (tmp_path / "d.jpg.xmp").write_bytes(b"\n")
    sidecars = XmpSidecars(stamp=STAMP)
    assert not sidecars.done(str(tmp_path / "d.jpg"))
    sidecars.write(str(tmp_path / "d.jpg"), "A dog.")
    data = (tmp_path / "d.jpg.xmp").read_bytes()
    assert packet.read(data, rules.KEYS)[DESCRIPTION] == {"x-default": "A dog."}
    assert sidecars.done(str(tmp_path / "e.jpg")) is False and sidecars.written == 1
    assert XmpSidecars().done(str(tmp_path / "d.jpg"))  # a caption now: a later run skips it
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_without_the_xmp_library_the_run_stops_first_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setattr(packet, "_ready", [])
    monkeypatch.setitem(sys.modules, "exiv2", None)  # what `import exiv2` meets uninstalled
    with pytest.raises(UsageError, match=r"pip install 'mdream\[xmp\]'") as caught:
        XmpSidecars()
    assert caught.value.exit_code == 2


def test_a_broken_sidecar_is_the_images_error_naming_the_file_and_stays_as_it_was(
    tmp_path: Path,
) -> None:
    broken = b'<?xml version="1.0"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>'
    (tmp_path / "f.jpg.xmp").write_bytes(broken)
    with pytest.raises(InputError, match=r"f\.jpg\.xmp: not an XMP sidecar exiv2 can read"):
        XmpSidecars().done(str(tmp_path / "f.jpg"))
    with pytest.raises(InputError, match=r"f\.jpg\.xmp"):
        XmpSidecars(stamp=STAMP).write(str(tmp_path / "f.jpg"), "A fox.")
    assert (tmp_path / "f.jpg.xmp").read_bytes() == broken
