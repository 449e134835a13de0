"""What the Ray cluster path costs against one local process, on this machine's cores.

    python bench/cluster.py [--images N] [--tokens N]

A two-node Ray cluster (one CPU each) on loopback inside a network namespace of its own
(``tests/ray_cluster.py``; needs ``unshare`` and the 'ray' extra), against one local process
with the same two cores (``--threads 2``), on the same folder, with the tiny random-weight
model: its inference is so cheap that what is measured is the cluster's own cost. For each
side: the whole command's wall time, the time to the first record, and the time per image
from the first record to the last (the steady state, start-up left out).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]


def timed(out: Path, command: list[str]) -> None:
    """Run ``command``; write its wall time, the time to its first and last stdout line, and
    its record count to ``out`` as JSON (run inside the namespace by :func:`main`)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert child.stdout is not None
    first = last = None
    records = 0
    for _ in child.stdout:
        last = time.perf_counter() - start
        first = first if first is not None else last
        records += 1
    rc = child.wait()
    wall = time.perf_counter() - start
    result = {"rc": rc, "wall": wall, "first": first, "last": last, "records": records}
    out.write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    from fixtures import draw_photo

    import moondream_gguf

    with tempfile.TemporaryDirectory(prefix="mdream-cluster-") as tmp:
        work = Path(tmp)
        model = work / "model"
        model.mkdir()
        moondream_gguf.write_pair(model)
        album = work / "album"
        album.mkdir()
        for i in range(args.images):  # 24 distinct pictures, hard-linked under more names
            path = album / f"{i:05d}.jpg"
            if i < 24:
                draw_photo(i).save(path, quality=90)
            else:
                path.hardlink_to(album / f"{i % 24:05d}.jpg")
        py = shlex.quote(sys.executable)
        me = shlex.quote(str(Path(__file__).resolve()))
        mdream = f"{py} -m moondream_cli describe {album} -m {model} -n {args.tokens} --quiet"
        sides = {
            "local, one process (--threads 2)": f"{mdream} --threads 2 --format jsonl",
            "Ray, two nodes x 1 worker (--threads 1)": (
                f"{mdream} --threads 1 --format jsonl --ray 127.0.0.1:6380"
            ),
        }
        commands = [
            f"{py} {me} --timed-run {work}/side{i}.json {command}"
            for i, command in enumerate(sides.values())
        ]
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
        script = [sys.executable, str(ROOT / "tests" / "ray_cluster.py"), str(work), "--"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(
            [*unshare, *script, " ;; ".join(commands)], env=env, capture_output=True, check=False
        )
        if done.returncode != 0:
            sys.stderr.write(done.stderr.decode(errors="replace")[-2000:])
            return 1
        up = json.loads((work / "runs.json").read_text())["cluster_up_s"]
        print(f"{args.images} images, {args.tokens} tokens, tiny model; cluster start {up:.1f} s")
        print(f"{'side':42} {'wall s':>7} {'first s':>8} {'ms/image':>9} {'records':>8}")
        for i, name in enumerate(sides):
            r = json.loads((work / f"side{i}.json").read_text())
            steady = (r["last"] - r["first"]) / max(1, r["records"] - 1) * 1000
            failed = "" if r["rc"] == 0 else f"  (exit {r['rc']})"
            print(
                f"{name:42} {r['wall']:7.2f} {r['first']:8.2f} {steady:9.1f} "
                f"{r['records']:>8}{failed}"
            )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--timed-run":
        timed(Path(sys.argv[2]), sys.argv[3:])
        sys.exit(0)
    sys.exit(main())
