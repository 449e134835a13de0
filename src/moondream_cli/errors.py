"""The one exception family the core raises, and the exit codes the CLI maps it to.

Exit codes (documented in README.md):
    0  success
    1  an input failed (unreadable, corrupt, unsupported image; bad question)
    2  usage error (bad option, bad schema)
    3  model missing, invalid or failed verification
    4  network access attempted during inference
    5  output could not be written (stdout closed or full, a full or read-only disk)
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM)

``main`` (``cli/app.py``) is the one place that turns these into a line on stderr and an
exit code; everything else raises.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_NETWORK = 4
EXIT_OUTPUT = 5
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class MdreamError(Exception):
    """Base of every error mdream reports to a user. ``str(err)`` is the one-line message."""

    exit_code = EXIT_INPUT
    # True when the user has been told already (each failed input, a printed report):
    # the entry point then only exits with the code.
    reported = False

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(MdreamError):
    """One input (an image, a question) cannot be used; a batch goes on without it."""

    exit_code = EXIT_INPUT


class UsageError(MdreamError):
    """The command line or an option's value is wrong."""

    exit_code = EXIT_USAGE


class ModelError(MdreamError):
    """No usable model: missing, not a Moondream GGUF pair, or failed verification."""

    exit_code = EXIT_MODEL


class BundleError(ModelError):
    """A bundle tarball or recipe is invalid, or installing it failed."""


class FetchError(ModelError):
    """Downloading or checking model weights failed."""


class NetworkAttempted(MdreamError):
    """Something tried to use the network while an image was being processed."""

    exit_code = EXIT_NETWORK


class OutputError(MdreamError):
    """Results cannot be written (stdout gone or full, the disk full or read-only): the run
    stops, since every further answer would be lost too. What was written is whole."""

    exit_code = EXIT_OUTPUT


class Interrupted(MdreamError):
    """Ctrl-C (exit 130) or SIGTERM (143) stopped the run; what was written so far is whole.
    Made by :func:`moondream_cli.interrupt.stopped`."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


class Failed(MdreamError):
    """The work is done and some of it failed; each failure was reported as it happened."""

    reported = True

    def __init__(self, message: str, exit_code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OutputClosed(MdreamError):
    """The reader of stdout went away (``| head -1``): stop quietly, exit 0."""

    exit_code = EXIT_OK
    reported = True
