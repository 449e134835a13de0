"""A command on a pseudo-terminal of its own, read as a person at a keyboard sees it."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

from conftest import ROOT


class Terminal:
    """``mdream ARGS…`` on a pseudo-terminal: its stdin, stdout and stderr."""

    def __init__(self, *args: str | os.PathLike[str]) -> None:
        pid, self.fd = pty.fork()
        if pid == 0:  # the child: the terminal is its stdin, stdout and stderr
            os.environ["PYTHONPATH"] = str(ROOT / "src")
            os.execv(sys.executable, [sys.executable, "-m", "moondream_cli", *map(str, args)])
        self.pid, self.screen = pid, ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.screen and time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    self.screen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    break
        assert text in self.screen, self.screen[-400:]
        return self.screen

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def exit_code(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)
