"""In-process Moondream2 inference on llama.cpp's multimodal library (libmtmd).

- :mod:`.core`: :class:`Engine`, one loaded pair; the single-image path.
- :mod:`.batching`: continuous batching (:meth:`Engine.ask_many`), one loop over the slots.
- :mod:`.slot`: :class:`~.slot.Slot`, one sequence and all of its state; ``Request``, ``Answer``.
- :mod:`.runtime`: loading, and the evaluation steps both paths share; :class:`Timings`.
- :mod:`.plan`: KV/batch sizing, as pure functions of the options and the hardware.
- :mod:`.cpus`: the CPU: default threads (cores, Apple's performance cores, cgroup quota), AMX.
- :mod:`.stream`: sampled tokens → text, and the stop rules.
- :mod:`.native`: the only code that touches ctypes; one small owner per C object.
"""

from __future__ import annotations

from . import native
from .core import Engine
from .cpus import cpu_has_amx, default_threads, physical_cores
from .options import EngineOptions, Sampling
from .plan import CPU_UBATCH, Plan, cpu_kv_cells
from .runtime import Timings
from .slot import Answer, Request


def gpu_available() -> bool:
    """Whether this llama.cpp build can offload to a GPU (loads llama.cpp, quietly)."""
    native.route_logs_to_stderr(False)
    return native.gpu_offload()


__all__ = [
    "CPU_UBATCH",
    "Answer",
    "Engine",
    "EngineOptions",
    "Plan",
    "Request",
    "Sampling",
    "Timings",
    "cpu_has_amx",
    "cpu_kv_cells",
    "default_threads",
    "gpu_available",
    "physical_cores",
]
