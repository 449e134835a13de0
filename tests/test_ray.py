"""`--ray`: a folder answered on a real two-node Ray cluster gives exactly the local records.

The cluster runs inside a network namespace the test makes (tests/ray_cluster.py), on
loopback only, with token authentication on, and is stopped afterwards. One cluster serves
every scenario, to stay within a minute or two on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shapes_world
from conftest import ROOT, draw_photo, run_mdream

IMAGES = 6
MANY = 120  # for the killed worker: enough that the kill lands with work still in flight


API_RUN = """
import dataclasses, json, sys
from pathlib import Path
from moondream_cli import answer_paths
from moondream_cli.settings import ClusterOptions, ModelOptions, SamplingOptions, Settings

settings = Settings(
    model=ModelOptions(model_dir=Path(sys.argv[2]), threads=1),
    sampling=SamplingOptions(max_tokens=4),
    cluster=ClusterOptions(ray="127.0.0.1:6380"),
)
for record in answer_paths([sys.argv[1]], settings=settings):
    print(json.dumps(dataclasses.asdict(record)))
"""


def _local_path_imports_no_ray(tiny_model: Path, photo: Path) -> bool:
    probe = (
        "import sys\n"
        "from moondream_cli.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('RAY' if 'ray' in sys.modules else 'NO RAY', file=sys.stderr)\n"
    )
    args = ["describe", str(photo), "-m", str(tiny_model), "-n", "2"]
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    return done.stderr.decode().strip().endswith("NO RAY")


@pytest.mark.slow
def test_a_local_describe_never_imports_ray(tiny_model: Path, photo: Path) -> None:
    assert _local_path_imports_no_ray(tiny_model, photo)


def test_without_token_authentication_the_cluster_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moondream_cli.errors import UsageError
    from moondream_cli.ray import _refuse_an_open_cluster

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(UsageError, match="RAY_AUTH_MODE=token"):
        _refuse_an_open_cluster()


def test_without_the_extra_the_error_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moondream_cli.errors import UsageError
    from moondream_cli.ray import _import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does when it is not installed
    with pytest.raises(UsageError, match=r"pip install 'mdream\[ray\]'"):
        _import_ray()


# The trained tiny Moondream's world (tests/shapes_world.py): records that can be right or wrong.
SHAPES_ALBUM = [
    shapes_world.make(shape, colour, position, background, 60 + 20 * i, 140 - 10 * i)
    for i, (shape, colour, position, background) in enumerate(
        [
            ("circle", "red", "left", "white"),
            ("square", "blue", "right", "grey"),
            ("triangle", "green", "top", "beige"),
            ("star", "yellow", "bottom", "black"),
            ("circle", "purple", "centre", "white"),
            ("square", "orange", "top", "black"),
        ]
    )
]


@pytest.fixture(scope="module")
def cluster_runs(
    tiny_model: Path, trained_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """Every scenario run once on one cluster: their stdout, stderr and exit codes."""
    if not sys.platform.startswith("linux"):
        pytest.skip(
            f"the loopback cluster runs without a network (unshare -n): not on {sys.platform}"
        )
    pytest.importorskip("ray", reason="Ray has no wheel for this machine ([dev] leaves it out)")
    if shutil.which("unshare") is None:
        pytest.fail("the Ray tests need unshare (util-linux): make test installs it")
    work = tmp_path_factory.mktemp("ray")
    album = work / "album"
    album.mkdir()
    for i in range(IMAGES):
        draw_photo(seed=i).save(album / f"{i}.jpg")
    (album / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    sidecars = work / "sidecars"
    shutil.copytree(album, sidecars)
    shapes = work / "shapes"
    shapes.mkdir()
    for i, scene in enumerate(SHAPES_ALBUM):
        (shapes / f"{i}.png").write_bytes(shapes_world.encode(scene))
    many = work / "many"
    many.mkdir()
    for i in range(MANY):  # 24 distinct pictures, each under 5 names (hard links: cheap)
        path = many / f"{i:03d}.jpg"
        if i < 24:
            draw_photo((320, 240), seed=i).save(path)
        else:
            path.hardlink_to(many / f"{i % 24:03d}.jpg")
    mdream = f"{sys.executable} -m moondream_cli"
    common = f"-m {tiny_model} --threads 1 -n 4"
    # Once the first record is out, the oldest worker process is killed (SIGKILL: no
    # goodbye); Ray restarts it and hands its chunks to it again.
    killed = (
        f"bash -c '{mdream} describe {many} --ray 127.0.0.1:6380 {common} --format jsonl"
        f" > {work}/killed.jsonl & run=$!;"
        f" until [ -s {work}/killed.jsonl ]; do sleep 0.1; done;"
        f" pkill -9 -o -f ^ray::Worker && echo killed after $(wc -l < {work}/killed.jsonl) >&2;"
        " wait $run'"
    )
    commands = [
        f"{mdream} describe {album} --ray 127.0.0.1:6380 {common} --format jsonl",
        f"{mdream} describe {album} {common} --format jsonl",
        f"{mdream} describe {sidecars} --ray 127.0.0.1:6380 {common} --sidecar",
        f"{mdream} describe {sidecars} --ray 127.0.0.1:6380 {common} --sidecar",
        f"env -u RAY_AUTH_MODE {mdream} describe {album} --ray 127.0.0.1:6380 {common}",
        killed,
        f"{mdream} describe {many} {common} --format jsonl",
        # A JSONL run cut after three records, resumed on the cluster.
        f"head -n 3 {work}/run0.out > {work}/resumed.jsonl && {mdream} describe {album}"
        f" --ray 127.0.0.1:6380 {common} --format jsonl --resume {work}/resumed.jsonl"
        f" >> {work}/resumed.jsonl",
        f"{mdream} describe {album} --ray 127.0.0.1:6380 {common} --workers 3",
        # The Python API under --ray, records as JSON lines.
        f"{sys.executable} -c {shlex.quote(API_RUN)} {album} {tiny_model}",
        # The trained model on its world: every record must be right, not only the same.
        f"{mdream} describe {shapes} --ray 127.0.0.1:6380 -m {trained_model} --threads 1"
        " --format jsonl",
        # Last, as it breaks the cluster: the second node dies (its raylet and the processes
        # it started, the worker among them, SIGKILLed) once the first records are out.
        f"bash -c '{mdream} describe {many} --ray 127.0.0.1:6380 {common} --format jsonl"
        f" > {work}/died.jsonl & run=$!; until [ -s {work}/died.jsonl ]; do sleep 0.1; done;"
        " node=$(pgrep -n -f [r]aylet/raylet) && pkill -9 -P $node && kill -9 $node"
        " && echo node killed >&2; wait $run'",
    ]
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = [sys.executable, str(ROOT / "tests" / "ray_cluster.py"), str(work), "--"]
    done = subprocess.run(
        [*unshare, *script, " ;; ".join(commands)],
        env=env,
        capture_output=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    runs = json.loads((work / "runs.json").read_text())["runs"]
    out = {
        f"run{i}": {
            "rc": run["rc"],
            "out": (work / f"run{i}.out").read_bytes(),
            "err": (work / f"run{i}.err").read_text(errors="replace"),
        }
        for i, run in enumerate(runs)
    }
    out["run5"]["out"] = (work / "killed.jsonl").read_bytes()
    out["run7"]["out"] = (work / "resumed.jsonl").read_bytes()
    out["run11"]["out"] = (work / "died.jsonl").read_bytes()
    return {"runs": out, "sidecars": sidecars, "album": album, "many": many, "shapes": shapes}


def _records(stdout: bytes) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in stdout.splitlines()]
    for row in rows:
        row.pop("elapsed_ms")
    return rows


def _run(cluster_runs: dict[str, object], i: int) -> dict[str, object]:
    runs = cluster_runs["runs"]
    assert isinstance(runs, dict)
    run = runs[f"run{i}"]
    assert isinstance(run, dict)
    return run


@pytest.mark.slow
def test_the_cluster_gives_exactly_the_local_records_in_input_order(
    cluster_runs: dict[str, object],
) -> None:
    cluster, local = _run(cluster_runs, 0), _run(cluster_runs, 1)
    assert isinstance(cluster["out"], bytes) and isinstance(local["out"], bytes)
    records = _records(cluster["out"])
    assert records == _records(local["out"])
    assert len(records) == IMAGES + 1
    assert cluster["rc"] == local["rc"] == 1  # the corrupt file is a record and exit 1
    bad = [r for r in records if r["error"]]
    assert [str(r["path"]).rsplit("/", 1)[1] for r in bad] == ["bad.jpg"]


@pytest.mark.slow
def test_both_nodes_serve_and_only_mdreams_lines_reach_stderr(
    cluster_runs: dict[str, object],
) -> None:
    err = str(_run(cluster_runs, 0)["err"])
    assert all(line.startswith("mdream: ") for line in err.splitlines()), err
    assert "mdream: 2 workers on 2 Ray nodes" in err
    assert "bad.jpg: corrupt or truncated image" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_second_sidecar_run_on_the_cluster_infers_nothing(
    cluster_runs: dict[str, object],
) -> None:
    first, second = _run(cluster_runs, 2), _run(cluster_runs, 3)
    sidecars = cluster_runs["sidecars"]
    assert isinstance(sidecars, Path)
    assert first["rc"] == 1 and f"wrote {IMAGES} .txt sidecars" in str(first["err"])
    local = {Path(str(r["path"])).stem: r["answer"] for r in _records(_run(cluster_runs, 1)["out"])}  # type: ignore[arg-type]
    for i in range(IMAGES):
        assert (sidecars / f"{i}.txt").read_text().strip() == local[str(i)]
    assert f"kept {IMAGES} existing .txt sidecars" in str(second["err"])
    assert "wrote" not in str(second["err"])


@pytest.mark.slow
def test_a_cluster_without_token_authentication_is_refused(
    cluster_runs: dict[str, object],
) -> None:
    run = _run(cluster_runs, 4)
    assert run["rc"] == 2 and "RAY_AUTH_MODE=token" in str(run["err"])


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_no_record_and_duplicates_none(
    cluster_runs: dict[str, object],
) -> None:
    killed, local = _run(cluster_runs, 5), _run(cluster_runs, 6)
    when = re.search(r"^killed after (\d+)$", str(killed["err"]), re.MULTILINE)
    assert when is not None, killed["err"]  # a worker was killed ...
    assert int(when.group(1)) < MANY // 2  # ... with most of the run still to do
    # Ray's own notices of it (which it prints to stdout) are one mdream line each on stderr.
    lines = [line for line in str(killed["err"]).splitlines() if line != when.group()]
    assert all(line.startswith("mdream: ") for line in lines), lines
    assert any(line.startswith("mdream: Ray: A worker died") for line in lines), lines
    assert killed["rc"] == local["rc"] == 0, killed["err"]
    records = _records(killed["out"])  # type: ignore[arg-type]
    assert len(records) == MANY
    assert records == _records(local["out"])  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_cut_jsonl_run_resumed_on_the_cluster_is_the_whole_run(
    cluster_runs: dict[str, object],
) -> None:
    resumed, whole = _run(cluster_runs, 7), _run(cluster_runs, 0)
    assert resumed["rc"] == 1  # the corrupt file is tried again
    assert "skipped 3 images answered already" in str(resumed["err"])
    assert _records(resumed["out"]) == _records(whole["out"])  # type: ignore[arg-type]


@pytest.mark.slow
def test_more_workers_than_the_cluster_has_cpus_is_refused_not_a_hang(
    cluster_runs: dict[str, object],
) -> None:
    run = _run(cluster_runs, 8)
    assert run["rc"] == 2
    assert "3 workers need 3 CPUs (one each); the Ray cluster has 2" in str(run["err"])


@pytest.mark.slow
def test_the_python_api_gives_the_clis_records(cluster_runs: dict[str, object]) -> None:
    api, cli = _run(cluster_runs, 9), _run(cluster_runs, 0)
    assert api["rc"] == 0, api["err"]
    assert _records(api["out"]) == _records(cli["out"])  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_clusters_records_are_right_on_the_trained_model(
    cluster_runs: dict[str, object],
) -> None:
    run, shapes = _run(cluster_runs, 10), cluster_runs["shapes"]
    assert run["rc"] == 0, run["err"]
    assert isinstance(shapes, Path)
    records = _records(run["out"])  # type: ignore[arg-type]
    expected = [
        {
            "path": str(shapes / f"{i}.png"),
            "answer": shapes_world.caption(scene).strip(),
            "question": shapes_world.DESCRIBE,
            "error": None,
        }
        for i, scene in enumerate(SHAPES_ALBUM)
    ]
    assert records == expected


@pytest.mark.slow
def test_a_node_that_dies_with_no_cpu_to_spare_ends_the_run_with_its_records_whole(
    cluster_runs: dict[str, object],
) -> None:
    # Its worker cannot start again (the head's one CPU is taken): once Ray's retries run out
    # the run stops with one line and exit 3, every record before it whole and in order.
    died, local = _run(cluster_runs, 11), _run(cluster_runs, 6)
    lines = str(died["err"]).splitlines()
    assert "node killed" in lines
    assert died["rc"] == 3, lines
    assert lines[-1].startswith("mdream: error: a Ray worker failed and Ray's retries ran out")
    assert lines[-1].endswith("--resume or --sidecar continues the run")
    assert all(line.startswith("mdream: ") for line in lines if line != "node killed"), lines
    records = _records(died["out"])  # type: ignore[arg-type]
    assert 0 < len(records) < MANY
    assert records == _records(local["out"])[: len(records)]  # type: ignore[arg-type]


@pytest.mark.slow
def test_only_paths_and_records_cross_the_object_store(cluster_runs: dict[str, object]) -> None:
    """What the driver handed Ray and got back, against the pixels of the images: a run
    that shipped images (bytes or decoded) would carry at least as much as they hold."""
    from PIL import Image

    many = cluster_runs["many"]
    assert isinstance(many, Path)
    pixels = 0
    for path in many.iterdir():
        with Image.open(path) as img:
            pixels += img.width * img.height * 3
    err = str(_run(cluster_runs, 5)["err"])
    found = re.search(r"Ray carried ([\d,]+) bytes to the workers .* and ([\d,]+) bytes", err)
    assert found is not None, err
    sent, received = (int(n.replace(",", "")) for n in found.groups())
    assert 0 < sent + received < pixels // 100, (sent, received, pixels)


@pytest.mark.slow
def test_nothing_of_the_cluster_is_left_running(cluster_runs: dict[str, object]) -> None:
    left = subprocess.run(["pgrep", "-f", "ray::|raylet|gcs_server"], capture_output=True)
    assert left.stdout == b"", left.stdout


@pytest.mark.slow
def test_ray_options_need_ray(tiny_model: Path, photo: Path) -> None:
    done = run_mdream("describe", photo, "-m", tiny_model, "--workers", "2")
    assert done.returncode == 2 and b"only apply with --ray" in done.stderr


@pytest.mark.slow
def test_an_address_where_nothing_listens_fails_at_once_with_one_line(
    photo: Path, tmp_path: Path
) -> None:
    # Ray itself retries for minutes (a user's Ctrl-C took 40 s), printing only its own lines.
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    started = time.monotonic()
    done = run_mdream("describe", photo, "--ray", "127.0.0.1:9", env=env, timeout=60)
    assert time.monotonic() - started < 20
    assert done.returncode == 3
    assert done.stderr.decode().splitlines() == [
        "mdream: error: cannot reach the Ray cluster at 127.0.0.1:9: Connection refused — "
        "is `ray start --head --port=9` running there?"
    ]
    bad = run_mdream("describe", photo, "--ray", "headnode", env=env)
    assert bad.returncode == 2 and b"--ray takes HOST:PORT" in bad.stderr


def test_records_take_the_drivers_own_paths_matched_by_index() -> None:
    from moondream_cli.errors import ModelError
    from moondream_cli.inputs import Source
    from moondream_cli.ray import Expected, Link, Notices, _collect

    class Pool:
        def __init__(self, answered: list[tuple[object, ...]]) -> None:
            self.answered = answered

        def get_next_unordered(self) -> list[tuple[object, ...]]:
            return self.answered

    def fields(path: str, question: str = "q") -> list[dict[str, object]]:
        return [{"path": path, "question": question, "answer": "a", "error": None, "elapsed_ms": 2}]

    sent = {0: Source("album/a.jpg"), 1: Source("album/b.jpg")}
    done: dict[int, object] = {}
    link = Link(lambda _: None, Notices())
    # A worker names another path for input 0, and an index the driver never sent.
    answered = [(0, fields("/home/someone/.bashrc")), (7, fields("/etc/passwd"))]
    _collect(Pool(answered), Expected(sent, ("q",)), done, link)  # type: ignore[arg-type]
    assert list(done) == [0]
    assert [r.path for r in done[0].records] == ["album/a.jpg"]  # type: ignore[attr-defined]
    _collect(Pool([(0, fields("x"))]), Expected(sent, ("q",)), done, link)  # type: ignore[arg-type]
    assert done[0].records[0].path == "album/a.jpg"  # type: ignore[attr-defined]  # first kept
    with pytest.raises(ModelError, match="do not fit the job"):
        _collect(Pool([(1, fields("b", question="another"))]), Expected(sent, ("q",)), done, link)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_head_started_without_authentication_is_refused_before_anything_is_sent(
    tiny_model: Path, tmp_path: Path
) -> None:
    album = tmp_path / "album"
    album.mkdir()
    draw_photo().save(album / "a.jpg")
    command = (
        f"{sys.executable} -m moondream_cli describe {album} --ray 127.0.0.1:6380 -m {tiny_model}"
    )
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_TEST_OPEN_HEAD": "1"}
    script = [sys.executable, str(ROOT / "tests" / "ray_cluster.py"), str(tmp_path), "--"]
    done = subprocess.run([*unshare, *script, command], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    rc = json.loads((tmp_path / "runs.json").read_text())["runs"][0]["rc"]
    err = (tmp_path / "run0.err").read_text()
    assert rc == 2, err
    assert err.count("\n") == 1 and "answers without a token: it does not check them" in err
    assert "worker" not in err  # no actor was made, no path or question was sent


# -- GPUs: one worker per GPU, chunks sized to the workers' batches -----------------------------
def test_a_gpu_cluster_gets_one_worker_per_gpu_each_holding_one() -> None:
    from moondream_cli.ray.sizing import workers_for

    assert workers_for(None, nodes=2, cpus=32, gpus=3) == (3, {"num_cpus": 1, "num_gpus": 1})
    assert workers_for(2, nodes=2, cpus=32, gpus=3) == (2, {"num_cpus": 1, "num_gpus": 1})
    # No GPU, or --cpu (the driver passes gpus=0): one per node, on CPUs.
    assert workers_for(None, nodes=2, cpus=32, gpus=0) == (2, {"num_cpus": 1})


def test_more_workers_than_gpus_is_refused_saying_why() -> None:
    from moondream_cli.errors import UsageError
    from moondream_cli.ray.sizing import workers_for

    with pytest.raises(UsageError, match=r"4 workers need 4 GPUs .* has 2: pass --workers 2"):
        workers_for(4, nodes=1, cpus=64, gpus=2)
    with pytest.raises(UsageError, match="3 workers need 3 CPUs"):
        workers_for(3, nodes=1, cpus=2, gpus=0)


def test_a_chunk_holds_several_batches_of_the_largest_worker() -> None:
    from moondream_cli.ray.sizing import BATCHES_PER_CHUNK, CHUNK, chunk_size

    assert chunk_size([32, 8]) == BATCHES_PER_CHUNK * 32  # a GPU worker's batch stays full
    assert chunk_size([1, 1]) == CHUNK  # CPU workers: as before
    assert chunk_size([]) == CHUNK
