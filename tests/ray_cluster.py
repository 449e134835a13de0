"""A two-node Ray cluster on loopback inside a network namespace of its own, for the tests.

Run as ``unshare -n python tests/ray_cluster.py WORKDIR -- COMMAND...`` (``unshare -rn``
without root): it brings up ``lo``, starts a head and a second node on 127.0.0.1 with token
authentication on and usage statistics off (../shared/RAY.md: outside a namespace Ray
escapes loopback, and a token written by an earlier local ``ray.init`` puts nodes out of
step), runs each ``;;``-separated COMMAND with ``RAY_ADDRESS`` set, writing its stdout,
stderr and exit code into WORKDIR, then stops the cluster whatever happened. With
``RAY_TEST_OPEN_HEAD=1`` it starts a lone head *without* token authentication instead (the
commands still run with ``RAY_AUTH_MODE=token``): the cluster mdream must refuse.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

PORT = 6380
ADDRESS = f"127.0.0.1:{PORT}"


def cluster_env(work: Path) -> dict[str, str]:
    token = work / "ray-token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        HOME=str(work / "home"),  # no ~/.ray of the user's
        RAY_ADDRESS=ADDRESS,
    )
    return env


def ray(env: dict[str, str], *args: str) -> None:
    binary = str(Path(sys.executable).with_name("ray"))
    subprocess.run([binary, *args], env=env, check=True, capture_output=True, timeout=120)


def main() -> int:
    work = Path(sys.argv[1])
    commands = " ".join(sys.argv[3:]).split(" ;; ")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = cluster_env(work)
    (work / "home").mkdir(exist_ok=True)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    started = time.perf_counter()
    open_head = os.environ.get("RAY_TEST_OPEN_HEAD") == "1"
    head_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH_")} if open_head else env
    try:
        ray(head_env, "start", "--head", f"--port={PORT}", "--include-dashboard=false", *common)
        if not open_head:
            ray(env, "start", f"--address={ADDRESS}", *common)
        up = time.perf_counter() - started
        runs = []
        for i, command in enumerate(commands):
            t = time.perf_counter()
            done = subprocess.run(
                command, shell=True, env=env, capture_output=True, timeout=300, check=False
            )
            (work / f"run{i}.out").write_bytes(done.stdout)
            (work / f"run{i}.err").write_bytes(done.stderr)
            runs.append({"rc": done.returncode, "seconds": time.perf_counter() - t})
        (work / "runs.json").write_text(json.dumps({"cluster_up_s": up, "runs": runs}))
    finally:
        subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "stop", "--force"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
