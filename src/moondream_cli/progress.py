"""How long-running core work (download, hashing, quantizing, packing) reports progress.

The core calls a :class:`Progress`; the default does nothing. The CLI passes one that draws
a bar on stderr. Keeping this a plain class keeps rich out of the core.
"""

from __future__ import annotations


class Progress:
    """Receives progress from the core. Every method is optional to override."""

    def start(self, label: str, total: int | None = None, *, unit: str = "B") -> None:
        """A new step begins; ``total`` is in ``unit`` (bytes, or tensors)."""

    def advance(self, amount: int) -> None:
        """``amount`` more units of the current step are done."""

    def update(self, done: int, total: int | None = None) -> None:
        """The current step has ``done`` units done (absolute)."""

    def finish(self) -> None:
        """The current step is over."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the work."""

    def info(self, message: str) -> None:
        """A one-line note about what happened (e.g. what a file was verified against)."""
