"""What `pip install mdream` installs: the wheel, built from this checkout and installed into a
fresh virtual environment without -e, runs as a user would run it.

An editable install reads the source tree, so a package left out of the wheel went unseen:
`moondream_cli.ray` once was, and `--ray` failed with a ModuleNotFoundError for every
non-editable install. The dependencies are not downloaded (nothing is, at test time): the
environment gets the dev environment's own copies of exactly the distributions the wheel
requires, found from their metadata, so an optional extra (Ray) stays absent as it would be.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment
PIP = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the checkout's files (tracked, or new and not ignored), as from
    a fresh clone: setuptools' build/ folder from an earlier build would hide a package the
    build no longer finds."""
    tree = tmp_path_factory.mktemp("tree")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(tree)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("mdream-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment holding the wheel and its runtime dependencies, nothing else."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for dist in _runtime_closure(wheel):
        _link_distribution(dist, site)
    subprocess.run(
        [*PIP, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return env


def _requirements(requires: list[str] | None) -> list[str]:
    """Distribution names a Requires-Dist list needs outside any extra."""
    names = []
    for spec in requires or []:
        if "extra ==" in spec:
            continue
        marker = spec.partition(";")[2].strip()
        if marker and not _marker_holds(marker):
            continue
        names.append(re.split(r"[\s<>=!~\[;(]", spec, maxsplit=1)[0])
    return names


def _marker_holds(marker: str) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate()


def _runtime_closure(wheel: Path) -> list[metadata.Distribution]:
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in zf.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    todo, seen, dists = _requirements(requires), set(), []
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        dists.append(dist)
        todo.extend(_requirements(dist.requires))
    return dists


def _link_distribution(dist: metadata.Distribution, site: Path) -> None:
    """The distribution's top-level files and folders, linked into ``site``."""
    here = Path(sysconfig.get_paths()["purelib"])
    for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
        target = site / top
        if not target.exists() and (here / top).exists():
            target.symlink_to(here / top)


def _mdream(venv: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [venv / "bin" / "mdream", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_the_wheel_holds_every_module_of_the_package(wheel: Path) -> None:
    source = ROOT / "src"
    want = {p.relative_to(source).as_posix() for p in source.rglob("*.py")}
    recipes = {f"moondream_cli/recipes/{p.name}" for p in (ROOT / "bundles").glob("*.json")}
    with zipfile.ZipFile(wheel) as zf:
        got = set(zf.namelist())
    assert want - got == set()
    assert recipes and recipes - got == set()


def test_the_installed_wheel_runs_from_its_own_environment(venv: Path, tiny_model: Path) -> None:
    version = _mdream(venv, "--version")
    assert version.returncode == 0 and version.stdout.startswith("mdream ")
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import moondream_cli; print(moondream_cli.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(venv))  # the wheel's copy, not this checkout's

    from PIL import Image

    image = venv.parent / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    run = _mdream(venv, "describe", image, "--model-dir", tiny_model, "-n", "4", "--threads", "2")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_every_module_imports_from_the_installed_wheel(venv: Path) -> None:
    code = (
        "import importlib, pkgutil, moondream_cli\n"
        "for m in pkgutil.walk_packages(moondream_cli.__path__, 'moondream_cli.'):\n"
        "    if not m.name.endswith('__main__'):  # that one runs the CLI\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    run = subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"


def test_ray_without_its_extra_is_the_one_line_install_hint(venv: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    run = _mdream(venv, "describe", tmp_path, "--ray", "127.0.0.1:6380")
    assert run.returncode == 2
    assert run.stderr == "mdream: error: --ray needs the Ray extra: pip install 'mdream[ray]'\n"
