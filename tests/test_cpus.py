"""Default threads: one per core that computes fast, within the container's CPU quota.

The cgroup tests build the files Linux shows a process (``/proc/self/cgroup`` and the cgroup
filesystem) under ``tmp_path``, as a host and as a container see them.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moondream_cli.engine import cpus, native


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


@pytest.mark.parametrize(
    ("files", "want"),
    [
        # cgroup v2 on a host: the limit is on the process's own cgroup ...
        (
            {
                "proc/self/cgroup": "0::/system.slice/job.service",
                "sys/fs/cgroup/system.slice/job.service/cpu.max": "250000 100000",
                "sys/fs/cgroup/system.slice/cpu.max": "max 100000",
            },
            2,  # 2.5 CPUs of time: a third thread would be throttled every period
        ),
        # ... or on a parent, which bounds every child
        (
            {
                "proc/self/cgroup": "0::/kubepods/pod1/ctr",
                "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "800000 100000",
                "sys/fs/cgroup/kubepods/pod1/cpu.max": "300000 100000",
            },
            3,
        ),
        # a container sees its own cgroup as the root
        ({"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": "400000 100000"}, 4),
        ({"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": "50000 100000"}, 1),  # at least 1
        ({"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": "max 100000"}, None),
        ({"proc/self/cgroup": "0::/"}, None),  # no cpu controller
        # cgroup v1 (this machine's kind), in a container and on a host
        (
            {
                "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
            },
            3,
        ),
        (
            {
                "proc/self/cgroup": "1:cpu:/batch",
                "sys/fs/cgroup/cpu/batch/cpu.cfs_quota_us": "200000",
                "sys/fs/cgroup/cpu/batch/cpu.cfs_period_us": "100000",
            },
            2,
        ),
        (
            {
                "proc/self/cgroup": "1:cpu:/",
                "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
                "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
            },
            None,
        ),
        ({}, None),  # no /proc: macOS, Windows
    ],
    ids=[
        "v2-own",
        "v2-parent",
        "v2-container",
        "v2-half-cpu",
        "v2-max",
        "v2-none",
        "v1-container",
        "v1-host",
        "v1-unlimited",
        "no-proc",
    ],
)
def test_the_cgroup_cpu_quota_is_read_as_whole_cpus(
    files: dict[str, str], want: int | None, tmp_path: Path
) -> None:
    assert cpus.cgroup_cpu_limit(_tree(tmp_path, files)) == want


@pytest.fixture
def fresh() -> Iterator[None]:
    cpus.default_threads.cache_clear()
    yield
    cpus.default_threads.cache_clear()


def test_threads_stay_within_the_quota(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "physical_cores", lambda: 16)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 3)
    assert cpus.default_threads() == 3
    cpus.default_threads.cache_clear()
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 64)  # a quota above the cores
    assert cpus.default_threads() == 16


def test_apple_silicon_gets_its_performance_cores(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An M2 Pro: 8 performance and 4 efficiency cores, 12 logical CPUs.
    sysctl = {"hw.perflevel0.physicalcpu": 8, "hw.physicalcpu": 12, "hw.logicalcpu": 12}
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(native, "sysctl_int", sysctl.get)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    assert cpus.default_threads() == 8
    # An Intel Mac has one kind of core and no perflevel0.
    cpus.default_threads.cache_clear()
    del sysctl["hw.perflevel0.physicalcpu"]
    assert cpus.default_threads() == 12


def test_elsewhere_there_is_no_apple_answer_and_the_sysctl_call_is_harmless() -> None:
    if sys.platform != "darwin":
        assert cpus.apple_performance_cores() is None
        assert native.sysctl_int("hw.perflevel0.physicalcpu") is None
    assert 1 <= cpus.default_threads() <= cpus.physical_cores()


def test_windows_counts_one_record_per_physical_core(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GetLogicalProcessorInformationEx(RelationProcessorCore): one variable-sized record per
    # core, each led by its relationship and size; 6 cores with 2 threads each here.
    record = struct.pack("<II", 0, 48) + bytes(40)
    assert native.count_cores(record * 6) == 6
    assert native.count_cores(record * 2 + struct.pack("<II", 0, 0)) == 2  # a torn tail stops
    assert native.count_cores(b"") == 0
    if sys.platform != "win32":
        assert native.windows_cores() is None  # no kernel32 is looked for
    monkeypatch.setattr(native, "windows_cores", lambda: 6)
    monkeypatch.setattr(cpus, "physical_cores", lambda: 12)  # logical CPUs, as a fallback
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    assert cpus.default_threads() == 6
