"""The in-process guard: a network attempt during a real `mdream describe` is exit 4.

Each test runs a child process that plants code inside the guarded region (the image
loader, which runs after the guard is on and the model is loaded), then runs the real CLI
entry point on the tiny model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from moondream_cli.doctor import NETWORK_MODULES

pytestmark = pytest.mark.slow  # every test runs `mdream` in a child process

# Modules that mean download code, or an HTTP stack, reached the inference path: doctor's
# list of network stacks plus mdream's own bundle and download corner.
FORBIDDEN = (
    *NETWORK_MODULES,
    "moondream_cli.bundles",  # the package and every module in it
)


def _run_planted(
    code: str, args: list[str], report: Path, model: Path
) -> tuple[int, bytes, bytes, dict[str, object]]:
    """Run ``mdream ARGS`` with ``code`` planted at the start of the image loader.

    The child writes what it saw (environment, imported modules) to ``report`` as JSON.
    """
    script = textwrap.dedent(
        """
        import json, os, sys
        import moondream_cli.images as images
        from moondream_cli.cli.app import main

        real = images.load_image
        seen = {{}}

        def planted(*args, **kwargs):
            seen["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE")
            seen["CUDA_CACHE_DISABLE"] = os.environ.get("CUDA_CACHE_DISABLE")
        {code}
            return real(*args, **kwargs)

        images.load_image = planted
        try:
            main(sys.argv[1:])
        finally:
            seen["modules"] = sorted(sys.modules)
            with open({report!r}, "w") as f:
                json.dump(seen, f)
        """
    ).format(code=textwrap.indent(textwrap.dedent(code), "    "), report=str(report))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MDREAM_MODEL=str(model))
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        input=b"",
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    seen = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, done.stdout, done.stderr, seen


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real loopback server: proof that a blocked connection never arrived."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        yield server


PLANTS = {
    "create_connection": "import socket; socket.create_connection(('127.0.0.1', {port}), 2)",
    "unix-socket": "import socket; socket.socket(socket.AF_UNIX).connect('/run/nscd/socket')",
    "name-lookup": "import socket; socket.getaddrinfo('localhost', {port})",
    "urllib": (
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)"
    ),
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_network_attempt_in_a_real_describe_exits_4(
    plant: str, tmp_path: Path, tiny_model: Path, photo: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    code, out, err, _ = _run_planted(
        PLANTS[plant].format(port=port),
        ["describe", str(photo), "-n", "4"],
        tmp_path / "seen.json",
        tiny_model,
    )
    assert code == 4, err.decode()
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mdream: error: network access attempted during inference (")
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing got through


def test_the_same_child_without_a_plant_succeeds(
    tmp_path: Path, tiny_model: Path, photo: Path
) -> None:
    # The control for the test above: the harness itself does not cause exit 4.
    code, out, err, _ = _run_planted(
        "pass", ["describe", str(photo), "-n", "4"], tmp_path / "seen.json", tiny_model
    )
    assert code == 0, err.decode()
    assert out.strip() and err == b""


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["describe", "{photo}", "-n", "4"], id="describe"),
        pytest.param(["ask", "{photo}", "-q", "What?", "-q", "Where?", "-n", "4"], id="ask"),
    ],
)
def test_inference_runs_offline_without_download_code(
    args: list[str], tmp_path: Path, tiny_model: Path, photo: Path
) -> None:
    assert "HF_HUB_OFFLINE" not in os.environ  # the autouse fixture removed it
    code, _, err, seen = _run_planted(
        "pass", [a.format(photo=photo) for a in args], tmp_path / "seen.json", tiny_model
    )
    assert code == 0, err.decode()
    assert seen["HF_HUB_OFFLINE"] == "1"
    assert seen["CUDA_CACHE_DISABLE"] == "1"  # the GPU caches are off (the test below: all)
    modules = seen["modules"]
    assert isinstance(modules, list)
    assert "moondream_cli.engine" in modules  # the report covers a real inference
    loaded = [m for m in modules for p in FORBIDDEN if m == p or m.startswith(p + ".")]
    assert loaded == []


# What each GPU backend's driver would otherwise write to disk: compiled kernels and shaders.
GPU_CACHES = {
    "CUDA_CACHE_DISABLE": "1",  # the CUDA driver's PTX JIT cache, ~/.nv/ComputeCache
    "MESA_SHADER_CACHE_DISABLE": "true",  # Mesa's Vulkan drivers (AMD, Intel): ~/.cache/mesa*
    "MESA_GLSL_CACHE_DISABLE": "true",  # the same, before Mesa 22
    "__GL_SHADER_DISK_CACHE": "0",  # NVIDIA's Vulkan driver: ~/.nv/GLCache
    "AMD_COMGR_CACHE": "0",  # ROCm's code object manager: ~/.cache/comgr
}


def test_the_gpu_caches_are_off_before_llama_cpp_loads(
    tmp_path: Path, tiny_model: Path, photo: Path
) -> None:
    # The child notes the C environment (what a driver reads) at the moment Python first
    # imports llama_cpp, which loads every ggml backend; a user's own setting is overridden.
    report = tmp_path / "seen.json"
    script = textwrap.dedent(
        f"""
        import ctypes, json, sys
        from moondream_cli.cli.app import main

        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        seen = {{}}

        def hook(event, args):
            if event == "import" and args[0] == "llama_cpp" and "env" not in seen:
                names = {sorted(GPU_CACHES)!r}
                seen["env"] = {{n: (libc.getenv(n.encode()) or b"").decode() for n in names}}

        sys.addaudithook(hook)
        try:
            main(sys.argv[1:])
        finally:
            with open({str(report)!r}, "w") as f:
                json.dump(seen, f)
        """
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "src"),
        MDREAM_MODEL=str(tiny_model),
        CUDA_CACHE_DISABLE="0",
        MESA_SHADER_CACHE_DISABLE="false",
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "describe", str(photo), "-n", "4"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(report.read_text())["env"] == GPU_CACHES
