"""`make install GPU=...`: a build for the GPU backend asked for, for architectures the CUDA
toolkit present can build, never pip's cached CPU wheel.

The Makefile runs with fake ``nvcc`` and ``nvidia-smi`` first on PATH; ``make -n`` prints the
commands it would run, with the architectures already worked out; a fake interpreter in a
fake virtual environment records what ``make install`` really runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import cuda_archs

MAKE = shutil.which("make")
CUDA13_SHORT = [75, 80, 86, 87, 89, 90]  # the fake toolkit: compute_75…compute_90
CUDA12_4 = [50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90]
CUDA13_0 = [75, 80, 86, 87, 88, 89, 90, 100, 110, 103, 120, 121]  # this machine's nvcc 13.0
NO_DRIVER = None  # nvidia-smi present, but no driver answers it (a build machine)


def _tools(folder: Path, toolkit: list[int] | None, gpus: list[str] | None) -> Path:
    """Fake ``nvcc`` (listing ``toolkit``; none when None) and ``nvidia-smi`` (reporting
    ``gpus``' compute capabilities; failing as without a driver when None) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if toolkit is not None:
        listing = "\\n".join(f"compute_{n}" for n in toolkit)
        _script(folder / "nvcc", f'[ "$1" = --list-gpu-arch ] && printf "{listing}\\n"')
    if gpus is None:
        smi = "echo 'NVIDIA-SMI has failed because it could not communicate with the driver'"
        _script(folder / "nvidia-smi", smi + "; exit 9")
    else:
        _script(folder / "nvidia-smi", "printf '" + "\\n".join(gpus) + "\\n'")
    return folder


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _make(
    tmp_path: Path, *args: str, tools: Path, dry: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None
    unset = ("CUDACXX", "CUDA_HOME", "CUDA_PATH", "CMAKE_ARGS", "GPU", "CUDA", "CUDA_ARCHS")
    clean = {k: v for k, v in os.environ.items() if k not in unset}
    path = f"{tools}:{Path(sys.executable).parent}:/usr/bin:/bin"
    where = [f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}"]
    return subprocess.run(
        [MAKE, "-C", str(ROOT), "--no-print-directory", *(["-n"] if dry else []), *args, *where],
        capture_output=True,
        text=True,
        env={**clean, "PATH": path, **(env or {})},
        timeout=120,
        check=False,
    )


def _archs(output: str) -> list[str]:
    found: list[str] = re.findall(r"-DCMAKE_CUDA_ARCHITECTURES=(\S+)", output)
    assert len(found) == 1, output
    return found[0].split(";")


# -- the helper's rules ------------------------------------------------------------------------
def test_nvidia_smi_and_nvcc_listings_are_read_as_numbers() -> None:
    assert cuda_archs.present_archs("8.6\n8.6\n12.0\n") == [86, 120]
    assert cuda_archs.present_archs("No devices were found\n") == []
    assert cuda_archs.toolkit_archs("compute_75\ncompute_90\ncompute_100\ncompute_120a\n") == {
        75,
        90,
        100,
        120,
    }


@pytest.mark.parametrize(
    ("toolkit", "want"),
    [
        (CUDA13_SHORT, ["75", "80", "86", "89", "90"]),
        (CUDA12_4, ["61-virtual", "70-virtual", "75", "80", "86", "89", "90"]),
        (CUDA13_0, ["75", "80", "86", "89", "90", "100", "120"]),
    ],
    ids=["compute_75…90", "CUDA 12.4", "CUDA 13.0"],
)
def test_without_a_gpu_the_default_list_is_cut_to_what_the_toolkit_builds(
    toolkit: list[int], want: list[str]
) -> None:
    assert cuda_archs.pick(set(toolkit), []) == (want, None)


def test_a_present_gpu_the_toolkit_cannot_build_for_is_said_not_skipped() -> None:
    archs, why = cuda_archs.pick(set(CUDA13_0), [61])
    assert archs == [] and why is not None
    assert "6.1" in why and "CUDA 12" in why and "CUDA_ARCHS" in why
    # Two cards, one too old: the build is for the one it can serve.
    assert cuda_archs.pick(set(CUDA13_0), [61, 86]) == (["86"], None)


# -- the Makefile ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("ask", [["install", "GPU=cuda"], ["install", "CUDA=1"]], ids=str)
def test_a_cuda_build_passes_no_architecture_the_toolkit_lacks(
    ask: list[str], tmp_path: Path
) -> None:
    tools = _tools(tmp_path / "bin", CUDA13_SHORT, NO_DRIVER)
    done = _make(tmp_path, *ask, tools=tools)
    assert done.returncode == 0, done.stderr
    archs = _archs(done.stdout)
    assert archs == ["75", "80", "86", "89", "90"]
    assert {int(a.split("-")[0]) for a in archs} <= set(CUDA13_SHORT)
    assert "--no-cache-dir --force-reinstall" in done.stdout
    assert f"touch {tmp_path / 'venv'}/.installed-cuda" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("ask", [["install", "GPU=cuda"], ["install", "CUDA=1"]], ids=str)
def test_with_a_gpu_present_the_build_is_for_that_gpu_only(ask: list[str], tmp_path: Path) -> None:
    tools = _tools(tmp_path / "bin", CUDA13_SHORT, ["8.6"])
    done = _make(tmp_path, *ask, tools=tools)
    assert done.returncode == 0, done.stderr
    assert _archs(done.stdout) == ["86"]


@pytest.mark.slow
def test_cuda_12_keeps_pascal_and_volta_as_ggml_does(tmp_path: Path) -> None:
    done = _make(tmp_path, "install", "GPU=cuda", tools=_tools(tmp_path / "b", CUDA12_4, None))
    assert done.returncode == 0, done.stderr
    assert _archs(done.stdout)[:2] == ["61-virtual", "70-virtual"]
    assert "100" not in _archs(done.stdout)


@pytest.mark.slow
def test_cuda_archs_overrides_and_needs_no_toolkit(tmp_path: Path) -> None:
    tools = _tools(tmp_path / "bin", None, ["8.6"])
    done = _make(tmp_path, "install", "GPU=cuda", "CUDA_ARCHS=90", tools=tools)
    assert done.returncode == 0, done.stderr
    assert _archs(done.stdout) == ["90"]


@pytest.mark.slow
def test_a_gpu_the_toolkit_cannot_serve_stops_the_build_saying_why(tmp_path: Path) -> None:
    done = _make(tmp_path, "install", "GPU=cuda", tools=_tools(tmp_path / "b", CUDA13_0, ["6.1"]))
    assert done.returncode != 0
    assert "compute capability 6.1" in done.stderr and "CUDA_ARCHS" in done.stderr
    assert "pip install" not in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(Path("/usr/local/cuda/bin/nvcc").exists(), reason="a toolkit is installed")
def test_no_toolkit_stops_the_build_saying_what_to_install(tmp_path: Path) -> None:
    done = _make(tmp_path, "install", "GPU=cuda", tools=_tools(tmp_path / "b", None, None))
    assert done.returncode != 0
    assert "no CUDA toolkit found" in done.stderr and "docs/gpu.md" in done.stderr


@pytest.mark.slow
def test_an_nvcc_that_lists_nothing_stops_the_build_saying_so(tmp_path: Path) -> None:
    tools = _tools(tmp_path / "b", [], None)  # an nvcc too old for --list-gpu-arch
    done = _make(tmp_path, "install", "GPU=cuda", tools=tools, env={"CUDACXX": str(tools / "nvcc")})
    assert done.returncode != 0
    assert "--list-gpu-arch` lists no architecture" in done.stderr
    assert "pip install" not in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("gpu", "flag"),
    [("vulkan", "-DGGML_VULKAN=on"), ("hip", "-DGGML_HIP=on"), ("metal", "-DGGML_METAL=on")],
)
def test_each_gpu_backend_is_built_here_with_its_flag(gpu: str, flag: str, tmp_path: Path) -> None:
    done = _make(tmp_path, "install", f"GPU={gpu}", tools=_tools(tmp_path / "b", None, None))
    assert done.returncode == 0, done.stderr
    assert f'CMAKE_ARGS="{flag}' in done.stdout
    assert "--no-cache-dir --force-reinstall" in done.stdout  # never the cached CPU wheel
    assert f"touch {tmp_path / 'venv'}/.installed-{gpu}" in done.stdout


@pytest.mark.slow
def test_an_unknown_backend_is_refused(tmp_path: Path) -> None:
    done = _make(tmp_path, "install", "GPU=cude", tools=_tools(tmp_path / "b", None, None))
    assert done.returncode != 0 and "GPU=cude: pick one of cpu, cuda, vulkan, hip, metal" in (
        done.stderr
    )


def _fake_venv(tmp_path: Path, gpu_lib: str | None) -> Path:
    """A virtual environment whose python records its arguments (and CMAKE_ARGS) in a log,
    holding a llama_cpp with ``gpu_lib`` among its libraries."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    lib = venv / "lib" / "python3.12" / "site-packages" / "llama_cpp" / "lib"
    lib.mkdir(parents=True)
    (lib / "libggml-base.so").touch()
    if gpu_lib:
        (lib / gpu_lib).touch()
    log = tmp_path / "python.log"
    _script(venv / "bin" / "python", f'echo "CMAKE_ARGS=$CMAKE_ARGS $*" >> {log}')
    return log


@pytest.mark.slow
def test_the_stamp_names_the_backend_so_another_one_rebuilds(tmp_path: Path) -> None:
    log = _fake_venv(tmp_path, None)
    tools = _tools(tmp_path / "bin", None, None)
    done = _make(tmp_path, "install", tools=tools, dry=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "venv" / ".installed-cpu").exists()
    assert "--force-reinstall" not in log.read_text()  # a CPU build over a CPU build
    assert _make(tmp_path, "-q", "install", tools=tools).returncode == 0  # up to date
    asked = _make(tmp_path, "-q", "install", "GPU=vulkan", tools=tools)
    assert asked.returncode == 1  # not up to date: the stamp is the CPU one's
    log.unlink()
    done = _make(tmp_path, "install", "GPU=vulkan", tools=tools, dry=False)
    assert done.returncode == 0, done.stderr
    assert "CMAKE_ARGS=-DGGML_VULKAN=on" in log.read_text()
    assert sorted(p.name for p in (tmp_path / "venv").glob(".installed*")) == [".installed-vulkan"]


@pytest.mark.slow
def test_back_to_the_cpu_after_a_gpu_build_reinstalls_the_cpu_wheel(tmp_path: Path) -> None:
    log = _fake_venv(tmp_path, "libggml-cuda.so")
    (tmp_path / "venv" / ".installed-cuda").touch()
    tools = _tools(tmp_path / "bin", None, None)
    assert _make(tmp_path, "-q", "install", tools=tools).returncode == 0  # kept unless asked
    done = _make(tmp_path, "install", "GPU=cpu", tools=tools, dry=False)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    reinstall = [c for c in calls if "--force-reinstall" in c]
    assert len(reinstall) == 1 and reinstall[0].startswith("CMAKE_ARGS= ")  # no GPU flag
    assert "--no-cache-dir" not in reinstall[0]  # pip's cached CPU wheel is the right one
    assert sorted(p.name for p in (tmp_path / "venv").glob(".installed*")) == [".installed-cpu"]
