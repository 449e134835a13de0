"""How long-running core work reports progress, notes and per-input failures.

Every long job goes through one interface: a folder run (one unit per input), a download or
a hash (bytes), a quantization (tensors). The core calls a :class:`Progress`; this one does
nothing. The CLI passes its own (``cli/output.py``), which draws one kind of bar on stderr and
writes every line through the same console. Keeping this a plain class keeps rich out of the
core.

Called from the main thread, except :meth:`Progress.update`, which may also come from a
background thread (a folder run's total is counted in one).
"""

from __future__ import annotations


class Progress:
    """Receives progress from the core. Every method is optional to override."""

    @property
    def wants_total(self) -> bool:
        """Whether a total would be shown: a folder run counts its inputs a second time for it."""
        return False

    def start(self, label: str, total: int | None = None, *, unit: str = "B") -> None:
        """A new step begins; ``total`` is in ``unit``: "B" (bytes), "tensors", or "images"
        (a folder run, one unit per input)."""

    def advance(self, amount: int = 1, *, failed: int = 0) -> None:
        """``amount`` more units of the current step are done, ``failed`` of them failed."""

    def update(self, done: int | None = None, total: int | None = None) -> None:
        """The current step has ``done`` units done (absolute), out of ``total``."""

    def finish(self) -> None:
        """The current step is over."""

    def error(self, message: str) -> None:
        """One input failed (``path: reason``); the work goes on without it."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the work."""

    def info(self, message: str) -> None:
        """A one-line note about what happened (e.g. what a file was verified against)."""
