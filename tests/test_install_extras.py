"""`pip install -e '.[dev]'` installs everywhere: Ray only where it has a wheel.

Read from the installed package's own metadata, the requirement as pip sees it, with each
machine's environment markers put in.
"""

from __future__ import annotations

from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement

# Where Ray (>= 2.50) has wheels on PyPI, and where it has none (checked with pip's
# --dry-run --platform against the index: no macOS x86_64 since 2.50, no win_arm64).
MACHINES = {
    "Linux x86-64": ("linux", "x86_64", True),
    "Linux arm64": ("linux", "aarch64", True),
    "macOS Apple silicon": ("darwin", "arm64", True),
    "macOS Intel": ("darwin", "x86_64", False),
    "Windows x64": ("win32", "AMD64", True),
    "Windows on Arm": ("win32", "ARM64", False),
}


def _requirements(extra: str, platform: str = "linux", arch: str = "x86_64") -> list[Requirement]:
    """What ``[extra]`` installs on that machine."""
    env = {"extra": extra, "sys_platform": platform, "platform_machine": arch}
    found = []
    for text in requires("mdream") or []:
        req = Requirement(text)
        if req.marker is not None and req.marker.evaluate(env):
            found.append(req)
    return found


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_dev_asks_for_ray_only_where_it_has_wheels(machine: str) -> None:
    platform, arch, has_wheels = MACHINES[machine]
    ray = [r for r in _requirements("dev", platform, arch) if r.name == "ray"]
    assert len(ray) == (1 if has_wheels else 0)


def test_the_test_extra_has_everything_the_tests_import_but_ray() -> None:
    names = {r.name for r in _requirements("test")}
    assert {"pytest", "gguf", "jsonschema", "mypy", "ruff", "pillow-heif"} <= names
    assert "ray" not in names
    assert "mdream" in {r.name for r in _requirements("dev")}  # [dev] is [test] and Ray
