"""Bundle installs against hostile and unlucky inputs: crafted tar headers, sparse members,
hostile manifests, races, signals, leftovers, full disks and planted links."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_mdream
from moondream_cli import doctor, paths, registry
from moondream_cli import manifest as mf
from moondream_cli.bundles import install as bundle_install
from moondream_cli.bundles import installed as bundle
from moondream_cli.bundles import recipe as recipes
from moondream_cli.bundles.fetch import fetch
from moondream_cli.bundles.staging import models_lock
from moondream_cli.errors import BundleError, ModelError, UsageError
from test_bundles import MMPROJ, NAME, TEXT, members, regular, tarball, tree, write_tar

__all__ = ["tarball"]  # the module-scoped fixture, shared with test_bundles

TAR = shutil.which("tar")


def raw_member(name: str, kind: bytes, payload: bytes) -> bytes:
    """One tar header and its data, exactly as given: what tarfile's writer would not make."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(payload)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % 512)


def crafted_tarball(path: Path, tarball: Path, kind: bytes, payload: bytes) -> Path:
    """The real bundle with one crafted extended header in front of its first member."""
    path.write_bytes(raw_member("././@PaxHeader", kind, payload) + tarball.read_bytes())
    return path


# -- extended headers (CVE-2024-6232) ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        # tarfile's `\d+ hdrcharset=` search is quadratic in a run of digits: about an hour.
        (tarfile.XHDTYPE, b"1" * 1_500_000),
        (tarfile.XHDTYPE, b"9 a=b\n" * 250_000),
        (tarfile.XGLTYPE, b"12345678" * 200_000),
        (tarfile.GNUTYPE_LONGNAME, b"n" * 1_500_000),
    ],
    ids=["pax-digits", "pax-records", "global-pax", "gnu-long-name"],
)
def test_a_huge_extended_header_is_refused_before_tarfile_parses_it(
    kind: bytes, payload: bytes, tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    path = crafted_tarball(tmp_path / "crafted.tar", tarball, kind, payload)
    started = time.monotonic()
    with pytest.raises(BundleError, match="extended tar header of") as err:
        bundle_install.install(path)
    assert time.monotonic() - started < 2
    assert str(err.value).startswith(f"{path}: ")
    assert tree(isolated_home) == []


def test_a_bundle_repacked_by_gnu_tar_in_pax_format_still_installs(
    tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    if TAR is None:
        pytest.skip("no tar binary")
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    for info, data in members(tarball):
        (unpacked / info.name).write_bytes(data)
    repacked = tmp_path / "repacked.tar"
    names = ["manifest.json", TEXT, MMPROJ]
    subprocess.run([TAR, "--format=pax", "-cf", repacked, "-C", unpacked, *names], check=True)
    with tarfile.open(repacked) as tar:  # each member has a pax header (atime, ctime)
        assert all(m.pax_headers for m in tar)
    assert bundle_install.install(repacked).name == NAME


# -- sparse members ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_a_sparse_member_is_refused_before_anything_is_written(
    fmt: str, tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    if TAR is None:
        pytest.skip("no tar binary")
    items = members(tarball)
    manifest = json.loads(items[0][1])
    folder = tmp_path / "sparse"
    folder.mkdir()
    hole = 1 << 30
    with open(folder / TEXT, "wb") as f:  # a 1 GiB hole and a few real bytes
        f.truncate(hole)
        f.write(b"GGUF")
    manifest["files"][0]["size"] = hole + 4
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / MMPROJ).write_bytes(items[2][1])
    path = tmp_path / f"sparse-{fmt}.tar"
    names = ["manifest.json", TEXT, MMPROJ]
    subprocess.run([TAR, f"--format={fmt}", "-S", "-cf", path, "-C", folder, *names], check=True)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(BundleError, match="is a sparse file"):
        bundle_install.install(path)
    assert tree(isolated_home) == []


# -- hostile manifests ---------------------------------------------------------------------


def _manifest(tarball: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(members(tarball)[0][1])
    return body


def test_a_deeply_nested_manifest_is_an_error_not_a_crash() -> None:
    with pytest.raises(ModelError, match="nested too deeply"):
        mf.parse_manifest(b"[" * (1 << 20), where="m.json")
    with pytest.raises(BundleError, match="nested too deeply"):
        recipes.parse_recipe(b'{"format": 1, "files": ' + b"[" * (1 << 20), origin="r.json")


@pytest.mark.parametrize(
    "size",
    [10**4000, 2**50 + 1, -1, True, 1.5, "12"],
    ids=["10**4000", "2**50+1", "negative", "bool", "float", "string"],
)
def test_a_manifest_size_out_of_bounds_is_refused(size: object, tarball: Path) -> None:
    body = _manifest(tarball)
    body["files"][0]["size"] = size
    with pytest.raises(ModelError, match="invalid size"):
        mf.parse_manifest(json.dumps(body), where="m.json")


def test_the_largest_allowed_size_still_parses(tarball: Path) -> None:
    body = _manifest(tarball)
    body["files"][0]["size"] = 2**50
    assert mf.parse_manifest(json.dumps(body)).files[0].size == 2**50


@pytest.mark.parametrize("field", ["name", "path", "sha256"])
def test_a_name_or_hash_ending_in_a_newline_is_refused(field: str, tarball: Path) -> None:
    body = _manifest(tarball)
    if field == "name":
        body["name"] = "evilnl\n"
    else:
        body["files"][0][field] += "\n"
    with pytest.raises(ModelError, match=r"invalid|not a plain file name"):
        mf.parse_manifest(json.dumps(body), where="m.json")
    assert not mf.valid_name("evilnl\n")


def test_a_hostile_manifest_in_a_tarball_is_refused_with_one_line(
    tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    items = members(tarball)
    for i, manifest in enumerate(
        [b"[" * 500_000, json.dumps({**_manifest(tarball), "name": "x\n"}).encode()]
    ):
        path = write_tar(tmp_path / f"m{i}.tar", [regular("manifest.json", manifest), *items[1:]])
        with pytest.raises(BundleError) as err:
            bundle_install.install(path)
        assert "\n" not in str(err.value)
    assert tree(isolated_home) == []


# -- two installs at once ------------------------------------------------------------------


def _same_name_other_bundle(tarball: Path, path: Path) -> Path:
    items = members(tarball)
    body = {**_manifest(tarball), "license": "changed"}
    return write_tar(path, [regular("manifest.json", json.dumps(body).encode()), *items[1:]])


def _wait_for(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_two_installs_of_different_bundles_with_one_name_do_not_both_succeed(
    tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    other = _same_name_other_bundle(tarball, tmp_path / "other.tar")
    models = isolated_home / "models"
    outcome: dict[Path, object] = {}

    def install(path: Path) -> None:
        try:
            outcome[path] = bundle_install.install(path).name
        except BundleError as exc:
            outcome[path] = exc

    threads = [threading.Thread(target=install, args=(p,)) for p in (tarball, other)]
    # Held here, the lock lets both installs check their target (free) and stage in full;
    # then both race for the same name.
    with models_lock(models):
        for t in threads:
            t.start()
        _wait_for(lambda: len(list(models.glob(".staging-*/bundle/.verified.json"))) == 2)
    for t in threads:
        t.join(30)
    errors = [v for v in outcome.values() if isinstance(v, BundleError)]
    assert len(errors) == 1 and "a different bundle named" in str(errors[0])
    (winner,) = (p for p, v in outcome.items() if v == NAME)
    assert (models / NAME / "manifest.json").read_bytes() == members(winner)[0][1]
    assert sorted(p.name for p in models.iterdir()) == [NAME]


# -- leftovers of runs that died -----------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    return int(child.stdout)


def test_the_next_install_removes_only_work_folders_whose_process_is_gone(
    tarball: Path, isolated_home: Path
) -> None:
    models = isolated_home / "models"
    dead = models / f".staging-{NAME}-pid{_dead_pid()}-k1ll3d"
    running = models / f".build-{NAME}-pid{os.getpid()}-bu5y00"
    unknown = models / f".staging-{NAME}-ab12cd"  # made before work folders named their process
    for folder in (dead, running, unknown):
        (folder / "bundle").mkdir(parents=True)
        (folder / "bundle" / TEXT).write_bytes(b"half")
    notes = {w.path: w.describe() for w in paths.leftovers()}
    assert sorted(notes) == sorted([dead, unknown])
    assert "is gone" in notes[dead] and "delete it by hand" in notes[unknown]
    report = doctor.gather(self_check=False)
    assert sorted(report.leftovers) == sorted(notes.values())

    bundle_install.install(tarball)
    assert not dead.exists() and running.is_dir() and unknown.is_dir()
    assert (models / NAME / "manifest.json").is_file()


def test_a_bundle_half_replaced_by_a_run_that_died_is_put_back(
    tarball: Path, tmp_path: Path, isolated_home: Path
) -> None:
    bundle_install.install(tarball)
    models = isolated_home / "models"
    old = models / f".old-{NAME}-pid{_dead_pid()}-h4lf00"
    old.mkdir()
    os.rename(models / NAME, old / NAME)  # killed between the two renames of a replacement
    other = _same_name_other_bundle(tarball, tmp_path / "other.tar")
    with pytest.raises(BundleError, match="a different bundle named"):
        bundle_install.install(other)  # the original is back, so the other one is refused
    assert sorted(p.name for p in models.iterdir()) == [NAME]


@pytest.mark.slow
def test_a_folder_left_by_a_killed_install_is_reported_then_removed(
    tarball: Path, isolated_home: Path
) -> None:
    models = isolated_home / "models"
    with models_lock(models):  # the child stages the bundle in full, then waits here
        child = subprocess.Popen(
            [sys.executable, "-m", "moondream_cli", "bundle", "install", str(tarball)],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            stderr=subprocess.DEVNULL,
        )
        _wait_for(lambda: any(models.glob(".staging-*/bundle/.verified.json")))
        child.kill()
        child.wait(30)
    (left,) = paths.leftovers()
    assert left.pid == child.pid and left.path.name.startswith(f".staging-{NAME}-pid")

    listed = run_mdream("bundle", "list")
    assert listed.returncode == 0
    assert f"mdream: {left.path} was left by an interrupted run".encode() in listed.stderr

    again = run_mdream("bundle", "install", tarball)
    assert again.returncode == 0, again.stderr
    assert b"removed .staging-" in again.stderr
    assert sorted(p.name for p in models.iterdir()) == [NAME]


# -- Ctrl-C and SIGTERM --------------------------------------------------------------------


def _mdream_child(*args: str | Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "moondream_cli", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "signum", "code", "said"),
    [
        ("install", signal.SIGTERM, 143, "terminated"),
        ("install", signal.SIGINT, 130, "interrupted"),
        ("fetch", signal.SIGTERM, 143, "terminated"),
    ],
)
def test_a_signal_mid_install_exits_with_its_code_and_leaves_nothing(
    command: str,
    signum: int,
    code: int,
    said: str,
    tarball: Path,
    tiny_model: Path,
    isolated_home: Path,
) -> None:
    models = isolated_home / "models"
    args = (
        ("bundle", "install", tarball)
        if command == "install"
        else ("fetch", "--from-dir", tiny_model)
    )
    with models_lock(models):  # the child has staged the whole bundle and waits for the lock
        child = _mdream_child(*args)
        _wait_for(lambda: any(models.glob(".*-pid*/bundle/.verified.json")))
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    assert out == b""
    lines = err.decode().splitlines()
    assert lines[-1] == f"mdream: {said}"
    assert sum(said in line for line in lines) == 1
    assert not any(line.startswith("Traceback") for line in lines)
    assert tree(models) == []
    assert not (isolated_home / "default").exists()


# The child sends itself SIGTERM the moment Typer starts to parse its command line: a real
# signal, at a place no command's own handling covers.
SIGNAL_WHILE_PARSING = """
import os, signal, sys
from moondream_cli.cli.app import main

def profile(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "make_context":
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGTERM)

sys.setprofile(profile)
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_while_the_command_line_is_parsed_is_not_a_silent_130(
    tiny_model: Path, isolated_home: Path
) -> None:
    child = _fetch_with_profile(SIGNAL_WHILE_PARSING, tiny_model)
    assert (child.returncode, child.stderr) == (143, b"mdream: terminated\n")
    assert tree(isolated_home) == []


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def full_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """MDREAM_HOME on a real 256 KiB tmpfs, filled up, with one bundle folder in it.
    Mounting needs root; elsewhere the test is skipped."""
    home = tmp_path / "full-home"
    home.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(home)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.decode().strip()}")
    try:
        (home / "models" / NAME).mkdir(parents=True)
        (home / "models" / NAME / "manifest.json").write_text("{}")
        # Written until the disk is full (unbuffered: nothing is left to fail at close).
        with open(home / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        monkeypatch.setenv("MDREAM_HOME", str(home))
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_full_disk_when_recording_the_default_is_one_error_and_no_temporary_file(
    full_home: Path,
) -> None:
    before = tree(full_home)
    with pytest.raises(BundleError, match="No space left on device") as err:
        bundle.set_default(NAME)
    assert f"mdream bundle default {NAME}" in str(err.value)
    assert tree(full_home) == before  # no default, no default.tmp or other temporary file


# -- partial files and existing tarballs ---------------------------------------------------


def test_a_link_planted_at_the_partial_file_is_never_followed(
    tarball: Path, tiny_model: Path, tmp_path: Path
) -> None:
    bundle_install.install(tarball)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    link = out / f"{NAME}.tar.partial"
    link.symlink_to(victim)
    with pytest.raises(BundleError, match="is in the way"):
        bundle.export(NAME, out)
    with pytest.raises(BundleError, match="is in the way"):
        fetch(from_dir=tiny_model, output=out / f"{NAME}.tar", install=False)
    assert victim.read_text() == "precious"
    assert link.is_symlink() and sorted(p.name for p in out.iterdir()) == [link.name]


def test_a_stale_partial_file_of_ours_is_replaced(tarball: Path, tmp_path: Path) -> None:
    bundle_install.install(tarball)
    (tmp_path / f"{NAME}.tar.partial").write_bytes(b"left by a run that died")
    assert bundle.export(NAME, tmp_path).read_bytes() == tarball.read_bytes()
    assert not (tmp_path / f"{NAME}.tar.partial").exists()


def test_export_refuses_to_overwrite_a_tarball_unless_asked(tarball: Path, tmp_path: Path) -> None:
    bundle_install.install(tarball)
    existing = tmp_path / f"{NAME}.tar"
    existing.write_bytes(b"someone else's tarball")
    with pytest.raises(UsageError, match="already exists — pass --overwrite"):
        bundle.export(NAME, tmp_path)
    with pytest.raises(UsageError, match="already exists"):
        bundle.export(NAME, existing)
    assert existing.read_bytes() == b"someone else's tarball"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(NAME)) == [existing.name]
    assert bundle.export(NAME, tmp_path, overwrite=True).read_bytes() == tarball.read_bytes()


@pytest.mark.slow
def test_cli_export_over_an_existing_tarball_is_a_usage_error(
    tarball: Path, tmp_path: Path
) -> None:
    bundle_install.install(tarball)
    first = run_mdream("bundle", "export", NAME, "-o", tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_mdream("bundle", "export", NAME, "-o", tmp_path)
    assert again.returncode == 2
    assert (
        again.stderr.decode()
        .splitlines()[-1]
        .endswith("already exists — pass --overwrite to replace it")
    )
    forced = run_mdream("bundle", "export", NAME, "-o", tmp_path, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == f"{tmp_path / NAME}.tar\n".encode()


@pytest.mark.slow
def test_cli_export_reads_its_output_as_cp_would(tarball: Path, tmp_path: Path) -> None:
    bundle_install.install(tarball)
    exp = tmp_path / "exp"
    exp.mkdir()
    named = run_mdream("bundle", "export", NAME, "-o", exp / "x.tgz")
    assert named.returncode == 0, named.stderr
    assert (exp / "x.tgz").is_file()  # the file asked for, not a folder of that name
    made = run_mdream("bundle", "export", NAME, "-o", f"{tmp_path}/new/")
    assert made.returncode == 0 and (tmp_path / "new" / f"{NAME}.tar").is_file()
    for missing in (tmp_path / "missing" / "x.tar", f"{tmp_path}/missing/deeper/"):
        refused = run_mdream("bundle", "export", NAME, "-o", missing)
        assert refused.returncode == 2
        assert refused.stderr.decode().count("\n") == 1
        assert f"the folder {tmp_path / 'missing'}" in refused.stderr.decode()
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_a_bad_bundle_name_is_refused_before_any_file_is_read(tmp_path: Path) -> None:
    # The folder does not even exist: the name is what is checked first, not after hashing.
    done = run_mdream("fetch", "--from-dir", tmp_path / "nope", "--name", "my tiny")
    assert done.returncode == 2
    assert "invalid bundle name 'my tiny': a bundle name is letters, digits" in done.stderr.decode()


# -- one command line, one set of rules ----------------------------------------------------


def _renamed(tarball: Path, path: Path, name: str) -> Path:
    items = members(tarball)
    body = {**_manifest(tarball), "name": name}
    return write_tar(path, [regular("manifest.json", json.dumps(body).encode()), *items[1:]])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--no-install"], "--no-install needs --output"),
        (["--recipe", "nosuch"], "unknown recipe 'nosuch'"),
        (["--recipe", "no/such.json"], "no such recipe file"),
        (["-r", "moondream2-2024"], "no such option: -r"),
    ],
)
def test_fetch_usage_mistakes_exit_2(args: list[str], said: str, isolated_home: Path) -> None:
    result = run_mdream("fetch", *args, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert said in result.stderr.decode()
    assert result.stdout == b""
    assert tree(isolated_home) == []


@pytest.mark.slow
def test_bundle_default_prints_and_chooses_the_default(tarball: Path, tmp_path: Path) -> None:
    bundle_install.install(tarball)
    bundle_install.install(_renamed(tarball, tmp_path / "b.tar", "other-q4_k_m"))
    shown = run_mdream("bundle", "default")
    assert (shown.returncode, shown.stdout) == (0, f"{NAME}\n".encode())
    chosen = run_mdream("bundle", "default", "other-q4_k_m")
    assert (chosen.returncode, chosen.stdout) == (0, b""), chosen.stderr
    assert run_mdream("bundle", "default").stdout == b"other-q4_k_m\n"
    unknown = run_mdream("bundle", "default", "nosuch")
    assert unknown.returncode == 3
    assert f"installed: {NAME}, other-q4_k_m" in unknown.stderr.decode()


def test_removing_the_default_says_which_bundle_is_the_default_next(
    tarball: Path, tmp_path: Path
) -> None:
    for name in ("a-q4_k_m", "b-q4_k_m", "c-q4_k_m"):
        bundle_install.install(_renamed(tarball, tmp_path / f"{name}.tar", name))
    assert bundle.current_default() == "a-q4_k_m"  # the first installed
    several = bundle.remove("a-q4_k_m")
    assert (several.was_default, several.default, several.left) == (
        True,
        None,
        ["b-q4_k_m", "c-q4_k_m"],
    )
    with pytest.raises(BundleError, match=r"choose one with `mdream bundle default NAME`"):
        bundle.current_default()
    bundle.choose_default("b-q4_k_m")
    one = bundle.remove("b-q4_k_m")
    assert (one.was_default, one.default, one.left) == (True, "c-q4_k_m", ["c-q4_k_m"])
    assert registry.default_name() == "c-q4_k_m"


@pytest.mark.slow
def test_cli_remove_of_the_default_tells_what_happens_next(tarball: Path, tmp_path: Path) -> None:
    for name in ("a-q4_k_m", "b-q4_k_m", "c-q4_k_m"):
        bundle_install.install(_renamed(tarball, tmp_path / f"{name}.tar", name))
    several = run_mdream("bundle", "remove", "a-q4_k_m")
    assert several.returncode == 0, several.stderr
    assert several.stderr.decode().splitlines()[-1] == (
        "mdream: no bundle is the default now (2 installed: b-q4_k_m, c-q4_k_m) — "
        "choose one with `mdream bundle default NAME`"
    )
    run_mdream("bundle", "default", "b-q4_k_m")
    one = run_mdream("bundle", "remove", "b-q4_k_m")
    assert one.stderr.decode().splitlines()[-1] == "mdream: c-q4_k_m is the default bundle now"


@pytest.mark.slow
def test_bundle_list_prints_a_header_and_says_when_nothing_is_installed(tarball: Path) -> None:
    empty = run_mdream("bundle", "list")
    assert empty.returncode == 0
    assert empty.stdout == b"NAME\tDEFAULT\tSIZE\tQUANTIZATION\tMODEL\tSOURCE\tSTATE\n"
    assert b"no bundle is installed" in empty.stderr and b"mdream fetch" in empty.stderr
    bundle_install.install(tarball)
    listed = run_mdream("bundle", "list")
    header, row = listed.stdout.decode().splitlines()
    assert header.split("\t")[:2] == ["NAME", "DEFAULT"] and row.startswith(f"{NAME}\t*\t")
    assert listed.stderr == b""


# The child sends itself SIGTERM from inside one of importlib's weakref callbacks while the
# quantizer's native code is first imported: Python prints a KeyboardInterrupt raised there
# and drops it, and the fetch used to run on to exit 0.
SIGNAL_IN_AN_IMPORT = """
import os, signal, sys
from moondream_cli.cli.app import main

seen = {"quantize": False}

def profile(frame, event, arg):
    code = frame.f_code
    if event != "call":
        return
    if code.co_name == "quantize" and code.co_filename.endswith("quantize.py"):
        seen["quantize"] = True
    elif seen["quantize"] and code.co_name == "cb" and "importlib" in code.co_filename:
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGTERM)

sys.setprofile(profile)
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_while_fetch_imports_the_quantizer_is_not_lost(
    tiny_model: Path, isolated_home: Path
) -> None:
    child = _fetch_with_profile(SIGNAL_IN_AN_IMPORT, tiny_model)
    assert child.returncode == 143, child.stderr
    assert child.stderr.decode().splitlines()[-1] == "mdream: terminated"
    assert b"Exception ignored" not in child.stderr
    assert child.stdout == b""
    assert tree(isolated_home / "models") == []


def _fetch_with_profile(probe: str, model: Path) -> subprocess.CompletedProcess[bytes]:
    """`mdream fetch --from-dir MODEL` in a child that runs ``probe`` (a profiler that sends
    itself SIGTERM at one chosen moment) first."""
    return subprocess.run(
        [sys.executable, "-c", probe, "fetch", "--from-dir", str(model)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        timeout=60,
        check=False,
    )
