"""Structured answers: ``--choices`` and ``--json-schema`` become GBNF grammars.

The grammar makes llama.cpp sample only tokens that keep the answer inside the allowed
language; the answer ends when the grammar is complete (only end-of-text is allowed then).
If ``--max-tokens`` runs out first the answer is unfinished, so :meth:`Constraint.check`
verifies every answer after the fact and turns an unfinished one into an error record.

Every grammar is measured before the model loads (:func:`check_gbnf`): its size, how deep
its parentheses nest (llama.cpp parses them recursively: 20,000 deep was a SIGSEGV), and
whether llama.cpp parses it at all, with llama.cpp's own complaint (and its dump of the whole
grammar) kept off stderr. The choices are a prefix tree: llama.cpp checks every candidate
token against each alternative still open, so 15,000 flat alternatives cost 7 s a token
where the tree costs what ten choices do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InputError, UsageError
from .schemas import read_schema


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
    # Moondream's answers start after "Answer:"; its natural first token carries a space.
    gbnf = f'root ::= " "? {_prefix_tree(choices)}\n'
    check_gbnf(gbnf)
    allowed = frozenset(choices)
    question = f"Which one fits this image best: {', '.join(choices)}?"
    return Constraint(gbnf, "one of the choices", allowed.__contains__, question)


def schema_constraint(path: str | os.PathLike[str]) -> Constraint:
    """The answer is JSON valid against the schema in ``path``; a schema that is not valid,
    or uses what the grammar cannot enforce (:mod:`.schemas`), is a usage error."""
    schema = read_schema(path)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise UsageError(f"unsupported or invalid JSON schema: {exc}", path=str(path)) from exc
    check_gbnf(gbnf)
    return Constraint(gbnf, "the JSON schema's answer", _is_json, _schema_question(schema))


# A grammar of this size parses in milliseconds; 15,000 choices as a tree are 90 KB.
MAX_GBNF_BYTES = 256 << 10
# Parentheses nested this deep parse on any thread's stack (20,000 crashed the main one's);
# a schema's repetitions stop at schemas.MAX_REPEAT, below it.
MAX_GBNF_DEPTH = 300


def check_gbnf(gbnf: str) -> None:
    """Refuse (UsageError, exit 2) a grammar llama.cpp would choke on: too large, nested too
    deep, or one it cannot parse, with its reason; nothing reaches stderr. Needs no model."""
    size = len(gbnf.encode("utf-8"))
    if size > MAX_GBNF_BYTES:
        raise UsageError(
            f"the answer grammar is {size:,} bytes, over the {MAX_GBNF_BYTES:,} llama.cpp is "
            "given: fewer or shorter choices, or a smaller schema"
        )
    depth = gbnf_depth(gbnf)
    if depth > MAX_GBNF_DEPTH:
        raise UsageError(
            f"the answer grammar is nested {depth:,} deep, over the {MAX_GBNF_DEPTH} llama.cpp "
            "is given: fewer repetitions, or choices that share fewer beginnings"
        )
    from .engine import native

    why = native.grammar_error(gbnf)
    if why is not None:
        raise UsageError(f"llama.cpp cannot parse the answer grammar: {why}")


def gbnf_depth(gbnf: str) -> int:
    """How deep ``gbnf``'s parentheses nest, literals and character classes skipped."""
    depth = deepest = 0
    quote: str | None = None
    escaped = False
    for char in gbnf:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char == '"':
            quote = '"'
        elif char == "[":
            quote = "]"
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


_END = ""  # in a prefix-tree node: a choice ends here
_Node = dict[str, Any]  # a prefix-tree node: its next characters (and _END), each a node


def _prefix_tree(choices: list[str]) -> str:
    """``choices`` as one GBNF expression, a tree of their shared beginnings: ``yes``, ``no``,
    ``yesterday`` → ``("no" | "yes" ("terday")?)``. Built and written with a stack, never
    recursively: how deep it goes comes from the choices."""
    root: _Node = {}
    for choice in choices:
        node: _Node = root
        for char in choice:
            node = node.setdefault(char, {})
        node[_END] = {}
    written: dict[int, str] = {}
    stack: list[tuple[_Node, bool]] = [(root, False)]
    while stack:
        node, children_written = stack.pop()
        edges = _edges(node)
        if not children_written:
            stack.append((node, True))
            stack.extend((child, False) for _, child in edges)
            continue
        parts = []
        for text, child in edges:
            rest = written.pop(id(child), "")
            parts.append(_literal(text) + (f" {rest}" if rest else ""))
        if parts:
            written[id(node)] = f"({' | '.join(parts)})" + ("?" if _END in node else "")
    return written.get(id(root), '""')


def _edges(node: _Node) -> list[tuple[str, _Node]]:
    """The node's branches, each a run of characters up to the next node that branches or
    ends a choice, in a stable order."""
    edges = []
    for char in sorted(k for k in node if k != _END):
        text, child = char, node[char]
        while len(child) == 1 and _END not in child:
            ((more, grandchild),) = child.items()
            text, child = text + more, grandchild
        edges.append((text, child))
    return edges


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
