"""The layout rules a newcomer relies on, checked on the source itself: which modules may
import what, and how long a module or a function may grow."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "moondream_cli"
MAX_MODULE_LINES = 400
MAX_BODY_LINES = 60  # a function's body; a Typer command's signature lists its options


@functools.cache
def _modules() -> tuple[tuple[str, ast.Module, int], ...]:
    """Every module of the package: its name, its syntax tree, its length (parsed once)."""
    return tuple(
        (path.relative_to(SRC).as_posix(), ast.parse(text), len(text.splitlines()))
        for path in sorted(SRC.rglob("*.py"))
        for text in [path.read_text(encoding="utf-8")]
    )


def _imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("library", "allowed"),
    [
        ("ctypes", ("engine/native/",)),
        ("typer", ("cli/",)),
        ("rich", ("cli/",)),
        # Besides the engine's native objects, grammars uses llama_cpp's pure-Python
        # JSON-schema converter.
        ("llama_cpp", ("engine/native/", "grammars.py")),
        ("huggingface_hub", ("bundles/hub.py",)),
    ],
)
def test_a_library_is_imported_only_where_it_belongs(library: str, allowed: tuple[str]) -> None:
    offenders = [
        name
        for name, tree, _ in _modules()
        if library in _imports(tree) and not name.startswith(allowed)
    ]
    assert offenders == []


def _mdream_imports(name: str, tree: ast.Module) -> set[str]:
    """The moondream_cli modules ``name`` imports, relative imports resolved."""
    package = ["moondream_cli", *name.split("/")[:-1]]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            found.add(".".join([*base, *([node.module] if node.module else [])]))
            if not node.module:
                found.update(".".join([*base, alias.name]) for alias in node.names)
    return found


def test_inference_never_imports_the_bundle_corner() -> None:
    # Fetching and bundling talk to the network and write files: only their own package and
    # the CLI's bundle commands may use them (tests/test_privacy_guard.py checks a real run).
    offenders = {
        name: sorted(m for m in imported if m.startswith("moondream_cli.bundles"))
        for name, tree, _ in _modules()
        if not name.startswith(("bundles/", "cli/bundles.py"))
        for imported in [_mdream_imports(name, tree)]
        if any(m.startswith("moondream_cli.bundles") for m in imported)
    }
    assert offenders == {}


def test_every_module_reads_in_one_sitting() -> None:
    long = {name: n for name, _, n in _modules() if n > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_body_is_longer_than_a_screen() -> None:
    long = {}
    for name, tree, _ in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[0]
                if isinstance(body, ast.Expr) and isinstance(body.value, ast.Constant):
                    body = node.body[1] if len(node.body) > 1 else body  # skip the docstring
                lines = (node.end_lineno or node.lineno) - body.lineno + 1
                if lines > MAX_BODY_LINES:
                    long[f"{name}:{node.name}"] = lines
    assert long == {}


def _module_name(name: str) -> str:
    parts = ["moondream_cli", *name.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Each module → the moondream_cli modules it imports anywhere in it (at the top, in a
    function, or for type checking only: a cycle is a design cycle wherever it is written)."""
    trees = {_module_name(name): tree for name, tree, _ in _modules()}
    graph: dict[str, set[str]] = {}
    for module, tree in trees.items():
        package = module if _is_package(module) else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join([*base, node.module] if node.module else base)
                if not node.level:
                    prefix = node.module or ""
                for alias in node.names:
                    full = f"{prefix}.{alias.name}"
                    found.add(full if full in trees else prefix)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = {m for m in found if m in trees and m != module}
    return graph


def _is_package(module: str) -> bool:
    return (SRC.parent / module.replace(".", "/") / "__init__.py").is_file()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_inside_the_package() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _graph()
    assert "moondream_cli.backends" in graph["moondream_cli.driver"]  # imports are seen


def test_no_two_public_names_alike_across_modules() -> None:
    # Two `Source`s or three `run`s make every import a puzzle.
    seen: dict[str, list[str]] = {}
    for name, tree, _ in _modules():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(name)
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
