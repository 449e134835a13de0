"""Before the driver sends a Ray cluster anything: is it one that checks tokens?

Without Ray's token authentication anyone who reaches the cluster runs code on it; a driver
that sets RAY_AUTH_MODE=token is let in by a cluster that checks nothing, so the driver's
own setting proves nothing. The cluster is asked directly, from a child process.
"""

from __future__ import annotations

import os
import sys

from ..errors import ModelError, UsageError
from ..records import escape_line

# Run in a child process: Ray reads its authentication mode once per process, so a client
# without a token cannot be made in this one without breaking the run's own connection.
_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_keys(b"mdream-probe/", namespace=None, timeout=20)
except Exception as exc:
    print("checks tokens" if type(exc).__name__ == "AuthenticationError" else f"error: {exc}")
else:
    print("open")
"""


def refuse_a_cluster_that_takes_no_token(address: str | None) -> None:
    """Ask the cluster, without a token, for nothing (the keys under a prefix no one uses):
    a cluster that answers does not check tokens, whatever this driver sets, and anyone who
    reaches it runs code on it. Refused before the job (paths, questions) is sent."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    env["RAY_AUTH_MODE"] = "disabled"
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, str(address)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        said = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        said = f"error: {exc}"
    if said == "open":
        raise UsageError(
            f"the Ray cluster at {address} answers without a token: it does not check them "
            "(start every node with RAY_AUTH_MODE=token), so mdream sends it nothing"
        )
    if said != "checks tokens":
        why = first_sentences(said.removeprefix("error: ") or "no answer", 1)[:300]
        raise ModelError(f"cannot reach the Ray cluster at {address}: {why}")


def first_sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of what Ray said, on one line and escaped, without the
    final full stop."""
    one_line = " ".join(text.split())
    return escape_line(". ".join(one_line.split(". ")[:n]).rstrip("."))
