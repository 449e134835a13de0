"""Structured answers: ``--choices`` and ``--json-schema`` become GBNF grammars.

The grammar makes llama.cpp sample only tokens that keep the answer inside the allowed
language; the answer ends when the grammar is complete (only end-of-text is allowed then).
If ``--max-tokens`` runs out first the answer is unfinished, so :meth:`Constraint.check`
verifies every answer after the fact and turns an unfinished one into an error record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, UsageError


@dataclass(frozen=True)
class Constraint:
    """A GBNF grammar (root rule ``root``) plus the check its finished answers pass."""

    gbnf: str
    describe: str
    _accepts: Callable[[str], bool]
    # Asked when the command line gives no question (`mdream ask receipt.jpg --json-schema S`).
    default_question: str = ""

    def check(self, answer: str, max_tokens: int) -> str:
        if not self._accepts(answer):
            raise InputError(
                f"the answer did not complete {self.describe} within {max_tokens} "
                f"token{'' if max_tokens == 1 else 's'} "
                "(raise --max-tokens)"
            )
        return answer


def parse_choices(text: str) -> list[str]:
    """``"yes, no,maybe"`` → ``["yes", "no", "maybe"]`` (trimmed, empty and repeated dropped)."""
    choices = list(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    if not choices:
        raise UsageError("--choices needs at least one non-empty choice, e.g. --choices yes,no")
    return choices


def choices_constraint(choices: list[str]) -> Constraint:
    """The answer is exactly one of ``choices``."""
    alternatives = " | ".join(_literal(c) for c in choices)
    # Moondream's answers start after "Answer:"; its natural first token carries a space.
    gbnf = f'root ::= " "? ({alternatives})\n'
    allowed = frozenset(choices)
    question = f"Which one fits this image best: {', '.join(choices)}?"
    return Constraint(gbnf, "one of the choices", allowed.__contains__, question)


def schema_constraint(path: str | os.PathLike[str]) -> Constraint:
    """The answer is JSON valid against the schema in ``path``; a bad schema is a usage error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the JSON schema: {exc}", path=str(path)) from exc
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the JSON schema is not valid JSON: {exc}", path=str(path)) from exc
    if not isinstance(schema, dict):
        raise UsageError("a JSON schema must be a JSON object", path=str(path))
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise UsageError(f"unsupported or invalid JSON schema: {exc}", path=str(path)) from exc
    return Constraint(gbnf, "the JSON schema's answer", _is_json, _schema_question(schema))


def _schema_question(schema: dict[str, object]) -> str:
    """A question naming what the schema asks for: its title, description or field names."""
    what = schema.get("description") or schema.get("title")
    if isinstance(what, str) and what.strip():
        return f"Extract this from the image as JSON: {what.strip()}"
    props = schema.get("properties")
    if isinstance(props, dict) and props:
        return f"Extract these fields from the image as JSON: {', '.join(map(str, props))}."
    return "Answer as JSON."


def _is_json(answer: str) -> bool:
    # The grammar guarantees the shape; an answer that does not parse was cut short.
    try:
        json.loads(answer)
    except ValueError:
        return False
    return True


def _literal(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'
