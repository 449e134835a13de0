"""Help a person reads: the command classes every mdream command and group is built with.

Typer shows an argument's Python type (``<list[str]>``) beside its metavar, and ``<bool>``
beside each flag, ``--help`` included; these classes show the metavar alone and nothing for
a flag. ``cli/app.py`` gives them to every command it registers.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _readable(params: Any) -> Any:
    """Help a person reads: an argument shows its metavar (``IMAGE...``) and not its Python
    type (``<list[str]>``), and a flag, ``--help`` included, shows no ``<bool>``."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        elif isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> Any:
        return _readable(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> Any:
        return _readable(super().get_params(ctx))
