"""`mdream doctor`: backend, where data lives, bundles and their state, the privacy self-check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, run_mdream
from moondream_cli import doctor
from moondream_cli import manifest as mf


def install_bundle(home: Path, model: Path, name: str = "tiny") -> Path:
    """Install the tiny pair as a bundle the way `bundle install` leaves one: hashed, recorded."""
    directory = home / "models" / name
    directory.mkdir(parents=True)
    entries = []
    for src in sorted(model.glob("*.gguf")):
        shutil.copy(src, directory / src.name)
        role = "mmproj" if "mmproj" in src.name else "text"
        entries.append(mf.FileEntry(src.name, role, src.stat().st_size, mf.sha256_file(src)))
    manifest = mf.Manifest(name=name, files=tuple(entries))
    (directory / mf.MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    mf.record_verified(directory, manifest)
    return directory


def _json(run: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    data = json.loads(run.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.slow
def test_a_fresh_install_without_a_model_is_not_healthy_and_says_what_to_do(
    isolated_home: Path,
) -> None:
    import llama_cpp

    run = run_mdream("doctor", "--format", "json")
    assert run.returncode == 3, run.stderr.decode()
    report = _json(run)
    assert report["mdream"] == "0.1.0"
    assert report["llama_cpp"] == llama_cpp.__version__
    expected = "CPU" if not llama_cpp.llama_supports_gpu_offload() else report["backend"]
    assert report["backend"] == expected and report["backend"] != "unavailable"
    assert report["mdream_home"] == str(isolated_home)
    assert report["mdream_home_from"] == "MDREAM_HOME"
    assert report["models_dir"] == str(isolated_home / "models")
    assert report["bundles"] == []
    check = report["self_check"]
    assert isinstance(check, dict)
    assert check["status"] == "skipped"
    assert "mdream fetch" in check["detail"]
    assert report["healthy"] is False


@pytest.mark.slow
def test_installed_bundle_is_verified_and_the_self_check_passes(
    isolated_home: Path, tiny_model: Path
) -> None:
    install_bundle(isolated_home, tiny_model)
    run = run_mdream("doctor", "--format", "json")
    assert run.returncode == 0, run.stderr.decode()
    assert run.stderr == b""
    report = _json(run)
    assert report["default_bundle"] == "tiny"
    bundles = report["bundles"]
    assert isinstance(bundles, list)
    (bundle,) = bundles
    assert bundle["name"] == "tiny" and bundle["state"] == "verified" and bundle["default"]
    check = report["self_check"]
    assert isinstance(check, dict)
    assert check["status"] == "pass", check
    assert check["model"] == "tiny"
    assert "test socket was refused" in check["detail"]
    assert "pre-tokenizer gpt-2" in check["detail"]  # mdream's load-time fix, in effect
    assert 0 < check["seconds"] < 60


@pytest.mark.slow
def test_text_report_names_backend_bundle_state_and_self_check(
    isolated_home: Path, tiny_model: Path
) -> None:
    directory = install_bundle(isolated_home, tiny_model)
    text_file = next(directory.glob("*text*.gguf"))
    os.utime(text_file, ns=(1, 1))  # changed since its last full hash
    run = run_mdream("doctor")
    assert run.returncode == 0, run.stderr.decode()
    lines = dict(line.split(None, 1) for line in run.stdout.decode().splitlines())
    assert lines["backend"].startswith(("CPU", "CUDA", "Metal", "Vulkan"))
    assert lines["bundle"].startswith("tiny (default): unverified")
    assert lines["self-check"].startswith("PASS in ")
    assert lines["healthy"] == "yes"


@pytest.mark.slow
def test_broken_bundle_is_a_problem_and_exit_3(isolated_home: Path, tiny_model: Path) -> None:
    directory = install_bundle(isolated_home, tiny_model)
    next(directory.glob("*mmproj*.gguf")).write_bytes(b"GGUF truncated")
    run = run_mdream("doctor", "--format", "json", "--no-self-check")
    assert run.returncode == 3, run.stderr.decode()
    report = _json(run)
    bundles = report["bundles"]
    assert isinstance(bundles, list)
    (bundle,) = bundles
    assert bundle["state"] == "broken" and "differs from the manifest" in bundle["detail"]
    assert report["healthy"] is False
    assert report["self_check"] == {
        "status": "skipped",
        "detail": "not requested (--no-self-check)",
        "model": None,
        "seconds": None,
        "exit_code": 0,
    }


@pytest.mark.slow
def test_self_check_fails_with_exit_4_when_inference_touches_the_network(
    tmp_path: Path, tiny_model: Path
) -> None:
    # Plant a connection attempt inside the self-check's inference: the guard must catch it.
    script = textwrap.dedent(
        """
        import socket, sys
        import moondream_cli.engine as engine
        from moondream_cli.cli.app import main

        real = engine.Engine.ask

        def ask(self, *args, **kwargs):
            socket.create_connection(("127.0.0.1", 9), 1)
            return real(self, *args, **kwargs)

        engine.Engine.ask = ask
        main(sys.argv[1:])
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    run = subprocess.run(
        [sys.executable, "-c", script, "doctor", "--format", "json", "--model-dir", tiny_model],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
        input=b"",
    )
    assert run.returncode == 4, run.stderr.decode()
    check = _json(run)["self_check"]
    assert isinstance(check, dict)
    assert check["status"] == "fail"
    assert "network access attempted during inference" in check["detail"]


def test_gpu_list_matches_the_build() -> None:
    import llama_cpp

    from moondream_cli.engine import native

    llama_cpp.llama_backend_init()
    lib = Path(llama_cpp.__file__).parent / "lib"
    devices = native.gpu_devices(lib)
    if not llama_cpp.llama_supports_gpu_offload():
        assert devices == ()  # the CPU device is not a GPU
    for d in devices:
        assert not d.name.upper().startswith("CPU") and d.description
        assert d.total_bytes is None or (d.free_bytes or 0) <= d.total_bytes
    assert native.gpu_devices(lib.parent / "no-such-dir") == ()


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["yaml", "JSON"])
def test_unknown_format_is_a_usage_error(bad: str) -> None:
    run = run_mdream("doctor", "--format", bad)
    assert run.returncode == 2
    assert run.stdout == b""
    assert f"'{bad}' is not one of 'text', 'json'".encode() in run.stderr


@pytest.mark.slow
def test_help_has_a_summary_and_examples() -> None:
    run = run_mdream("doctor", "--help")
    assert run.returncode == 0
    out = run.stdout.decode()
    assert "Report versions, backend, models and a privacy self-check." in out
    assert "mdream doctor --format json" in out


def test_a_model_named_without_the_self_check_is_still_looked_for(tmp_path: Path) -> None:
    from moondream_cli.settings import ModelOptions, Settings

    missing = Settings(model=ModelOptions(model_dir=tmp_path / "missing"))
    report = doctor.gather(missing, self_check=False)
    assert not report.healthy and report.exit_code == 3
    assert any("no such model folder or installed bundle" in p for p in report.problems)
