"""The docs hold: every command documents itself (a one-line help and examples in its epilog),
and what README.md and bench/README.md say about the code is still true."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
import typer.main

from moondream_cli.cli.app import app


class Documented(Protocol):
    """What these tests read of a Click command (Click's own, or the copy newer typers vendor)."""

    @property
    def help(self) -> str | None: ...
    @property
    def epilog(self) -> str | None: ...


def _commands() -> Iterator[tuple[str, Documented]]:
    """Every leaf command with its full name ("mdream bundle install")."""
    root = typer.main.get_command(app)
    stack: list[tuple[str, Documented]] = [("mdream", root)]
    while stack:
        name, cmd = stack.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            stack.extend((f"{name} {n}", c) for n, c in subs.items())
        else:
            yield name, cmd


def test_every_command_has_help_and_examples() -> None:
    seen = list(_commands())
    assert {"mdream describe", "mdream ask"} <= {name for name, _ in seen}
    for name, cmd in seen:
        assert cmd.help and cmd.help.strip().splitlines()[0].endswith("."), name
        assert cmd.epilog and "mdream " in cmd.epilog, f"{name} has no examples"


def test_readme_documents_every_exit_code() -> None:
    from pathlib import Path

    from moondream_cli import errors

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for code in (
        errors.EXIT_INPUT,
        errors.EXIT_USAGE,
        errors.EXIT_MODEL,
        errors.EXIT_NETWORK,
        errors.EXIT_INTERRUPTED,
        errors.EXIT_TERMINATED,
    ):
        assert f"| {code} |" in readme


def test_no_merge_conflict_markers_in_tracked_files() -> None:
    """A conflict marker once slipped into the Makefile and broke `make` for everyone."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    markers = ("<<<<<<< ", ">>>>>>> ")
    bad = [
        name
        for name in files
        if (root / name).is_file()
        and any(
            line.startswith(markers)
            for line in (root / name).read_text(errors="replace").splitlines()
        )
    ]
    assert bad == []


ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "bench/README.md")
# `tests/test_x.py`, or `tests/test_x.py::test_name` (a class too: `::TestX::test_name`).
CITATION = re.compile(r"\btests/(?:\w+/)*\w+\.py(?:::\w+)*")


def _citations() -> set[str]:
    return {m for doc in DOCS for m in CITATION.findall((ROOT / doc).read_text())}


@pytest.mark.slow
def test_every_test_the_readmes_cite_exists_and_is_collected_by_pytest() -> None:
    """The privacy table's promises are only as good as the tests it names.

    Asks pytest itself (``--collect-only`` in a subprocess) rather than parsing the files for
    a ``def`` of that name: collection also fails on a module that no longer imports, a test
    shadowed by a later one of the same name, a function pytest would not pick up (nested, or
    not named ``test_*``), and a test moved into a class (its node id changes), none of which a
    parse would see.
    """
    cited = _citations()
    assert any("::" in c for c in cited), "the README cites no tests: has the regex broken?"
    files = sorted({c.split("::")[0] for c in cited})
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, f"cited files that do not exist: {missing}"
    wanted = sorted(c for c in cited if "::" in c)
    targets = sorted({c.split("::")[0] for c in wanted})
    collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    run = subprocess.run(
        [*collect, *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    collected = {line.split("[")[0] for line in run.stdout.splitlines() if "::" in line}
    missing = [c for c in wanted if c not in collected]
    assert not missing, f"cited tests that pytest does not collect: {missing}"


# `bench/README.md, "KV cells"`, in a comment or docstring, possibly wrapped over two lines.
POINTER = re.compile(r'bench/README\.md, "([^"]+)"')


def test_every_pointer_into_bench_readme_names_one_of_its_headings() -> None:
    """Comments say why briefly and point at the measurement by its heading; a heading renamed
    or a section moved must not leave them pointing at nothing."""
    bench_readme = (ROOT / "bench/README.md").read_text()
    headings = {h.strip() for h in re.findall(r"^#+ (.+)$", bench_readme, re.MULTILINE)}
    sources = [*ROOT.glob("src/**/*.py"), *ROOT.glob("bench/*")]
    pointers = []
    for path in sorted(p for p in sources if p.suffix in {".py", ".sh", ".h"}):
        # A wrapped pointer: join its lines, dropping indentation and comment leaders.
        text = re.sub(r"\s*\n\s*(?:#|\*(?!/))?\s*", " ", path.read_text())
        pointers += [(path.relative_to(ROOT).as_posix(), h) for h in POINTER.findall(text)]
    assert len(pointers) >= 5, "no pointers found: has the pattern broken?"
    wrong = [p for p in pointers if p[1] not in headings]
    assert not wrong, f"pointers to headings bench/README.md does not have: {wrong}"
