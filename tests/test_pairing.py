"""A text model and an mmproj that do not make one model, or a header llama.cpp would abort on,
are refused with one line naming the files — when a folder is used, by `fetch` before it
quantizes, and by `bundle install` before anything is replaced."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import moondream_gguf
from moondream_cli import locate
from moondream_cli.bundles import install as bundle_install
from moondream_cli.bundles.fetch import fetch
from moondream_cli.errors import BundleError, ModelError
from moondream_cli.pairing import check_pair
from test_bundles import members, write_tar

WIDER = dataclasses.replace(moondream_gguf.TINY, n_embd=128, n_vocab=51200)
TextModel = Callable[[moondream_gguf.Shape], Path]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    """The text model of a shape, written once for the module (each is half a second of
    Python: the GPT-2 vocabulary); tests copy it before changing anything."""
    folder = tmp_path_factory.mktemp("text-models")
    written: dict[moondream_gguf.Shape, Path] = {}

    def model(shape: moondream_gguf.Shape) -> Path:
        if shape not in written:
            path = folder / f"text-{len(written)}.gguf"
            written[shape] = moondream_gguf.write_text_model(path, shape)
        return written[shape]

    return model


def _folder(tmp_path: Path, name: str, text: Path, *, mmproj_input: int | None = None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copyfile(text, folder / moondream_gguf.TEXT_NAME)
    moondream_gguf.write_mmproj(folder / moondream_gguf.MMPROJ_NAME, projector_input=mmproj_input)
    return folder


def test_the_tiny_pair_belongs_together(tiny_model: Path) -> None:
    files = locate.find_pair(tiny_model)
    check_pair(files.text, files.mmproj)


def test_a_projector_for_another_text_width_is_refused_naming_both_files(
    tmp_path: Path, text_model: TextModel
) -> None:
    folder = _folder(tmp_path, "mixed", text_model(WIDER))
    with pytest.raises(ModelError) as caught:
        locate.from_dir(folder)
    message = str(caught.value)
    assert moondream_gguf.TEXT_NAME in message and moondream_gguf.MMPROJ_NAME in message
    assert "64-wide" in message and "takes 128" in message
    assert caught.value.exit_code == 3


def test_a_later_releases_projector_is_refused(tmp_path: Path, text_model: TextModel) -> None:
    folder = _folder(tmp_path, "newer", text_model(moondream_gguf.TINY), mmproj_input=64)
    with pytest.raises(ModelError, match="takes 64-wide input but its vision encoder gives 32"):
        locate.from_dir(folder)


@pytest.mark.parametrize("layers", [0, 0x7FFFFFFF])
def test_an_absurd_block_count_is_refused_before_llama_cpp_sees_it(
    tmp_path: Path, text_model: TextModel, layers: int
) -> None:
    real = dataclasses.replace(moondream_gguf.TINY, n_layer=0)
    folder = _folder(tmp_path, "absurd", text_model(real))
    if layers:
        _patch_u32(folder / moondream_gguf.TEXT_NAME, "phi2.block_count", layers)
    with pytest.raises(ModelError, match=f"implausible phi2.block_count {layers}"):
        locate.from_dir(folder)


def _patch_u32(path: Path, key: str, value: int) -> None:
    """Rewrite a uint32 key's value in place (key, then type 4, then the value)."""
    data = bytearray(path.read_bytes())
    raw = key.encode()
    at = data.index(len(raw).to_bytes(8, "little") + raw) + 8 + len(raw)
    assert int.from_bytes(data[at : at + 4], "little") == 4
    data[at + 4 : at + 8] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_fetch_refuses_a_mismatched_pair_before_quantizing(
    tmp_path: Path, text_model: TextModel
) -> None:
    folder = _folder(tmp_path, "mixed", text_model(WIDER))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelError, match="do not belong together"):
        fetch(from_dir=folder, output=out, install=False)
    assert list(out.iterdir()) == []


def test_bundle_install_refuses_a_mismatched_pair_with_good_hashes(
    tiny_model: Path, tmp_path: Path, isolated_home: Path, text_model: TextModel
) -> None:
    good = fetch(from_dir=tiny_model, output=tmp_path, install=False).tarball
    assert good is not None
    wider = text_model(WIDER).read_bytes()
    items = members(good)
    manifest = json.loads(items[0][1])
    for entry in manifest["files"]:
        if entry["role"] == "text":
            entry.update(size=len(wider), sha256=hashlib.sha256(wider).hexdigest())
    text_name = next(e["path"] for e in manifest["files"] if e["role"] == "text")
    rebuilt: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (
            info,
            json.dumps(manifest).encode()
            if info.name == "manifest.json"
            else wider
            if info.name == text_name
            else data,
        )
        for info, data in items
    ]
    evil = write_tar(tmp_path / "mixed.tar", rebuilt)
    with pytest.raises(BundleError, match="do not belong together"):
        bundle_install.install(evil)
    assert not (isolated_home / "models").exists() or not any(
        p.name == manifest["name"] for p in (isolated_home / "models").iterdir()
    )


def test_ggml_is_told_never_to_start_gdb_on_an_assert() -> None:
    from moondream_cli.engine import native

    native.llama()
    assert os.environ["GGML_NO_BACKTRACE"] == "1"  # read by ggml when it aborts
