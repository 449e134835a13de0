"""Bundle tarballs: deterministic packing, all-or-nothing install, hostile tarballs refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, draw_photo, run_mdream
from moondream_cli.bundles import install as bundle_install
from moondream_cli.bundles import installed as bundle
from moondream_cli.bundles.fetch import fetch
from moondream_cli.errors import BundleError, UsageError

NAME = "moondream2-local-e3428061-q4_k_m"


@pytest.fixture(scope="module")
def tarball(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle built from the tiny f16 pair: quantized to Q4_K_M, packed, not installed."""
    out = tmp_path_factory.mktemp("bundle")
    result = fetch(from_dir=tiny_model, output=out, install=False)
    assert result.tarball is not None and result.installed is None
    return result.tarball


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]


def write_tar(path: Path, items: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# -- determinism and the round trip -------------------------------------------------------


def test_tarball_layout_is_fixed(tarball: Path) -> None:
    items = members(tarball)
    assert [m.name for m, _ in items] == [
        "manifest.json",
        "text-model-q4_k_m.gguf",
        "mmproj-f16.gguf",
    ]
    for info, _ in items:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (
            0,
            0,
            0,
            "",
            "",
            0o644,
        )
    manifest = json.loads(items[0][1])
    assert manifest["name"] == NAME
    assert manifest["quantization"] == {"text": "Q4_K_M", "mmproj": "F16"}
    assert manifest["llama_cpp_python"] == "0.3.36"
    for entry, (_, data) in zip(manifest["files"], items[1:], strict=True):
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert items[1][1][:4] == b"GGUF"


def test_same_inputs_give_the_same_tarball_bytes(
    tiny_model: Path, tarball: Path, tmp_path: Path
) -> None:
    again = fetch(from_dir=tiny_model, output=tmp_path / "again.tar", install=False)
    assert again.tarball is not None
    assert again.tarball.read_bytes() == tarball.read_bytes()
    # Installing, then exporting, gives the very same bytes back.
    bundle_install.install(tarball)
    exported = bundle.export(NAME, tmp_path)
    assert exported.read_bytes() == tarball.read_bytes()
    # A folder that is not there is the user's slip (exit 2), found before packing.
    with pytest.raises(UsageError, match="no-such-folder does not exist"):
        bundle.export(NAME, tmp_path / "no-such-folder" / "x.tar")


@pytest.mark.slow
def test_round_trip_fetch_from_dir_install_describe(
    tiny_model: Path, photo: Path, tmp_path: Path
) -> None:
    online = {"MDREAM_HOME": str(tmp_path / "online-home")}
    out = tmp_path / "bundles"  # FOLDER/: a folder that does not exist yet is made, as cp would
    built = run_mdream("fetch", "--from-dir", tiny_model, "--output", f"{out}/", env=online)
    assert built.returncode == 0, built.stderr
    tar_path = Path(built.stdout.decode().strip())
    assert tar_path.parent == out and tar_path.is_file() and tar_path.suffix == ".tar"

    offline = {"MDREAM_HOME": str(tmp_path / "fresh-home")}
    installed = run_mdream("bundle", "install", tar_path, env=offline)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout == f"{NAME}\n".encode()

    # `mdream describe` with no --model-dir uses the bundle, and never loads bundle or hub code.
    probe = (
        "import atexit, sys\n"
        "from moondream_cli.cli.app import main\n"
        "bad = ('huggingface_hub', 'moondream_cli.bundles')\n"
        "atexit.register(lambda: sys.stderr.write('LOADED=' + ','.join("
        "m for m in sys.modules if m.startswith(bad)) + '\\n'))\n"
        f"main(['describe', {str(photo)!r}, '-n', '4'])\n"
    )
    described = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        env={**os.environ, **offline, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
        check=False,
    )
    assert described.returncode == 0, described.stderr
    assert described.stdout.strip()
    assert described.stderr.decode() == "LOADED=\n"


@pytest.mark.slow
def test_install_list_verify_remove(tarball: Path, isolated_home: Path) -> None:
    result = bundle_install.install(tarball)
    assert (result.name, result.already) == (NAME, False)
    before = {p: p.stat().st_mtime_ns for p in (isolated_home / "models" / NAME).iterdir()}
    assert bundle_install.install(tarball).already  # a no-op: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in before} == before

    listed = run_mdream("bundle", "list")
    assert listed.returncode == 0
    line = listed.stdout.decode().splitlines()[1]  # after the header
    assert line.startswith(f"{NAME}\t*\t") and "\tQ4_K_M\t" in line
    assert line.endswith("\tverified")

    verified = run_mdream("bundle", "verify", NAME)
    assert (verified.returncode, verified.stdout) == (0, f"ok\t{NAME}\n".encode())

    # One flipped byte, same size: only the full re-hash can tell, and it names the file.
    text = isolated_home / "models" / NAME / "text-model-q4_k_m.gguf"
    data = bytearray(text.read_bytes())
    data[-1] ^= 0x01
    text.write_bytes(bytes(data))
    damaged = run_mdream("bundle", "verify")
    assert damaged.returncode == 3
    assert b"sha256 mismatch" in damaged.stderr
    assert damaged.stdout == b""

    # A failed check sticks: the cheap check (sizes, times) would pass, the bundle is refused.
    image = isolated_home / "photo.png"
    draw_photo().save(image)
    refused = run_mdream("describe", image, "-n", "2")
    assert refused.returncode == 3
    assert f"bundle {NAME} failed its last full check (".encode() in refused.stderr
    assert f"mdream bundle verify {NAME}".encode() in refused.stderr
    doctor = run_mdream("doctor", "--no-self-check")
    assert doctor.returncode == 3 and b"failed its last full check" in doctor.stdout
    row = run_mdream("bundle", "list").stdout.decode().splitlines()[1]
    assert "\tfailed its last full check: " in row and "sha256 mismatch" in row
    data[-1] ^= 0x01  # restored: verified again, used again
    text.write_bytes(bytes(data))
    assert run_mdream("bundle", "verify", NAME).returncode == 0
    assert run_mdream("describe", image, "-n", "2").returncode == 0

    removed = run_mdream("bundle", "remove", NAME)
    assert removed.returncode == 0, removed.stderr
    assert tree(isolated_home / "models") == []
    assert not (isolated_home / "default").exists()
    gone = run_mdream("bundle", "remove", NAME)
    assert gone.returncode == 3 and b"no bundle named" in gone.stderr


def test_a_damaged_install_is_repaired_by_installing_again(
    tarball: Path, isolated_home: Path
) -> None:
    bundle_install.install(tarball)
    (isolated_home / "models" / NAME / "mmproj-f16.gguf").unlink()
    again = bundle_install.install(tarball)
    assert not again.already
    assert (isolated_home / "models" / NAME / "mmproj-f16.gguf").is_file()
    assert [p.name for p in (isolated_home / "models").iterdir()] == [NAME]


def test_a_different_bundle_with_the_same_name_is_refused(
    tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    bundle_install.install(tarball)
    items = members(tarball)
    manifest = json.loads(items[0][1])
    manifest["license"] = "changed"
    other = write_tar(
        tmp_path / "other.tar",
        [regular("manifest.json", json.dumps(manifest).encode()), *items[1:]],
    )
    with pytest.raises(BundleError, match="a different bundle named"):
        bundle_install.install(other)


# -- hostile tarballs ---------------------------------------------------------------------

Items = list[tuple[tarfile.TarInfo, bytes]]
Hostile = list[tuple[tarfile.TarInfo, bytes | None]]
Build = Callable[[Items], Hostile]
TEXT, MMPROJ = "text-model-q4_k_m.gguf", "mmproj-f16.gguf"


def _flip(items: Items) -> Hostile:
    info, data = items[1]
    return [items[0], (info, data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]), items[2]]


def _manifest_naming(name: str) -> Build:
    def build(
        items: list[tuple[tarfile.TarInfo, bytes]],
    ) -> list[tuple[tarfile.TarInfo, bytes | None]]:
        manifest = json.loads(items[0][1])
        manifest["files"][0]["path"] = name
        return [regular("manifest.json", json.dumps(manifest).encode()), items[1], items[2]]

    return build


HOSTILE: dict[str, tuple[Build, str]] = {
    "traversal": (lambda m: [m[0], regular("../escaped.gguf"), *m[1:]], "unsafe member"),
    "absolute path": (lambda m: [m[0], regular("/tmp/mdream-abs.gguf"), *m[1:]], "unsafe member"),
    "symlink out": (
        lambda m: [m[0], special(TEXT, tarfile.SYMTYPE, "/etc/passwd"), m[2]],
        "unsafe member",
    ),
    "symlink in": (
        lambda m: [
            m[0],
            special(TEXT, tarfile.SYMTYPE, MMPROJ),
            m[2],
        ],
        "is a link",
    ),
    "hardlink": (
        lambda m: [
            m[0],
            m[2],
            special(TEXT, tarfile.LNKTYPE, MMPROJ),
        ],
        "is a link",
    ),
    "device": (
        lambda m: [m[0], special(MMPROJ, tarfile.CHRTYPE), m[1]],
        "unsafe member",
    ),
    "directory": (lambda m: [m[0], special("sub", tarfile.DIRTYPE), *m[1:]], "is a directory"),
    "flipped byte": (_flip, "fails its sha256 check"),
    "missing member": (lambda m: [m[0], m[1]], "is missing"),
    "extra member": (lambda m: [*m, regular("notes.txt")], "not listed in the manifest"),
    "duplicate member": (lambda m: [*m, m[2]], "appears twice"),
    "manifest not first": (lambda m: [m[1], m[0], m[2]], "first member must be manifest.json"),
    "manifest names a path": (_manifest_naming("../../x.gguf"), "not a plain file name"),
    "manifest names itself": (_manifest_naming("manifest.json"), "is reserved"),
}


def _hostile_file(case: str, tarball: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{case.replace(' ', '-')}.tar"
    if case == "truncated":
        data = tarball.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif case == "not a tar":
        path.write_bytes(b"GGUF this is not a tarball" * 100)
    elif case == "gzip":
        path.write_bytes(gzip.compress(tarball.read_bytes(), compresslevel=1))
    elif case == "empty":
        path.write_bytes(b"")
    else:
        build, _ = HOSTILE[case]
        write_tar(path, build(members(tarball)))
    return path


ALL_CASES = [*HOSTILE, "truncated", "not a tar", "gzip", "empty"]


@pytest.mark.parametrize("case", ALL_CASES)
def test_hostile_tarball_is_refused_and_nothing_is_left(
    case: str, tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    path = _hostile_file(case, tarball, tmp_path)
    # An existing home with another file in it must come out exactly as it went in.
    isolated_home.mkdir()
    (isolated_home / "keep.txt").write_text("mine")
    before = tree(isolated_home)
    with pytest.raises(BundleError) as err:
        bundle_install.install(path)
    if case in HOSTILE:
        assert HOSTILE[case][1] in str(err.value)
    assert "\n" not in str(err.value)
    assert tree(isolated_home) == before
    assert not Path("/tmp/mdream-abs.gguf").exists()
    assert not (tmp_path / "escaped.gguf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["traversal", "flipped byte", "not a tar", "truncated"])
def test_cli_refuses_hostile_tarball_with_one_line(
    case: str, tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    path = _hostile_file(case, tarball, tmp_path)
    result = run_mdream("bundle", "install", path)
    assert result.returncode == 3
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert lines[-1].startswith(f"mdream: error: {path}: ")
    assert not any(line.startswith("Traceback") for line in lines)
    assert tree(isolated_home) == []


def test_install_refuses_when_space_is_short(
    tarball: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage

    def tiny_disk(path: os.PathLike[str] | str) -> object:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    # The one stand-in: a real full disk cannot be arranged in a test.
    monkeypatch.setattr(shutil, "disk_usage", tiny_disk)
    with pytest.raises(BundleError, match="not enough free space"):
        bundle_install.install(tarball)
    assert tree(isolated_home) == []


# -- help ---------------------------------------------------------------------------------

BUNDLE_COMMANDS = [
    ["fetch"],
    *[["bundle", c] for c in ("install", "list", "default", "verify", "export", "remove")],
]


@pytest.mark.parametrize("command", BUNDLE_COMMANDS)
def test_every_bundle_command_has_help_and_examples(command: list[str]) -> None:
    from typer.testing import CliRunner

    from moondream_cli.cli.app import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "Usage:" in result.output and "Examples:" in result.output
    assert f"mdream {' '.join(command)}" in result.output


@pytest.mark.slow
def test_verify_with_nothing_installed_says_what_to_do() -> None:
    result = run_mdream("bundle", "verify")
    assert result.returncode == 3
    assert b"mdream fetch" in result.stderr
