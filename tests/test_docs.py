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
DOCS = (
    "README.md",
    "bench/README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
)
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


def _all_docs() -> str:
    return "\n".join((ROOT / doc).read_text() for doc in DOCS)


def test_every_command_and_option_is_documented() -> None:
    text = _all_docs()
    missing = []
    for name, cmd in _commands():
        if name not in text:
            missing.append(name)
        for param in getattr(cmd, "params", []):
            for opt in param.opts:
                if opt.startswith("--") and opt not in text:
                    missing.append(f"{name} {opt}")
    assert missing == []


def test_the_docs_link_only_to_files_that_exist() -> None:
    broken = []
    for doc in DOCS:
        path = ROOT / doc
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{doc}: {target}")
    assert broken == []


def _shell_examples() -> Iterator[tuple[str, list[str]]]:
    """Each ```sh block of the docs, as its command lines (continuations joined, comments
    dropped), with the document it is in."""
    for doc in DOCS:
        for block in re.findall(r"```sh\n(.*?)```", (ROOT / doc).read_text(), re.DOTALL):
            lines = block.replace("\\\n", " ").splitlines()
            commands = [re.sub(r"\s+#.*$", "", line).strip() for line in lines]
            yield doc, [c for c in commands if c and not c.startswith("#")]


# Commands an example may run on the tiny model here: inference on local files. Not the
# network (fetch, --ray), not the machine's set-up (make, pip, ray, export), not a bundle
# tarball that is not there.
RUNNABLE = re.compile(r"(^|\|\s*)mdream (describe|ask|grep)\b")
NOT_HERE = re.compile(r"--ray|\bfetch\b|\bmake\b|\bpip\b|\bray start\b|^export ")


def _runnable() -> list[tuple[str, list[str]]]:
    found = []
    for doc, commands in _shell_examples():
        kept = [c for c in commands if RUNNABLE.search(c) and not NOT_HERE.search(c)]
        if kept:
            found.append((doc, kept))
    return found


def _lay_out(where: Path, commands: list[str]) -> None:
    """The files and folders the commands name, made: an image for each image name, a folder
    with two images for each name ending in a slash, a schema for a .schema.json."""
    from PIL import Image

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (180, 40, 40)).save(path)

    for command in commands:
        for word in command.replace("'", " ").replace('"', " ").split():
            word = word.replace("~", str(where))
            target = where / word.lstrip("/")
            if word.endswith("/") and not word.startswith(("-", "/dev")):
                image(target / "a.jpg")
                image(target / "b.png")
            elif re.fullmatch(r"[\w./-]+\.(jpg|png|webp)", word) and not word.startswith("*"):
                image(target)
            elif word.endswith(".schema.json"):
                target.write_text('{"type": "object", "properties": {"total": {"type": "string"}}}')
    image(where / "Pictures" / "c.jpg")


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "commands"), _runnable(), ids=lambda v: str(v)[:40])
def test_every_shell_example_that_runs_here_runs(
    doc: str, commands: list[str], tiny_model: Path, tmp_path: Path
) -> None:
    """Each inference example, as written, on the tiny model (random weights: an answer that
    does not fit a grammar in time is an input failure, exit 1; anything else is a bug)."""
    import os

    _lay_out(tmp_path, commands)
    env = {**os.environ, "MDREAM_MODEL": str(tiny_model), "HOME": str(tmp_path)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for command in commands:
        run = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode in (0, 1), f"{doc}: {command}\n{run.stderr}"
        assert "Traceback" not in run.stderr and "Usage:" not in run.stderr, command
