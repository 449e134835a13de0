"""Shared fixtures: isolated user state, the tiny Moondream2-shaped GGUF pairs (random and
trained weights), a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Before numpy loads: OpenBLAS's threads spin too, and on a busy 2-core machine the numpy
# reference of the trained tiny model (tests/shapes_reference.py) ran 16 times slower with
# two of them than with one (27 ms a forward pass against 1.7).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
from PIL import Image, ImageDraw

import moondream_gguf
import shapes_gguf

if TYPE_CHECKING:
    from moondream_cli import Moondream

ROOT = Path(__file__).resolve().parent.parent
# strace and network namespaces (unshare -n) exist on Linux only: the syscall traces and the
# Ray cluster tests (a loopback cluster with no network) skip elsewhere, saying so.
LINUX_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason=f"strace and unshare -n are Linux-only; this is {sys.platform}",
)
Arg = str | os.PathLike[str]  # one command-line argument, as run_mdream takes them

# llama.cpp's OpenMP threads spin while waiting; with many test processes on a small machine
# that turns 0.4 s runs into 10 s ones. Passive waiting changes no result. OpenMP reads this
# once, when llama.cpp loads: set here, it reaches the engines this process loads as well as
# the children each test starts (isolated_home keeps it set for them).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

# `make test-fast` runs two pytest workers (pytest-xdist), and each is pinned to a CPU of its
# own before any engine starts a thread: the engines' default thread count is then 1 (the
# cores a process may run on), and the two workers' spinning threads never share a core.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and hasattr(os, "sched_setaffinity"):
    _CPUS = sorted(os.sched_getaffinity(0))
    if len(_CPUS) > 1:
        os.sched_setaffinity(0, {_CPUS[int(_WORKER[2:]) % len(_CPUS)]})

# The tests press Ctrl-C at the children they start. Started in the background by a script
# (`make test &`: the shell starts it with SIGINT ignored), the suite would hand the ignored
# SIGINT on to every child, and mdream, rightly, leaves an ignored SIGINT ignored, as `nohup`
# and `&` mean. A Python handler is reset to the default at exec: the children start as from
# a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own MDREAM_HOME and HF cache; no real user state is touched."""
    home = tmp_path / "mdream-home"
    monkeypatch.setenv("MDREAM_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    for var in ("MDREAM_MODEL", "MDREAM_DEBUG", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny random-weight text GGUF + mmproj (written in well under 1 s)."""
    directory = tmp_path_factory.mktemp("tiny-model")
    moondream_gguf.write_pair(directory)
    return directory


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny *trained* Moondream's GGUF pair, written from the committed
    float16 weights (tests/data/shapes-moondream; its world: tests/shapes_world.py)."""
    directory = tmp_path_factory.mktemp("trained-model")
    shapes_gguf.write_pair(directory)
    return directory


@pytest.fixture(scope="session")
def trained_md(trained_model: Path) -> Iterator[Moondream]:
    """One loaded Moondream on the trained pair, shared by the tests that ask it things."""
    from moondream_cli import Moondream

    model = Moondream(trained_model)
    yield model
    model.close()


@pytest.fixture(scope="session")
def md(tiny_model: Path) -> Iterator[Moondream]:
    """One loaded Moondream on the tiny pair, shared by the API tests."""
    from moondream_cli import Moondream
    from moondream_cli.settings import ModelOptions, Settings

    model = Moondream(tiny_model, settings=Settings(model=ModelOptions(threads=2)))
    yield model
    model.close()


def draw_photo(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    """A small photo-like RGB picture: a gradient with a couple of shapes."""
    w, h = size
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    d = ImageDraw.Draw(img)
    d.rectangle((w // 8, h // 6, w // 2, h // 2), fill=(200, 40 + seed * 30 % 200, 40))
    d.ellipse((w // 2, h // 3, w - 4, h - 4), fill=(30, 90, 200))
    return img


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    draw_photo().save(path, quality=90)
    return path


def run_mdream(
    *args: Arg,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real `mdream` entry point in a child process (C-level output included)."""
    full_env = dict(os.environ)
    # The child imports this checkout's code, whichever checkout the venv was installed from.
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), full_env.get("PYTHONPATH", "")) if p
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "moondream_cli", *map(str, args)],
        input=input if input is not None else b"",
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def within(seconds: float, work: Callable[[], object]) -> object:
    """``work()``'s result, failing (not hanging) the test if it blocks for ``seconds``."""
    box: list[object] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            box.append(work())
        except BaseException as exc:  # handed to the test's thread below
            failed.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    if failed:
        raise failed[0]
    return box[0]
