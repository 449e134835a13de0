"""`mdream describe --xmp` end to end, read back by the real readers: ExifTool (what Immich and
PhotoPrism run for metadata) and the exiv2 tool (the library digiKam and darktable use), both
Debian's (`make test` installs them; these tests fail without them).

What each manager reads first, from its source code:
- digiKam: ``core/libs/metadataengine/dmetadata/dmetadatasettingscontainer.cpp``, the default
  read-tag namespaces: ``Xmp.digiKam.TagsList`` ("/"), then
  ``Xmp.MicrosoftPhoto.LastKeywordXMP``, ``Xmp.lr.hierarchicalSubject`` ("|"), …, and
  ``Xmp.dc.subject`` last; comments from ``Xmp.dc.description``.
- darktable: ``src/common/exif.cc``, ``dt_xmp_keys`` and ``_exif_import_tags``:
  ``Xmp.lr.hierarchicalSubject``, else ``Xmp.dc.subject``; ``Xmp.dc.description``.
- Immich: ``server/src/services/metadata.service.ts``, ``getTagList``: ExifTool's
  ``TagsList``, else ``HierarchicalSubject`` ("|" → "/"), else ``Keywords``; the
  description from ExifTool's ``Description``.
- PhotoPrism: ``internal/meta/xmp_document.go``, ``Description()`` (``dc:description``'s
  ``rdf:Alt/rdf:li``, else its text) and ``Keywords()`` (``dc:subject`` as an ``rdf:Seq``
  only: it does not read the Bag the XMP specification requires, docs/xmp.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, draw_photo, run_mdream
from moondream_cli.xmp.rules import caption_text, keywords

pytestmark = pytest.mark.slow  # mdream, exiftool and exiv2 in child processes

DATA = Path(__file__).parent / "data" / "xmp"
FAST = ("-t", "1")
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# What mdream writes: every other tag must come back as it was.
OURS = (
    "XMP-dc:Description",
    "XMP-dc:Subject",
    "XMP-lr:HierarchicalSubject",
    "XMP-digiKam:TagsList",
)


@pytest.fixture(scope="module", autouse=True)
def readers() -> None:
    missing = [tool for tool in ("exiftool", "exiv2") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install libimage-exiftool-perl exiv2 "
            "(make test installs them)",
            pytrace=False,
        )


def exiftool(path: Path) -> dict[str, Any]:
    """Every tag ExifTool reads in ``path``, by group (``XMP-dc:Subject``), file facts left out."""
    out = subprocess.run(
        ["exiftool", "-j", "-struct", "-a", "-G1", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    tags = json.loads(out)[0]
    return {
        k: v
        for k, v in tags.items()
        if k.split(":")[0] not in ("SourceFile", "System", "File", "ExifTool")
    }


def exiv2_tool(path: Path) -> dict[str, tuple[str, str]]:
    """Every XMP property the exiv2 tool prints for ``path``: key → (type, value)."""
    out = subprocess.run(["exiv2", "-px", str(path)], capture_output=True, check=True, text=True)
    rows = (line.split(None, 3) for line in out.stdout.splitlines())
    return {r[0]: (r[1], r[3] if len(r) > 3 else "") for r in rows}


def as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def describe(*args: Any) -> tuple[subprocess.CompletedProcess[bytes], list[dict[str, Any]]]:
    proc = run_mdream("describe", *args, "--xmp", "-f", "jsonl", *FAST)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc, [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_exiftool_and_exiv2_read_the_caption_and_keywords_where_the_managers_look(
    tiny_model: Path, tmp_path: Path
) -> None:
    image = tmp_path / "a.jpg"
    draw_photo().save(image)
    _, [caption] = describe(image, "-m", tiny_model, "-n", "6")
    _, [tags] = describe(image, "-m", tiny_model, "-n", "10", "--style", "tags")
    words = list(keywords(tags["answer"]))
    assert caption_text(caption["answer"]) and words
    sidecar = tmp_path / "a.jpg.xmp"

    read = exiftool(sidecar)
    assert read["XMP-dc:Description"] == caption_text(caption["answer"])
    assert as_list(read["XMP-dc:Subject"]) == words
    assert as_list(read["XMP-lr:HierarchicalSubject"]) == [f"mdream|{w}" for w in words]
    assert as_list(read["XMP-digiKam:TagsList"]) == [f"mdream/{w}" for w in words]

    tool = exiv2_tool(sidecar)
    assert tool["Xmp.dc.description"] == (
        "LangAlt",
        f'lang="x-default" {read["XMP-dc:Description"]}',
    )
    assert tool["Xmp.dc.subject"] == ("XmpBag", ", ".join(words))
    assert tool["Xmp.lr.hierarchicalSubject"][0] == "XmpBag"
    assert tool["Xmp.digiKam.TagsList"][0] == "XmpSeq"

    # The shapes readers trip over (osxphotos #349, #350): a Bag, and an Alt with x-default first.
    rdf = ET.parse(sidecar).getroot().find(f"{RDF}RDF/{RDF}Description")
    assert rdf is not None
    assert rdf.find(f"{DC}subject/{RDF}Bag") is not None
    first = rdf.find(f"{DC}description/{RDF}Alt/{RDF}li")
    assert first is not None and first.get(XML_LANG) == "x-default"


def _outside_ours(tags: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in tags.items()
        if not k.startswith(("XMP-mdream:", "XMP-dc:Description")) and k not in OURS
    }


@pytest.mark.parametrize(
    ("layout", "name"),
    [("darktable.xmp", "p.jpg.xmp"), ("digikam.xmp", "p.xmp")],  # the stem name: found too
)
def test_a_managers_sidecar_keeps_every_other_value_after_two_runs(
    tiny_model: Path, tmp_path: Path, layout: str, name: str
) -> None:
    image = tmp_path / "p.jpg"
    draw_photo(seed=3).save(image)
    sidecar = tmp_path / name
    shutil.copy(DATA / layout, sidecar)
    before, before_tool = exiftool(sidecar), exiv2_tool(sidecar)

    captioned, _ = describe(image, "-m", tiny_model, "-n", "6")
    _, [first] = describe(image, "-m", tiny_model, "-n", "8", "--style", "tags")
    _, [second] = describe(image, "-m", tiny_model, "-n", "14", "--style", "tags", "--overwrite")
    assert keywords(first["answer"]) != keywords(second["answer"])
    after, after_tool = exiftool(sidecar), exiv2_tool(sidecar)

    assert sorted(os.listdir(tmp_path)) == sorted(["p.jpg", name])  # no second sidecar, no temp
    assert _outside_ours(after) == _outside_ours(before)
    kept = {
        k: v
        for k, v in before_tool.items()
        if not k.startswith(("Xmp.dc.", "Xmp.lr.", "Xmp.digiKam.TagsList"))
    }
    assert {k: after_tool[k] for k in kept} == kept  # exiv2's view: every value as it was
    words = list(keywords(second["answer"]))
    for tag, made in (
        ("XMP-dc:Subject", words),
        ("XMP-lr:HierarchicalSubject", [f"mdream|{w}" for w in words]),
        ("XMP-digiKam:TagsList", [f"mdream/{w}" for w in words]),
    ):
        theirs = as_list(before[tag]) if tag in before else []
        values = as_list(after[tag])
        assert values == theirs + [m for m in made if m not in theirs], tag  # theirs first, kept
        assert len(values) == len(set(values)), tag  # nothing twice
    if "XMP-dc:Description" in before:  # digiKam's caption is the user's: kept, image skipped
        assert after["XMP-dc:Description"] == before["XMP-dc:Description"]
        assert "skipped 1 image" in captioned.stderr.decode()
    else:
        assert after["XMP-dc:Description"] == caption_text(json.loads(captioned.stdout)["answer"])

    again, [third] = describe(image, "-m", tiny_model, "-n", "14", "--style", "tags", "--overwrite")
    assert third["answer"] == second["answer"]
    assert exiftool(sidecar) == after  # the same keywords again: nothing added, nothing written
    assert "wrote" not in again.stderr.decode()


def test_overwrite_decides_for_a_users_caption_and_mdreams_own_is_renewed(
    tiny_model: Path, tmp_path: Path
) -> None:
    image = tmp_path / "c.jpg"
    draw_photo(seed=5).save(image)
    sidecar = tmp_path / "c.jpg.xmp"
    shutil.copy(DATA / "digikam.xmp", sidecar)
    theirs = exiftool(sidecar)["XMP-dc:Description"]
    # With --sidecar the image is answered (its .txt is missing), and the caption kept.
    kept, _ = describe(image, "--sidecar", "-m", tiny_model, "-n", "6")
    assert exiftool(sidecar)["XMP-dc:Description"] == theirs
    assert "left 1 caption in XMP sidecars as it was" in kept.stderr.decode()
    assert (tmp_path / "c.txt").is_file()
    _, [forced] = describe(image, "--overwrite", "-m", tiny_model, "-n", "6")
    read = exiftool(sidecar)
    assert read["XMP-dc:Description"] == caption_text(forced["answer"])
    assert read["XMP-dc:Description-de-DE"] == "Anna baut eine Sandburg"  # other languages kept

    (tmp_path / "c.txt").unlink()
    _, [renewed] = describe(image, "--sidecar", "-m", tiny_model, "-n", "9")  # no --overwrite
    assert renewed["answer"] != forced["answer"]
    assert exiftool(sidecar)["XMP-dc:Description"] == caption_text(renewed["answer"])


def _planted(code: str, *args: Any) -> subprocess.CompletedProcess[bytes]:
    """A real `mdream describe` child whose code is changed by ``code`` first."""
    script = (
        "import os, signal, sys\n"
        + textwrap.dedent(code)
        + textwrap.dedent(
            """
        from moondream_cli.cli.app import main
        main(sys.argv[1:])
        """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-c", script, "describe", *map(str, args), "--xmp", *FAST]
    return subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)


# Killed halfway through writing the new sidecar's temporary file.
MID_WRITE = """
real_fdopen = os.fdopen

class Half:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self.f, name)

def fdopen(fd, *args, **kwargs):
    f = real_fdopen(fd, *args, **kwargs)
    return Half(f) if "/.mdream-" in os.readlink(f"/proc/self/fd/{fd}") else f

os.fdopen = fdopen
"""
# Killed the moment the new sidecar has replaced the old one.
AFTER_RENAME = """
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if str(dst).endswith(".xmp"):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
"""


@pytest.mark.parametrize("when", ["mid-write", "after-rename"])
def test_a_run_killed_while_writing_a_sidecar_leaves_the_old_or_the_new_one(
    tiny_model: Path, tmp_path: Path, when: str
) -> None:
    image = tmp_path / "k.jpg"
    draw_photo(seed=2).save(image)
    sidecar = tmp_path / "k.jpg.xmp"
    shutil.copy(DATA / "darktable.xmp", sidecar)
    old = sidecar.read_bytes()
    run = _planted(MID_WRITE if when == "mid-write" else AFTER_RENAME, image, "-m", tiny_model)
    assert run.returncode == -9, run.stderr.decode()  # it died where it was planted
    tool = exiv2_tool(sidecar)  # whole: the exiv2 tool reads it
    assert tool["Xmp.darktable.history[2]/darktable:operation"] == ("XmpText", "exposure")
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    if when == "mid-write":
        assert sidecar.read_bytes() == old
        assert len(leftovers) == 1  # the half-written temporary file, which SIGKILL leaves
        torn = (tmp_path / leftovers[0]).read_bytes()
        assert torn.startswith(b"<?xpacket") and b"</x:xmpmeta>" not in torn
    else:
        assert "Xmp.mdream.ownCaption" in tool and tool["Xmp.dc.description"][1]
        assert leftovers == []
