"""Ctrl-C that arrives while llama.cpp is calling back into Python (it logs often) still stops
the run. Raised inside a ctypes callback, a KeyboardInterrupt is printed and dropped by ctypes
and the run would go on to the end (seen: a folder run finishing with exit 0 after Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import moondream_gguf

pytestmark = pytest.mark.slow  # children interrupted by real signals

ROOT = Path(__file__).resolve().parent.parent

# Loads the tiny text model with verbose logging; the first log line written sends SIGINT
# to the process from inside the log callback. Then it waits, interruptibly.
CHILD = """
import os, signal, sys, time
import llama_cpp
from moondream_cli import interrupt
from moondream_cli.engine import native

class SignalOnWrite:
    fired = False
    def write(self, text):
        if not SignalOnWrite.fired:
            SignalOnWrite.fired = True
            os.kill(os.getpid(), signal.SIGINT)
    def flush(self):
        pass

if sys.argv[2] == "keep":
    interrupt.install_handlers()
native.route_logs_to_stderr(True)
sys.stderr = SignalOnWrite()
try:
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(os.fsencode(sys.argv[1]), params)
    for _ in range(100):
        time.sleep(0.02)
    sys.stdout.write("ran to the end\\n")
except KeyboardInterrupt:
    sys.stdout.write("interrupted\\n")
sys.stdout.write(f"signal fired: {SignalOnWrite.fired}\\n")
"""


def _run(script: str, *args: str) -> str:
    """``script``'s stdout, run as a child with ``args``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
        # A shell's background job starts with SIGINT ignored; this test needs the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return done.stdout.decode()


def test_ctrl_c_inside_a_log_callback_still_interrupts(tiny_model: Path) -> None:
    out = _run(CHILD, str(tiny_model / moondream_gguf.TEXT_NAME), "keep")
    assert out == "interrupted\nsignal fired: True\n"


def test_without_the_handler_the_interrupt_is_lost(tiny_model: Path) -> None:
    # The failure the handler exists for, shown on the same child: were this ever to pass
    # as "interrupted", the test above would prove nothing.
    out = _run(CHILD, str(tiny_model / moondream_gguf.TEXT_NAME), "plain")
    assert out == "ran to the end\nsignal fired: True\n"


# Ctrl-C sent from another thread while the main thread is inside a shielded block. Blocking
# SIGINT in the main thread (what mdream once did) does not hold this one off: the kernel
# hands it to the sending thread, and Python still raises it in the main thread, mid-block.
SHIELDED = """
import os, signal, sys, threading, time
from moondream_cli import interrupt

if sys.argv[1] == "install":
    interrupt.install_handlers()
seen = []
try:
    with interrupt.shielded():
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
        sender.start()
        sender.join()
        for _ in range(50):
            time.sleep(0.002)
        seen.append("block finished")
    seen.append("went on after the block")
except KeyboardInterrupt:
    seen.append("interrupted")
print(", ".join(seen))
"""


def test_ctrl_c_in_a_shielded_block_is_raised_as_the_block_ends() -> None:
    assert _run(SHIELDED, "install") == "block finished, interrupted\n"


def test_without_the_handler_ctrl_c_lands_inside_the_block() -> None:
    assert _run(SHIELDED, "plain") == "interrupted\n"


# Ctrl-C that lands in code Python's collector runs: a ``__del__``, or the weakref callback
# importlib leaves on every module lock (run whenever the lock is collected, so anywhere in
# an import). Python prints an exception raised there ("Exception ignored in ...") and drops
# it, as ctypes does.
COLLECTED = """
import gc, os, signal, sys, time
from moondream_cli import interrupt

if sys.argv[1] == "install":
    interrupt.install_handlers()

class Signals:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)

def importlib_callback(frame, event, arg):
    if event == "call" and frame.f_code.co_filename.startswith("<frozen importlib"):
        if frame.f_code.co_name == "cb":
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGINT)

try:
    if sys.argv[2] == "del":
        Signals()
    else:
        sys.setprofile(importlib_callback)
        import json.tool  # not imported yet: its module lock is made, then collected
        sys.setprofile(None)
    for _ in range(100):
        time.sleep(0.01)
    print("ran to the end")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("where", ["del", "importlib"])
def test_ctrl_c_inside_code_the_collector_runs_still_interrupts(where: str) -> None:
    assert _run(COLLECTED, "install", where) == "interrupted\n"


@pytest.mark.parametrize("where", ["del", "importlib"])
def test_without_the_handler_ctrl_c_in_collected_code_is_lost(where: str) -> None:
    assert _run(COLLECTED, "plain", where) == "ran to the end\n"
