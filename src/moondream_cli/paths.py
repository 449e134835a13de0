"""Where mdream keeps its data: ``MDREAM_HOME``, else ``$XDG_DATA_HOME/mdream``."""

from __future__ import annotations

import os
from pathlib import Path


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
