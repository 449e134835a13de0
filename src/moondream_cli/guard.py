"""Make any network use during inference an error.

An audit hook (PEP 578) sees every socket creation, connect, bind, send and name lookup
that Python code makes. Once :func:`forbid_network` has run, each one raises
:class:`NetworkAttempted` (exit 4) instead of happening. Audit hooks cannot be removed,
so the guard stays on for the rest of the process — inference commands never need the
network. C code does not pass through audit hooks; the strace tests cover that side.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .errors import NetworkAttempted

_BLOCKED = frozenset(
    {
        "socket.__new__",
        "socket.bind",
        "socket.connect",
        "socket.connect_ex",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.gethostbyname_ex",
        "socket.getnameinfo",
        "urllib.Request",
        "http.client.connect",
        "http.client.send",
    }
)
_state = {"on": False, "installed": False}

# Offline switches honoured by huggingface-hub and friends, set before anything imports them.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _state["on"] and event in _BLOCKED:
        raise NetworkAttempted(f"network access attempted during inference ({event})")


def forbid_network() -> None:
    """From now on, any network attempt by Python code in this process is an error."""
    os.environ.update(OFFLINE_ENV)
    if not _state["installed"]:
        sys.addaudithook(_hook)
        _state["installed"] = True
    _state["on"] = True


def network_forbidden() -> bool:
    return bool(_state["on"])
