#!/usr/bin/env python3
"""`make privacy-check`: prove, on this machine and with your installed model, that mdream
opens no socket, writes no file and prints the same thing with no network at all.

Each command in ``moondream_cli.syscall_audit.CHECKS`` runs twice on copies of a sample image:
under ``strace -f`` (every socket syscall, every file opened for writing and every program
started is a finding) and under ``unshare -n`` (a network namespace with no interfaces),
where stdout and the files left behind must be identical. The package is byte-compiled
first, as an installed package is, so a bytecode write would be a finding too.

A PASS/FAIL table goes to stdout, details to stderr. Exit 0: every check ran and passed;
1: a finding or a difference; 2: a check could not run (tool missing, no permission);
3: no model installed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import moondream_cli  # noqa: E402
from moondream_cli import locate, syscall_audit  # noqa: E402
from moondream_cli.errors import ModelError  # noqa: E402
from moondream_cli.syscheck import summary  # noqa: E402

SAMPLE = ROOT / "assets" / "menu.png"


def _pictures(image: Path | None) -> list[object]:
    from PIL import Image, ImageDraw

    source = image or (SAMPLE if SAMPLE.is_file() else None)
    if source is not None:
        with Image.open(source) as img:
            first = img.convert("RGB")
        return [first, first.transpose(Image.Transpose.ROTATE_90)]
    img = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    ImageDraw.Draw(img).ellipse((80, 40, 240, 200), fill=(40, 90, 200))
    return [img]


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--model-dir", type=Path, help="Model folder. Default: your installed model."
    )
    parser.add_argument("--image", type=Path, help=f"Image to use. Default: {SAMPLE.name}.")
    parser.add_argument("--max-tokens", type=int, default=16, help="Answer length (default 16).")
    names = [c.name for c in syscall_audit.CHECKS]
    parser.add_argument("--only", action="append", choices=names, help="Run only this check.")
    args = parser.parse_args(argv)

    try:
        files = locate.resolve(args.model_dir)
    except ModelError as exc:
        _say(f"privacy-check: {exc}")
        return 3
    missing = syscall_audit.missing_tools()
    if missing:
        _say(
            f"privacy-check: FAIL: missing {', '.join(missing)} — e.g. "
            "`sudo apt-get install strace util-linux`"
        )
        return 2
    why = syscall_audit.offline_works()
    if why:
        _say(f"privacy-check: FAIL: cannot make a network namespace (`unshare -n`): {why}")
        return 2
    model = str(files.bundle or files.text.parent)
    package = Path(moondream_cli.__file__).parent
    _say(f"model: {files.name} ({model})")
    _say(f"byte-compiling {package} first, as installing a package does")
    syscall_audit.precompile(package)

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a bytecode write must show up, not be hidden
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(package.parent), env.get("PYTHONPATH")) if p
    )
    pictures = _pictures(args.image)
    rows: list[tuple[str, str, str, str]] = []
    failed = unrunnable = False
    with tempfile.TemporaryDirectory(prefix="mdream-privacy-check-") as tmp:
        for check in syscall_audit.CHECKS:
            if args.only and check.name not in args.only:
                continue
            traced_dir = syscall_audit.write_inputs(Path(tmp) / check.name / "traced", pictures)  # type: ignore[arg-type]
            offline_dir = syscall_audit.write_inputs(Path(tmp) / check.name / "offline", pictures)  # type: ignore[arg-type]
            command = [
                sys.executable,
                "-m",
                "moondream_cli",
                *check.args,
                "--model-dir",
                model,
                *(["-n", str(args.max_tokens)] if check.answers else []),
            ]
            _say(f"$ mdream {shlex.join(check.args)}   (strace, then unshare -n)")
            start = time.perf_counter()
            allow = [str(traced_dir / p) for p in check.outputs]
            traced = syscall_audit.traced(
                command, env=env, cwd=traced_dir, allow=allow, stdin=check.stdin
            )
            offline = syscall_audit.offline(command, env=env, cwd=offline_dir, stdin=check.stdin)
            seconds = time.perf_counter() - start
            notes = []
            if traced.returncode != 0 or offline.returncode != 0:
                unrunnable = True
                notes.append(
                    f"exit {traced.returncode}/{offline.returncode}: "
                    + (traced.stderr or offline.stderr).decode(errors="replace").strip()
                )
            if traced.findings:
                failed = True
                _say(summary(traced.findings))
            same = syscall_audit.stable_output(traced.stdout) == syscall_audit.stable_output(
                offline.stdout
            ) and syscall_audit.tree(traced_dir) == syscall_audit.tree(offline_dir)
            failed |= not same
            notes.append(f"{seconds:.1f} s")
            rows.append(
                (
                    check.name,
                    "PASS"
                    if not traced.findings and traced.returncode == 0
                    else f"FAIL ({len(traced.findings)} findings)",
                    "PASS" if same and offline.returncode == 0 else "FAIL (output differs)",
                    "; ".join(notes),
                )
            )

    header = ("check", "strace: no socket, no write", "unshare -n: same output", "notes")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    verdict = "FAIL" if failed else ("INCOMPLETE" if unrunnable else "PASS")
    print(f"privacy-check: {verdict}")
    return 1 if failed else (2 if unrunnable else 0)


if __name__ == "__main__":
    sys.exit(main())
