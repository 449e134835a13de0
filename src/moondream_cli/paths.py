"""Where mdream keeps its data: ``MDREAM_HOME``, else ``$XDG_DATA_HOME/mdream``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .portable import process_alive


def mdream_home() -> Path:
    explicit = os.environ.get("MDREAM_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "mdream"


def models_dir() -> Path:
    """Installed bundles live here, one folder each, named after the bundle."""
    return mdream_home() / "models"


def default_file() -> Path:
    """A one-line file naming the bundle used when no model is given."""
    return mdream_home() / "default"


# Work folders beside the bundles: `.staging-<name>-pid<pid>-<random>` (install), `.build-…`
# (fetch), `.old-…` (a copy being replaced), `.remove-…` (a bundle being deleted). The pid is
# the process that made it; one that is gone (SIGKILL, power cut) left the folder behind.
WORK_PREFIXES = (".staging-", ".build-", ".old-", ".remove-")


@dataclass(frozen=True)
class Leftover:
    path: Path
    pid: int | None  # None: made by an mdream that did not record its process
    alive: bool  # its process still runs: an install in progress, not a leftover yet

    def describe(self) -> str:
        """What a user is told about it (``bundle list``, ``doctor``)."""
        if self.pid is None:
            return (
                f"{self.path} was left by an interrupted install — delete it by hand "
                "if no mdream is running"
            )
        return (
            f"{self.path} was left by an interrupted run (process {self.pid} is gone) — the "
            "next `mdream bundle install` or `mdream fetch` removes it"
        )


def work_folders(folder: Path | None = None) -> list[Leftover]:
    """The work folders in ``folder`` (default: the models folder), oldest format first."""
    root = models_dir() if folder is None else folder
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    found = []
    for path in entries:
        if not path.name.startswith(WORK_PREFIXES) or path.is_symlink() or not path.is_dir():
            continue
        pid = _pid(path.name)
        found.append(Leftover(path, pid, pid is not None and process_alive(pid)))
    return found


def leftovers(folder: Path | None = None) -> list[Leftover]:
    """Work folders whose process is gone, or unknown: what an interrupted run left."""
    return [w for w in work_folders(folder) if not w.alive]


def work_prefix(kind: str, name: str) -> str:
    """The start of a work folder's name, for ``tempfile.mkdtemp(prefix=...)``: it records
    this process, so that a later run can tell a leftover from a run in progress."""
    return f".{kind}-{name}-pid{os.getpid()}-"


def _pid(folder_name: str) -> int | None:
    parts = folder_name.rsplit("-", 2)  # mkdtemp's random part has no "-"
    if len(parts) == 3 and parts[1].startswith("pid") and parts[1][3:].isdigit():
        return int(parts[1][3:])
    return None
