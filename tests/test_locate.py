"""Finding and trusting model files: GGUF headers, loose pairs, installed bundles."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from moondream_cli import locate, manifest, paths, registry
from moondream_cli.bundles import installed
from moondream_cli.errors import ModelError
from moondream_cli.gguf_meta import architecture, read_metadata


def test_gguf_header_tells_text_from_mmproj(tiny_model: Path) -> None:
    assert architecture(tiny_model / "moondream2-text-model-f16.gguf") == "phi2"
    assert architecture(tiny_model / "moondream2-mmproj-f16.gguf") == "clip"
    meta = read_metadata(tiny_model / "moondream2-mmproj-f16.gguf")
    assert meta["clip.projector_type"] == "mlp"


@pytest.mark.parametrize(
    "content", [b"", b"GGUF", b"NOPE" + b"\0" * 40, b"GGUF\x03\0\0\0" + b"\xff" * 8]
)
def test_bad_gguf_headers_are_model_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        architecture(path)


def test_truncated_gguf_header(tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes((tiny_model / "moondream2-text-model-f16.gguf").read_bytes()[:300])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_metadata(path)


def test_two_text_models_are_ambiguous(tiny_model: Path, tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(tiny_model / "moondream2-text-model-f16.gguf", tmp_path / name)
    shutil.copy(tiny_model / "moondream2-mmproj-f16.gguf", tmp_path / "p.gguf")
    with pytest.raises(ModelError, match="found 2 and 1"):
        locate.from_dir(tmp_path)


def _install_by_hand(tiny_model: Path, name: str = "tiny") -> Path:
    """Lay out an installed bundle the way `bundle install` does, for lookup tests."""
    target = paths.models_dir() / name
    target.mkdir(parents=True)
    entries = []
    for role, src in (
        ("text", "moondream2-text-model-f16.gguf"),
        ("mmproj", "moondream2-mmproj-f16.gguf"),
    ):
        shutil.copy(tiny_model / src, target / src)
        entries.append(
            manifest.FileEntry(
                src, role, (target / src).stat().st_size, manifest.sha256_file(target / src)
            )
        )
    m = manifest.Manifest(name=name, files=tuple(entries))
    (target / manifest.MANIFEST).write_text(m.to_json())
    manifest.record_verified(target, m)
    return target


def test_sole_installed_bundle_is_the_default(tiny_model: Path) -> None:
    target = _install_by_hand(tiny_model)
    files = locate.resolve()
    assert files.bundle == target and files.name == "tiny"


def test_named_default_wins_among_several(tiny_model: Path) -> None:
    _install_by_hand(tiny_model, "one")
    _install_by_hand(tiny_model, "two")
    with pytest.raises(ModelError, match=r"no bundle is the default \(2 installed: one, two\)"):
        locate.resolve()
    paths.default_file().write_text("two\n")
    assert locate.resolve().name == "two"


def test_inference_and_the_bundle_commands_agree_on_what_is_a_bundle(tiny_model: Path) -> None:
    # A folder whose name is not a bundle name is not a bundle, for either of them: once this
    # rule was written twice, and `bundle default` said "good" while inference refused.
    _install_by_hand(tiny_model, "good")
    _install_by_hand(tiny_model, "bad name")
    assert registry.installed_names() == ["good"]
    assert installed.current_default() == "good"
    assert locate.resolve().name == "good"


def test_MDREAM_MODEL_names_an_installed_bundle(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_by_hand(tiny_model, "one")
    _install_by_hand(tiny_model, "two")
    monkeypatch.setenv("MDREAM_MODEL", "one")
    assert locate.resolve().name == "one"
    monkeypatch.setenv("MDREAM_MODEL", "nope")
    with pytest.raises(ModelError, match="neither a folder nor an installed bundle"):
        locate.resolve()


def test_a_modified_model_file_fails_verification(tiny_model: Path) -> None:
    target = _install_by_hand(tiny_model)
    text = target / "moondream2-text-model-f16.gguf"
    data = bytearray(text.read_bytes())
    data[-1] ^= 0xFF  # same size, different content, new mtime
    text.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        locate.resolve()


def test_unchanged_files_pass_the_cheap_check_without_hashing(tiny_model: Path) -> None:
    target = _install_by_hand(tiny_model)
    m = manifest.read_manifest(target)
    assert manifest.verified_recently(target, m)
    os.utime(target / "moondream2-mmproj-f16.gguf", ns=(1, 1))
    assert not manifest.verified_recently(target, m)
    locate.resolve()  # falls back to a full hash, which still matches


def test_a_truncated_model_file_fails_on_size(tiny_model: Path) -> None:
    target = _install_by_hand(tiny_model)
    text = target / "moondream2-text-model-f16.gguf"
    text.write_bytes(text.read_bytes()[:-10])
    with pytest.raises(ModelError, match="differs from the manifest"):
        locate.resolve()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(format=9), "unsupported manifest format"),
        (lambda m: m.update(name="../evil"), "invalid bundle name"),
        (lambda m: m["files"][0].update(path="../x.gguf"), "not a plain file name"),
        (lambda m: m["files"][0].update(sha256="abc"), "invalid sha256"),
        (lambda m: m["files"].pop(), "exactly one text and one mmproj"),
        (lambda m: m["files"][1].update(role="text"), "exactly one text and one mmproj"),
    ],
)
def test_invalid_manifests_are_refused(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    good = {
        "format": 1,
        "name": "ok",
        "files": [
            {"path": "t.gguf", "role": "text", "size": 1, "sha256": "0" * 64},
            {"path": "p.gguf", "role": "mmproj", "size": 1, "sha256": "1" * 64},
        ],
    }
    manifest.parse_manifest(json.dumps(good))
    mutate(good)
    with pytest.raises(ModelError, match=message):
        manifest.parse_manifest(json.dumps(good))
