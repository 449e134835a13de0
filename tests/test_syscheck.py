"""syscheck on hand-written strace logs: every kind of finding, and what must not be one."""

from __future__ import annotations

from moondream_cli import syscheck

CLEAN = """\
100  execve("/usr/bin/python3", ["python3", "-m", "moondream_cli"], 0x7ffd /* 30 vars */) = 0
100  openat(AT_FDCWD</work>, "/usr/lib/python3.11/os.py", O_RDONLY|O_CLOEXEC) = 3</usr/lib/python3.11/os.py>
100  openat(AT_FDCWD</work>, "/dev/null", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 4</dev/null>
101  openat(AT_FDCWD</work>, "/dev/pts/3", O_RDWR) = 5</dev/pts/3>
101  openat(AT_FDCWD</work>, "model.gguf", O_RDONLY <unfinished ...>
100  openat(AT_FDCWD</work>, "photo.jpg", O_RDONLY|O_CLOEXEC) = 6</work/photo.jpg>
101  <... openat resumed>) = 7</work/model.gguf>
101  +++ exited with 0 +++
100  --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---
100  +++ exited with 0 +++
"""  # noqa: E501 (strace lines as strace prints them)


def test_a_clean_log_has_no_findings() -> None:
    calls = syscheck.parse_strace(CLEAN)
    assert [c.name for c in calls] == ["execve"] + ["openat"] * 5
    assert syscheck.check(CLEAN, cwd="/work") == []


def test_resumed_call_is_joined_with_its_start() -> None:
    calls = syscheck.parse_strace(CLEAN)
    joined = [c for c in calls if c.pid == 101 and "model.gguf" in c.args[1]]
    assert joined[0].args[2] == "O_RDONLY"
    assert joined[0].result == "7</work/model.gguf>"


def test_writes_are_findings_with_absolute_paths() -> None:
    log = """\
7  openat(AT_FDCWD</home/u>, "cache/x.bin", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644) = 3</home/u/cache/x.bin>
7  open("/tmp/a", O_RDWR) = -1 EACCES (Permission denied)
7  creat("/tmp/b", 0600) = 4</tmp/b>
7  openat(5</var/tmp>, "c", O_WRONLY|O_APPEND) = 6</var/tmp/c>
7  openat2(AT_FDCWD</x>, "/tmp/d", {flags=O_RDWR|O_CREAT, mode=0600, resolve=0}, 24) = 3</tmp/d>
7  openat(AT_FDCWD</x>, "/tmp", O_RDWR|O_TMPFILE, 0600) = 3</tmp/#1 (deleted)>
7  mkdir("/tmp/e", 0700) = 0
7  renameat2(AT_FDCWD</x>, "/tmp/f.tmp", AT_FDCWD</x>, "/tmp/f", RENAME_NOREPLACE) = 0
7  unlinkat(8</tmp/g>, "h", 0) = 0
7  symlink("/etc/passwd", "/tmp/i") = 0
"""  # noqa: E501
    found = syscheck.check(log, cwd="/home/u")
    assert {f.kind for f in found} == {"write"}
    assert [f.target for f in found] == [
        "/home/u/cache/x.bin",
        "/tmp/a",  # refused by the kernel, still an attempt
        "/tmp/b",
        "/var/tmp/c",
        "/tmp/d",
        "/tmp",
        "/tmp/e",
        "/tmp/f.tmp",
        "/tmp/f",
        "/tmp/g/h",
        "/tmp/i",
    ]
    assert found[1].result.startswith("-1 EACCES")


def test_every_socket_is_a_finding_unix_ones_too() -> None:
    log = """\
9  socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 3<socket:[1]>
9  connect(3<socket:[1]>, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT (No such file or directory)
9  socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 4<socket:[2]>
9  connect(4<socket:[2]>, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("1.2.3.4")}, 16) = 0
9  sendto(4<socket:[2]>, "GET / HTTP/1.1\\r\\n"..., 18, MSG_NOSIGNAL, NULL, 0) = 18
9  bind(5<socket:[3]>, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("0.0.0.0")}, 16) = 0
"""  # noqa: E501
    found = syscheck.check(log)
    assert [(f.kind, f.syscall) for f in found] == [
        ("network", "socket"),
        ("network", "connect"),
        ("network", "socket"),
        ("network", "connect"),
        ("network", "sendto"),
        ("network", "bind"),
    ]
    assert 'inet_addr("1.2.3.4")' in found[3].target


def test_programs_started_after_the_command_are_findings() -> None:
    log = """\
1  execve("/usr/bin/python3", ["python3"], 0x1 /* 3 vars */) = 0
2  execve("/usr/bin/gs", ["gs", "-q"], 0x2 /* 3 vars */) = 0
"""
    found = syscheck.check(log)
    assert [(f.kind, f.target) for f in found] == [("process", "/usr/bin/gs")]


def test_io_uring_is_a_finding_because_its_work_is_invisible_to_strace() -> None:
    log = "5  io_uring_setup(8, {flags=0, sq_thread_cpu=0}) = 3<anon_inode:[io_uring]>\n"
    assert [(f.kind, f.syscall) for f in syscheck.check(log)] == [("opaque", "io_uring_setup")]


def test_allow_list_takes_exact_paths_and_globs_only() -> None:
    log = """\
3  openat(AT_FDCWD</d>, "/d/img.txt", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3</d/img.txt>
3  openat(AT_FDCWD</d>, "/d/img.txt.part", O_WRONLY|O_CREAT, 0666) = 3</d/img.txt.part>
3  openat(AT_FDCWD</d>, "/d/../etc/cron", O_WRONLY|O_CREAT, 0666) = 3</etc/cron>
3  openat(AT_FDCWD</d>, "/dev/tty", O_WRONLY) = 3</dev/tty>
3  openat(AT_FDCWD</d>, "/dev/nvidiactl", O_RDWR) = 4</dev/nvidiactl>
3  openat(AT_FDCWD</d>, "/dev/nvidia-uvm", O_RDWR|O_CLOEXEC) = 5</dev/nvidia-uvm>
3  openat(AT_FDCWD</root>, "/root/.nv/ComputeCache/index", O_RDWR|O_CREAT, 0600) = 6
"""
    found = syscheck.check(log, allow=["/d/img.txt", "/d/*.part"])
    assert [f.target for f in found] == ["/etc/cron", "/root/.nv/ComputeCache/index"]


def test_paths_with_escapes_are_decoded() -> None:
    log = '4  openat(AT_FDCWD</d>, "/d/caf\\303\\251 \\"x\\".txt", O_WRONLY|O_CREAT, 0666) = 3\n'
    (finding,) = syscheck.check(log)
    assert finding.target == '/d/café "x".txt'


def test_relative_path_under_an_unknown_directory_is_never_allow_listed() -> None:
    log = '4  openat(7, "out.txt", O_WRONLY|O_CREAT, 0666) = 3\n'
    (finding,) = syscheck.check(log, allow=["/d/out.txt"], cwd="/d")
    assert finding.target == "out.txt"


def test_split_args_keeps_nested_structures_whole() -> None:
    args = syscheck.split_args('3, {sa_family=AF_INET, sin_port=htons(9)}, "a,b", [1, 2], 16')
    assert args == ["3", "{sa_family=AF_INET, sin_port=htons(9)}", '"a,b"', "[1, 2]", "16"]


def test_trace_argv_follows_children_and_names_every_checked_syscall() -> None:
    argv = syscheck.strace_command("/t/log", ["mdream", "describe", "x.jpg"])
    assert argv[:2] == ["strace", "-f"]
    assert argv[-3:] == ["mdream", "describe", "x.jpg"]
    traced = argv[argv.index("-e") + 1].removeprefix("trace=").split(",")
    assert "%network" in traced
    for name in ("openat", "creat", "renameat2", "unlinkat", "mkdir", "execve", "io_uring_setup"):
        assert "?" + name in traced
    assert syscheck.unshare_command(["x"], user_namespace=False) == ["unshare", "-n", "x"]
    assert syscheck.unshare_command(["x"], user_namespace=True) == ["unshare", "-r", "-n", "x"]
