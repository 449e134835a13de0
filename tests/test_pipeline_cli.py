"""`mdream describe/ask` over many inputs, end to end: real llama.cpp on the tiny pair, in a
child process, so every stdout byte and exit code is the real one."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT, Arg, run_mdream
from pipelines_helpers import CORRUPT, GOOD_TOP, SCHEMA, make_folder, make_many

pytestmark = pytest.mark.slow  # every test runs `mdream` in a child process

FAST = (
    "-n",
    "6",
    "-t",
    "1",
)  # short answers; one thread: ggml spin-waits badly on a busy 2-core box


def jsonl(stdout: bytes) -> list[dict[str, object]]:
    text = stdout.decode()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def stderr_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stderr.decode().splitlines()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def default_sigint() -> None:
    """For a child that the test interrupts: a shell starts background jobs with SIGINT
    ignored, and Python would then never raise KeyboardInterrupt (the run would finish)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def mdream_cmd() -> str:
    return f"{shlex.quote(sys.executable)} -m moondream_cli"


# -- folders, formats, failures ----------------------------------------------------------------


def test_folder_jsonl_in_order_bad_file_is_a_record_and_exit_1(
    tiny_model: Path, tmp_path: Path
) -> None:
    album = make_folder(tmp_path)
    proc = run_mdream("describe", album, "-m", tiny_model, *FAST, "--format", "jsonl")
    assert proc.returncode == 1
    rows = jsonl(proc.stdout)
    names = ["a.jpg", "b.png", "c.webp", CORRUPT]
    assert [r["path"] for r in rows] == [str(album / n) for n in names]
    good, bad = rows[:3], rows[3]
    assert all(isinstance(r["answer"], str) and r["error"] is None for r in good)
    assert all(r["question"] == "Describe this image." for r in rows)
    assert all(isinstance(r["elapsed_ms"], int) and r["elapsed_ms"] >= 0 for r in rows)
    assert bad["answer"] is None and "corrupt" in str(bad["error"])
    assert stderr_lines(proc) == [
        f"mdream: error: {album / CORRUPT}: {bad['error']}",
        "mdream: left out 2 files in the folders that are not images",  # notes.txt, fake.png
    ]


def test_recursive_adds_subfolders_and_answers_match_single_runs(
    tiny_model: Path, tmp_path: Path
) -> None:
    album = make_folder(tmp_path)
    proc = run_mdream("describe", album, "-r", "-m", tiny_model, *FAST, "--format", "jsonl")
    rows = jsonl(proc.stdout)
    assert [r["path"] for r in rows][-1] == str(album / "sub" / "d.jpg")
    assert len(rows) == 5
    # A batch answers exactly what one image at a time would: no state leaks between images.
    alone = run_mdream("describe", album / "sub" / "d.jpg", "-m", tiny_model, *FAST)
    assert alone.returncode == 0
    assert alone.stdout.decode() == str(rows[-1]["answer"]) + "\n"


def test_text_format_many_inputs_is_path_tab_answer(tiny_model: Path, tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    a, b = album / "a.jpg", album / "b.png"
    proc = run_mdream("describe", a, b, "-m", tiny_model, *FAST)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(a), str(b)]
    assert all(line.count("\t") == 1 for line in lines)


def test_csv_and_tsv_parse_back_to_the_jsonl_records(tiny_model: Path, tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    args = ("describe", album, "-m", tiny_model, *FAST, "--format")
    by_json = jsonl(run_mdream(*args, "jsonl").stdout)
    as_csv = list(csv.DictReader(io.StringIO(run_mdream(*args, "csv").stdout.decode(), newline="")))
    tsv_lines = run_mdream(*args, "tsv").stdout.decode().splitlines()
    header = tsv_lines[0].split("\t")
    as_tsv = [dict(zip(header, line.split("\t"), strict=True)) for line in tsv_lines[1:]]
    assert len(by_json) == len(as_csv) == len(as_tsv) == 4
    for j, c, t in zip(by_json, as_csv, as_tsv, strict=True):
        assert c["path"] == t["path"] == j["path"]
        assert c["answer"] == (j["answer"] or "")
        assert c["error"] == t["error"] == (j["error"] or "")
        assert t["answer"] == str(j["answer"] or "").replace("\\", "\\\\").replace(
            "\t", "\\t"
        ).replace("\n", "\\n").replace("\r", "\\r")


def test_fail_fast_stops_at_the_first_failure(tiny_model: Path, tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    a, bad, b = album / "a.jpg", album / CORRUPT, album / "b.png"
    proc = run_mdream("describe", a, bad, b, "-m", tiny_model, *FAST, "-f", "jsonl", "--fail-fast")
    assert proc.returncode == 1
    assert [r["path"] for r in jsonl(proc.stdout)] == [str(a), str(bad)]  # b.png never ran


def test_missing_file_alone_is_exit_1_with_one_error_line(tiny_model: Path, tmp_path: Path) -> None:
    proc = run_mdream("describe", tmp_path / "nope.jpg", "-m", tiny_model, *FAST)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert stderr_lines(proc) == [f"mdream: error: {tmp_path / 'nope.jpg'}: no such file"]


# -- lists and stdin ----------------------------------------------------------------------------

WEIRD = ["with space.png", "new\nline.png", "naïve café 日本.png"]


def test_nul_separated_list_from_stdin_keeps_odd_names(tiny_model: Path, tmp_path: Path) -> None:
    paths = make_many(tmp_path / "odd", 1)
    for name in WEIRD:
        (tmp_path / "odd" / name).hardlink_to(paths[0])
    listed = [str(tmp_path / "odd" / n) for n in WEIRD]
    stdin = b"".join(os.fsencode(p) + b"\0" for p in listed)
    proc = run_mdream(
        "describe", "--files-from", "-", "-0", "-m", tiny_model, *FAST, "-f", "jsonl", input=stdin
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in jsonl(proc.stdout)] == listed


def test_newline_list_file(tiny_model: Path, tmp_path: Path) -> None:
    paths = make_many(tmp_path / "imgs", 3)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in reversed(paths)))
    proc = run_mdream("describe", "--files-from", listing, "-m", tiny_model, *FAST, "-f", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in jsonl(proc.stdout)] == [str(p) for p in reversed(paths)]


def test_image_bytes_on_stdin(tiny_model: Path, photo: Path) -> None:
    piped = run_mdream("describe", "-", "-m", tiny_model, *FAST, input=photo.read_bytes())
    named = run_mdream("describe", photo, "-m", tiny_model, *FAST)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == named.stdout and piped.stdout.strip()


def test_cat_image_pipe_into_describe_dash(tiny_model: Path, photo: Path) -> None:
    cmd = (
        f"set -o pipefail; cat {shlex.quote(str(photo))} | "
        f"{mdream_cmd()} describe - -m {tiny_model} -n 6 -t 1 -f jsonl"
    )
    proc = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, env=child_env(), timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    (row,) = jsonl(proc.stdout)
    assert row["path"] == "-" and row["answer"]


# -- sidecars -------------------------------------------------------------------------------------


def test_sidecars_are_written_kept_then_overwritten(tiny_model: Path, tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    first = run_mdream("describe", album, "--sidecar", "-m", tiny_model, *FAST)
    assert first.returncode == 1  # corrupt.jpg
    assert first.stdout == b""  # answers went to the sidecars
    captions = {p.name: p.read_text() for p in album.glob("*.txt") if p.name != "notes.txt"}
    assert sorted(captions) == ["a.txt", "b.txt", "c.txt"]
    assert all(c.endswith("\n") and c.strip() for c in captions.values())

    (album / "a.txt").write_text("my own caption\n")
    again = run_mdream("describe", album, "--sidecar", "-m", tiny_model, *FAST, "-f", "jsonl")
    assert (album / "a.txt").read_text() == "my own caption\n"
    assert "kept 3 existing .txt sidecars" in again.stderr.decode()
    assert [r["path"] for r in jsonl(again.stdout)] == [str(album / CORRUPT)]

    forced = run_mdream("describe", album, "--sidecar", "--overwrite", "-m", tiny_model, *FAST)
    assert (album / "a.txt").read_text() == captions["a.txt"]
    assert "existing .txt sidecar" not in forced.stderr.decode()
    assert not [p for p in os.listdir(album) if p.endswith(".tmp")]


def test_sidecar_never_replaces_the_image_itself(tiny_model: Path, tmp_path: Path) -> None:
    odd = tmp_path / "scan.txt"  # a PNG with a .txt name, named explicitly
    make_many(tmp_path / "src", 1)[0].rename(odd)
    before = odd.read_bytes()
    proc = run_mdream("describe", odd, "--sidecar", "--overwrite", "-m", tiny_model, *FAST)
    assert proc.returncode == 1
    assert "would replace the image itself" in proc.stderr.decode()
    assert odd.read_bytes() == before


def test_empty_folder_says_so_and_succeeds(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_mdream("describe", tmp_path / "empty", "-m", tiny_model, *FAST)
    assert proc.returncode == 0
    assert proc.stdout == b"" and stderr_lines(proc) == ["mdream: no images found"]


def test_sidecar_ext_and_usage_errors(tiny_model: Path, tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    proc = run_mdream(
        "describe", album / "a.jpg", "--sidecar", "--ext", "caption", "-m", tiny_model, *FAST
    )
    assert proc.returncode == 0, proc.stderr
    assert (album / "a.caption").is_file()
    for args in (["-", "--sidecar"], [album, "--overwrite"], [album, "-0"]):
        bad = run_mdream("describe", *args, "-m", tiny_model)
        assert bad.returncode == 2, args
        assert bad.stdout == b""


# -- structured answers -----------------------------------------------------------------------


def test_choices_answers_are_always_in_the_set(tiny_model: Path, tmp_path: Path) -> None:
    paths = [str(p) for p in make_many(tmp_path / "imgs", 1)]
    album = make_folder(tmp_path)
    args: list[Arg] = ["ask", album, *paths, "Is there a price tag?", "-m", tiny_model, "-t", "1"]
    choices = ["yes", "no", "maybe"]
    proc = run_mdream(*args, "--choices", ",".join(choices), "-f", "tsv")
    rows = [line.split("\t") for line in proc.stdout.decode().splitlines()[1:]]
    good = [r for r in rows if not r[3]]
    assert len(good) == 4
    # Random weights answer gibberish (test_pipeline_runner shows it); the grammar forbids it.
    assert all(r[1] in choices for r in good)


def test_json_schema_answers_validate(tiny_model: Path, tmp_path: Path) -> None:
    schema = tmp_path / "pet.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    album = make_folder(tmp_path)
    images = [str(p) for p in make_many(tmp_path / "imgs", 1)]
    images += [str(album / name) for name in (*GOOD_TOP, CORRUPT)]
    proc = run_mdream(
        "ask",
        *images,
        "What is it?",
        "--json-schema",
        schema,
        "-m",
        tiny_model,
        "-t",
        "1",
        "-n",
        "64",
        "-f",
        "jsonl",
    )
    rows = jsonl(proc.stdout)
    answered = [r for r in rows if r["error"] is None]
    assert len(answered) == 4
    for row in answered:
        jsonschema.validate(json.loads(str(row["answer"])), SCHEMA)
    # Any failure is the corrupt file, never an unfinished answer.
    assert all("corrupt" in str(r["error"]) for r in rows if r["error"] is not None)


def test_json_schema_needs_no_question(tiny_model: Path, tmp_path: Path, photo: Path) -> None:
    """`mdream ask receipt.jpg --json-schema S`: the schema's fields become the question."""
    schema = tmp_path / "pet.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    proc = run_mdream(
        "ask",
        photo,
        "--json-schema",
        schema,
        "-m",
        tiny_model,
        "-t",
        "1",
        "-n",
        "64",
        "-f",
        "jsonl",
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = jsonl(proc.stdout)
    assert row["path"] == str(photo)
    assert row["question"] == "Extract these fields from the image as JSON: count, kind, outdoor."
    jsonschema.validate(json.loads(str(row["answer"])), SCHEMA)


def test_choices_need_no_question_either(tiny_model: Path, photo: Path) -> None:
    proc = run_mdream(
        "ask", photo, photo.parent, "--choices", "cat,dog", "-m", tiny_model, "-n", "4"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split("\t")[1].strip() in ("cat", "dog")


def test_json_schema_answer_cut_short_is_an_error_record_not_a_crash(
    tiny_model: Path, tmp_path: Path, photo: Path
) -> None:
    schema = tmp_path / "free.schema.json"
    schema.write_text(
        json.dumps(
            {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        )
    )
    proc = run_mdream(
        "ask",
        photo,
        photo,
        "Name?",
        "--json-schema",
        schema,
        "-m",
        tiny_model,
        "-n",
        "4",
        "-t",
        "1",
        "-f",
        "jsonl",
    )
    assert proc.returncode == 1
    (row,) = jsonl(proc.stdout)  # the duplicate input was dropped
    assert row["answer"] is None and "max-tokens" in str(row["error"])
    assert "Traceback" not in proc.stderr.decode()


def test_bad_schema_is_usage_error_before_any_work(
    tiny_model: Path, tmp_path: Path, photo: Path
) -> None:
    schema = tmp_path / "bad.json"
    schema.write_text('{"type": "nonsense"}')
    proc = run_mdream("ask", photo, "q?", "--json-schema", schema, "-m", tiny_model)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert stderr_lines(proc)[0].startswith(f"mdream: error: {schema}: ")


def test_ask_with_an_image_where_the_question_should_be_is_a_usage_error(
    tiny_model: Path, tmp_path: Path
) -> None:
    album = make_folder(tmp_path)
    proc = run_mdream("ask", album / "a.jpg", album / "b.png", "-m", tiny_model)
    assert proc.returncode == 2
    assert "looks like a path" in proc.stderr.decode() and proc.stdout == b""


def test_repeated_q_gives_one_record_per_question(tiny_model: Path, photo: Path) -> None:
    both = run_mdream(
        "ask", photo, "-q", "Who?", "-q", "Where?", "-m", tiny_model, *FAST, "-f", "jsonl"
    )
    rows = jsonl(both.stdout)
    assert [r["question"] for r in rows] == ["Who?", "Where?"]
    assert all(r["path"] == str(photo) and r["answer"] for r in rows)


def test_tags_style(tiny_model: Path, photo: Path) -> None:
    proc = run_mdream("describe", photo, "--style", "tags", "-m", tiny_model, *FAST, "-f", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert jsonl(proc.stdout)[0]["question"].startswith("List descriptive tags")  # type: ignore[attr-defined]


# -- pipes and signals --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_head_one_ends_quietly(tiny_model: Path, tmp_path: Path, fmt: str) -> None:
    make_many(tmp_path / "imgs", 40)
    cmd = (
        f"set -o pipefail; {mdream_cmd()} describe {tmp_path / 'imgs'} -m {tiny_model} "
        f"-n 6 -t 1 -f {fmt} | head -1"
    )
    proc = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, env=child_env(), timeout=120, check=False
    )
    assert proc.returncode == 0
    assert proc.stderr == b""
    assert proc.stdout.count(b"\n") == 1


# Ctrl-C right after the first record, and well into the run. (One that landed inside the
# main thread's Queue.get once left the queue locked, and the run hung for ever.)
@pytest.mark.parametrize("wait", [0.0, 0.15])
def test_sigint_mid_batch_keeps_every_finished_record(
    tiny_model: Path, tmp_path: Path, wait: float
) -> None:
    make_many(tmp_path / "imgs", 300)
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moondream_cli",
            "describe",
            str(tmp_path / "imgs"),
            "-m",
            str(tiny_model),
            "-n",
            "48",
            "-t",
            "1",
            "-f",
            "jsonl",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=child_env(),
        preexec_fn=default_sigint,
        # Unbuffered: readline() must take the first record and nothing more, since
        # communicate() reads the pipe itself and never sees what Popen's buffer holds.
        bufsize=0,
    )
    assert child.stdout is not None
    first = child.stdout.readline()
    time.sleep(wait)
    child.send_signal(signal.SIGINT)
    rest, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    out = first + rest
    assert out.endswith(b"\n")
    rows = jsonl(out)
    assert 1 <= len(rows) < 300  # stopped mid-batch...
    assert all(set(r) == {"path", "answer", "question", "error", "elapsed_ms"} for r in rows)
    assert [r["path"] for r in rows] == [
        str(tmp_path / "imgs" / f"img-{i:04d}.png") for i in range(len(rows))
    ]
    assert err.decode().splitlines()[-1] == "mdream: interrupted"


def read_terminal(leader: int) -> bytes:
    """Everything the child writes to its pseudo-terminal, until it closes it."""
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return seen


def run_with_tty_stderr(*args: str | os.PathLike[str]) -> tuple[int, str]:
    """Run mdream with stderr on a pseudo-terminal (stdout still a pipe); return rc and stderr."""
    import pty

    leader, follower = pty.openpty()
    env = child_env() | {"COLUMNS": "100"}
    child = subprocess.Popen(
        [sys.executable, "-m", "moondream_cli", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    seen = read_terminal(leader)
    return child.wait(timeout=60), seen.decode(errors="replace")


def test_progress_bar_on_a_terminal_and_not_with_quiet(tiny_model: Path, tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    rc, shown = run_with_tty_stderr("describe", album, "-r", "-m", tiny_model, *FAST, "-f", "jsonl")
    assert rc == 1
    assert "5/5" in shown and "img/s" in shown and "1 failed" in shown
    assert f"mdream: error: {album / CORRUPT}:" in shown
    rc, quiet = run_with_tty_stderr("describe", album, "-r", "-m", tiny_model, *FAST, "--quiet")
    assert rc == 1
    assert "img/s" not in quiet and f"mdream: error: {album / CORRUPT}:" in quiet


# SIGTERM (`timeout`, `kill`) would kill Python on the spot, a sidecar's temporary file
# and all; mdream stops on it as it does on Ctrl-C.
@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_signal_during_sidecar_batch_leaves_only_whole_sidecars(
    tiny_model: Path, tmp_path: Path, sig: signal.Signals, code: int, said: str
) -> None:
    images = make_many(tmp_path / "imgs", 300)
    child = subprocess.Popen(
        [sys.executable, "-m", "moondream_cli", "describe", str(tmp_path / "imgs"), "--sidecar",
         "-m", str(tiny_model), "-n", "48", "-t", "1", "-f", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=child_env(),
        preexec_fn=default_sigint, bufsize=0,
    )  # fmt: skip
    assert child.stdout is not None
    child.stdout.readline()
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    assert err.decode().splitlines()[-1] == f"mdream: {said}"
    sidecars = sorted((tmp_path / "imgs").glob("*.txt"))
    assert 1 <= len(sidecars) < len(images)
    assert [s.stem for s in sidecars] == [i.stem for i in images[: len(sidecars)]]
    assert all(s.read_text().endswith("\n") and s.read_text().strip() for s in sidecars)
    assert not [p for p in os.listdir(tmp_path / "imgs") if p.startswith(".")]  # no temp files


@pytest.mark.parametrize(
    ("command", "example"),
    [("describe", "--files-from - -0"), ("describe", "--sidecar"), ("ask", "--json-schema")],
)
def test_help_has_a_summary_and_pipeline_examples(command: str, example: str) -> None:
    proc = run_mdream(command, "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "Examples:" in text and example in text


def test_loading_the_cli_imports_no_model_image_or_terminal_libraries() -> None:
    code = (
        "import sys, moondream_cli.cli.app\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'llama_cpp', 'PIL', 'rich'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=child_env(), timeout=60, check=True
    )
    assert proc.stdout.decode().strip() == "[]"


def test_one_image_on_a_terminal_streams_the_same_answer(tiny_model: Path, photo: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "moondream_cli", "describe", str(photo), "-m", str(tiny_model),
         *FAST],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE, env=child_env(),
    )  # fmt: skip
    os.close(follower)
    shown = read_terminal(leader)
    assert child.wait(timeout=60) == 0
    piped = run_mdream("describe", photo, "-m", tiny_model, *FAST)
    assert shown.replace(b"\r\n", b"\n") == piped.stdout


def test_batch_option_gives_the_same_records(tiny_model: Path, tmp_path: Path) -> None:
    album = make_folder(tmp_path)
    common = ("describe", album, "-r", "-m", tiny_model, "-t", "1", "-n", "8", "-f", "jsonl")
    alone = run_mdream(*common)
    batched = run_mdream(*common, "--batch", "3")
    assert batched.returncode == alone.returncode == 1  # the corrupt file, in both
    strip = [{k: v for k, v in r.items() if k != "elapsed_ms"} for r in jsonl(alone.stdout)]
    assert [
        {k: v for k, v in r.items() if k != "elapsed_ms"} for r in jsonl(batched.stdout)
    ] == strip
    assert len(strip) >= 4
