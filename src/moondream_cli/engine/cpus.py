"""What the CPU offers llama.cpp: how many threads to compute with, and whether it has AMX.

:func:`default_threads` is what ``--threads`` defaults to: one thread per core that does the
arithmetic fast (hyper-threads share a core's units; Apple's efficiency cores hold the
performance cores back, as every thread waits for the slowest at each step), never more than
the CPU time the container may use (a cgroup quota: threads beyond it are throttled, and the
step waits for them).
"""

from __future__ import annotations

import math
import os
import sys
from functools import lru_cache
from pathlib import Path

from . import native


@lru_cache(maxsize=1)
def default_threads() -> int:
    """Threads when none are asked for: performance cores on Apple silicon, physical cores
    elsewhere (Windows asked through kernel32, Linux through /proc/cpuinfo), at most the
    cgroup CPU quota on Linux."""
    cores = apple_performance_cores() or native.windows_cores() or physical_cores()
    quota = cgroup_cpu_limit()
    return max(1, min(cores, quota)) if quota else cores


def apple_performance_cores() -> int | None:
    """The performance cores of an Apple silicon Mac (``hw.perflevel0.physicalcpu``), or
    None elsewhere (an Intel Mac has one kind of core)."""
    if sys.platform != "darwin":
        return None
    return native.sysctl_int("hw.perflevel0.physicalcpu") or native.sysctl_int("hw.physicalcpu")


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share one core's units)."""
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and (phys or core):
                    cores.add((phys, core))
                    phys = core = ""
        if phys or core:
            cores.add((phys, core))
    except OSError:
        pass
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(cores) or (logical or 1), logical or 1))


def cgroup_cpu_limit(root: Path = Path("/")) -> int | None:
    """Whole CPUs the cgroup quota allows this process (rounded down, at least 1), or None
    without a quota. cgroup v2 (``cpu.max`` of its cgroup and every parent) or v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); ``root`` stands for ``/`` in tests."""
    try:
        membership = (root / "proc/self/cgroup").read_text(encoding="utf-8")
    except OSError:
        return None
    limits: list[float] = []
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "":  # v2: one hierarchy
            limits += _v2_limits(root / "sys/fs/cgroup", path)
        elif "cpu" in controllers.split(","):
            limits += _v1_limits(root / "sys/fs/cgroup", controllers, path)
    return max(1, math.floor(min(limits))) if limits else None


def _v2_limits(mount: Path, path: str) -> list[float]:
    """``cpu.max`` quotas from the process's cgroup up to the root (a container sees its own
    cgroup as the root)."""
    found = []
    parts = [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        quota = _read(mount.joinpath(*parts[:depth], "cpu.max"))
        if quota is not None:
            fields = quota.split()
            if len(fields) == 2 and fields[0] != "max":
                found.append(_ratio(fields[0], fields[1]))
    return [f for f in found if f > 0]


def _v1_limits(mount: Path, controllers: str, path: str) -> list[float]:
    found = []
    for name in (controllers, "cpu,cpuacct", "cpu"):
        folder = mount / name
        for candidate in (folder.joinpath(*path.strip("/").split("/")), folder):
            quota = _read(candidate / "cpu.cfs_quota_us")
            period = _read(candidate / "cpu.cfs_period_us")
            if quota is not None and period is not None and quota.lstrip("-").isdigit():
                if int(quota) > 0:
                    found.append(_ratio(quota, period))
                return [f for f in found if f > 0]
    return []


def _ratio(quota: str, period: str) -> float:
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return 0.0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True on CPUs with Intel AMX (Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False
