"""On a GPU build: the batch sized from ggml's own device API, and one line saying why a GPU
build that found no GPU runs on the CPU.

This machine's llama.cpp is a CPU build, so these tests load the real engine on the tiny
pair with ggml's answers replaced where they differ on a GPU machine: whether it can
offload, the devices' memory, the backends registered and what they logged. Offloading on a
CPU build is a no-op in llama.cpp, so the rest of the load is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from moondream_cli import locate
from moondream_cli.engine import Engine, EngineOptions, native
from moondream_cli.engine.native import Device, devices
from moondream_cli.engine.plan import MAX_AUTO_BATCH, kv_bytes_per_position
from moondream_cli.gguf_meta import read_metadata

CUDA_TOO_NEW = (
    "ggml_cuda_init: failed to initialize CUDA: CUDA driver version is insufficient for CUDA "
    "runtime version"
)


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Device]]:
    """A build that offloads, with the devices the test puts in the list."""
    found: list[Device] = []
    monkeypatch.setattr(native, "gpu_offload", lambda: True)
    monkeypatch.setattr(native, "gpu_devices", lambda: tuple(found))
    yield found


@pytest.fixture
def cuda_without_driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A CUDA build on a driver too old for it: CUDA registered, with no device."""
    monkeypatch.setattr(devices, "backends", lambda: (("CPU", 1), ("CUDA", 0)))
    monkeypatch.setattr(devices, "init_log", lambda: [(1, "loaded"), (3, CUDA_TOO_NEW)])
    devices.missing_gpu.cache_clear()
    yield
    devices.missing_gpu.cache_clear()


def _sequence_bytes(model: Path, n_ctx: int) -> int:
    meta = read_metadata(next(model.glob("*text*.gguf")))
    n_layer, n_embd = meta["phi2.block_count"], meta["phi2.embedding_length"]
    assert isinstance(n_layer, int) and isinstance(n_embd, int)
    return kv_bytes_per_position(n_layer, n_embd) * n_ctx


def test_the_gpu_batch_comes_from_the_devices_free_memory(
    gpu_build: list[Device], tiny_model: Path
) -> None:
    files = locate.resolve(tiny_model)
    options = EngineOptions(threads=2)
    per_seq = _sequence_bytes(tiny_model, options.n_ctx)
    mmproj = files.mmproj.stat().st_size
    # Room for 5 sequences counted twice, in half the memory left once the mmproj is in.
    gpu_build.append(Device("Vulkan0", "a 4 GB card", 20 * per_seq + mmproj, 4 * 2**30))
    with Engine(files, options) as engine:
        assert engine.on_gpu
        assert engine.batch == 5


def test_unknown_gpu_memory_loads_at_most_two_sequences(
    gpu_build: list[Device], tiny_model: Path
) -> None:
    gpu_build.append(Device("Vulkan0", "a driver without a memory budget", None, None))
    with Engine(locate.resolve(tiny_model), EngineOptions(threads=2)) as engine:
        assert 1 <= engine.batch <= 2
    # The tiny model's KV caches are small: with the memory known it would take many more.
    gpu_build[0] = Device("Vulkan0", "known", 10**12, 10**12)
    with Engine(locate.resolve(tiny_model), EngineOptions(threads=2)) as engine:
        assert engine.batch == MAX_AUTO_BATCH


def test_a_gpu_build_without_a_gpu_says_why(cuda_without_driver: None, tiny_model: Path) -> None:
    with Engine(locate.resolve(tiny_model), EngineOptions(threads=2)) as engine:
        assert not engine.on_gpu
        why = engine.gpu_missing
    assert why is not None
    assert "has CUDA but found no GPU" in why and "driver version is insufficient" in why
    assert "loaded" not in why  # only what ggml warned or erred about


def test_asking_for_the_cpu_silences_it(cuda_without_driver: None, tiny_model: Path) -> None:
    with Engine(locate.resolve(tiny_model), EngineOptions(threads=2, gpu=False)) as engine:
        assert engine.gpu_missing is None


def test_this_cpu_build_is_not_a_gpu_build_without_a_gpu(tiny_model: Path) -> None:
    assert ("CPU", 1) in native.backends()
    assert native.missing_gpu() is None
    with Engine(locate.resolve(tiny_model), EngineOptions(threads=2)) as engine:
        assert engine.gpu_missing is None


@pytest.mark.parametrize(
    ("registered", "log", "want"),
    [
        ((("CPU", 1),), [], None),
        ((("CPU", 1), ("CUDA", 1)), [(3, CUDA_TOO_NEW)], None),
        ((("CPU", 1), ("BLAS", 1)), [], None),  # BLAS helps the CPU: not a GPU
        ((("CUDA", 0), ("Vulkan", 0)), [], "has CUDA and Vulkan but found no GPU; running"),
        ((("Metal", 0),), [(2, "ggml_metal_init: no Metal device")], "(ggml_metal_init: no"),
        ((("Vulkan", 1), ("CUDA", 0)), [], None),  # Vulkan serves the GPU CUDA could not
    ],
)
def test_no_gpu_reason(
    registered: tuple[tuple[str, int], ...], log: list[tuple[int, str]], want: str | None
) -> None:
    why = native.no_gpu_reason(registered, log)
    if want is None:
        assert why is None
    else:
        assert why is not None and want in why and "docs/gpu.md" in why


# -- what the user sees ----------------------------------------------------------------------
_PLANT = textwrap.dedent(
    """
    import sys
    from moondream_cli.engine.native import devices
    from moondream_cli.cli.app import main

    devices.backends = lambda: (("CPU", 1), ("CUDA", 0))
    devices.init_log = lambda: [(3, {why!r})]
    main(sys.argv[1:])
    """
)


def _run(*args: str | Path, questions: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-c", _PLANT.format(why=CUDA_TOO_NEW), *map(str, args)],
        capture_output=True,
        env=env,
        input=questions,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_describe_warns_once_on_stderr_and_cpu_silences_it(tiny_model: Path, photo: Path) -> None:
    run = _run("describe", photo, "-n", "4", "-m", tiny_model, "--threads", "2")
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.strip()
    lines = run.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mdream: warning: this llama.cpp build has CUDA but found no GPU")
    assert "driver version is insufficient" in lines[0] and "--cpu" in lines[0]
    quiet = _run("describe", photo, "-n", "4", "-m", tiny_model, "--threads", "2", "--cpu")
    assert quiet.returncode == 0 and quiet.stderr == b"", quiet.stderr.decode()
    assert quiet.stdout == run.stdout


@pytest.mark.slow
def test_chat_warns_too(tiny_model: Path, photo: Path) -> None:
    run = _run("chat", photo, "-m", tiny_model, "-n", "4", questions=b"What is it?\n")
    assert run.returncode == 0, run.stderr.decode()
    warnings = [line for line in run.stderr.decode().splitlines() if "warning" in line]
    assert len(warnings) == 1 and "has CUDA but found no GPU" in warnings[0]


@pytest.mark.slow
def test_doctor_reports_it(tiny_model: Path) -> None:
    run = _run("doctor", "--format", "json", "--model-dir", tiny_model)
    report = json.loads(run.stdout)
    assert "driver version is insufficient" in report["gpu_missing"]
    assert run.returncode == 0, run.stderr.decode()  # it runs, on the CPU: not a failure
    text = _run("doctor", "--no-self-check").stdout.decode()
    assert "gpu" in text and "none: this llama.cpp build has CUDA but found no GPU" in text
