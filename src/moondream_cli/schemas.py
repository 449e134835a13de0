"""A ``--json-schema`` file, read and checked before a grammar is made from it.

The answer grammar (llama-cpp-python's converter, then llama.cpp's GBNF) enforces only some
of JSON Schema; a keyword it would silently ignore -- ``minimum``, ``multipleOf``,
``if``/``then`` -- gave answers the schema forbids, with exit 0. So every keyword is checked
against what the grammar enforces (:data:`ENFORCED`) or merely describes
(:data:`ANNOTATIONS`), and any other is refused by name (exit 2), as are the combinations
the converter gets wrong. Depth and repetition come from the file: the nesting is measured
on the text before it is parsed, and ``minItems``/``maxItems``/``minLength``/``maxLength``
and a pattern's ``{m,n}`` are bounded before the converter writes one rule per repetition
(``minLength`` 1e8 took 2.9 GB; ``maxItems`` 20000 crashed llama.cpp's parser). The schema is
walked with a stack, never recursively. README.md and docs/pipelines.md list what is supported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

from . import bounded
from .errors import UsageError

# JSON nesting (objects and arrays) a schema may have: a receipt's is about 6.
MAX_DEPTH = 64
# minItems, maxItems, minLength, maxLength, and {m,n} in a pattern: the converter writes one
# nested rule per repetition, and llama.cpp parses nesting recursively.
MAX_REPEAT = 256

# Keywords the grammar enforces, and what each one's value holds.
ENFORCED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "enum", "const", "anyOf", "allOf", "$ref", "$defs",
        "definitions", "pattern", "format", "minLength", "maxLength",
    }
)  # fmt: skip
# Keywords that only describe: they change no valid answer.
ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "$comment", "$anchor", "title", "description", "examples",
        "default", "deprecated", "readOnly", "writeOnly",
    }
)  # fmt: skip
FORMATS = ("date", "time", "date-time", "uuid")
_REPEATS = ("minItems", "maxItems", "minLength", "maxLength")
_ALL_OF = frozenset({"type", "properties", "required", "$ref", "anyOf", "title", "description"})


def read_schema(path: str | os.PathLike[str]) -> dict[str, object]:
    """The schema in ``path``: read by the bounded reader, its depth measured before it is
    parsed, every keyword checked; any problem is a UsageError naming the file."""
    where = os.fspath(path)
    text = bounded.read_text(path, bounded.SCHEMA)
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise UsageError(
            f"the JSON schema is nested deeper than {MAX_DEPTH} levels ({depth:,})", path=str(where)
        )
    try:
        schema = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and a number of more than 4,300 digits
        raise UsageError(f"the JSON schema is not valid JSON: {exc}", path=str(where)) from exc
    if not isinstance(schema, dict):
        raise UsageError("a JSON schema must be a JSON object", path=str(where))
    for problem in problems(schema):
        raise UsageError(problem, path=str(where))
    return schema


def json_depth(text: str) -> int:
    """How deep ``text``'s objects and arrays nest, counted without parsing (strings
    skipped): a linear scan, so ``[[[[…`` a million deep costs what its length does."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def problems(schema: dict[str, object]) -> Iterator[str]:
    """What in ``schema`` the grammar cannot enforce, one message each (walked with a
    stack: depth comes from the file)."""
    stack: list[tuple[object, str]] = [(schema, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, bool):
            continue  # true / false: any value, or none
        if not isinstance(node, dict):
            yield f"{where or 'the schema'} is not a schema (an object)"
            continue
        yield from _node_problems(node, where)
        stack.extend(_subschemas(node, where))


def _node_problems(node: dict[str, object], where: str) -> Iterator[str]:
    at = f" (at {where})" if where else ""
    if "oneOf" in node:  # the converter takes it as anyOf: more than one could match
        yield f"the answer grammar cannot enforce 'oneOf'{at} (exactly one of): use anyOf"
    unknown = sorted(k for k in node if k not in ENFORCED | ANNOTATIONS | {"oneOf"})
    if unknown:
        named = ", ".join(repr(k) for k in unknown)
        yield (
            f"the answer grammar cannot enforce {named}{at}: an answer could break it — "
            "remove it, or check the answers yourself (README: what --json-schema enforces)"
        )
    fmt = node.get("format")
    if fmt is not None and fmt not in FORMATS:
        yield (
            f"the answer grammar cannot enforce format {fmt!r}{at} "
            f"(it enforces {', '.join(FORMATS)})"
        )
    for key in _REPEATS:
        value = node.get(key)
        if key in node and (not _is_int(value) or not 0 <= value <= MAX_REPEAT):  # type: ignore[operator]
            yield f"{key} {value!r}{at} is not a number from 0 to {MAX_REPEAT}"
    pattern = node.get("pattern")
    if isinstance(pattern, str) and pattern_cost(pattern) > MAX_REPEAT * 4:
        yield (
            f"the pattern{at} repeats too much for the answer grammar "
            f"(its repetitions multiply to more than {MAX_REPEAT * 4:,})"
        )
    yield from _combination_problems(node, at)


# The converter (llama_grammar.SchemaConverter.visit) takes the first of these that a node
# has and ignores the keywords the others would have used: each branch, what selects it, and
# the keywords it enforces. $defs and definitions only hold schemas; annotations describe.
_ANY = None
_OBJECT = frozenset({"type", "properties", "required", "additionalProperties"})
_BRANCHES: tuple[tuple[str, tuple[str | None, ...] | None, frozenset[str]], ...] = (
    ("$ref", _ANY, frozenset({"$ref"})),
    ("anyOf", _ANY, frozenset({"anyOf"})),
    ("const", _ANY, frozenset({"const", "type"})),
    ("enum", _ANY, frozenset({"enum", "type"})),
    ("properties", (None, "object"), _OBJECT),
    ("additionalProperties", (None, "object"), _OBJECT),
    ("allOf", (None, "object"), frozenset({"type", "allOf"})),
    ("items", (None, "array"), frozenset({"type", "items", "minItems", "maxItems"})),
    ("prefixItems", (None, "array"), frozenset({"type", "prefixItems"})),
    ("pattern", (None, "string"), frozenset({"type", "pattern"})),
    ("format", (None, "string"), frozenset({"type", "format"})),
    ("minLength", ("string",), frozenset({"type", "minLength", "maxLength"})),
    ("maxLength", ("string",), frozenset({"type", "minLength", "maxLength"})),
)  # fmt: skip
_CONTAINERS = frozenset({"$defs", "definitions"})
_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
    "object": dict,
    "array": list,
}


def _combination_problems(node: dict[str, object], at: str) -> Iterator[str]:
    """Keywords the converter would ignore at this node, though each alone is enforced: the
    ones another keyword's branch does not use (``maxLength`` next to ``enum``), ``type`` as
    a list next to anything, ``required`` names that are not properties."""
    constraining = {k for k in node if k in ENFORCED and k not in _CONTAINERS}
    kind = node.get("type")
    if isinstance(kind, list):
        honoured: frozenset[str] = frozenset({"type"})
    else:
        honoured = next(
            (
                keys
                for key, types, keys in _BRANCHES
                if key in node and (types is _ANY or kind in types)
            ),
            frozenset({"type"}),
        )
    ignored = sorted(constraining - honoured)
    if ignored:
        beside = ", ".join(repr(k) for k in sorted(constraining & honoured)) or "nothing"
        yield (
            f"the answer grammar cannot enforce {', '.join(map(repr, ignored))} next to "
            f"{beside}{at}: the grammar uses one of them — split the schema with anyOf, or "
            "remove one"
        )
    values = node.get("enum") if "enum" in node else [node["const"]] if "const" in node else []
    if isinstance(kind, str) and isinstance(values, list) and kind in _TYPES:
        wrong = [v for v in values if not _of_type(v, kind)]
        if wrong:
            yield f"enum/const value {wrong[0]!r}{at} is not of type {kind!r}"
    required = node.get("required")
    properties = node.get("properties")
    if isinstance(required, list):
        defined = properties if isinstance(properties, dict) else {}
        missing = [name for name in required if name not in defined]
        if missing:
            yield (
                f"the answer grammar cannot enforce required {missing[0]!r}{at}: it is not "
                "one of the properties"
            )
    parts = node.get("allOf")
    for part in parts if isinstance(parts, list) else []:
        extra = sorted(set(part) - _ALL_OF) if isinstance(part, dict) else []
        if extra:
            yield (
                f"the answer grammar cannot enforce {extra[0]!r} inside allOf{at}: "
                "allOf may only combine objects' properties"
            )


def _of_type(value: object, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def _subschemas(node: dict[str, object], where: str) -> Iterator[tuple[object, str]]:
    for key in ("properties", "$defs", "definitions"):
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield sub, f"{where}/{key}/{name}"
    for key in ("items", "additionalProperties"):
        value = node.get(key)
        if isinstance(value, dict):
            yield value, f"{where}/{key}"
    for key in ("prefixItems", "anyOf", "oneOf", "allOf", "items"):
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield sub, f"{where}/{key}/{i}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_QUANTIFIER = re.compile(r"\{(\d*)(?:,(\d*))?\}")


def pattern_cost(pattern: str) -> int:
    """About how many repetitions the converter would write for ``pattern``: each ``{m,n}``
    multiplies what it applies to (a group's own cost, or one character), so
    ``(a{200}){200}`` costs 40,000. Read with a stack of groups, never recursively."""
    groups: list[int] = [0]  # the cost of each open group so far
    last = 1  # the cost of the atom a quantifier would apply to
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            groups[-1] += 1
            last, i = 1, i + 2
            continue
        if char == "(":
            groups.append(0)
        elif char == ")" and len(groups) > 1:
            last = max(1, groups.pop())
            groups[-1] += last
        elif char == "{" and (match := _QUANTIFIER.match(pattern, i)):
            most = max(int(n) for n in match.groups("0") if n) if any(match.groups()) else 1
            groups[-1] += last * max(most, 1) - last
            last *= max(most, 1)
            i = match.end()
            continue
        elif char == "[":
            end = pattern.find("]", i + 2)
            i = len(pattern) if end < 0 else end
            groups[-1] += 1
            last = 1
        else:
            groups[-1] += 1
            last = 1
        i += 1
    return sum(groups)
