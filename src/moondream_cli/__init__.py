"""mdream: Moondream2 vision-language inference that never lets an image leave the process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import MdreamError

__version__ = "0.1.0"
__all__ = ["MdreamError", "Moondream", "__version__", "answer_paths"]

if TYPE_CHECKING:
    from .api import Moondream, answer_paths


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (e.g. for `mdream --help`) must not import llama_cpp.
    if name in ("Moondream", "answer_paths"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
