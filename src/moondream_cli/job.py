"""What one describe/ask run is: its inputs, its questions and its settings, checked.

A :class:`Job` is made by a front-end (the CLI, :func:`moondream_cli.answer_paths`) and
checked on creation against :data:`RULES`, the rules between options of different groups:
one row each, the condition that breaks it and what the user is told (exit 2). A rule
within one group (a range, a seed without a temperature) is that group's own check
(``settings.py``), so the Python API keeps it too. ``tests/test_job_rules.py``
holds one case per row. :mod:`.driver` runs a job; a backend (:mod:`.backends`) answers it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from .errors import UsageError
from .images import EXTENSIONS
from .records import Format, SidecarName, normalize_ext
from .settings import Settings

if TYPE_CHECKING:
    from .grammars import Constraint
    from .inputs import Source, Tally


@dataclass(frozen=True)
class Rule:
    """One rule between options: ``broken(job)`` is true when the job breaks it."""

    broken: Callable[[Job], bool]
    message: Callable[[Job], str]


def _says(text: str) -> Callable[[Job], str]:
    return lambda _: text


RULES: tuple[Rule, ...] = (
    Rule(
        lambda j: not j.inputs and j.settings.inputs.files_from is None,
        _says("no images given: name files or folders, '-' for stdin, or --files-from"),
    ),
    Rule(
        lambda j: j.settings.inputs.null and j.settings.inputs.files_from is None,
        _says("-0/--null only applies to --files-from"),
    ),
    Rule(
        lambda j: j.settings.inputs.files_from == "-" and "-" in j.inputs,
        _says("stdin cannot hold both an image and the --files-from list"),
    ),
    Rule(
        lambda j: (
            not j.settings.outputs.sidecar
            and (
                j.settings.outputs.overwrite
                or j.settings.outputs.ext != ".txt"
                or j.settings.outputs.sidecar_name is not SidecarName.STEM
            )
        ),
        _says("--overwrite, --ext and --sidecar-name only apply with --sidecar"),
    ),
    Rule(
        lambda j: j.settings.outputs.sidecar and "-" in j.inputs,
        _says("--sidecar needs image files: an image from stdin has nowhere to go"),
    ),
    Rule(
        lambda j: j.settings.outputs.sidecar and len(j.questions) > 1,
        _says("--sidecar holds one answer per image: ask one question at a time"),
    ),
    Rule(lambda j: any(not q.strip() for q in j.questions), _says("the question is empty")),
    Rule(
        lambda j: j.ext.lower() in EXTENSIONS,
        lambda j: (
            f"--ext {j.settings.outputs.ext} is an image suffix: a sidecar never replaces an image"
        ),
    ),
    Rule(
        lambda j: (
            j.settings.cluster.ray is None
            and (j.settings.cluster.workers is not None or j.settings.cluster.unordered)
        ),
        _says("--workers and --unordered only apply with --ray"),
    ),
    Rule(
        lambda j: j.settings.cluster.ray is not None and "-" in j.inputs,
        _says("--ray needs image files the workers can read, not stdin"),
    ),
    Rule(
        lambda j: j.settings.outputs.resume is not None and j.fmt is not Format.JSONL,
        _says("--resume continues a --format jsonl run: add --format jsonl"),
    ),
)


@dataclass(frozen=True)
class Job:
    """What to run over, what to ask, and how; usage errors (exit 2) are raised on creation.

    ``max_tokens`` is the answer length when the settings set none (the question's own).
    """

    inputs: tuple[str, ...]
    questions: tuple[str, ...]
    settings: Settings
    max_tokens: int
    constraint: Constraint | None = None
    scoring: bool = False  # answers are the probability of yes (`mdream grep`)

    def __post_init__(self) -> None:
        for rule in RULES:
            if rule.broken(self):
                raise UsageError(rule.message(self))

    @property
    def fmt(self) -> Format | None:
        """What stdout gets: with --sidecar the answers' home is the sidecars, stdout only
        on request."""
        outputs = self.settings.outputs
        if outputs.fmt is None and not outputs.sidecar:
            return Format.TEXT
        return outputs.fmt

    @property
    def ext(self) -> str:
        return normalize_ext(self.settings.outputs.ext)

    def seq_tokens(self, max_tokens: int) -> int:
        """The most text tokens one sequence needs: a token is at least one byte, so the
        longest question's prompt in bytes bounds its tokens, plus the answer's."""
        from .prompts import question_prompt

        return max(len(question_prompt(q).encode("utf-8")) for q in self.questions) + max_tokens

    @property
    def one_image(self) -> bool:
        """One input named on the command line, not a folder: decided from the command line,
        never from what a folder happens to contain, so output stays predictable."""
        inputs = self.inputs
        return (
            self.settings.inputs.files_from is None
            and len(inputs) == 1
            and not os.path.isdir(inputs[0])
        )

    @property
    def single(self) -> bool:
        """One image and one question: the text format prints the answer alone."""
        return self.one_image and len(self.questions) == 1

    @contextlib.contextmanager
    def sources(self, tally: Tally | None = None) -> Iterator[Iterator[Source]]:
        """Every input, as the command line means it (folders walked, the --files-from list
        read as it is needed); the list is closed when the block ends."""
        from .inputs import expand

        s = self.settings.inputs
        listing = self._open_list()
        try:
            yield expand(
                self.inputs, recursive=s.recursive, files_from=listing, null=s.null, tally=tally
            )
        finally:
            if listing is not None and listing is not sys.stdin.buffer:
                listing.close()

    def _open_list(self) -> BinaryIO | None:
        files_from = self.settings.inputs.files_from
        if files_from is None:
            return None
        if files_from == "-":
            return sys.stdin.buffer
        try:
            return open(files_from, "rb")
        except OSError as exc:
            raise UsageError(
                f"cannot read --files-from: {exc.strerror or exc}", path=files_from
            ) from exc
