"""The hostile-input audit's reproductions, each run as a real `mdream` child: exit code, peak
RSS and wall time (``/usr/bin/time``), what reached stderr.

    python bench/hostile.py [--src SRC] [--work DIR] [--only NAME ...] [--cap-gb N]

``--src`` picks the source tree the child imports (default: this checkout's ``src``), so
the same cases can be run against an older commit (``git archive COMMIT | tar -x -C DIR``).
Every child runs under an address-space cap (``--cap-gb``, default 8) and a timeout, so a
case that would take the machine's memory or hang ends as "capped" or "timed out" instead.
Figures: bench/README.md, "Hostile inputs".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))


@dataclass
class Case:
    name: str
    args: list[str]
    setup: Callable[[Path], object] = lambda _: None
    timeout: float = 60
    stdin: str | None = None  # a file to redirect stdin from
    term_after: float | None = None  # SIGTERM this many seconds in
    env: dict[str, str] = field(default_factory=dict)


def _model(work: Path) -> Path:
    folder = work / "model"
    if not folder.exists():
        import moondream_gguf

        moondream_gguf.write_pair(folder)
    return folder


def _photo(work: Path) -> Path:
    path = work / "photo.jpg"
    if not path.exists():
        from PIL import Image

        Image.new("RGB", (64, 48), (200, 40, 40)).save(path)
    return path


def _png(work: Path, name: str, mode: str, size: tuple[int, int]) -> Path:
    path = work / name
    if path.exists():
        return path
    from PIL import Image

    if mode == "P":
        img = Image.new("P", size, 0)
        img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
        img.save(path, transparency=0, compress_level=9)
    elif mode == "I;16":
        Image.new("I;16", size, 1000).save(path, compress_level=9)
    else:
        Image.new(mode, size, (10, 20, 30, 40)[: len(mode)]).save(path, compress_level=9)
    return path


def _progressive_jpeg(work: Path, repeats: int) -> Path:
    """A progressive JPEG whose last scan is repeated ``repeats`` times before EOI."""
    path = work / f"scans{repeats}.jpg"
    if path.exists():
        return path
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(1200, 1600, 3), dtype=np.uint8)
    plain = work / "progressive.jpg"
    Image.fromarray(noise).save(plain, progressive=True, quality=90)
    data = plain.read_bytes()
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    path.write_bytes(data[:end] + data[last:end] * repeats + data[end:])
    return path


def _fifo(path: Path) -> None:
    if not path.exists():
        os.mkfifo(path)


def _cases(work: Path) -> list[Case]:
    model = str(_model(work))
    photo = str(_photo(work))
    m = ["-m", model, "-n", "2"]

    def bundle(name: str, verified: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
        def make(w: Path) -> None:
            from moondream_cli import manifest as mf

            home = w / f"home-{name}"
            folder = home / "models" / "tiny"
            if folder.exists():
                shutil.rmtree(home)
            folder.mkdir(parents=True)
            files = []
            for role, src in (
                ("text", "moondream2-text-model-f16.gguf"),
                ("mmproj", "moondream2-mmproj-f16.gguf"),
            ):
                shutil.copy(Path(model) / src, folder / src)
                files.append(
                    mf.FileEntry(
                        src, role, (folder / src).stat().st_size, mf.sha256_file(folder / src)
                    )
                )
            manifest = mf.Manifest("tiny", tuple(files))
            (folder / mf.MANIFEST).write_text(manifest.to_json())
            mf.record_verified(folder, manifest)
            (home / "default").write_text("tiny\n")
            if verified is not None:
                verified(home)

        return make

    def zero_verified(home: Path) -> None:
        target = home / "models" / "tiny" / ".verified.json"
        target.unlink()
        target.symlink_to("/dev/zero")

    def fifo_verified(home: Path) -> None:
        target = home / "models" / "tiny" / ".verified.json"
        target.unlink()
        os.mkfifo(target)

    def zero_default(home: Path) -> None:
        (home / "default").unlink()
        (home / "default").symlink_to("/dev/zero")

    def sparse_manifest(w: Path) -> None:
        folder = w / "sparse-model"
        folder.mkdir(exist_ok=True)
        with open(folder / "manifest.json", "wb") as f:
            f.truncate(50 << 30)

    def fifo_gguf(w: Path) -> None:
        folder = w / "fifo-model"
        folder.mkdir(exist_ok=True)
        _fifo(folder / "x.gguf")

    def long_line(w: Path) -> None:
        path = w / "one-line.txt"
        if not path.exists():
            path.write_bytes(b"a" * (30 << 20))

    def rope_model(w: Path) -> None:
        import dataclasses

        import moondream_gguf

        folder = w / "rope-model"
        if folder.exists():
            return
        folder.mkdir()
        shape = dataclasses.replace(moondream_gguf.TINY, n_rot=0xFFFFFFFF)
        moondream_gguf.write_text_model(folder / moondream_gguf.TEXT_NAME, shape)
        shutil.copy(Path(model) / moondream_gguf.MMPROJ_NAME, folder / moondream_gguf.MMPROJ_NAME)

    def schemas(w: Path) -> None:
        for name, schema in {
            "items20000": {"type": "array", "items": {"type": "integer"}, "maxItems": 20000},
            "items5000": {"type": "array", "items": {"type": "integer"}, "maxItems": 5000},
            "minimum": {"type": "integer", "minimum": 0, "maximum": 5},
            "minlength": {"type": "string", "minLength": 100_000_000},
        }.items():
            (w / f"{name}.schema.json").write_text(json.dumps(schema))
        (w / "deep-objects.schema.json").write_text('{"a":' * 1000 + "1" + "}" * 1000)
        (w / "deep-arrays.schema.json").write_text("[" * 100_000 + "]" * 100_000)
        (w / "digits.schema.json").write_text('{"type": "integer", "maximum": ' + "9" * 5000 + "}")

    def folder_of(name: str, source: Callable[[Path], Path], copies: int) -> Callable[[Path], None]:
        def make(w: Path) -> None:
            folder = w / name
            folder.mkdir(exist_ok=True)
            src = source(w)
            for i in range(copies):
                if not (folder / f"{i}.png").exists():
                    os.link(src, folder / f"{i}.png")

        return make

    def deep_folder(w: Path) -> None:
        top = w / "deep"
        if top.exists():
            return
        top.mkdir()
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(1100):  # by descriptor: the path grows past PATH_MAX
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(fd)

    def resume_deep(w: Path) -> None:
        (w / "deep.jsonl").write_text("[" * 5000 + "]" * 5000 + "\n")

    rgba = lambda w: _png(w, "rgba.png", "RGBA", (16000, 15600))  # noqa: E731
    pal = lambda w: _png(w, "palette.png", "P", (16000, 15600))  # noqa: E731
    grey16 = lambda w: _png(w, "grey16.png", "I;16", (16000, 15600))  # noqa: E731
    choices = ",".join(f"c{i}" for i in range(15000))
    return [
        Case("schema /dev/zero", ["ask", photo, "--json-schema", "/dev/zero", *m], timeout=30),
        Case(
            "schema FIFO",
            ["ask", photo, "--json-schema", str(work / "fifo"), *m],
            setup=lambda w: _fifo(w / "fifo"),
            timeout=10,
        ),
        Case(
            "MDREAM_HOME/default -> /dev/zero",
            ["describe", photo, "-n", "2"],
            setup=bundle("zero-default", zero_default),
            env={"MDREAM_HOME": str(work / "home-zero-default")},
            timeout=30,
        ),
        Case(
            ".verified.json -> /dev/zero",
            ["describe", photo, "-n", "2"],
            setup=bundle("zero-verified", zero_verified),
            env={"MDREAM_HOME": str(work / "home-zero-verified")},
            timeout=30,
        ),
        Case(
            ".verified.json FIFO",
            ["describe", photo, "-n", "2"],
            setup=bundle("fifo-verified", fifo_verified),
            env={"MDREAM_HOME": str(work / "home-fifo-verified")},
            timeout=10,
        ),
        Case(
            "50 GB sparse manifest.json",
            ["describe", photo, "-m", str(work / "sparse-model")],
            setup=sparse_manifest,
            timeout=60,
        ),
        Case(
            "FIFO x.gguf in --model-dir",
            ["describe", photo, "-m", str(work / "fifo-model")],
            setup=fifo_gguf,
            timeout=10,
        ),
        Case(
            "bundle install FIFO.tar",
            ["bundle", "install", str(work / "fifo.tar")],
            setup=lambda w: _fifo(w / "fifo.tar"),
            timeout=10,
        ),
        Case(
            "--files-from 30 MB, no separator",
            ["describe", "--files-from", str(work / "one-line.txt"), *m],
            setup=long_line,
            timeout=120,
        ),
        Case("--files-from /dev/zero", ["describe", "--files-from", "/dev/zero", *m], timeout=20),
        Case(
            "--files-from - -0 < /dev/zero",
            ["describe", "--files-from", "-", "-0", *m],
            stdin="/dev/zero",
            timeout=20,
        ),
        Case(
            "PNG RGBA 250 MP",
            ["describe", str(work / "rgba.png"), *m],
            setup=rgba,
            timeout=300,
        ),
        Case(
            "PNG palette+transparency 250 MP",
            ["describe", str(work / "palette.png"), *m],
            setup=pal,
            timeout=300,
        ),
        Case(
            "PNG 16-bit grey 250 MP",
            ["describe", str(work / "grey16.png"), *m],
            setup=grey16,
            timeout=300,
        ),
        Case(
            "folder of 3 RGBA copies",
            ["describe", str(work / "rgba3"), *m],
            setup=folder_of("rgba3", rgba, 3),
            timeout=600,
        ),
        Case("describe - < /dev/zero", ["describe", "-", *m], stdin="/dev/zero", timeout=60),
        Case(
            "JPEG, last scan x600",
            ["describe", str(work / "scans600.jpg"), *m],
            setup=lambda w: _progressive_jpeg(w, 600),
            timeout=300,
        ),
        Case(
            "JPEG x600, SIGTERM at 5 s",
            ["describe", str(work / "scans600.jpg"), *m],
            setup=lambda w: _progressive_jpeg(w, 600),
            timeout=300,
            term_after=5,
        ),
        Case(
            "schema maxItems 20000",
            ["ask", photo, "--json-schema", str(work / "items20000.schema.json"), *m],
            setup=schemas,
        ),
        Case(
            "schema maxItems 5000",
            ["ask", photo, "--json-schema", str(work / "items5000.schema.json"), *m],
            setup=schemas,
        ),
        Case(
            "schema minLength 1e8",
            ["ask", photo, "--json-schema", str(work / "minlength.schema.json"), *m],
            setup=schemas,
            timeout=120,
        ),
        Case(
            "schema minimum/maximum",
            ["ask", photo, "--json-schema", str(work / "minimum.schema.json"), "-m", model],
            setup=schemas,
        ),
        Case(
            "schema 1000 objects deep",
            ["ask", photo, "--json-schema", str(work / "deep-objects.schema.json"), *m],
            setup=schemas,
        ),
        Case(
            "schema 100k arrays deep",
            ["ask", photo, "--json-schema", str(work / "deep-arrays.schema.json"), *m],
            setup=schemas,
        ),
        Case(
            "schema 5000-digit integer",
            ["ask", photo, "--json-schema", str(work / "digits.schema.json"), *m],
            setup=schemas,
        ),
        Case(
            "15000 --choices, 2 images",
            [
                "ask",
                photo,
                photo.replace("photo", "photo2"),
                "Which one?",
                "--choices",
                choices,
                *m,
            ],
            setup=lambda w: shutil.copy(_photo(w), w / "photo2.jpg"),
            timeout=300,
        ),
        Case("--threads 65536", ["describe", photo, "-t", "65536", *m]),
        Case("--threads 32768", ["describe", photo, "-t", "32768", *m]),
        Case(
            "rope.dimension_count 0xffffffff",
            ["describe", photo, "-m", str(work / "rope-model"), "-n", "2"],
            setup=rope_model,
        ),
        Case("folder 1100 deep", ["describe", str(work / "deep"), "-r", *m], setup=deep_folder),
        Case(
            "--resume nested 5000 deep",
            ["describe", photo, "--format", "jsonl", "--resume", str(work / "deep.jsonl"), *m],
            setup=resume_deep,
        ),
    ]


def _run(case: Case, work: Path, src: Path, cap: int) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_WAIT_POLICY="passive", NO_COLOR="1")
    env.setdefault("MDREAM_HOME", str(work / "empty-home"))
    env.update(case.env)
    timing = work / "time.txt"
    command = [
        "/usr/bin/time",
        "-f",
        "%M %e",
        "-o",
        str(timing),
        sys.executable,
        "-m",
        "moondream_cli",
        *case.args,
    ]

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    stdin = open(case.stdin, "rb") if case.stdin else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=work,
        preexec_fn=limits,
        start_new_session=True,
    )
    outcome = ""
    try:
        if case.term_after is not None:
            time.sleep(case.term_after)
            # The child of /usr/bin/time is mdream: signal the whole group but time itself.
            for pid in _children(child.pid):
                os.kill(pid, signal.SIGTERM)
        out, err = child.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        outcome = f"timed out at {case.timeout:g} s"
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    wall = time.perf_counter() - started
    timed = timing.read_text().strip().splitlines() if timing.exists() else []
    rss_kb = timed[-1].split()[0] if timed and timed[-1].split() else "0"
    text = err.decode("utf-8", "replace")
    first = next((line for line in text.splitlines() if line.strip()), "")
    code = child.returncode
    if not outcome:
        outcome = f"exit {code}" if code >= 0 else f"signal {-code}"
        if timed and timed[0].startswith("Command terminated by signal"):
            outcome = timed[0].replace("Command terminated by ", "")
    if "MemoryError" in text:
        outcome += " (MemoryError at the cap)"
    return {
        "case": case.name,
        "outcome": outcome,
        "rss_mb": round(int(rss_kb) / 1024),
        "wall_s": round(wall, 1),
        "stderr_bytes": len(err),
        "stdout_bytes": len(out),
        "first_line": first[:160],
        "traceback": "Traceback" in text,
    }


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in found]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mdream-hostile")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--cap-gb", type=float, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in _cases(args.work):
        if args.only and not any(o.lower() in case.name.lower() for o in args.only):
            continue
        case.setup(args.work)
        row = _run(case, args.work, args.src, int(args.cap_gb * 2**30))
        rows.append(row)
        print(
            f"{row['case']:<36} {row['outcome']:<28} {row['rss_mb']:>6} MB {row['wall_s']:>6} s"
            f"  stderr {row['stderr_bytes']:>7} B{'  TRACEBACK' if row['traceback'] else ''}"
            f"  | {row['first_line']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
