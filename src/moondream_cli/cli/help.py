"""Help a person reads: the command classes every mdream command and group is built with.

Typer shows an argument's Python type (``<list[str]>``) beside its metavar, ``<bool>`` beside
each flag (``--help`` included), ``{tarball}`` in usage lines and defaults in two styles;
these classes show the metavar alone, nothing for a flag, usage lines a person would write,
and each default once, in the option's own help. ``cli/app.py`` gives them to every command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _readable(params: Any) -> Any:
    """Help a person reads: an argument shows its metavar (``IMAGE...``) and not its Python
    type (``<list[str]>``), and a flag, ``--help`` included, shows no ``<bool>``."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            # The usage line as a person writes it: TARBALL, [NAME], IMAGE..., not
            # {tarball}, [name], [IMAGE...]...
            shown = param.metavar or (param.name or "").upper()
            if not param.metavar and not param.required:
                shown = f"[{shown}]"
            param.get_usage_pieces = _usage(shown)  # type: ignore[method-assign,assignment]
        elif isinstance(param, TyperOption):
            if param.is_flag and param.metavar is None:
                param.metavar = ""
            # One default style: each option's help says "Default: …" where it matters.
            param.show_default = False
    return params


def _usage(shown: str) -> Callable[[Any], list[str]]:
    return lambda ctx: [shown]


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> Any:
        return _readable(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> Any:
        return _readable(super().get_params(ctx))
