"""The main path on an OS without the POSIX-only calls: native Windows lacks ``os.O_NONBLOCK``,
``fcntl``, ``os.fchmod`` (before Python 3.13), ``os.statvfs``, every call's ``dir_fd`` (it
raises NotImplementedError there, and a folder cannot be ``os.open``-ed at all), and its
``os.kill(pid, 0)`` kills.

Each test takes the attribute away from the real ``os`` module (or makes ``import fcntl``
fail) and runs a real describe in this process on the tiny model: a folder read, each image
answered, a sidecar written beside it, then the same run continued with ``--resume`` onto
its own JSONL output.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import stat
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, draw_photo
from moondream_cli import paths, portable
from moondream_cli.driver import run_job
from moondream_cli.job import Job
from moondream_cli.progress import Progress
from moondream_cli.prompts import Style, describe_task
from moondream_cli.records import Format
from moondream_cli.settings import InputOptions, ModelOptions, OutputOptions, Settings

POSIX_ONLY = ("O_NONBLOCK", "fchmod", "fcntl", "dir_fd", "statvfs")
TAKES_DIR_FD = ("open", "stat", "lstat", "access", "replace", "rename", "unlink", "chmod", "mkdir")


def _take_away(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "fcntl":
        monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    elif name == "dir_fd":
        _no_dir_fd(monkeypatch)
    elif name == "statvfs":
        monkeypatch.delattr(os, "statvfs")
        monkeypatch.delattr(os, "fstatvfs")
    else:
        monkeypatch.delattr(os, name)


def _no_dir_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Windows: no call takes a folder's descriptor, and a folder cannot be opened."""
    monkeypatch.setattr(os, "supports_dir_fd", set())
    for call in TAKES_DIR_FD:

        def windows(*args: object, _real: object = getattr(os, call), **kwargs: object) -> object:
            if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                raise NotImplementedError("dir_fd unavailable on this platform")
            if _real is os.open and os.path.isdir(args[0]):  # type: ignore[arg-type]
                raise PermissionError(13, "Permission denied", args[0])
            return _real(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(os, call, windows)


# All absent at once in the fast tier; each alone (a fallback that leaned on another call
# would show there) in the slow one.
@pytest.fixture(params=["all", *(pytest.param(n, marks=pytest.mark.slow) for n in POSIX_ONLY)])
def without(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    names = POSIX_ONLY if request.param == "all" else (request.param,)
    for name in names:
        _take_away(name, monkeypatch)
    yield request.param


def _describe(folder: Path, model: Path, out: io.TextIOBase, **outputs: object) -> int:
    task = describe_task()
    settings = Settings(
        inputs=InputOptions(recursive=True),
        outputs=OutputOptions(**outputs),  # type: ignore[arg-type]
        model=ModelOptions(model_dir=model, threads=2),
    )
    job = Job((str(folder),), (task.question,), settings, 4, style=Style.CAPTION)
    outcome = run_job(job, out, Progress())  # type: ignore[arg-type]
    return outcome.failed


def test_the_main_path_runs_without_the_posix_only_calls(
    without: str, tmp_path: Path, tiny_model: Path
) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    draw_photo(seed=1).save(folder / "a.jpg")
    draw_photo(seed=2).save(folder / "sub" / "b.png")
    # A sidecar run: every image read (O_NONBLOCK), every sidecar given its mode (fchmod),
    # written in its folder (dir_fd), its filesystem asked whether it is read-only (statvfs);
    # XMP sidecars too where the extra is installed.
    xmp = importlib.util.find_spec("exiv2") is not None
    assert _describe(folder, tiny_model, io.StringIO(), sidecar=True, xmp=xmp) == 0
    written = [folder / "a.txt", folder / "sub" / "b.txt"]
    written += [folder / "a.jpg.xmp", folder / "sub" / "b.png.xmp"] if xmp else []
    for sidecar in written:
        assert sidecar.read_text().strip()
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o666 & ~umask
    # A JSONL run, then the same run resumed onto its own output (fcntl: is it '>>'?). Opened
    # by Python for appending, the file's position is at its end, as `>>` leaves it on Windows.
    captions = tmp_path / "captions.jsonl"
    with open(captions, "a", encoding="utf-8") as out:
        assert _describe(folder, tiny_model, out, fmt=Format.JSONL) == 0
    first = captions.read_text().splitlines()
    assert len(first) == 2 and all(json.loads(line)["answer"] for line in first)
    with open(captions, "a", encoding="utf-8") as out:
        assert _describe(folder, tiny_model, out, fmt=Format.JSONL, resume=str(captions)) == 0
    assert captions.read_text().splitlines() == first  # both skipped: nothing added


def test_resuming_onto_a_file_being_written_over_is_still_refused_without_fcntl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path
) -> None:
    from moondream_cli.errors import UsageError

    _take_away("fcntl", monkeypatch)
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"path": "a.jpg", "question": "q", "answer": "a", "error": null}\n')
    # Opened for writing from its start: the first record would go over the earlier ones.
    with open(captions, "r+", encoding="utf-8") as out, pytest.raises(UsageError, match=">>"):
        _describe(tmp_path, tiny_model, out, fmt=Format.JSONL, resume=str(captions))


def test_read_flags_ask_for_binary_where_the_os_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "O_BINARY", 0x8000, raising=False)
    assert portable.read_flags() & 0x8000
    monkeypatch.delattr(os, "O_BINARY")
    monkeypatch.delattr(os, "O_NONBLOCK")
    assert portable.read_flags() == os.O_RDONLY | os.O_CLOEXEC


def test_appends_reads_the_files_position_without_fcntl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("one record\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        assert portable.appends(fd)  # fcntl sees O_APPEND
    finally:
        os.close(fd)
    _take_away("fcntl", monkeypatch)
    with open(path, "a") as appending, open(path, "r+") as over:
        assert portable.appends(appending.fileno())
        assert not portable.appends(over.fileno())
    path.write_text("")
    with open(path, "r+") as empty:
        assert portable.appends(empty.fileno())  # nothing in it to lose


class _FakeWinapi(types.ModuleType):
    """``_winapi`` as Windows answers: pid 10 runs, 11 has exited, 12 is someone else's,
    anything else does not exist."""

    def __init__(self) -> None:
        super().__init__("_winapi")
        self.closed: list[int] = []

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:
        if pid in (10, 11):
            return pid + 1000
        error = OSError(f"OpenProcess({pid})")
        error.winerror = 5 if pid == 12 else 87  # type: ignore[attr-defined]
        raise error

    def GetExitCodeProcess(self, handle: int) -> int:
        return 259 if handle == 1010 else 0

    def CloseHandle(self, handle: int) -> None:
        self.closed.append(handle)


def test_on_windows_liveness_is_asked_of_the_process_never_sent_a_signal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def kill(pid: int, sig: int) -> None:
        raise AssertionError(f"os.kill({pid}, {sig}) would terminate it on Windows")

    winapi = _FakeWinapi()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setitem(sys.modules, "_winapi", winapi)
    alive = {pid: portable.process_alive(pid) for pid in (10, 11, 12, 13, 0)}
    assert alive == {10: True, 11: False, 12: True, 13: False, 0: False}
    assert winapi.closed == [1010, 1011]
    # What doctor and the bundle commands build on: work folders by their process.
    for pid in (10, 11):
        (tmp_path / f".staging-tiny-pid{pid}-abc").mkdir()
    assert [w.pid for w in paths.leftovers(tmp_path)] == [11]


def test_on_posix_a_signal_zero_is_the_check() -> None:
    if sys.platform == "win32":
        pytest.skip("POSIX only")
    assert portable.process_alive(os.getpid())
    assert not portable.process_alive(2**22 + 12345)  # above Linux's pid_max default


def test_os_kill_is_called_only_where_windows_is_kept_away_from_it() -> None:
    callers = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "src" / "moondream_cli").rglob("*.py")
        if "os.kill(" in path.read_text(encoding="utf-8")
    ]
    assert callers == ["src/moondream_cli/portable.py"]
