"""Every command documents itself: a one-line help and examples in its epilog."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

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
