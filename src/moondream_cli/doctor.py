"""`mdream doctor`: versions, backend, where data lives, bundles, and a privacy self-check.

:func:`gather` returns a :class:`Report` (plain data; the CLI renders it as text or JSON).
The self-check loads the model the user's commands would use, turns the network guard on,
proves the guard refuses a socket, then answers a question about a synthetic image made in
memory. The guard stays on in this process afterwards: audit hooks cannot be removed.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import __version__, locate, paths, registry
from . import manifest as mf
from .engine.native import Device, gpu_devices
from .errors import EXIT_MODEL, EXIT_OK, MdreamError, ModelError, NetworkAttempted
from .settings import Settings

# Modules whose presence after an inference means download code or an HTTP stack ran.
NETWORK_MODULES = (
    "huggingface_hub",
    "requests",
    "urllib3",
    "httpx",
    "http.client",
    "urllib.request",
    "ssl",
)
SELF_CHECK_QUESTION = "Describe this image."
SELF_CHECK_TOKENS = 8


@dataclass(frozen=True)
class BundleState:
    name: str
    path: str
    state: str  # "verified" | "unverified" | "broken"
    detail: str
    default: bool = False


@dataclass(frozen=True)
class SelfCheck:
    status: str  # "pass" | "fail" | "skipped"
    detail: str
    model: str | None = None
    seconds: float | None = None
    exit_code: int = EXIT_OK


@dataclass(frozen=True)
class Report:
    mdream: str
    python: str
    python_executable: str
    platform: str
    llama_cpp: str | None
    backend: str  # "CPU", "CUDA", "Metal", ... or "unavailable"
    gpu_offload: bool
    devices: tuple[Device, ...]  # GPUs llama.cpp can use; empty on a CPU build
    mdream_home: str
    mdream_home_from: str  # "MDREAM_HOME", "XDG_DATA_HOME" or "default"
    models_dir: str
    default_bundle: str | None
    mdream_model: str | None  # the MDREAM_MODEL override, when set
    bundles: tuple[BundleState, ...]
    self_check: SelfCheck
    problems: tuple[str, ...] = field(default=())
    leftovers: tuple[str, ...] = field(default=())  # work folders an interrupted run left
    # Why a GPU build found no GPU (then every run is on the CPU); None otherwise.
    gpu_missing: str | None = None

    @property
    def healthy(self) -> bool:
        """Nothing broken, and a model that answered (or a self-check skipped on request):
        an installation with no model cannot describe anything yet."""
        return not self.problems and self.self_check.exit_code == EXIT_OK

    @property
    def exit_code(self) -> int:
        if self.self_check.exit_code != EXIT_OK:
            return self.self_check.exit_code
        return EXIT_MODEL if self.problems else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.healthy
        return data


def platform_name() -> str:
    """``Linux-6.1.0-x86_64-with-glibc2.36``, as ``platform.platform()`` says it, without the
    child process that starts: ``platform.uname()`` reads its processor from ``uname -p``,
    and mdream starts no program."""
    name = os.uname()
    libc, version = platform.libc_ver()
    return f"{name.sysname}-{name.release}-{name.machine}" + (
        f"-with-{libc}{version}" if libc else ""
    )


def gather(settings: Settings | None = None, *, self_check: bool = True) -> Report:
    """Look at this installation. With ``self_check``, run the privacy self-check too."""
    problems: list[str] = []
    llama_version, backend, offload, devices, gpu_missing = _backend(problems)
    bundles = tuple(_bundle_states(problems))
    try:
        default = registry.require_default() if registry.installed_names() else None
    except ModelError as exc:
        default = None
        problems.append(str(exc))
    bundles = tuple(
        BundleState(b.name, b.path, b.state, b.detail, default=b.name == default) for b in bundles
    )
    settings = settings or Settings()
    if self_check:
        check = run_self_check(settings)
    else:
        check = SelfCheck("skipped", "not requested (--no-self-check)")
        _check_the_model_named(settings, problems)
    return Report(
        mdream=__version__,
        python=platform.python_version(),
        python_executable=sys.executable,
        platform=platform_name(),
        llama_cpp=llama_version,
        backend=backend,
        gpu_offload=offload,
        devices=devices,
        mdream_home=str(paths.mdream_home()),
        mdream_home_from=_home_source(),
        models_dir=str(paths.models_dir()),
        default_bundle=default,
        mdream_model=os.environ.get("MDREAM_MODEL") or None,
        bundles=bundles,
        self_check=check,
        problems=tuple(problems),
        leftovers=tuple(left.describe() for left in paths.leftovers()),
        gpu_missing=gpu_missing,
    )


def _check_the_model_named(settings: Settings, problems: list[str]) -> None:
    """Without the self-check, a model named with --model-dir or MDREAM_MODEL is still
    found and checked (headers, manifest): a name that leads nowhere is not healthy."""
    if settings.model.model_dir is None and not os.environ.get("MDREAM_MODEL"):
        return
    try:
        locate.resolve(settings.model.model_dir)
    except ModelError as exc:
        problems.append(str(exc))


def _home_source() -> str:
    if os.environ.get("MDREAM_HOME"):
        return "MDREAM_HOME"
    return "XDG_DATA_HOME" if os.environ.get("XDG_DATA_HOME") else "default"


def _backend(
    problems: list[str],
) -> tuple[str | None, str, bool, tuple[Device, ...], str | None]:
    try:
        from .engine import native

        native.route_logs_to_stderr(False)  # loads llama.cpp
    except Exception as exc:  # a broken build is exactly what doctor must report
        problems.append(f"llama-cpp-python cannot be loaded: {exc}")
        return None, "unavailable", False, (), None
    offload = native.gpu_offload()
    devices = gpu_devices() if offload else ()
    if not offload:
        backend = "CPU"
    else:
        info = native.system_info()
        names = [d.name.rstrip("0123456789") for d in devices]
        known = [b for b in ("CUDA", "Metal", "Vulkan", "SYCL", "ROCm", "HIP") if b + " :" in info]
        backend = (names or known or ["GPU"])[0]
    missing = None if offload else native.missing_gpu()
    return native.version(), backend, offload, devices, missing


def _bundle_states(problems: list[str]) -> list[BundleState]:
    states = []
    for name in registry.installed_names():
        directory = paths.models_dir() / name
        try:
            manifest = mf.read_manifest(directory)
            failed = mf.failed_check(directory)
            if failed is not None:
                raise ModelError(
                    f"failed its last full check ({failed}): run `mdream bundle verify {name}`"
                )
            if mf.verified_recently(directory, manifest):
                state, detail = "verified", "sizes and times match the last full sha256 check"
            else:
                state = "unverified"
                detail = "changed or never hashed here: the next use re-hashes it in full"
        except ModelError as exc:
            state, detail = "broken", str(exc)
            problems.append(f"bundle {name}: {exc}")
        states.append(BundleState(name, str(directory), state, detail))
    return states


def run_self_check(settings: Settings) -> SelfCheck:
    """A tiny inference with the model ``settings`` name and the network guard on; skipped
    when no model is installed."""
    try:
        files = locate.resolve(settings.model.model_dir)
    except ModelError as exc:
        if str(exc) == registry.NO_MODEL_HINT:
            return SelfCheck("skipped", f"no model to run: {exc}", exit_code=exc.exit_code)
        return SelfCheck("fail", str(exc), exit_code=exc.exit_code)
    failed = _turn_the_guard_on(_label(files))
    if failed is not None:
        return failed
    before = set(sys.modules)
    start = time.perf_counter()
    try:
        from .images import prepare
        from .loader import open_model

        with open_model(settings, max_tokens=SELF_CHECK_TOKENS, files=files) as model:
            # Made in memory, never on disk, and fed as every image is.
            model.engine.set_image(prepare(_synthetic_image(), model.preparation))
            answer = model.engine.ask(SELF_CHECK_QUESTION, model.sampling)
            tokens = f"pre-tokenizer {model.engine.pre_tokenizer}"
    except MdreamError as exc:
        return SelfCheck(
            "fail", str(exc), _label(files), time.perf_counter() - start, exit_code=exc.exit_code
        )
    seconds = time.perf_counter() - start
    loaded = _network_code_loaded_since(before)
    if loaded:
        return SelfCheck(
            "fail",
            f"inference imported network code: {', '.join(loaded)}",
            _label(files),
            seconds,
            exit_code=NetworkAttempted.exit_code,
        )
    return SelfCheck(
        "pass",
        f"guard on (a test socket was refused), HF_HUB_OFFLINE=1; answered about a synthetic "
        f"image from memory ({len(answer)} characters) with no network use and no network "
        f"code imported; {tokens}",
        _label(files),
        seconds,
    )


def _turn_the_guard_on(model: str) -> SelfCheck | None:
    """Forbid the network in this process; a failed check if the guard is not in force."""
    from . import guard

    guard.forbid_network()
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        return SelfCheck(
            "fail",
            "HF_HUB_OFFLINE is not 1 under the guard",
            model,
            exit_code=NetworkAttempted.exit_code,
        )
    if not _guard_refuses_a_socket():
        return SelfCheck(
            "fail",
            "the network guard let a test socket through",
            model,
            exit_code=NetworkAttempted.exit_code,
        )
    return None


def _guard_refuses_a_socket() -> bool:
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except NetworkAttempted:
        return True
    sock.close()
    return False


def _network_code_loaded_since(before: set[str]) -> list[str]:
    """The network modules (`NETWORK_MODULES`) imported since ``before`` was taken."""
    return sorted(
        m
        for m in set(sys.modules) - before
        for p in NETWORK_MODULES
        if m == p or m.startswith(p + ".")
    )


def _synthetic_image() -> Any:
    from PIL import Image, ImageDraw

    img = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 8, 30, 30), fill=(200, 60, 40))
    draw.ellipse((34, 12, 60, 44), fill=(40, 90, 200))
    return img


def _label(files: locate.ModelFiles) -> str:
    """An installed bundle by name; a folder given with -m or MDREAM_MODEL by its path."""
    return files.name if files.bundle is not None else str(files.text.parent)
