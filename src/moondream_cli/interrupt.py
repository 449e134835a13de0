"""Ctrl-C (and SIGTERM: `timeout`, `kill`, a service manager) that stops a run cleanly,
wherever it lands.

Python raises KeyboardInterrupt at whatever line the main thread happens to be on. Two kinds
of place cannot take it there:

- C calling back into Python (llama.cpp logs often): ctypes prints the exception and drops
  it, and the run goes on to the end (seen: a folder run finishing with exit 0 after Ctrl-C).
  Python itself does the same with what its garbage collector calls: ``__del__`` methods and
  weakref callbacks, importlib's module-lock callbacks among them (seen: a fetch that ran on
  to exit 0 after SIGTERM landed while it first imported the quantizer);
- work that must end once begun: a record or sidecar half written, or a lock taken and never
  released. ``threading.Condition.__enter__`` is Python code that can be interrupted just
  after it took its lock (seen: a folder run hanging for ever after Ctrl-C, the decode
  thread's queue locked by the main thread that had been interrupted inside ``Queue.get``).

:func:`install` replaces Python's default SIGINT handler, and SIGTERM's default (die on the
spot, leaving a temporary sidecar behind), with one that raises KeyboardInterrupt for both and,
in those places, notes the interrupt instead: inside :func:`shielded` it is raised as the
block ends; inside a callback it is delivered again to the main thread once C had time to
return. Blocking the signal (``pthread_sigmask``) is not enough: the kernel then hands it to
another thread, and Python still runs the handler in the main thread, inside the blocked section.

The rules for code you add:

- On the main thread, take a lock (a ``queue.Queue`` call takes one) or write anything that
  must land whole (a record, a sidecar) only inside ``with shielded():``.
- Mark every Python function that C calls back with ``@callback``.
- Background threads never see KeyboardInterrupt: they stop when the main thread tells them
  (an Event), in a ``finally`` that runs shielded (``runner.answer_inputs``).
- At a command's edge the KeyboardInterrupt becomes :func:`stopped`'s ``Interrupted`` error
  (``cli/app.py``), which ``main`` maps to exit 130 or 143 like every other error.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import Any, TypeVar

from .errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Interrupted

F = TypeVar("F", bound=Callable[..., Any])

# Code of the Python functions C calls back (log lines, quantization progress).
_CALLBACKS: set[CodeType] = set()
# Touched only by the main thread (the handler runs there): how deep in shielded blocks it is,
# whether an interrupt arrived while it was, and the signal that came last.
_state = {"depth": 0, "pending": False, "signal": int(signal.SIGINT)}


def callback(func: F) -> F:
    """Mark ``func`` as called from C (returns it unchanged): Ctrl-C is never raised inside."""
    _CALLBACKS.add(func.__code__)
    return func


def install_handlers() -> None:
    """Take over SIGINT and SIGTERM, unless something already ignores them or handles them
    its own way."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_signal)


def exit_code() -> int:
    """The exit code for the signal that stopped the run: 130 for Ctrl-C, 143 for SIGTERM
    (the shell's codes for death by each)."""
    return EXIT_INTERRUPTED if _state["signal"] == signal.SIGINT else EXIT_TERMINATED


def reason() -> str:
    """What to tell the user: "interrupted" (Ctrl-C) or "terminated" (SIGTERM)."""
    return "interrupted" if _state["signal"] == signal.SIGINT else "terminated"


def stopped() -> Interrupted:
    """The error to raise for the KeyboardInterrupt this module raised: it names the signal
    and carries its exit code."""
    return Interrupted(reason(), exit_code())


@contextmanager
def shielded() -> Iterator[None]:
    """Hold Ctrl-C off inside the block; one that arrived meanwhile is raised as it ends.

    Needs :func:`install` to hold anything off; without it the block is unprotected, as any
    code is. Inert outside the main thread, where Python never raises KeyboardInterrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["pending"]:
            _state["pending"] = False
            raise KeyboardInterrupt


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _state["signal"] = signum
    if _state["depth"]:
        _state["pending"] = True
        return
    here = frame
    while here is not None:
        if _drops_exceptions(here.f_code):
            _deliver_later(signum)
            return
        here = here.f_back
    raise KeyboardInterrupt


def _drops_exceptions(code: CodeType) -> bool:
    """Whether an exception raised in ``code`` is printed and dropped rather than passed on:
    a callback from C, a ``__del__``, or importlib's own code, whose module-lock weakref
    callbacks run wherever the collector happens to run (and an import interrupted halfway
    leaves nothing worth having)."""
    return (
        code in _CALLBACKS
        or code.co_name == "__del__"
        or code.co_filename.startswith("<frozen importlib.")
    )


def _deliver_later(signum: int) -> None:
    """Send ``signum`` to the main thread in 10 ms. Addressed to the main thread, it waits
    there if it arrives while blocked; raised in the timer's own thread it would be lost."""
    main = threading.main_thread().ident
    kill = getattr(signal, "pthread_kill", None)
    if kill is None or main is None:
        timer = threading.Timer(0.01, signal.raise_signal, (signum,))
    else:
        timer = threading.Timer(0.01, kill, (main, signum))
    timer.daemon = True
    timer.start()


__all__ = ["callback", "exit_code", "install_handlers", "reason", "shielded", "stopped"]
